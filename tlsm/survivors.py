"""The entries a merge keeps, grouped into runs of one timeline.

surviving_runs() reads merged entries (timeline_id, seq, kind,
expires_at, value) in key order and drops every entry that has expired or
that a tombstone covers. It yields the rest as runs: one timeline's
entries in parallel lists, as TableWriter.add_run takes them, so the table
writer works once per run instead of once per entry. The Cython twin is
tlsm_ext/survivors.pyx; both give identical results.
"""

import types

from . import _impl, keys
from .tombstones import covers

# Bytes a stored entry costs besides its timeline id and payload, as merges
# count output against target_file_bytes.
ENTRY_OVERHEAD = 12


def surviving_runs(entries, tombstones, now_ms, counts, max_run=4096):
    """Yield (timeline_id, seqs, kinds, expires, values, size) per run of survivors.

    tombstones maps a timeline id to its sorted deleted intervals; counts
    gets "dropped_expired" and "dropped_deleted" added. A run has at most
    max_run entries, so a long timeline comes as several runs in seq order.
    size sums len(timeline_id) + len(value) + ENTRY_OVERHEAD over the run.
    """
    kind_put = keys.KIND_PUT
    expired = deleted = 0
    current = None
    seqs = kinds = expires = values = None
    size = 0
    intervals = None
    for timeline_id, seq, kind, expires_at, value in entries:
        if timeline_id != current or len(seqs) >= max_run:
            if seqs:
                yield current, seqs, kinds, expires, values, size
            if timeline_id != current:
                current = timeline_id
                intervals = tombstones.get(timeline_id)
            seqs, kinds, expires, values = [], [], [], []
            size = 0
        if expires_at and expires_at <= now_ms:
            expired += 1
            continue
        if intervals and covers(intervals, seq):
            deleted += 1
            continue
        if kind != kind_put:
            continue
        seqs.append(seq)
        kinds.append(kind)
        expires.append(expires_at)
        values.append(value)
        size += len(timeline_id) + len(value) + ENTRY_OVERHEAD
    if seqs:
        yield current, seqs, kinds, expires, values, size
    counts["dropped_expired"] += expired
    counts["dropped_deleted"] += deleted


PurePython = types.SimpleNamespace(surviving_runs=surviving_runs)

_extension = _impl.load_extension("survivors")
if _extension is not None:
    surviving_runs = _extension.surviving_runs
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
