"""The last-seq cache: filling it for batches, and seqs of timelines not in it."""

import random
import threading

import pytest
from twins import implementations

import tlsm
from tlsm import writer


class _Table:
    """The two attributes FastWriter reads from a tlsm.Table."""

    def __init__(self, prefix):
        self._prefix = prefix
        self.ttl = None


@pytest.mark.parametrize("seed", range(3))
def test_uncached_keys_twins_agree(seed):
    classes = implementations(writer, "writer", "FastWriter")
    if len(classes) < 2:
        pytest.skip("tlsm_ext.writer is not built; build it with pip install -e .")
    rng = random.Random(seed)
    timeline_ids = ["a", "b", "é", b"a", b"c", "\ud800", 5, "", "x" * 513]
    last_seqs = {b"\x00a": 3, b"\x00\xc3\xa9": 1}
    writers = [
        cls(threading.Lock(), threading.Lock(), last_seqs, 1 << 20, 300, 2000, False)
        for cls in classes
    ]
    table = _Table(b"\x00")
    for _ in range(200):
        entries = [
            (rng.choice(timeline_ids), b"v") for _ in range(rng.choice([0, 1, 4, 70]))
        ]
        if rng.random() < 0.1:
            entries.append(["a", b"list, not tuple"])
        if rng.random() < 0.1:
            entries = tuple(entries)
        results = [fast.uncached_keys(table, entries) for fast in writers]
        assert results[0] == results[1], entries


def test_uncached_keys_lists_missing_in_order():
    fast = writer.PurePython.FastWriter(
        threading.Lock(), threading.Lock(), {b"\x01a": 7}, 1 << 20, 300, 2000, False
    )
    entries = [("a", b"1"), ("b", b"2"), (b"c", b"3"), ("b", b"4")]
    assert fast.uncached_keys(_Table(b"\x01"), entries) == [
        b"\x01b",
        b"\x01c",
        b"\x01b",
    ]
    assert fast.uncached_keys(_Table(b"\x01"), [("a", b"1")]) == []
    assert fast.uncached_keys(_Table(b"\x01"), [(3, b"1")]) is None
    assert fast.uncached_keys(_Table(b"\x01"), "not a list") is None


def test_batch_after_reopen_continues_seqs(tmp_path):
    with tlsm.open(tmp_path) as db:
        for i in range(5):
            db.append("old", b"%d" % i)
        db.append_batch([("both", b"x")] * 3)
        db.flush()
        db.append("both", b"in memtable")
    with tlsm.open(tmp_path) as db:
        # Nothing is cached after open, so the first batch looks each
        # timeline up in the tables.
        assert db.append_batch([("old", b"a"), ("new", b"b"), ("both", b"c")]) == [
            6,
            1,
            5,
        ]
        assert db.append("old", b"again") == 7


def test_memtable_seq_wins_over_tables(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=4096) as db:
        for i in range(200):
            db.append("t", b"%d" % i)
        db.flush()
        db.append("t", b"last")
    with tlsm.open(tmp_path) as db:
        db.append("t", b"after reopen")
        version = db._version
        key = db._default.key("t")
        assert db._max_seq_in(version, key) == 202
        assert db._max_seq_in(version, key, memtables=False) == 201
        assert db._max_seq_in(version, db._default.key("absent")) == 0


def test_fresh_database_starts_every_timeline_at_one(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=4096) as db:
        for i in range(300):
            db.append_batch([(f"t{i % 7}", b"x"), (f"u{i}", b"y")])
        assert db.stats()["flushes"] >= 1
        # A timeline first written after the flushes still starts at 1.
        assert db.append_batch([("late", b"z"), ("t0", b"z")]) == [1, 44]
        assert db.last_seq("u299") == 1
