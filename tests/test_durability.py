"""What each sync mode keeps after a simulated power loss, and write failures."""

import time

import pytest

import tlsm
from faultfs import FaultFileSystem
from tlsm.errors import StorageIOError


def _write(db, count, start=0):
    return {
        (f"t{i % 7}", db.append(f"t{i % 7}", b"v%d" % i)): b"v%d" % i
        for i in range(start, start + count)
    }


def _reopen_after_power_loss(path, fs):
    fs.power_loss()
    return tlsm.open(path, fs=FaultFileSystem())


def test_always_mode_survives_power_loss(tmp_path):
    fs = FaultFileSystem()
    db = tlsm.open(tmp_path, sync="always", memtable_bytes=8192, fs=fs)
    acked = _write(db, 400)
    assert db.stats()["flushes"] >= 1
    with _reopen_after_power_loss(tmp_path, fs) as recovered:
        for (timeline, seq), payload in acked.items():
            assert recovered.get(timeline, seq) == payload


def test_none_mode_loses_only_a_suffix(tmp_path):
    fs = FaultFileSystem()
    db = tlsm.open(tmp_path, sync="none", fs=fs)
    acked = _write(db, 300)
    with _reopen_after_power_loss(tmp_path, fs) as recovered:
        present = [recovered.get(t, s) == p for (t, s), p in acked.items()]
        # Nothing was synced, so writes may be lost, but never with a hole:
        # what survives is a prefix of the acknowledged order.
        assert present == sorted(present, reverse=True)


def test_explicit_sync_makes_group_durable(tmp_path):
    fs = FaultFileSystem()
    db = tlsm.open(tmp_path, sync="always", fs=fs)
    acked = {}
    for i in range(50):
        seq = db.append("g", b"%d" % i, sync=False)
        acked[("g", seq)] = b"%d" % i
    db.sync()
    unsynced_seq = db.append("g", b"late", sync=False)
    with _reopen_after_power_loss(tmp_path, fs) as recovered:
        for (timeline, seq), payload in acked.items():
            assert recovered.get(timeline, seq) == payload
        assert recovered.get("g", unsynced_seq) is None


def test_periodic_mode_syncs_within_interval(tmp_path):
    fs = FaultFileSystem()
    db = tlsm.open(tmp_path, sync="periodic", sync_interval_ms=20, fs=fs)
    acked = _write(db, 200)
    deadline = time.monotonic() + 10
    while db._log.synced_size < db._log.size and time.monotonic() < deadline:
        time.sleep(0.01)
    with _reopen_after_power_loss(tmp_path, fs) as recovered:
        for (timeline, seq), payload in acked.items():
            assert recovered.get(timeline, seq) == payload


def test_failed_log_write_loses_no_acked_data(tmp_path):
    fs = FaultFileSystem()
    db = tlsm.open(tmp_path, sync="always", fs=fs)
    acked = _write(db, 20)
    fs.fail_writes_after = 0
    with pytest.raises(StorageIOError, match="no space left"):
        db.append("t0", b"lost")
    fs.fail_writes_after = None
    # The failed write consumed no seq and left no torn record behind.
    seq = db.append("t0", b"after")
    acked[("t0", seq)] = b"after"
    assert seq == max(s for t, s in acked if t == "t0")
    with _reopen_after_power_loss(tmp_path, fs) as recovered:
        for (timeline, seq), payload in acked.items():
            assert recovered.get(timeline, seq) == payload
        assert recovered.stats()["recovery_dropped_bytes"] == 0
