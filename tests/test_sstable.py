"""Table files: footer checks, the bloom filter and lazy loading."""

import os
import random

import pytest

import tlsm
from tlsm.bloom import BloomFilter, build
from tlsm.errors import CorruptionError
from tlsm.fs import OsFileSystem
from tlsm.sstable import FOOTER_SIZE, BlockCache, SSTable
from tlsm.table_writer import TableWriter


def _write_table(path, timelines, per_timeline=50):
    writer = TableWriter(OsFileSystem(), str(path), block_bytes=512)
    for timeline in sorted(timelines):
        for seq in range(1, per_timeline + 1):
            writer.add((timeline, seq, 1, 0, b"v%d" % seq))
    return writer.finish()


def _open_table(path):
    return SSTable(
        OsFileSystem(), str(path), 1, os.path.getsize(path), BlockCache(1 << 20)
    )


def test_bloom_has_no_false_negatives():
    keys = [b"\x00user%d" % i for i in range(2000)]
    bloom = BloomFilter(build(keys))
    assert all(bloom.may_contain(key) for key in keys)
    false_positives = sum(bloom.may_contain(b"\x00other%d" % i) for i in range(5000))
    assert false_positives < 5000 * 0.03


def test_absent_timeline_skips_loading(tmp_path):
    path = tmp_path / "000001.sst"
    _write_table(path, [b"\x00a", b"\x00b", b"\x00c"])
    table = _open_table(path)
    table.open()
    assert table.max_seq(b"\x00zz-absent") == 0
    assert table.get(b"\x00zz-absent", 1) is None
    assert not table.may_contain(b"\x00zz-absent", 0, 100)
    assert table._summary_index is None
    assert table.max_seq(b"\x00b") == 50
    assert table._summary_index is not None
    assert table._index is None
    assert not table._loaded
    assert table.get(b"\x00b", 7) == (b"\x00b", 7, 1, 0, b"v7")
    assert table._index is not None


def test_reopen_loads_only_footers(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=8192) as db:
        for i in range(3000):
            db.append("t%d" % (i % 50), b"x" * 40)
    with tlsm.open(tmp_path) as db:
        tables = db._version.tables
        assert len(tables) >= 2
        assert not any(table._loaded for table in tables)
        assert db.get("t3", 10) == b"x" * 40


@pytest.mark.parametrize("offset_from_end", [1, 8, 40, FOOTER_SIZE - 1])
def test_damaged_footer_is_reported(tmp_path, offset_from_end):
    path = tmp_path / "000001.sst"
    size = _write_table(path, [b"\x00a"])
    data = bytearray(path.read_bytes())
    data[size - offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="000001.sst"):
        _open_table(path).open()


def test_truncated_table_is_reported(tmp_path):
    path = tmp_path / "000001.sst"
    _write_table(path, [b"\x00a"])
    os.truncate(path, 30)
    with pytest.raises(CorruptionError, match="shorter than the footer"):
        _open_table(path).open()


def test_add_run_writes_same_file_as_add(tmp_path):
    rng = random.Random(12)
    for case in range(20):
        runs = {}
        for number in range(rng.randint(1, 6)):
            count = rng.randint(1, 60)
            seqs = sorted(rng.sample(range(1, 500), count))
            runs[b"\x00t%d" % number] = (
                seqs,
                [1] * count,
                [rng.choice([0, rng.randint(1, 10**12)]) for _ in seqs],
                [rng.randbytes(rng.randint(0, 300)) for _ in seqs],
            )
        block_bytes = rng.choice([64, 256, 4096])
        by_entry = tmp_path / f"entry{case}.sst"
        by_run = tmp_path / f"run{case}.sst"
        writer = TableWriter(OsFileSystem(), str(by_entry), block_bytes=block_bytes)
        for timeline_id in sorted(runs):
            for entry in zip(*runs[timeline_id]):
                writer.add((timeline_id, *entry))
        writer.finish()
        writer = TableWriter(OsFileSystem(), str(by_run), block_bytes=block_bytes)
        for timeline_id in sorted(runs):
            writer.add_run(timeline_id, *runs[timeline_id])
        writer.finish()
        assert by_run.read_bytes() == by_entry.read_bytes()
