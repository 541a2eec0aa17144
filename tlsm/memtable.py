"""In-memory table of recent writes, organised per timeline.

The engine assigns seqs in increasing order within each timeline, so each
timeline's entries arrive sorted: a memtable keeps, per timeline, parallel
append-only lists of seqs, kinds, expiry times and values. Appending is O(1)
and a lookup or range start is a bisect. Lists are only ever extended, so a
reader that captured a list length sees a stable snapshot while writers go
on appending. An out-of-order seq (never produced by the engine today) is
inserted in place with a bisect, which readers must then not race; the DB
serialises that case under its write lock.
"""

import bisect


class _Run:
    __slots__ = ("seqs", "kinds", "expires", "values")

    def __init__(self):
        self.seqs = []
        self.kinds = []
        self.expires = []
        self.values = []


class Memtable:
    """Sorted entries of recent writes; see the module docstring."""

    # Rough per-entry overhead of the lists and objects, used only to decide
    # when to flush.
    ENTRY_OVERHEAD = 64

    def __init__(self, log_number):
        self.log_number = log_number
        self.approximate_bytes = 0
        self.entry_count = 0
        self.tombstones = []
        self._runs = {}

    def __len__(self):
        return self.entry_count

    def add_tombstone(self, timeline_id, start, end):
        """Record the deleted range [start, end) so that flush writes it to the table."""
        self.tombstones.append((timeline_id, start, end))
        self.approximate_bytes += len(timeline_id) + self.ENTRY_OVERHEAD

    def add(self, timeline_id, seq, kind, expires_at, value):
        run = self._runs.get(timeline_id)
        if run is None:
            run = self._runs[timeline_id] = _Run()
        seqs = run.seqs
        if not seqs or seq > seqs[-1]:
            # Readers bisect seqs without a lock, so the other lists must
            # already hold the entry when its seq appears.
            run.kinds.append(kind)
            run.expires.append(expires_at)
            run.values.append(value)
            seqs.append(seq)
        else:
            index = bisect.bisect_left(seqs, seq)
            if index < len(seqs) and seqs[index] == seq:
                run.kinds[index] = kind
                run.expires[index] = expires_at
                run.values[index] = value
            else:
                seqs.insert(index, seq)
                run.kinds.insert(index, kind)
                run.expires.insert(index, expires_at)
                run.values.insert(index, value)
        self.entry_count += 1
        self.approximate_bytes += len(value) + len(timeline_id) + self.ENTRY_OVERHEAD

    def get(self, timeline_id, seq):
        """Return the entry tuple for (timeline_id, seq), or None."""
        run = self._runs.get(timeline_id)
        if run is None:
            return None
        seqs = run.seqs
        index = bisect.bisect_left(seqs, seq)
        if index < len(seqs) and seqs[index] == seq:
            return (
                timeline_id,
                seq,
                run.kinds[index],
                run.expires[index],
                run.values[index],
            )
        return None

    def last_seq(self, timeline_id):
        """Return the highest seq held for timeline_id, or 0."""
        run = self._runs.get(timeline_id)
        if run is None or not run.seqs:
            return 0
        return run.seqs[-1]

    def timeline_ids(self):
        return self._runs.keys()

    def scan(self, timeline_id, start, end, reverse=False):
        """Iterate entries of timeline_id with start <= seq < end, as 5-tuples.

        The range is fixed when the iterator is created: entries appended
        afterwards are not returned.
        """
        run = self._runs.get(timeline_id)
        if run is None:
            return iter(())
        seqs = run.seqs
        low = bisect.bisect_left(seqs, start)
        high = bisect.bisect_left(seqs, end, low)
        return self._iterate(timeline_id, run, low, high, reverse)

    @staticmethod
    def _iterate(timeline_id, run, low, high, reverse):
        seqs, kinds, expires, values = run.seqs, run.kinds, run.expires, run.values
        indexes = range(high - 1, low - 1, -1) if reverse else range(low, high)
        for i in indexes:
            yield (timeline_id, seqs[i], kinds[i], expires[i], values[i])

    def entries(self):
        """Iterate every entry in (timeline_id, seq) order; used by flush."""
        for timeline_id in sorted(self._runs):
            run = self._runs[timeline_id]
            yield from zip(
                [timeline_id] * len(run.seqs),
                run.seqs,
                run.kinds,
                run.expires,
                run.values,
            )

    def timeline_summary(self):
        """Return {timeline_id: (min_seq, max_seq, count)} for every timeline held."""
        return {
            timeline_id: (run.seqs[0], run.seqs[-1], len(run.seqs))
            for timeline_id, run in self._runs.items()
            if run.seqs
        }
