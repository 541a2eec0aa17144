"""The memory-mapped log: growth, failed allocation, preallocated tails, recovery."""

import logging
import os
import subprocess
import sys

import pytest
from crash_writer import kill_after
from faultfs import FaultFileSystem

import tlsm
from tlsm import wal
from tlsm.errors import StorageIOError
from tlsm.fs import LOG_ALIGN_BYTES, OsFileSystem

WRITER = os.path.join(os.path.dirname(__file__), "crash_writer.py")


def _records(count, size):
    return [
        wal.encode_batch([(b"\x00t%d" % (i % 3), i + 1, 1, 0, bytes([i % 251]) * size)])
        for i in range(count)
    ]


def test_log_grows_across_chunk_boundaries(tmp_path):
    fs = OsFileSystem(log_chunk_bytes=4096)
    path = str(tmp_path / "000001.log")
    log_file = fs.create_log(path, 1 << 20)
    assert log_file.capacity == 4096
    records = _records(200, 700)
    capacities = set()
    for record in records:
        log_file.append(record)
        capacities.add(log_file.capacity)
    assert len(capacities) > 10
    assert all(capacity % LOG_ALIGN_BYTES == 0 for capacity in capacities)
    assert log_file.size == sum(map(len, records))
    assert os.path.getsize(path) == log_file.capacity
    log_file.close()
    assert os.path.getsize(path) == sum(map(len, records))
    result = wal.read_log(fs, path)
    assert result.dropped_bytes == 0
    assert len(result.batches) == 200
    assert result.batches[137][0][4] == bytes([137]) * 700


def test_record_larger_than_chunk_fits(tmp_path):
    fs = OsFileSystem(log_chunk_bytes=4096)
    log_file = fs.create_log(str(tmp_path / "000001.log"), 4096)
    (record,) = _records(1, 3 * 4096)
    log_file.append(record)
    assert log_file.capacity >= len(record)
    assert bytes(log_file.mapping[: len(record)]) == record
    log_file.close()


def test_failed_growth_leaves_log_unchanged(tmp_path):
    fs = FaultFileSystem(log_chunk_bytes=4096)
    log_file = fs.create_log(str(tmp_path / "000001.log"), 4096)
    (small,) = _records(1, 1000)
    log_file.append(small)
    fs.fail_allocations_after = 0
    (large,) = _records(1, 5000)
    with pytest.raises(StorageIOError, match="no space left on device"):
        log_file.append(large)
    assert log_file.size == len(small)
    assert log_file.capacity == 4096
    fs.fail_allocations_after = None
    log_file.append(large)
    assert log_file.size == len(small) + len(large)
    log_file.close()


def test_truncate_zeroes_undone_bytes(tmp_path):
    fs = OsFileSystem(log_chunk_bytes=4096)
    path = str(tmp_path / "000001.log")
    log_file = fs.create_log(path, 4096)
    first, second = _records(2, 100)
    log_file.append(first)
    log_file.append(second)
    log_file.truncate(len(first))
    # The undone record must not stay in the page cache, where recovery
    # after a process crash would find it.
    with open(path, "rb") as f:
        data = f.read()
    assert data[: len(first)] == first
    assert not any(data[len(first) :])
    log_file.close()


def test_preallocated_tail_is_info_not_warning(tmp_path, caplog):
    fs = OsFileSystem(log_chunk_bytes=8192)
    path = str(tmp_path / "000001.log")
    log_file = fs.create_log(path, 8192)
    for record in _records(5, 50):
        log_file.append(record)
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 8192
    caplog.set_level(logging.INFO)
    result = wal.read_log(fs, path)
    assert len(result.batches) == 5
    assert result.dropped_bytes == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("preallocated" in r.message for r in caplog.records)
    log_file.close()


def test_unaligned_zero_tail_is_damage(tmp_path, caplog):
    path = str(tmp_path / "000001.log")
    records = _records(3, 50)
    with open(path, "wb") as f:
        f.write(b"".join(records) + bytes(100))
    caplog.set_level(logging.INFO)
    result = wal.read_log(OsFileSystem(), path)
    assert len(result.batches) == 3
    assert result.dropped_bytes == 100
    assert any(
        r.levelno == logging.WARNING and "zero-filled" in r.message
        for r in caplog.records
    )


def test_db_append_survives_failed_growth(tmp_path):
    fs = FaultFileSystem(log_chunk_bytes=4096)
    db = tlsm.open(tmp_path, fs=fs)
    acked = {}
    for i in range(5):
        acked[("g", db.append("g", b"warm%d" % i))] = b"warm%d" % i
    fs.fail_allocations_after = 0
    with pytest.raises(StorageIOError, match="no space left on device"):
        for i in range(1000):
            payload = b"x%d" % i * 20
            acked[("g", db.append("g", payload))] = payload
    assert db._fast.wal_bytes > 0
    fs.fail_allocations_after = None
    # The failed append consumed no seq.
    seq = db.append("g", b"after")
    assert seq == max(s for _, s in acked) + 1
    acked[("g", seq)] = b"after"
    db.close()
    with tlsm.open(tmp_path) as recovered:
        for (timeline, seq), payload in acked.items():
            assert recovered.get(timeline, seq) == payload
        assert recovered.stats()["recovery_dropped_bytes"] == 0


def _acknowledged_appends(lines):
    acked = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "A":
            acked[(parts[1], int(parts[2]))] = b"p%s" % parts[3].encode()
    return acked


def _fast_path_bytes(lines):
    return [int(line.split()[1]) for line in lines if line.startswith("F ")]


def test_preallocated_log_recovers_after_kill_9(tmp_path):
    lines = kill_after(tmp_path, "none", 1048576, 2000)
    assert _fast_path_bytes(lines)[-1] > 0
    (log_name,) = [n for n in os.listdir(tmp_path) if n.endswith(".log")]
    assert os.path.getsize(tmp_path / log_name) % LOG_ALIGN_BYTES == 0
    acked = _acknowledged_appends(lines)
    with tlsm.open(tmp_path) as db:
        missing = [key for key, payload in acked.items() if db.get(*key) != payload]
        assert missing == []


def test_preallocated_log_recovers_after_crash(tmp_path, caplog):
    result = subprocess.run(
        [sys.executable, WRITER, str(tmp_path), "none", "1048576", "400", "keep-tail"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    acked = _acknowledged_appends(lines)
    assert _fast_path_bytes(lines)[-1] > 0
    (log_name,) = [n for n in os.listdir(tmp_path) if n.endswith(".log")]
    size = os.path.getsize(tmp_path / log_name)
    assert size % LOG_ALIGN_BYTES == 0
    caplog.set_level(logging.INFO)
    with tlsm.open(tmp_path) as db:
        for (timeline, seq), payload in acked.items():
            assert db.get(timeline, seq) == payload
        assert db.stats()["recovery_dropped_bytes"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
