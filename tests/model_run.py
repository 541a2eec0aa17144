"""A seeded random run of the engine checked step by step against a dict model.

run_model() applies appends, batches across tables, deletes, trims, TTL
expiry on a manual clock, snapshots, flushes, compactions and reopens at
tiny sizes, compares every read with the model, and returns the list of
observations, so two runs (extensions and pure Python) can be compared.
Run as a script it prints a digest of that list:

    python tests/model_run.py DATA_DIR SEED STEPS
"""

import hashlib
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tlsm  # noqa: E402
from clock import ManualClock  # noqa: E402
from tree_check import check_tree  # noqa: E402

TABLES = ("default", "store", "sync")
TIMELINES = ("a", "b", "c", "room:1", "user\u00e9", "z" * 40)
OPTIONS = {
    "memtable_bytes": 4096,
    "block_bytes": 256,
    "block_cache_bytes": 8192,
    "level_fanout": 2,
    "level1_bytes": 8192,
    "level_size_ratio": 2,
    "target_file_bytes": 2048,
    "expiry_check_seconds": 0.01,
}


class Model:
    """The expected state: entries, last seqs and the clock, per table and timeline."""

    def __init__(self):
        self.entries = {}
        self.last = {}

    def copy(self):
        other = Model()
        other.entries = {key: dict(value) for key, value in self.entries.items()}
        other.last = dict(self.last)
        return other

    def append(self, key, payload, expires_at):
        seq = self.last.get(key, 0) + 1
        self.last[key] = seq
        self.entries.setdefault(key, {})[seq] = (payload, expires_at)
        return seq

    def delete(self, key, start, end):
        self.last.setdefault(key, 0)
        stop = self.last[key] + 1 if end is None else min(end, self.last[key] + 1)
        for seq in [s for s in self.entries.get(key, {}) if start <= s < stop]:
            del self.entries[key][seq]

    def visible(self, key, now_ms):
        return sorted(
            (seq, payload)
            for seq, (payload, expires_at) in self.entries.get(key, {}).items()
            if not expires_at or expires_at > now_ms
        )


class Runner:
    def __init__(self, path, seed, style="leveled"):
        self.path = path
        self.style = style
        self.rng = random.Random(seed)
        self.clock = ManualClock()
        self.model = Model()
        self.observations = []
        self.db = None
        self.open()

    def open(self):
        self.db = tlsm.open(
            self.path, clock=self.clock, compaction_style=self.style, **OPTIONS
        )
        self.db.table("store")
        self.db.table("sync", ttl=30)

    def pick(self):
        return self.rng.choice(TABLES), self.rng.choice(TIMELINES)

    def expires_at(self, table, ttl):
        if ttl is None:
            ttl = 30 if table == "sync" else None
        if ttl is None:
            return 0
        return int(self.clock.now * 1000 + ttl * 1000)

    def observe(self, *values):
        self.observations.append(repr(values))

    def step(self):
        rng = self.rng
        roll = rng.random()
        if roll < 0.30:
            self.do_append()
        elif roll < 0.40:
            self.do_batch()
        elif roll < 0.46:
            self.do_delete()
        elif roll < 0.58:
            self.do_get()
        elif roll < 0.78:
            self.do_scan()
        elif roll < 0.84:
            self.clock.advance(rng.choice((0.5, 3, 10, 40)))
        elif roll < 0.88:
            self.db.flush()
            check_tree(self.db)
        elif roll < 0.90:
            self.db.compact()
        elif roll < 0.93:
            self.db.close()
            self.open()
        else:
            self.do_snapshot()

    def do_append(self):
        table, timeline = self.pick()
        payload = self.rng.randbytes(self.rng.randrange(0, 300))
        ttl = self.rng.choice((None, None, None, 5, 60))
        seq = self.db.table(table).append(timeline, payload, ttl=ttl)
        expected = self.model.append(
            (table, timeline), payload, self.expires_at(table, ttl)
        )
        assert seq == expected, (table, timeline, seq, expected)
        self.observe("append", table, timeline, seq)

    def do_batch(self):
        batch = self.db.batch()
        expected = []
        for _ in range(self.rng.randrange(1, 8)):
            table, timeline = self.pick()
            if self.rng.random() < 0.8:
                payload = self.rng.randbytes(self.rng.randrange(0, 100))
                batch.append(timeline, payload, table=table)
                expected.append(
                    self.model.append(
                        (table, timeline), payload, self.expires_at(table, None)
                    )
                )
            else:
                before = self.rng.randrange(
                    0, self.model.last.get((table, timeline), 0) + 3
                )
                batch.trim(timeline, before, table=table)
                self.model.delete((table, timeline), 0, before)
                expected.append(None)
        results = self.db.write(batch)
        assert results == expected, (results, expected)
        self.observe("batch", results)

    def do_delete(self):
        table, timeline = self.pick()
        handle = self.db.table(table)
        last = self.model.last.get((table, timeline), 0)
        choice = self.rng.random()
        if choice < 0.6:
            seq = self.rng.randrange(0, last + 2)
            handle.delete(timeline, seq)
            self.model.delete((table, timeline), seq, seq + 1)
        elif choice < 0.9:
            before = self.rng.randrange(0, last + 3)
            handle.trim(timeline, before)
            self.model.delete((table, timeline), 0, before)
        else:
            handle.delete_timeline(timeline)
            self.model.delete((table, timeline), 0, None)
        self.observe("delete", table, timeline)

    def do_get(self):
        table, timeline = self.pick()
        last = self.model.last.get((table, timeline), 0)
        seq = self.rng.randrange(0, last + 2)
        got = self.db.table(table).get(timeline, seq)
        visible = dict(self.model.visible((table, timeline), self.clock.now * 1000))
        assert got == visible.get(seq), (table, timeline, seq)
        assert self.db.table(table).last_seq(timeline) == last
        self.observe("get", table, timeline, seq, got)

    def do_scan(self, snapshot=None, model=None):
        model = model or self.model
        table, timeline = self.pick()
        last = model.last.get((table, timeline), 0)
        start = self.rng.choice((None, self.rng.randrange(0, last + 2)))
        end = self.rng.choice((None, self.rng.randrange(0, last + 3)))
        limit = self.rng.choice((None, 1, 3, 10))
        reverse = self.rng.random() < 0.5
        got = list(
            self.db.table(table).scan(
                timeline, start, end, limit, reverse, snapshot=snapshot
            )
        )
        expected = [
            (seq, payload)
            for seq, payload in model.visible((table, timeline), self.clock.now * 1000)
            if (start is None or seq >= start) and (end is None or seq < end)
        ]
        if reverse:
            expected.reverse()
        if limit is not None:
            expected = expected[:limit]
        assert got == expected, (table, timeline, start, end, limit, reverse)
        self.observe("scan", table, timeline, [seq for seq, _ in got])

    def do_snapshot(self):
        frozen = self.model.copy()
        with self.db.snapshot() as snapshot:
            for _ in range(self.rng.randrange(1, 6)):
                self.rng.choice((self.do_append, self.do_delete, self.db.flush))()
            for _ in range(3):
                self.do_scan(snapshot, frozen)
            table, timeline = self.pick()
            assert snapshot.last_seq(timeline, table=table) == frozen.last.get(
                (table, timeline), 0
            )

    def close(self):
        self.db.close()


def run_model(path, seed, steps, style="leveled"):
    """Run steps random operations with seed in directory path; return the observations."""
    runner = Runner(path, seed, style)
    try:
        for _ in range(steps):
            runner.step()
    finally:
        runner.close()
    return runner.observations


def digest(observations):
    return hashlib.sha256("\n".join(observations).encode()).hexdigest()


if __name__ == "__main__":
    result = run_model(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(len(result), digest(result))
