"""Table writer: the bytes it writes and where data blocks split."""

import hashlib
import os
import random

import pytest
from twins import implementations, outcome

import tlsm.table_writer
from tlsm import block
from tlsm.errors import InvalidArgumentError
from tlsm.fs import OsFileSystem
from tlsm.sstable import BlockCache, SSTable
from tlsm.table_writer import ENTRY_OVERHEAD, TableWriter

DATA_BLOCKS = implementations(tlsm.table_writer, "table_writer", "DataBlocks")

# SHA-256 of the file that seeded_runs(7) gives with block_bytes=512 and no
# compression, as written when blocks were still encoded from one tuple per
# entry. The layout is frozen, so the digest must never change.
FROZEN_DIGEST = "f27e4d733d9599371c4c2872fb77cca9141cce7dc0611a42712f5a65469453ea"


def seeded_runs(seed):
    """Return [(timeline_id, seqs, kinds, expires, values)] in key order."""
    rng = random.Random(seed)
    runs = []
    for number in range(rng.randint(20, 40)):
        count = rng.choice([1, 2, 3, 10, 80])
        seqs = sorted(rng.sample(range(1, 10_000), count))
        runs.append(
            (
                b"\x00timeline-%03d" % number,
                seqs,
                [rng.choice([1, 1, 3]) for _ in seqs],
                [rng.choice([0, rng.randint(1, 2**45)]) for _ in seqs],
                [
                    rng.choice([b"a" * rng.randint(0, 700), rng.randbytes(40), b""])
                    for _ in seqs
                ],
            )
        )
    return runs


def write_runs(path, runs, block_bytes, compression, per_entry):
    writer = TableWriter(OsFileSystem(), str(path), block_bytes, compression)
    for timeline_id, *columns in runs:
        if per_entry:
            for entry in zip(*columns):
                writer.add((timeline_id, *entry))
        else:
            writer.add_run(timeline_id, *columns)
    return writer.finish(sync=False)


def expected_block_sizes(runs, block_bytes):
    """Return the entry count of each data block under the split rule."""
    sizes = []
    count = pending = 0
    for timeline_id, _, _, _, values in runs:
        for value in values:
            count += 1
            pending += len(timeline_id) + len(value) + ENTRY_OVERHEAD
            if pending >= block_bytes:
                sizes.append(count)
                count = pending = 0
    if count:
        sizes.append(count)
    return sizes


@pytest.mark.parametrize("per_entry", [False, True])
def test_file_bytes_frozen(tmp_path, per_entry):
    path = tmp_path / "000001.sst"
    write_runs(path, seeded_runs(7), 512, False, per_entry)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FROZEN_DIGEST


@pytest.mark.parametrize("block_bytes", [1, 64, 512, 4096])
def test_blocks_split_and_encode_as_tuples(tmp_path, block_bytes):
    runs = seeded_runs(block_bytes)
    path = tmp_path / "000001.sst"
    size = write_runs(path, runs, block_bytes, True, False)
    table = SSTable(OsFileSystem(), str(path), 1, size, BlockCache(1 << 20))
    block_entries = [table.read_block(index) for index in range(len(table.index_keys))]
    assert [len(entries) for entries in block_entries] == expected_block_sizes(
        runs, block_bytes
    )
    for index, entries in enumerate(block_entries):
        assert bytes(table.read_body(index)) == block.PurePython.encode_block(
            entries
        ), index
    written = [entry for entries in block_entries for entry in entries]
    expected = [
        (timeline_id, *entry)
        for timeline_id, *columns in runs
        for entry in zip(*columns)
    ]
    assert written == expected


def test_runs_split_across_calls(tmp_path):
    runs = seeded_runs(11)
    whole = tmp_path / "whole.sst"
    split = tmp_path / "split.sst"
    write_runs(whole, runs, 256, True, False)
    rng = random.Random(11)
    writer = TableWriter(OsFileSystem(), str(split), 256, True)
    for timeline_id, *columns in runs:
        position = 0
        while position < len(columns[0]):
            stop = position + rng.randint(1, 5)
            if rng.random() < 0.3:
                for entry in zip(*(column[position:stop] for column in columns)):
                    writer.add((timeline_id, *entry))
            else:
                writer.add_run(
                    timeline_id, *(column[position:stop] for column in columns)
                )
            position = stop
    writer.finish(sync=False)
    assert split.read_bytes() == whole.read_bytes()


def test_add_rejects_wrong_field_count(tmp_path):
    writer = TableWriter(OsFileSystem(), str(tmp_path / "000001.sst"))
    with pytest.raises(InvalidArgumentError, match="entry has 4 fields, expected 5"):
        writer.add((b"\x00a", 1, 1, 0))
    writer.abandon()


def test_invalid_entry_raises_codec_error(tmp_path):
    path = tmp_path / "000001.sst"
    writer = TableWriter(OsFileSystem(), str(path), block_bytes=4096)
    writer.add_run(b"\x00a", [1, 2], [1, 1], [0, 0], [b"x", b"y"])
    writer.add_run(b"\x00b", [5, 4], [1, 1], [0, 0], [b"x" * 40, b"y" * 40])
    with pytest.raises(InvalidArgumentError, match=r"^entry 3: key \(b'\\x00b', 4\)"):
        writer.finish(sync=False)
    writer.abandon()
    os.remove(path)


@pytest.mark.parametrize("data_blocks", DATA_BLOCKS, ids=lambda c: c.__module__)
@pytest.mark.parametrize("compression", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 300, 4096])
def test_twins_write_the_same_file(
    tmp_path, monkeypatch, data_blocks, compression, block_bytes
):
    runs = seeded_runs(block_bytes + compression)
    reference = tmp_path / "reference.sst"
    write_runs(reference, runs, block_bytes, compression, False)
    monkeypatch.setattr(tlsm.table_writer, "DataBlocks", data_blocks)
    twin = tmp_path / "twin.sst"
    write_runs(twin, runs, block_bytes, compression, False)
    assert twin.read_bytes() == reference.read_bytes()
    # Compressible values must have taken the LZ4 branch somewhere.
    assert (
        not compression
        or block_bytes == 1
        or len(twin.read_bytes())
        < sum(len(value) for *_, values in runs for value in values)
    )


@pytest.mark.parametrize(
    "bad_run",
    [
        (b"\x00b", [5, 4], [1, 1], [0, 0], [b"x", b"y"]),
        (b"\x00b", [5, 6], [1, 1], [0, 0], [b"x", "text"]),
        (b"\x00b", [5, 6], [1, 1], [0, -1], [b"x", b"y"]),
        (b"\x00b", [5, 6], [1, 300], [0, 0], [b"x", b"y"]),
        (b"", [5], [1], [0], [b"x"]),
        (b"\x00b", (5, 6), (1, 1), (0, 0), (b"x", b"y")),
        # A 4096-byte value ends the block, so the next key, out of order,
        # opens a block of its own.
        (b"\x00b", [5, 4], [1, 1], [0, 0], [b"x" * 4096, b"y"]),
        (b"\x00b", [7, 7], [1, 1], [0, 0], [b"x" * 4096, b"y"]),
        (b"\x00a", [3, 2], [1, 1], [0, 0], [b"x" * 4096, b"y"]),
    ],
)
def test_twins_reject_invalid_runs_alike(tmp_path, monkeypatch, bad_run):
    def write(path):
        writer = TableWriter(OsFileSystem(), str(path), block_bytes=4096)
        try:
            writer.add_run(b"\x00a", [1, 2], [1, 1], [0, 0], [b"x", b"y"])
            writer.add_run(*bad_run)
            writer.finish(sync=False)
        finally:
            writer.abandon()
        return path.read_bytes()

    results = []
    for index, data_blocks in enumerate(DATA_BLOCKS):
        monkeypatch.setattr(tlsm.table_writer, "DataBlocks", data_blocks)
        results.append(outcome(write, tmp_path / f"{index}.sst"))
    assert all(result == results[0] for result in results)


@pytest.mark.parametrize("data_blocks", DATA_BLOCKS, ids=lambda c: c.__module__)
def test_key_order_checked_across_blocks(tmp_path, monkeypatch, data_blocks):
    monkeypatch.setattr(tlsm.table_writer, "DataBlocks", data_blocks)
    writer = TableWriter(OsFileSystem(), str(tmp_path / "000001.sst"), 4096)
    # The 4096-byte value ends the first block; seq 4 opens the second.
    writer.add_run(b"\x00b", [5, 4], [1, 1], [0, 0], [b"x" * 4096, b"y"])
    with pytest.raises(InvalidArgumentError, match="ends the previous block"):
        writer.finish(sync=False)
    writer.abandon()
