"""In-memory table of recent writes, organised per timeline.

The engine assigns seqs in increasing order within each timeline, so each
timeline's entries arrive sorted: a memtable keeps, per timeline, a run: a
tuple of four parallel append-only lists (seqs, kinds, expiry times and
values, indexed by the SEQS, KINDS, EXPIRES and VALUES constants). tlsm.writer
appends to these lists directly, so their layout is shared with it.
Appending is O(1)
and a lookup or range start is a bisect. Lists are only ever extended, so a
reader that captured a list length sees a stable snapshot while writers go
on appending. An out-of-order seq (never produced by the engine today) is
inserted in place with a bisect, which readers must then not race; the DB
serialises that case under its write lock.
"""

import array
import bisect

SEQS = 0
KINDS = 1
EXPIRES = 2
VALUES = 3


def new_run():
    """Return an empty run: (seqs, kinds, expires, values)."""
    return ([], [], [], [])


class Memtable:
    """Sorted entries of recent writes; see the module docstring.

    ``counters`` is an array of two signed 64-bit integers, the entry count
    and the approximate size in bytes, which tlsm.writer updates in place
    through the buffer protocol; entry_count and approximate_bytes read it.
    """

    # Rough per-entry overhead of the lists and objects, used only to decide
    # when to flush.
    ENTRY_OVERHEAD = 64

    def __init__(self, log_number):
        self.log_number = log_number
        self.counters = array.array("q", [0, 0])
        self.tombstones = []
        self._runs = {}

    @property
    def entry_count(self):
        return self.counters[0]

    @property
    def approximate_bytes(self):
        return self.counters[1]

    def __len__(self):
        return self.counters[0]

    def add_tombstone(self, timeline_id, start, end):
        """Record the deleted range [start, end) so that flush writes it to the table."""
        self.tombstones.append((timeline_id, start, end))
        self.counters[1] += len(timeline_id) + self.ENTRY_OVERHEAD

    def add(self, timeline_id, seq, kind, expires_at, value):
        run = self._runs.get(timeline_id)
        if run is None:
            run = self._runs[timeline_id] = new_run()
        seqs, kinds, expires, values = run
        if not seqs or seq > seqs[-1]:
            # Readers bisect seqs without a lock, so the other lists must
            # already hold the entry when its seq appears.
            kinds.append(kind)
            expires.append(expires_at)
            values.append(value)
            seqs.append(seq)
        else:
            index = bisect.bisect_left(seqs, seq)
            if index < len(seqs) and seqs[index] == seq:
                kinds[index] = kind
                expires[index] = expires_at
                values[index] = value
            else:
                seqs.insert(index, seq)
                kinds.insert(index, kind)
                expires.insert(index, expires_at)
                values.insert(index, value)
        counters = self.counters
        counters[0] += 1
        counters[1] += len(value) + len(timeline_id) + self.ENTRY_OVERHEAD

    def get(self, timeline_id, seq):
        """Return the entry tuple for (timeline_id, seq), or None."""
        run = self._runs.get(timeline_id)
        if run is None:
            return None
        seqs = run[SEQS]
        index = bisect.bisect_left(seqs, seq)
        if index < len(seqs) and seqs[index] == seq:
            return (
                timeline_id,
                seq,
                run[KINDS][index],
                run[EXPIRES][index],
                run[VALUES][index],
            )
        return None

    def last_seq(self, timeline_id):
        """Return the highest seq held for timeline_id, or 0."""
        run = self._runs.get(timeline_id)
        if run is None or not run[SEQS]:
            return 0
        return run[SEQS][-1]

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
        seqs = run[SEQS]
        low = bisect.bisect_left(seqs, start)
        high = bisect.bisect_left(seqs, end, low)
        return self._iterate(timeline_id, run, low, high, reverse)

    @staticmethod
    def _iterate(timeline_id, run, low, high, reverse):
        seqs, kinds, expires, values = run
        indexes = range(high - 1, low - 1, -1) if reverse else range(low, high)
        for i in indexes:
            yield (timeline_id, seqs[i], kinds[i], expires[i], values[i])

    def entries(self):
        """Iterate every entry in (timeline_id, seq) order; used by flush."""
        for timeline_id in sorted(self._runs):
            seqs, kinds, expires, values = self._runs[timeline_id]
            yield from zip([timeline_id] * len(seqs), seqs, kinds, expires, values)

    def sorted_runs(self):
        """Iterate (timeline_id, run) in timeline_id order; used by flush."""
        for timeline_id in sorted(self._runs):
            yield timeline_id, self._runs[timeline_id]

    def timeline_summary(self):
        """Return {timeline_id: (min_seq, max_seq, count)} for every timeline held."""
        return {
            timeline_id: (run[SEQS][0], run[SEQS][-1], len(run[SEQS]))
            for timeline_id, run in self._runs.items()
            if run[SEQS]
        }
