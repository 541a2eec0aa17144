"""The read path of DB, as a mixin: get, scan, last_seq and snapshots.

A read takes a view under the visibility lock: the current version
(memtables and tables, newest first), the tombstones, the length of each
memtable run of the timeline, and for a snapshot the per-timeline seq
bounds. It then reads without locks. Memtable runs only grow, so a length
fixed under the lock stays valid, and tables are immutable. A scan first
subtracts deleted ranges from the requested range, so a trimmed prefix of
millions of entries costs nothing to skip.

Seqs of a timeline grow with time, so its entries in different sources
(memtable runs and tables) cover disjoint seq ranges. A scan therefore
reads the sources one after the other in seq order, copying live entries
straight into a list (tlsm.scan), and merges entry streams
(tlsm.merge) only when source ranges overlap. A scan with a small limit
collects its results at once; others yield lazily, a block at a time.
"""

import math

from . import keys, scan
from . import merge as merge_module
from . import tombstones as tomb
from .errors import ClosedError, InvalidArgumentError
from .memtable import SEQS, Memtable
from .table import Snapshot

_END = keys.MAX_SEQ + 1
# Scans with a limit up to this collect their results into a list at once.
# Others yield lazily, so a huge timeline is never held in memory whole.
_EAGER_LIMIT = 4096
# Entries a lazy scan copies from a memtable run at a time.
_CHUNK_ENTRIES = 1024


class _View:
    """What one read sees: a version, the tombstones, and snapshot bounds.

    ``bounds`` is None for a live read. For a snapshot it maps a key to its
    last seq when the snapshot was taken; memtable entries above that seq,
    or of a key absent from it, came later and are skipped.
    """

    __slots__ = ("version", "tombstones", "bounds")

    def __init__(self, version, tombstones, bounds):
        self.version = version
        self.tombstones = tombstones
        self.bounds = bounds


class ReadMixin:
    """Read methods of DB; expects the attributes DB.__init__ sets."""

    def _current_version(self):
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        return self._version

    def _live_view(self):
        return _View(self._current_version(), self._tombstones, None)

    def snapshot(self):
        """Return a Snapshot: a consistent read-only view as of now, across tables."""
        with self._visible_lock:
            view = _View(
                self._current_version(), dict(self._tombstones), dict(self._last_seqs)
            )
        return Snapshot(self, view)

    def last_seq(self, timeline_id, *, snapshot=None):
        """Return the highest seq appended to timeline_id, or 0 if none ever was.

        Deleting or expiring entries never lowers it.
        """
        return self._default.last_seq(timeline_id, snapshot=snapshot)

    def get(self, timeline_id, seq, *, snapshot=None):
        """Return the payload at (timeline_id, seq), or None when absent, deleted or expired."""
        return self._default.get(timeline_id, seq, snapshot=snapshot)

    def scan(
        self,
        timeline_id,
        start=None,
        end=None,
        limit=None,
        reverse=False,
        *,
        snapshot=None,
    ):
        """Iterate (seq, payload) of timeline_id with start <= seq < end.

        Ascending by default, descending with reverse=True (from the highest
        seq below end). None bounds are open; at most limit pairs are
        returned. The iterator reads one consistent view, taken when scan()
        is called (or the snapshot's). With a limit of at most 4096 the
        pairs are collected when scan() is called; otherwise table blocks
        load lazily, so a scan over a huge timeline holds only the block it
        is on. Deleted ranges are skipped without reading them.
        """
        # Table.scan of the default table, without its extra call.
        return self._scan(
            self._default.key(timeline_id), start, end, limit, reverse, snapshot
        )

    def _last_seq(self, key, snapshot):
        if snapshot is not None:
            view = snapshot.view(self)
            bound = view.bounds.get(key)
            if bound is not None:
                return bound
            return self._max_seq_in(view.version, key, memtables=False)
        with self._visible_lock:
            version = self._current_version()
            seq = self._last_seqs.get(key)
        if seq is None:
            seq = self._max_seq_in(version, key)
        return seq

    def _get(self, key, seq, snapshot):
        if snapshot is not None:
            view = snapshot.view(self)
            bound = view.bounds.get(key, 0)
            entry = None
            if seq <= bound:
                entry = self._find_in_memtables(view.version, key, seq)
        else:
            with self._visible_lock:
                view = self._live_view()
                entry = self._find_in_memtables(view.version, key, seq)
        if tomb.covers(view.tombstones.get(key), seq):
            return None
        if entry is None:
            for table in view.version.tables_for(key):
                entry = table.get(key, seq)
                if entry is not None:
                    break
        if entry is None or entry[2] != keys.KIND_PUT:
            return None
        if entry[3] and entry[3] <= self._now_ms():
            return None
        return entry[4]

    @staticmethod
    def _find_in_memtables(version, key, seq):
        for memtable in version.memtables:
            entry = memtable.get(key, seq)
            if entry is not None:
                return entry
        return None

    def _scan(self, key, start, end, limit, reverse, snapshot):
        # Plain ints in range skip the general checks, which accept the same.
        if start is None:
            start = 0
        elif type(start) is not int or not 0 <= start <= keys.MAX_SEQ:
            start = keys.check_seq(start, "start")
        if end is None or (
            isinstance(end, int) and not isinstance(end, bool) and end > keys.MAX_SEQ
        ):
            end = _END
        else:
            end = keys.check_seq(end, "end")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidArgumentError(
                    f"limit must be a non-negative int, not {limit!r}"
                )
        if start >= end or limit == 0:
            return iter(())
        if snapshot is not None:
            view = snapshot.view(self)
            version = view.version
            intervals = view.tombstones.get(key)
            bound = view.bounds.get(key)
            # Memtable entries above the snapshot's last seq came later.
            runs = [] if bound is None else _runs_of(version, key)
            memory_end = 0 if bound is None else bound + 1
        else:
            with self._visible_lock:
                version = self._current_version()
                intervals = self._tombstones.get(key)
                # Runs only grow: their length now fixes what this read sees.
                runs = _runs_of(version, key)
            memory_end = _END
        if intervals:
            segments = tomb.visible_segments(intervals, start, end)
            if reverse:
                segments.reverse()
        else:
            segments = ((start, end),)
        now_ms = max(0, math.floor(self._now_ms()))
        if limit is not None and limit <= _EAGER_LIMIT:
            out = []
            tables = version.tables_for(key)
            for low, high in segments:
                remaining = limit - len(out)
                if not scan.collect_range(
                    runs,
                    tables,
                    key,
                    low,
                    high,
                    memory_end,
                    reverse,
                    now_ms,
                    remaining,
                    out,
                ):
                    _collect_merged(
                        tables,
                        key,
                        runs,
                        low,
                        high,
                        memory_end,
                        reverse,
                        now_ms,
                        limit,
                        out,
                    )
                if len(out) >= limit:
                    break
            return iter(out)
        return _iterate_lazily(
            self, version, key, runs, segments, memory_end, limit, reverse, now_ms
        )


def _runs_of(version, key):
    """Return (run, length) of key in each memtable of version that has it."""
    runs = []
    for memtable in version.memtables:
        run = memtable._runs.get(key)
        if run is not None:
            runs.append((run, len(run[SEQS])))
    return runs


def _collect_merged(
    tables, key, runs, low, high, memory_end, reverse, now_ms, limit, out
):
    """Append up to limit - len(out) live pairs of [low, high) to out, merging.

    Used when source seq ranges overlap, which scan.collect_range rejects.
    The engine never writes such sources, but they are merged correctly,
    newest source first.
    """
    sources = scan.find_sources(runs, tables, key, low, high, memory_end)
    entries = merge_module.merge_entries(
        [_entries_of(source, key, low, high, reverse) for source in sources],
        reverse,
    )
    _append_live(entries, now_ms, limit, out)


def _entries_of(source, key, low, high, reverse):
    """Return an iterator of the entry 5-tuples of one source, for merge_entries."""
    _first, _last, holder, first, last = source
    if type(holder) is tuple:
        return Memtable._iterate(key, holder, first, last, reverse)
    return holder.scan(key, low, high, reverse)


def _append_live(entries, now_ms, limit, out):
    kind_put = keys.KIND_PUT
    for _key, seq, kind, expires_at, value in entries:
        if kind != kind_put or (expires_at and expires_at <= now_ms):
            continue
        out.append((seq, value))
        if len(out) >= limit:
            return


def _iterate_lazily(
    db, version, key, runs, segments, memory_end, limit, reverse, now_ms
):
    """Yield (seq, value) pairs source by source, a chunk at a time.

    Holds at most one chunk (a memtable slice or one block's entries) at once.
    Raises ClosedError at the next chunk once db is closed.
    """
    remaining = -1 if limit is None else limit
    for low, high in segments:
        sources = scan.find_sources(
            runs, version.tables_for(key), key, low, high, memory_end
        )
        if not sources:
            continue
        for chunk in _chunks(sources, key, low, high, reverse, now_ms):
            if db._closed:
                raise ClosedError(f"database {db.path} was closed during the scan")
            for pair in chunk:
                yield pair
                remaining -= 1
                if remaining == 0:
                    return


def _chunks(sources, key, low, high, reverse, now_ms):
    ordered = scan.order_sources(sources, reverse)
    if ordered is None:
        entries = merge_module.merge_entries(
            [_entries_of(source, key, low, high, reverse) for source in sources],
            reverse,
        )
        while True:
            chunk = []
            _append_live(entries, now_ms, _CHUNK_ENTRIES, chunk)
            if not chunk:
                return
            yield chunk
    for _first, _last, holder, first, last in ordered:
        if type(holder) is tuple:
            while first < last:
                chunk = []
                visited = scan.collect_run(
                    holder, first, last, reverse, now_ms, _CHUNK_ENTRIES, chunk
                )
                if reverse:
                    last -= visited
                else:
                    first += visited
                yield chunk
        else:
            yield from holder.chunks(key, low, high, reverse, now_ms)
