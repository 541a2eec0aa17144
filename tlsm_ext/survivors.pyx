# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython twin of tlsm/survivors.py: the entries a merge keeps, as runs.

The loop over entries runs in C: one tuple unpack, two comparisons and
four list appends per kept entry. It calls into Python only for timelines
that have tombstones.
"""

from cpython.list cimport PyList_GET_SIZE

from tlsm import keys
from tlsm.tombstones import covers

cdef Py_ssize_t ENTRY_OVERHEAD = 12


def surviving_runs(entries, dict tombstones, now_ms, dict counts, Py_ssize_t max_run=4096):
    """Yield (timeline_id, seqs, kinds, expires, values, size) per run of survivors.

    Same contract as tlsm.survivors.surviving_runs.
    """
    cdef object kind_put = keys.KIND_PUT
    cdef Py_ssize_t expired = 0, deleted = 0, size = 0
    cdef object current = None, intervals = None
    cdef object timeline_id, seq, kind, expires_at, value
    cdef list seqs = None, kinds = None, expires = None, values = None
    for timeline_id, seq, kind, expires_at, value in entries:
        if timeline_id != current or PyList_GET_SIZE(seqs) >= max_run:
            if seqs:
                yield current, seqs, kinds, expires, values, size
            if timeline_id != current:
                current = timeline_id
                intervals = tombstones.get(timeline_id)
            seqs = []
            kinds = []
            expires = []
            values = []
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
