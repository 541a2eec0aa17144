"""Table files: footer and block frame checks, the bloom filter and lazy loading."""

import os
import random
import zlib

import pytest

import tlsm
from tlsm.bloom import BloomFilter, build
from tlsm.errors import CorruptionError
from tlsm.fs import OsFileSystem
from tlsm.sstable import (
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    FOOTER_SIZE,
    BlockCache,
    SSTable,
)
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


def _first_block_frame(tmp_path, compression):
    """Write one timeline, then return (path, offset, size) of its first block."""
    with tlsm.open(tmp_path, compression=compression, block_bytes=512) as db:
        for _ in range(200):
            db.append("t", b"v" * 50)
    (table,) = [n for n in os.listdir(tmp_path) if n.endswith(".sst")]
    path = tmp_path / table
    reader = _open_table(path)
    reader.load()
    offset, size = reader._block_offsets[0], reader._block_sizes[0]
    reader.close()
    return path, offset, size


def _rewrite_frame(path, offset, size, body, compression):
    # A frame with a valid checksum, so that only its content is wrong.
    trailer = bytes([compression])
    crc = zlib.crc32(body + trailer)
    frame = body + trailer + crc.to_bytes(4, "little")
    assert len(frame) == size
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = frame
    path.write_bytes(bytes(data))


# Each read reaches the first block: a limit of at most 4096 collects at
# once (in the scan extension when built), a scan without one yields lazily.
READS = {
    "eager scan": lambda db: list(db.scan("t", limit=10)),
    "eager reverse scan": lambda db: list(db.scan("t", limit=200, reverse=True)),
    "lazy scan": lambda db: list(db.scan("t")),
    "get": lambda db: db.get("t", 1),
}


@pytest.mark.parametrize("read", sorted(READS))
@pytest.mark.parametrize("damage", ["body", "compression byte", "checksum"])
def test_damaged_block_frame_fails_every_read(tmp_path, read, damage):
    path, offset, size = _first_block_frame(tmp_path, compression=False)
    position = {
        "body": offset + 10,
        "compression byte": offset + size - 5,
        "checksum": offset + size - 1,
    }[damage]
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with (
        tlsm.open(tmp_path) as db,
        pytest.raises(
            CorruptionError, match=f"checksum mismatch at offset {offset}"
        ) as caught,
    ):
        READS[read](db)
    # The file and offset are named once, not wrapped in a second message.
    assert str(caught.value) == (
        f"sstable {path}: block checksum mismatch at offset {offset}"
    )


@pytest.mark.parametrize("read", sorted(READS))
@pytest.mark.parametrize("size_header", [1 << 30, (1 << 32) - 1])
def test_undecompressible_block_fails_every_read(tmp_path, read, size_header):
    path, offset, size = _first_block_frame(tmp_path, compression=True)
    # An LZ4 block that claims more output than its input can make, or a
    # negative size (lz4 raises ValueError for it, not LZ4BlockError).
    junk = size_header.to_bytes(4, "little") + b"\xff" * (size - 9)
    _rewrite_frame(path, offset, size, junk, COMPRESSION_LZ4)
    with (
        tlsm.open(tmp_path) as db,
        pytest.raises(CorruptionError, match="LZ4 decompression failed"),
    ):
        READS[read](db)


@pytest.mark.parametrize("read", sorted(READS))
def test_unknown_compression_code_fails_every_read(tmp_path, read):
    path, offset, size = _first_block_frame(tmp_path, compression=False)
    body = path.read_bytes()[offset : offset + size - 5]
    _rewrite_frame(path, offset, size, body, 7)
    with (
        tlsm.open(tmp_path) as db,
        pytest.raises(CorruptionError, match="unknown compression type 7"),
    ):
        READS[read](db)


@pytest.mark.parametrize("block", ["index", "summary"])
def test_malformed_metadata_block_is_reported(tmp_path, block):
    path = tmp_path / "000001.sst"
    _write_table(path, [b"\x00a", b"\x00b"])
    table = _open_table(path)
    table.open()
    index_offset, index_size, summary_offset, summary_size = table._footer
    table.close()
    offset, size = {
        "index": (index_offset, index_size),
        "summary": (summary_offset, summary_size),
    }[block]
    # A first entry whose id length runs past the end of the block, in a
    # frame whose checksum is valid.
    body = b"\xff\xff" + bytes(size - 7)
    _rewrite_frame(path, offset, size, body, COMPRESSION_NONE)
    table = _open_table(path)
    with pytest.raises(
        CorruptionError, match=f"{block} overruns its block at offset {offset}"
    ):
        table.get(b"\x00a", 1)
