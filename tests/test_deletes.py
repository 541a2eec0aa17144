"""Deletes, trims and timeline deletion as range tombstones; snapshots."""

import pytest

import tlsm


@pytest.fixture
def db(tmp_path):
    with tlsm.open(tmp_path / "db", memtable_bytes=16 * 1024, level_fanout=3) as handle:
        yield handle


def _fill(db, timeline, count, size=40):
    for i in range(count):
        db.append(timeline, b"%d:" % i + b"v" * size)


def test_delete_half_of_range_then_compact(db):
    _fill(db, "t", 200)
    deleted = set(range(2, 201, 2))
    for seq in sorted(deleted):
        db.delete("t", seq)
    expected = [s for s in range(1, 201) if s not in deleted]
    assert [s for s, _ in db.scan("t")] == expected
    db.compact()
    assert [s for s, _ in db.scan("t")] == expected
    assert [s for s, _ in db.scan("t", reverse=True)] == expected[::-1]
    for seq in deleted:
        assert db.get("t", seq) is None
    assert db.stats()["dropped_deleted"] == len(deleted)


def test_deleted_entries_stay_gone_after_reopen(tmp_path):
    path = tmp_path / "db"
    with tlsm.open(path, memtable_bytes=8192) as db:
        _fill(db, "t", 100)
        db.trim("t", 51)
        db.delete("t", 75)
    with tlsm.open(path) as db:
        assert [s for s, _ in db.scan("t")] == [s for s in range(51, 101) if s != 75]
        db.compact()
    with tlsm.open(path) as db:
        assert [s for s, _ in db.scan("t")] == [s for s in range(51, 101) if s != 75]
        assert db.append("t", b"next") == 101


def test_trim_is_one_record_and_seqs_continue(db):
    _fill(db, "t", 1000, size=8)
    wal_before = db.stats()["wal_bytes"]
    db.trim("t", 990)
    assert db.stats()["wal_bytes"] - wal_before < 64
    assert [s for s, _ in db.scan("t")] == list(range(990, 1001))
    assert db.append("t", b"new") == 1001


def test_trim_beyond_last_seq_spares_future_appends(db):
    _fill(db, "t", 5)
    db.trim("t", 1000)
    assert list(db.scan("t")) == []
    assert db.append("t", b"six") == 6
    assert db.get("t", 6) == b"six"


def test_delete_timeline_keeps_last_seq(db):
    _fill(db, "t", 30)
    db.delete_timeline("t")
    assert list(db.scan("t")) == []
    assert db.last_seq("t") == 30
    db.compact()
    assert db.last_seq("t") == 30
    assert db.append("t", b"again") == 31
    assert [s for s, _ in db.scan("t")] == [31]


def test_batch_mixes_deletes_and_appends(db):
    _fill(db, "t", 10)
    with db.batch() as batch:
        batch.trim("t", 6)
        batch.append("t", b"eleven")
        batch.delete("t", 8)
    assert batch.results == [None, 11, None]
    assert [s for s, _ in db.scan("t")] == [6, 7, 9, 10, 11]


def test_snapshot_sees_state_when_taken(db):
    _fill(db, "t", 20)
    with db.snapshot() as snapshot:
        db.append("t", b"later")
        db.append("other", b"later")
        db.delete("t", 3)
        db.flush()
        db.compact()
        assert snapshot.last_seq("t") == 20
        assert snapshot.last_seq("other") == 0
        assert snapshot.get("t", 3) is not None
        assert snapshot.get("t", 21) is None
        assert [s for s, _ in snapshot.scan("t")] == list(range(1, 21))
        assert [s for s, _ in snapshot.scan("t", reverse=True, limit=2)] == [20, 19]
    assert db.get("t", 3) is None
    assert db.last_seq("t") == 21


def test_snapshot_covers_all_tables(db):
    sync = db.table("sync")
    db.append("t", b"a")
    sync.append("u", b"b")
    snapshot = db.snapshot()
    with db.batch() as batch:
        batch.append("t", b"c")
        batch.append("u", b"d", table=sync)
    assert snapshot.last_seq("t") == 1
    assert snapshot.last_seq("u", table="sync") == 1
    assert sync.last_seq("u") == 2
    snapshot.release()
    with pytest.raises(tlsm.InvalidArgumentError, match="released"):
        snapshot.get("t", 1)
