"""The append fast path: twin equivalence, path selection, order under threads."""

import random
import threading

import pytest
from twins import implementations

import tlsm
from tlsm import wal, writer
from tlsm.fs import OsFileSystem
from tlsm.keys import MAX_SEQ
from tlsm.memtable import Memtable


class _Table:
    """The two attributes FastWriter reads from a tlsm.Table."""

    def __init__(self, prefix, ttl=None):
        self._prefix = prefix
        self.ttl = ttl


def _new_writer(cls, tmp_path, name, last_seqs, memtable_bytes=1 << 20):
    log_file = OsFileSystem(log_chunk_bytes=4096).create_log(
        str(tmp_path / f"{name}.log"), 4096
    )
    memtable = Memtable(1)
    fast = cls(
        threading.Lock(), threading.Lock(), last_seqs, memtable_bytes, 300, 2000, False
    )
    fast.attach(memtable, log_file)
    return fast, memtable, log_file


def _random_call(rng):
    timeline_ids = ["a", "b", "é", b"c", "\ud800", 5, "", "x" * 513, b"new"]
    payloads = [b"", b"v", bytes(300), bytes(301), bytearray(b"v"), "s"]
    ttl = rng.choice([None] * 8 + [5])
    sync = rng.choice([None] * 6 + [False, True])
    if rng.random() < 0.5:
        return ("append", rng.choice(timeline_ids), rng.choice(payloads), ttl, sync)
    entries = [
        (rng.choice(timeline_ids), rng.choice(payloads))
        for _ in range(rng.choice([0, 1, 3, 8, 65]))
    ]
    if rng.random() < 0.1:
        entries.append(["a", b"list, not tuple"])
    return ("append_batch", entries, ttl, sync)


def _log_bytes(log_file):
    return bytes(log_file.mapping[: log_file.size])


@pytest.mark.parametrize("seed", range(5))
def test_twins_agree_on_random_calls(tmp_path, seed):
    classes = implementations(writer, "writer", "FastWriter")
    if len(classes) < 2:
        pytest.skip("tlsm_ext.writer is not built; build it with pip install -e .")
    states = []
    for cls in classes:
        last_seqs = {b"\x00a": 0, b"\x00b": 7, "\x00é".encode(): 0, b"\x00c": 0}
        last_seqs[b"\x01a"] = MAX_SEQ - 1
        fast, memtable, log_file = _new_writer(cls, tmp_path, cls.__module__, last_seqs)
        states.append((fast, memtable, log_file, last_seqs, []))
    rng = random.Random(seed)
    tables = [_Table(b"\x00"), _Table(b"\x01"), _Table(b"\x00", ttl=3.0)]
    for _ in range(400):
        call = _random_call(rng)
        table = rng.choice(tables)
        for fast, _, _, _, results in states:
            results.append(getattr(fast, call[0])(table, *call[1:]))
    (pure, *others) = states
    for other in others:
        assert other[4] == pure[4]
        assert other[3] == pure[3]
        assert other[1]._runs == pure[1]._runs
        assert list(other[1].counters) == list(pure[1].counters)
        assert _log_bytes(other[2]) == _log_bytes(pure[2])
        assert (other[0].wal_bytes, other[0].user_bytes) == (
            pure[0].wal_bytes,
            pure[0].user_bytes,
        )
    assert any(pure[4])
    assert None in pure[4]
    assert 0 in pure[4]
    for fast, _, log_file, _, _ in states:
        fast.detach()
        log_file.close()


@pytest.mark.parametrize("cls", implementations(writer, "writer", "FastWriter"))
def test_fast_record_matches_encode_batch(tmp_path, cls):
    last_seqs = {b"\x00a": 4, b"\x00b": 0}
    fast, memtable, log_file = _new_writer(cls, tmp_path, "log", last_seqs)
    table = _Table(b"\x00")
    assert fast.append(table, "a", b"one", None, None) == 5
    assert fast.append_batch(
        table, [("b", b"x"), ("a", b"y"), ("b", b"z")], None, False
    ) == [1, 6, 2]
    expected = wal.encode_batch([(b"\x00a", 5, 1, 0, b"one")]) + wal.encode_batch(
        [
            (b"\x00b", 1, 1, 0, b"x"),
            (b"\x00a", 6, 1, 0, b"y"),
            (b"\x00b", 2, 1, 0, b"z"),
        ]
    )
    assert _log_bytes(log_file) == expected
    assert memtable.get(b"\x00a", 6) == (b"\x00a", 6, 1, 0, b"y")
    assert memtable.entry_count == 4
    assert last_seqs == {b"\x00a": 6, b"\x00b": 2}
    fast.detach()
    log_file.close()


@pytest.mark.parametrize("cls", implementations(writer, "writer", "FastWriter"))
def test_declines_without_room_or_when_detached(tmp_path, cls):
    last_seqs = {b"\x00a": 0}
    fast, memtable, log_file = _new_writer(cls, tmp_path, "log", last_seqs, 4096)
    table = _Table(b"\x00")
    seqs = []
    while True:
        seq = fast.append(table, "a", bytes(200), None, None)
        if not seq:
            break
        seqs.append(seq)
    assert seqs == list(range(1, len(seqs) + 1))
    # Either the memtable limit or the log's 4096 allocated bytes stopped it.
    assert memtable.approximate_bytes >= 4096 or log_file.size + 236 > 4096
    assert fast.append_batch(table, [("a", b"v")], None, None) is None
    fast.detach()
    assert not fast.attached
    assert fast.append(table, "a", b"v", None, None) == 0
    fast.disable()
    fast.attach(memtable, log_file)
    assert not fast.attached
    log_file.close()


@pytest.mark.parametrize("cls", implementations(writer, "writer", "FastWriter"))
def test_declines_while_write_lock_held(tmp_path, cls):
    log_file = OsFileSystem().create_log(str(tmp_path / "000001.log"), 4096)
    lock = threading.Lock()
    fast = cls(lock, threading.Lock(), {b"\x00a": 0}, 1 << 20, 300, 2000, False)
    fast.attach(Memtable(1), log_file)
    table = _Table(b"\x00")
    with lock:
        assert fast.append(table, "a", b"v", None, None) == 0
        assert fast.append_batch(table, [("a", b"v")], None, None) is None
    assert fast.append(table, "a", b"v", None, None) == 1
    fast.detach()
    log_file.close()


def test_db_uses_fast_path_only_where_it_may(tmp_path):
    with tlsm.open(tmp_path) as db:
        db.append("t", b"first")
        before = db._fast.wal_bytes
        assert db.append("t", b"fast") == 2
        assert db._fast.wal_bytes > before
        for kwargs in ({"ttl": 60}, {"sync": True}):
            before = db._fast.wal_bytes
            db.append("t", b"general", **kwargs)
            assert db._fast.wal_bytes == before
        expiring = db.table("expiring", ttl=60)
        expiring.append("t", b"first")
        before = db._fast.wal_bytes
        expiring.append("t", b"general")
        assert db._fast.wal_bytes == before
        assert db.append_batch([("t", b"a"), ("u", b"b")]) == [5, 1]
        before = db._fast.wal_bytes
        assert db.append_batch([("t", b"a"), ("u", b"b"), ("t", b"c")]) == [6, 2, 7]
        assert db._fast.wal_bytes > before
        assert [seq for seq, _ in db.scan("t")] == [1, 2, 3, 4, 5, 6, 7]
        assert db.stats()["wal_bytes"] > db._fast.wal_bytes


def test_always_mode_never_takes_fast_path(tmp_path):
    with tlsm.open(tmp_path, sync="always") as db:
        for i in range(20):
            db.append("t", b"%d" % i)
        db.append_batch([("t", b"a"), ("t", b"b")])
        assert db._fast.wal_bytes == 0
        db.append("t", b"grouped", sync=False)
        assert db._fast.wal_bytes > 0


def test_threads_get_unique_ordered_seqs(tmp_path):
    db = tlsm.open(tmp_path, memtable_bytes=64 * 1024)
    timelines = [f"t{i}" for i in range(5)]
    results = {}
    errors = []

    def write(worker):
        mine = results.setdefault(worker, [])
        for i in range(1500):
            timeline = timelines[i % len(timelines)]
            if i % 7 == 0:
                seqs = db.append_batch([(timeline, b"%d/%d" % (worker, i))] * 2)
                mine.extend((timeline, seq) for seq in seqs)
            else:
                mine.append((timeline, db.append(timeline, b"%d/%d" % (worker, i))))

    def read():
        # A reader must never see seq N+1 of a timeline before seq N.
        while not done.is_set():
            for timeline in timelines:
                seqs = [seq for seq, _ in db.scan(timeline)]
                if seqs != list(range(1, len(seqs) + 1)):
                    errors.append((timeline, seqs[:5], len(seqs)))
                    return

    done = threading.Event()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    acked = [key for keys in results.values() for key in keys]
    assert len(acked) == len(set(acked))
    for timeline in timelines:
        count = sum(1 for t, _ in acked if t == timeline)
        assert db.last_seq(timeline) == count
    assert db.stats()["flushes"] >= 1
    assert db._fast.wal_bytes > 0
    db.close()
    with tlsm.open(tmp_path) as recovered:
        for timeline in timelines:
            seqs = [seq for seq, _ in recovered.scan(timeline)]
            assert seqs == list(range(1, _count(acked, timeline) + 1))


def _count(acked, timeline):
    return sum(1 for t, _ in acked if t == timeline)


def test_batch_of_new_timelines_takes_fast_path(tmp_path):
    with tlsm.open(tmp_path) as db:
        for i in range(5):
            db.append(b"g:1", b"old%d" % i)
        db.flush()
    with tlsm.open(tmp_path) as db:
        before = db._fast.wal_bytes
        seqs = db.append_batch(
            [(b"g:1", b"new")] + [(b"u:%d" % i, b"s") for i in range(20)]
        )
        assert db._fast.wal_bytes > before
        assert seqs == [6] + [1] * 20
        assert db.get(b"g:1", 6) == b"new"
        assert db.get(b"u:7", 1) == b"s"
        with pytest.raises(tlsm.InvalidArgumentError):
            db.append_batch([(b"u:1", b"ok"), (b"", b"empty timeline")])
        assert db.last_seq(b"u:1") == 1


def test_large_append_after_log_switch(tmp_path):
    # Each append fills the 8 KiB memtable, so the next one switches to a
    # new log whose first allocation (8 KiB) is too small for its record.
    # The log then grows while the fast path must not hold its mapping.
    with tlsm.open(tmp_path, memtable_bytes=8192) as db:
        seqs = [db.append("big", bytes([i]) * 20_000) for i in range(6)]
        assert seqs == [1, 2, 3, 4, 5, 6]
        batch = db.append_batch([(f"user:{i}", b"p" * 40) for i in range(600)])
        assert batch == [1] * 600
    with tlsm.open(tmp_path, memtable_bytes=8192) as db:
        assert [seq for seq, _ in db.scan("big")] == [1, 2, 3, 4, 5, 6]
        assert db.get("big", 4) == bytes([3]) * 20_000
        assert db.last_seq("user:599") == 1
