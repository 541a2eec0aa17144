"""Recovery: reopen after flush, torn and zero-filled log tails, kill -9."""

import logging
import os
import subprocess
import sys

import pytest
from crash_writer import kill_after

import tlsm
from tlsm.errors import CorruptionError

WRITER = os.path.join(os.path.dirname(__file__), "crash_writer.py")


def _logs(path):
    return sorted(name for name in os.listdir(path) if name.endswith(".log"))


def _crash_after(path, count, sync="none", memtable_bytes=1 << 20):
    """Run the writer child until it exits without closing; return its ack lines."""
    result = subprocess.run(
        [sys.executable, WRITER, str(path), sync, str(memtable_bytes), str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.splitlines()


def _acknowledged(lines):
    """Map (timeline, seq) -> payload for every acknowledged line."""
    acked = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or not parts[-1].isdigit():
            continue
        count = int(parts[-1])
        if parts[0] == "A" and len(parts) == 4:
            acked[(parts[1], int(parts[2]))] = b"p%d" % count
        elif parts[0] == "B" and len(parts) == 8:
            acked[(parts[1], int(parts[2]))] = b"b%d" % count
            acked[(parts[3], int(parts[4]))] = b"f%d" % count
            acked[(parts[5], int(parts[6]))] = b"c%d" % count
    return acked


def test_reopen_after_flush_and_write(tmp_path):
    path = tmp_path / "db"
    with tlsm.open(path) as db:
        for i in range(50):
            db.append("t", b"%d" % i)
        db.flush()
        assert db.stats()["flushes"] == 1
    with tlsm.open(path) as db:
        assert db.last_seq("t") == 50
        assert db.append("t", b"new") == 51
        assert db.get("t", 1) == b"0"
    with tlsm.open(path) as db:
        assert db.get("t", 51) == b"new"


def test_unclosed_log_is_replayed(tmp_path):
    lines = _crash_after(tmp_path, 200)
    acked = _acknowledged(lines)
    with tlsm.open(tmp_path) as db:
        assert db.stats()["recovered_entries"] == len(acked)
        for (timeline, seq), payload in acked.items():
            assert db.get(timeline, seq) == payload


@pytest.mark.parametrize("cut", [1, 5, 12])
def test_torn_log_tail_is_cut_and_logged(tmp_path, caplog, cut):
    lines = _crash_after(tmp_path, 40)
    acked = _acknowledged(lines)
    (log_name,) = _logs(tmp_path)
    log_path = tmp_path / log_name
    size = log_path.stat().st_size
    os.truncate(log_path, size - cut)
    caplog.set_level(logging.WARNING)
    with tlsm.open(tmp_path) as db:
        survivors = sum(db.get(t, s) == p for (t, s), p in acked.items())
        last_count = int(lines[-1].split()[-1])
        last_timeline = lines[-1].split()[1]
        last_seq = int(lines[-1].split()[2])
        # The last append (one record) is the only one torn.
        assert db.get(last_timeline, last_seq) is None
        assert survivors == len(acked) - (3 if last_count % 5 == 4 else 1)
        assert db.append(last_timeline, b"again") == last_seq
    assert any("dropped" in r.message and log_name in r.message for r in caplog.records)


def test_zero_filled_tail_is_dropped(tmp_path, caplog):
    acked = _acknowledged(_crash_after(tmp_path, 30))
    (log_name,) = _logs(tmp_path)
    with open(tmp_path / log_name, "ab") as f:
        f.write(b"\0" * 4096)
    caplog.set_level(logging.WARNING)
    with tlsm.open(tmp_path) as db:
        for (timeline, seq), payload in acked.items():
            assert db.get(timeline, seq) == payload
        assert db.stats()["recovery_dropped_bytes"] == 4096
    assert any("zero-filled" in r.message for r in caplog.records)


def _damage_record(log_path, index):
    """Flip the last byte of record number index; return that record's offset."""
    data = bytearray(log_path.read_bytes())
    pos = 0
    for _ in range(index):
        pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
    end = pos + 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
    data[end - 1] ^= 0xFF
    log_path.write_bytes(bytes(data))
    return pos


def test_mid_log_damage_refuses_open(tmp_path):
    acked = _acknowledged(_crash_after(tmp_path, 30))
    (log_name,) = _logs(tmp_path)
    offset = _damage_record(tmp_path / log_name, 10)
    with pytest.raises(CorruptionError, match="followed by intact records") as info:
        tlsm.open(tmp_path)
    assert info.value.offset == offset
    # Nothing was dropped or deleted: point-in-time recovery still finds the prefix.
    with tlsm.open(tmp_path, wal_recovery="point_in_time") as db:
        kept = [key for key, payload in acked.items() if db.get(*key) == payload]
        assert 0 < len(kept) < len(acked)
        assert db.stats()["recovery_dropped_bytes"] > 0


def _record_offset(log_path, index):
    data = log_path.read_bytes()
    pos = 0
    for _ in range(index):
        pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
    return pos


@pytest.mark.parametrize(
    ("damage", "at", "replacement"),
    [
        ("length field bit", 4, None),
        ("length field high byte", 7, None),
        ("header zeroed", 0, b"\0" * 8),
        ("64 bytes zeroed", 3, b"\0" * 64),
    ],
    ids=["length-bit", "length-high-byte", "header-zeroed", "64-bytes-zeroed"],
)
def test_mid_log_damage_that_hides_the_next_record(tmp_path, damage, at, replacement):
    # A damaged length or a zeroed header leaves no pointer to the next
    # record; the intact records after it must still make the open fail.
    acked = _acknowledged(_crash_after(tmp_path, 30))
    (log_name,) = _logs(tmp_path)
    log_path = tmp_path / log_name
    offset = _record_offset(log_path, 10)
    data = bytearray(log_path.read_bytes())
    if replacement is None:
        data[offset + at] ^= 0x01 if at == 4 else 0x40
    else:
        data[offset + at : offset + at + len(replacement)] = replacement
    log_path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="followed by intact records"):
        tlsm.open(tmp_path)
    with tlsm.open(tmp_path, wal_recovery="point_in_time") as db:
        kept = [key for key, payload in acked.items() if db.get(*key) == payload]
        assert 0 < len(kept) < len(acked)
        dropped = db.stats()["recovery_dropped_bytes"]
        # Only written records count as dropped, not the preallocated zeros.
        assert 0 < dropped < len(data) - offset + 1
        assert dropped <= len(bytes(data).rstrip(b"\0")) - offset


def test_damaged_last_record_is_a_torn_tail(tmp_path):
    lines = _crash_after(tmp_path, 30)
    acked = _acknowledged(lines)
    (log_name,) = _logs(tmp_path)
    _damage_record(tmp_path / log_name, 29)
    with tlsm.open(tmp_path) as db:
        kept = [key for key, payload in acked.items() if db.get(*key) == payload]
        assert len(kept) == len(acked) - (3 if "B" in lines[-1].split()[0] else 1)


def test_missing_manifest_refuses_open(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=8192) as db:
        for i in range(500):
            db.append("t", b"x" * 40)
    os.remove(tmp_path / "MANIFEST")
    tables = sorted(n for n in os.listdir(tmp_path) if n.endswith(".sst"))
    with pytest.raises(CorruptionError, match="MANIFEST is missing but .* table files"):
        tlsm.open(tmp_path)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".sst")) == tables


def test_missing_unflushed_log_is_warned(tmp_path, caplog):
    _crash_after(tmp_path, 30)
    (log_name,) = _logs(tmp_path)
    os.remove(tmp_path / log_name)
    caplog.set_level(logging.WARNING)
    with tlsm.open(tmp_path):
        pass
    assert any(
        "is missing" in r.message and log_name in r.message for r in caplog.records
    )


@pytest.mark.parametrize("sync", ["none", "always"])
def test_kill_9_during_writes_keeps_acknowledged(tmp_path, sync):
    lines = kill_after(tmp_path, sync, 65536, 3000)
    acked = _acknowledged(lines)
    assert len(acked) >= 3000
    highest = {}
    for timeline, seq in acked:
        highest[timeline] = max(highest.get(timeline, 0), seq)
    with tlsm.open(tmp_path) as db:
        missing = [key for key, payload in acked.items() if db.get(*key) != payload]
        assert missing == []
        for timeline, seq in highest.items():
            assert db.last_seq(timeline) >= seq
            assert db.append(timeline, b"after") > seq
        for timeline in highest:
            seqs = [seq for seq, _ in db.scan(timeline)]
            assert seqs == sorted(set(seqs))


def test_damaged_manifest_fails_open_with_path(tmp_path):
    with tlsm.open(tmp_path) as db:
        db.append("t", b"x")
    manifest = tmp_path / "MANIFEST"
    data = bytearray(manifest.read_bytes())
    data[-2] ^= 0x01
    manifest.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="MANIFEST"):
        tlsm.open(tmp_path)


def test_corrupt_table_block_is_reported(tmp_path):
    with tlsm.open(tmp_path, compression=False) as db:
        for i in range(200):
            db.append("t", b"v" * 50)
    (table,) = [n for n in os.listdir(tmp_path) if n.endswith(".sst")]
    path = tmp_path / table
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with tlsm.open(tmp_path) as db:
        with pytest.raises(
            CorruptionError, match="checksum mismatch at offset 0"
        ) as info:
            list(db.scan("t"))
        assert info.value.path == str(path)
