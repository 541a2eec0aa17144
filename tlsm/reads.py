"""The read path of DB, as a mixin: get, scan, last_seq and snapshots.

A read takes a view under the visibility lock: the current version
(memtables and tables, newest first), the tombstones, and for a snapshot
the per-timeline seq bounds. It then reads without locks. Memtable runs
only grow, so a range fixed under the lock stays valid, and tables are
immutable. A scan first subtracts deleted ranges from the requested range,
so a trimmed prefix of millions of entries costs nothing to skip, then
merges the sources of each remaining segment lazily and drops expired
entries.
"""

from . import keys
from . import merge as merge_module
from . import tombstones as tomb
from .errors import ClosedError, InvalidArgumentError
from .table import Snapshot

_END = keys.MAX_SEQ + 1


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
        is called (or the snapshot's), and loads table blocks lazily, so a
        scan over a huge timeline holds only the blocks it is on. Deleted
        ranges are skipped without reading them.
        """
        return self._default.scan(
            timeline_id, start, end, limit, reverse, snapshot=snapshot
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
            for table in view.version.tables:
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
        start = 0 if start is None else keys.check_seq(start, "start")
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
            segments = self._segments(view, key, start, end, reverse)
            bound = view.bounds.get(key)
            memory = [
                [
                    m.scan(key, low, min(high, bound + 1), reverse)
                    for m in view.version.memtables
                ]
                if bound is not None
                else []
                for low, high in segments
            ]
        else:
            with self._visible_lock:
                view = self._live_view()
                segments = self._segments(view, key, start, end, reverse)
                memory = [
                    [m.scan(key, low, high, reverse) for m in view.version.memtables]
                    for low, high in segments
                ]
        return self._iterate_segments(
            view.version, key, segments, memory, limit, reverse
        )

    @staticmethod
    def _segments(view, key, start, end, reverse):
        segments = tomb.visible_segments(view.tombstones.get(key, ()), start, end)
        if reverse:
            segments.reverse()
        return segments

    def _iterate_segments(self, version, key, segments, memory, limit, reverse):
        remaining = -1 if limit is None else limit
        now_ms = self._now_ms()
        kind_put = keys.KIND_PUT
        for (low, high), sources in zip(segments, memory):
            sources = sources + [
                t.scan(key, low, high, reverse)
                for t in version.tables
                if t.may_contain(key, low, high)
            ]
            if len(sources) == 1:
                entries = sources[0]
            else:
                entries = merge_module.merge_entries(sources, reverse)
            for _key, seq, kind, expires_at, value in entries:
                if kind != kind_put or (expires_at and expires_at <= now_ms):
                    continue
                yield seq, value
                remaining -= 1
                if remaining == 0:
                    return
