"""Named tables, per-table and per-entry TTL, and space reclaimed by compaction."""

import os
import time

import pytest

import tlsm
from clock import ManualClock
from tlsm.errors import InvalidArgumentError


def _disk_bytes(path):
    total = 0
    for name in os.listdir(path):
        if not name.endswith(".sst"):
            continue
        # A replaced table's file is deleted once its last reader lets go,
        # which may happen in a background thread between the two calls.
        try:
            total += os.path.getsize(os.path.join(path, name))
        except FileNotFoundError:
            pass
    return total


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def db(tmp_path, clock):
    with tlsm.open(tmp_path / "db", clock=clock, memtable_bytes=32 * 1024) as handle:
        yield handle


def test_tables_are_separate_key_spaces(db):
    store = db.table("store")
    sync = db.table("sync", ttl=7 * 86400)
    assert store.append("room", b"s1") == 1
    assert sync.append("room", b"y1") == 1
    assert db.append("room", b"d1") == 1
    assert store.get("room", 1) == b"s1"
    assert sync.get("room", 1) == b"y1"
    assert db.get("room", 1) == b"d1"
    assert db.tables() == ["default", "store", "sync"]


def test_table_ttl_persists_across_reopen(tmp_path, clock):
    path = tmp_path / "db"
    with tlsm.open(path, clock=clock) as db:
        db.table("sync", ttl=60)
    with tlsm.open(path, clock=clock) as db:
        sync = db.table("sync")
        assert sync.ttl == 60
        sync.append("u", b"x")
        clock.advance(61)
        assert sync.get("u", 1) is None


def test_invalid_table_name_and_ttl(db):
    with pytest.raises(InvalidArgumentError, match="table name"):
        db.table("no spaces")
    with pytest.raises(InvalidArgumentError, match="ttl"):
        db.table("t", ttl=-1)
    with pytest.raises(InvalidArgumentError, match="not found"):
        db.batch().append("t", b"x", table="missing")


def test_batch_spans_tables_atomically(db):
    store = db.table("store")
    sync = db.table("sync")
    with db.batch() as batch:
        batch.append("conv", b"m", table=store)
        batch.append("alice", b"ref", table="sync")
        batch.append("bob", b"ref", table=sync)
    assert batch.results == [1, 1, 1]
    assert sync.last_seq("bob") == 1
    failed = db.batch()
    failed.append("conv", b"m2", table=store)
    with pytest.raises(InvalidArgumentError):
        failed.append("bob", 12, table=sync)
    assert store.last_seq("conv") == 1


def test_batch_dropped_on_exception(db):
    with pytest.raises(RuntimeError):
        with db.batch() as batch:
            batch.append("t", b"x")
            raise RuntimeError("abort")
    assert db.last_seq("t") == 0


def test_expired_entry_hidden_on_every_read_path(db, clock):
    for i in range(5):
        db.append("t", b"keep%d" % i)
    db.append("t", b"short", ttl=1)
    db.append("t", b"after")
    assert db.get("t", 6) == b"short"
    clock.advance(1.001)
    assert db.get("t", 6) is None
    assert [s for s, _ in db.scan("t")] == [1, 2, 3, 4, 5, 7]
    assert [s for s, _ in db.scan("t", reverse=True)] == [7, 5, 4, 3, 2, 1]
    assert db.last_seq("t") == 7
    db.flush()
    assert db.get("t", 6) is None
    assert [s for s, _ in db.scan("t", start=6, end=7)] == []


def test_expiry_bytes_reclaimed_by_compaction(db, clock):
    for i in range(500):
        db.append("t%d" % (i % 5), os.urandom(200), ttl=1)
    db.append("keep", b"forever")
    db.flush()
    before = _disk_bytes(db.path)
    assert before > 100_000
    clock.advance(2)
    db.compact()
    # The replaced file is deleted with the last reference to its table,
    # which the background compaction thread may hold for a moment.
    deadline = time.monotonic() + 10
    while _disk_bytes(db.path) >= 5_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _disk_bytes(db.path) < 5_000
    assert db.stats()["dropped_expired"] == 500
    assert db.get("keep", 1) == b"forever"
    for i in range(5):
        assert db.last_seq("t%d" % i) == 100
        assert db.append("t%d" % i, b"new") == 101


def test_compaction_keeps_ttl_clock(db, clock):
    db.append("t", b"x", ttl=10)
    db.flush()
    clock.advance(6)
    db.compact()
    assert db.get("t", 1) == b"x"
    clock.advance(5)
    assert db.get("t", 1) is None


def test_expired_data_compacts_without_writes(tmp_path, clock):
    path = tmp_path / "db"
    with tlsm.open(path, clock=clock, expiry_check_seconds=0.05) as db:
        for i in range(300):
            db.append("t", os.urandom(100), ttl=5)
        db.flush()
        clock.advance(6)
        deadline = time.monotonic() + 10
        while db.stats()["dropped_expired"] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stats()["dropped_expired"] == 300


def test_one_second_ttl_in_real_time(tmp_path):
    with tlsm.open(tmp_path / "db") as db:
        db.append("t", b"x" * 1000, ttl=1)
        db.flush()
        assert db.get("t", 1) == b"x" * 1000
        time.sleep(1.1)
        assert db.get("t", 1) is None
        assert list(db.scan("t")) == []
        assert list(db.scan("t", reverse=True)) == []
        assert db.last_seq("t") == 1
        db.compact()
        assert _disk_bytes(db.path) < 1000
