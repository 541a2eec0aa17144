"""The embedded engine's public API on real files."""

import os
import threading
import time

import pytest

import tlsm
from tlsm import compaction
from tlsm.errors import ClosedError, InvalidArgumentError, StorageIOError


@pytest.fixture
def db(tmp_path):
    with tlsm.open(tmp_path / "db", memtable_bytes=16 * 1024, level_fanout=3) as handle:
        yield handle


def test_append_assigns_consecutive_seqs(db):
    assert [db.append("room", b"m%d" % i) for i in range(5)] == [1, 2, 3, 4, 5]
    assert db.append("other", b"x") == 1
    assert db.last_seq("room") == 5
    assert db.last_seq("missing") == 0


def test_str_and_bytes_ids_are_the_same_timeline(db):
    db.append("caf\u00e9", b"a")
    assert db.append("caf\u00e9".encode(), b"b") == 2
    assert db.get(b"caf\xc3\xa9", 1) == b"a"


def test_get_returns_payload_or_none(db):
    db.append("t", b"one")
    assert db.get("t", 1) == b"one"
    assert db.get("t", 2) is None
    assert db.get("t", 0) is None
    assert db.get("nobody", 1) is None


def test_append_batch_is_ordered_per_timeline(db):
    seqs = db.append_batch([("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert seqs == [1, 1, 2]
    assert list(db.scan("a")) == [(1, b"1"), (2, b"3")]
    assert db.append_batch([]) == []


def test_scan_limit_ten_both_directions(db):
    for i in range(100):
        db.append("t", b"%d" % i)
    forward = list(db.scan("t", limit=10))
    backward = list(db.scan("t", limit=10, reverse=True))
    assert [seq for seq, _ in forward] == list(range(1, 11))
    assert [seq for seq, _ in backward] == list(range(100, 90, -1))


def test_scan_bounds_are_half_open(db):
    for i in range(20):
        db.append("t", b"%d" % i)
    assert [s for s, _ in db.scan("t", start=5, end=8)] == [5, 6, 7]
    assert [s for s, _ in db.scan("t", start=5, end=8, reverse=True)] == [7, 6, 5]
    assert list(db.scan("t", start=8, end=8)) == []
    assert list(db.scan("t", start=21)) == []


def test_scan_spans_memtable_and_tables(db):
    payload = b"x" * 200
    for i in range(600):
        db.append("t", payload + b"%d" % i)
        db.append("noise", payload)
    assert db.stats()["flushes"] > 2
    seqs = [seq for seq, _ in db.scan("t")]
    assert seqs == list(range(1, 601))
    reverse = [seq for seq, _ in db.scan("t", reverse=True)]
    assert reverse == list(range(600, 0, -1))
    assert db.get("t", 17) == payload + b"16"


def test_scan_is_a_snapshot(db):
    for i in range(5):
        db.append("t", b"%d" % i)
    iterator = db.scan("t")
    db.append("t", b"late")
    assert [seq for seq, _ in iterator] == [1, 2, 3, 4, 5]


def test_invalid_inputs_raise_clear_errors(db):
    with pytest.raises(InvalidArgumentError, match="512 bytes"):
        db.append("x" * 513, b"")
    with pytest.raises(InvalidArgumentError, match="must be str or bytes"):
        db.append(42, b"")
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        db.append("", b"")
    with pytest.raises(InvalidArgumentError, match="payload must be bytes"):
        db.append("t", "text")
    with pytest.raises(InvalidArgumentError, match="outside"):
        db.get("t", -1)
    with pytest.raises(InvalidArgumentError, match="limit"):
        list(db.scan("t", limit=-1))
    assert db.last_seq("t") == 0


def test_oversized_payload_names_the_limit(tmp_path):
    with tlsm.open(tmp_path / "db", max_payload_bytes=100) as small:
        with pytest.raises(
            InvalidArgumentError, match="101 bytes, above the limit of 100"
        ):
            small.append("t", b"x" * 101)
        assert small.append("t", b"x" * 100) == 1


def test_invalid_batch_writes_nothing(db):
    with pytest.raises(InvalidArgumentError):
        db.append_batch([("a", b"ok"), ("b", 5)])
    assert db.last_seq("a") == 0


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        tlsm.open(tmp_path / "db", memtable_size=5)
    with pytest.raises(InvalidArgumentError, match="sync="):
        tlsm.open(tmp_path / "db", sync="sometimes")


def test_use_after_close_raises(tmp_path):
    db = tlsm.open(tmp_path / "db")
    db.append("t", b"x")
    db.close()
    db.close()
    with pytest.raises(ClosedError):
        db.append("t", b"y")
    with pytest.raises(ClosedError):
        db.get("t", 1)


class _SlowMerge:
    """A compaction merge that sets started and sleeps 1 ms per timeline."""

    def __init__(self, merge, started):
        self._merge = merge
        self._started = started

    def __getattr__(self, name):
        return getattr(self._merge, name)

    def copy_timeline(self, blocks):
        self._started.set()
        time.sleep(0.001)
        return self._merge.copy_timeline(blocks)


def test_close_waits_for_compact_of_another_thread(tmp_path, monkeypatch):
    path = tmp_path / "db"
    db = tlsm.open(path, memtable_bytes=64 * 1024)
    for number in range(6000):
        db.append(f"t{number % 600:03d}", b"x" * 40)
    db.flush()
    started = threading.Event()
    real_merge_tables = compaction.merge_tables
    monkeypatch.setattr(
        compaction,
        "merge_tables",
        lambda *args: _SlowMerge(real_merge_tables(*args), started),
    )
    outcomes = []

    def compact():
        try:
            db.compact()
            outcomes.append("done")
        except ClosedError as exc:
            outcomes.append(exc)

    thread = threading.Thread(target=compact)
    thread.start()
    assert started.wait(10)
    db.close()
    files_at_close = sorted(os.listdir(path))
    thread.join(10)
    # The 600 timelines take 0.6 s or more: close() cut the merge short,
    # and nothing touched the directory after it returned.
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], ClosedError)
    assert "closed during compact()" in str(outcomes[0])
    assert sorted(os.listdir(path)) == files_at_close
    monkeypatch.undo()
    with tlsm.open(path) as reopened:
        counts = [len(list(reopened.scan(f"t{n:03d}"))) for n in range(600)]
        assert counts == [10] * 600
        assert reopened.append("t000", b"y") == 11


def test_compact_after_close_raises(tmp_path):
    db = tlsm.open(tmp_path / "db")
    db.append("t", b"x")
    db.close()
    with pytest.raises(ClosedError):
        db.compact()


def test_second_open_of_directory_is_rejected(db):
    with pytest.raises(StorageIOError, match="locked"):
        tlsm.open(db.path)


def test_concurrent_writers_get_unique_seqs(db):
    results = []

    def writer(index):
        results.extend(db.append("shared", b"w%d" % index) for _ in range(300))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 1201))
    assert [seq for seq, _ in db.scan("shared")] == list(range(1, 1201))


def test_stats_report_levels_and_amplification(db):
    for i in range(2000):
        db.append("t%d" % (i % 10), b"y" * 100)
    stats = db.stats()
    assert stats["flushes"] >= 3
    assert sum(level["files"] for level in stats["levels"]) >= 1
    assert stats["write_amplification"] > 1.0


def test_level_zero_bounded_by_stall(tmp_path):
    with tlsm.open(
        tmp_path / "db", memtable_bytes=4096, level_fanout=2, l0_stop_files=2
    ) as db:
        for i in range(3000):
            db.append("t%d" % (i % 7), b"z" * 60)
            assert len(db._manifest.levels[0]) <= 2
        assert db.stats()["flushes"] > 20
        assert [seq for seq, _ in db.scan("t3")] == list(range(1, 430))


def test_stop_below_fanout_is_rejected(tmp_path):
    with pytest.raises(
        InvalidArgumentError, match="l0_stop_files=2 must be >= level_fanout=4"
    ):
        tlsm.open(tmp_path / "db", l0_stop_files=2)


def test_sync_flag_must_be_boolean(db):
    with pytest.raises(InvalidArgumentError, match="sync must be None, True or False"):
        db.append("t", b"x", sync="none")
    assert db.last_seq("t") == 0


def test_unencodable_timeline_id_rejected(db):
    with pytest.raises(InvalidArgumentError, match="not encodable as UTF-8"):
        db.append("\ud800", b"x")


def test_malformed_batch_entries_rejected(db):
    with pytest.raises(InvalidArgumentError, match="pair"):
        db.append_batch([("a",)])
    with pytest.raises(InvalidArgumentError, match="pairs"):
        db.append_batch("ab")


def test_lazy_scan_raises_after_close(tmp_path):
    db = tlsm.open(tmp_path / "db", memtable_bytes=8192)
    for _ in range(3000):
        db.append("a", os.urandom(50))
    db.flush()
    pairs = db.scan("a")
    assert next(pairs)[0] == 1
    db.close()
    with pytest.raises(ClosedError, match="closed during the scan"):
        list(pairs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"create_if_missing": "no"}, "create_if_missing='no' must be True or False"),
        ({"compression": "zstd"}, "compression='zstd' must be True or False"),
        ({"level_fanout": 0}, "level_fanout=0 must be an int >= 2"),
        ({"memtable_bytes": 2**62}, "memtable_bytes=4611686018427387904 is above"),
        ({"max_levels": 100}, "max_levels=100 is above the limit of 20"),
        ({"max_open_files": 0}, "max_open_files=0 must be an int >= 1"),
        (
            {"max_payload_bytes": 100 << 20},
            "max_payload_bytes=104857600 is above max_batch_bytes=67108864",
        ),
    ],
)
def test_invalid_option_names_value_and_limit(tmp_path, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        tlsm.open(tmp_path / "db", **options)
    assert not (tmp_path / "db").exists()
