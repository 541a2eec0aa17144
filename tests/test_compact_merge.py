"""Compaction merges: the raw-block merge in Cython against the Python path.

tlsm.compaction.RunMerge merges decoded entries; RawMerge (tlsm_ext/compact.pyx)
reads the blocks' bytes in place. Both must drop the same entries and write
byte-identical files, and RawMerge must report damaged input as corruption.
"""

import os
import random
import zlib

import pytest
from twins import load_extension

import tlsm
import tlsm.table_writer
from tlsm import compaction, keys
from tlsm.errors import CorruptionError, StorageIOError
from tlsm.fs import OsFileSystem
from tlsm.open_files import OpenFileCache
from tlsm.sstable import COMPRESSION_NONE, BlockCache, SSTable
from tlsm.table_writer import TableWriter

NOW_MS = 1_000_000


@pytest.fixture(autouse=True)
def extension_data_blocks(monkeypatch):
    """Write tables through the extension's DataBlocks, which RawMerge needs.

    It writes the pure twin's bytes (tests/test_table_writer.py), so these
    tests also run with TLSM_PURE_PYTHON=1.
    """
    data_blocks = load_extension("table_writer").DataBlocks
    monkeypatch.setattr(tlsm.table_writer, "DataBlocks", data_blocks)


def _write_input(path, entries, compression):
    writer = TableWriter(OsFileSystem(), str(path), 256, compression)
    for entry in sorted(entries, key=lambda e: (e[0], e[1])):
        writer.add(entry)
    return writer.finish(sync=False)


def _random_inputs(tmp_path, seed, compression):
    """Write 2 to 6 overlapping tables; return their paths, newest first."""
    rng = random.Random(seed)
    timelines = [b"\x00" + b"t%d" % n for n in range(rng.randint(1, 30))]
    timelines.append(b"\x00" + b"x" * keys.MAX_TIMELINE_ID_BYTES)
    paths = []
    for number in range(rng.randint(2, 6)):
        entries = {}
        for _ in range(rng.randint(0, 400)):
            timeline = rng.choice(timelines)
            seq = rng.choice(
                [rng.randint(1, 60), rng.randint(1, 1 << 63), keys.MAX_SEQ]
            )
            expires = rng.choice([0, 0, NOW_MS - 5, NOW_MS, NOW_MS + 5])
            kind = rng.choice([keys.KIND_PUT] * 6 + [0, 7])
            value = rng.choice([b"", rng.randbytes(rng.randint(1, 90)), b"z" * 300])
            entries[(timeline, seq)] = (timeline, seq, kind, expires, value)
        path = tmp_path / f"{number:06d}.sst"
        _write_input(path, entries.values(), compression)
        paths.append(path)
    paths.reverse()
    tombstones = {}
    for timeline in timelines:
        if rng.random() < 0.5:
            intervals, start = [], 0
            for _ in range(rng.randint(1, 4)):
                start += rng.randint(1, 20)
                end = start + rng.randint(1, 15)
                intervals.append((start, end))
                start = end + 1
            if rng.random() < 0.3:
                intervals.append((1 << 62, keys.MAX_SEQ + 1))
            tombstones[timeline] = tuple(intervals)
    return paths, tombstones


def _tables(paths, max_open_files=100):
    fs = OsFileSystem()
    cache = BlockCache(1 << 20)
    files = OpenFileCache(max_open_files)
    return [
        SSTable(fs, str(path), number, os.path.getsize(path), cache, files)
        for number, path in enumerate(paths)
    ]


def _merge_to_file(merge, tombstones, path):
    """Write merge's output to one file; return (bytes, sizes, dropped counts)."""
    writer = TableWriter(OsFileSystem(), str(path), 256, True)
    sizes = []
    try:
        while (key := merge.next_timeline(tombstones)) is not None:
            sizes.append((key, merge.copy_timeline(writer.blocks)))
    finally:
        merge.close()
    writer.finish(sync=False)
    return path.read_bytes(), sizes, (merge.dropped_expired, merge.dropped_deleted)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("pin", [True, False], ids=["mapped", "copied"])
def test_raw_merge_matches_run_merge(tmp_path, seed, pin):
    extension = load_extension("compact")
    paths, tombstones = _random_inputs(tmp_path, seed, compression=seed % 2 == 0)
    expected = _merge_to_file(
        compaction.RunMerge(_tables(paths), NOW_MS), tombstones, tmp_path / "run.sst"
    )
    frames = [table.pin_frames(pin) for table in _tables(paths)]
    assert any(f.mapping is not None for f in frames) == pin
    raw = _merge_to_file(
        extension.RawMerge(frames, NOW_MS), tombstones, tmp_path / "raw.sst"
    )
    assert raw == expected
    # The inputs gave the rules something to do.
    assert seed > 0 or (expected[2][0] and expected[2][1] and expected[1])


def test_raw_merge_keeps_newest_copy(tmp_path):
    extension = load_extension("compact")
    newer, older = tmp_path / "000002.sst", tmp_path / "000001.sst"
    _write_input(newer, [(b"\x00a", 5, 1, NOW_MS - 1, b"new")], False)
    _write_input(older, [(b"\x00a", 5, 1, 0, b"old"), (b"\x00a", 6, 1, 0, b"x")], False)
    merge = extension.RawMerge(
        [t.pin_frames() for t in _tables([newer, older])], NOW_MS
    )
    _, sizes, dropped = _merge_to_file(merge, {}, tmp_path / "out.sst")
    # The newest copy has expired, and the older one must not come back.
    assert dropped == (1, 0)
    assert sizes == [(b"\x00a", 2 + 1 + 12)]
    output = _tables([tmp_path / "out.sst"])[0]
    assert list(output.entries()) == [(b"\x00a", 6, 1, 0, b"x")]


def _damage_block(path, index, change):
    """Apply change to block index's body, give it a valid checksum, return its offset."""
    frames = _tables([path])[0].pin_frames()
    offset, size = frames.offsets[index], frames.sizes[index]
    frames.close()
    data = bytearray(path.read_bytes())
    body = bytearray(data[offset : offset + size - 5])
    assert data[offset + size - 5] == COMPRESSION_NONE
    change(body)
    trailer = bytes([COMPRESSION_NONE])
    crc = zlib.crc32(bytes(body) + trailer).to_bytes(4, "little")
    data[offset : offset + size] = bytes(body) + trailer + crc
    path.write_bytes(bytes(data))
    return offset


def _set_count(body, count):
    body[-4:] = count.to_bytes(4, "little")


DAMAGE = {
    "count too high": lambda body: _set_count(body, 3),
    "count too low": lambda body: _set_count(body, 1),
    "count zero": lambda body: _set_count(body, 0),
    "no timeline on the first entry": lambda body: body.__setitem__(0, 0x04),
    "timeline id of length 0": lambda body: body.__setitem__(1, 0),
    "seq delta 0": lambda body: body.__setitem__(len(body) - 8, 0),
    "value length past the end": lambda body: body.__setitem__(len(body) - 7, 0x7F),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("pin", [True, False], ids=["mapped", "copied"])
def test_raw_merge_reports_damaged_blocks(tmp_path, damage, pin):
    extension = load_extension("compact")
    path = tmp_path / "000001.sst"
    # Two entries of one timeline: tag, id, seq, value; then a delta entry.
    _write_input(path, [(b"\x00a", 1, 1, 0, b"v1"), (b"\x00a", 2, 1, 0, b"v2")], False)
    offset = _damage_block(path, 0, DAMAGE[damage])
    merge = extension.RawMerge([t.pin_frames(pin) for t in _tables([path])], NOW_MS)
    with pytest.raises(CorruptionError) as caught:
        _merge_to_file(merge, {}, tmp_path / "raw.sst")
    assert caught.value.path == str(path)
    assert caught.value.offset == offset
    assert str(caught.value).startswith(f"sstable {path}: damaged data block (")
    assert str(caught.value).endswith(f") at offset {offset}")
    # The Python merge rejects the same blocks.
    with pytest.raises(CorruptionError, match="damaged data block") as caught:
        _merge_to_file(
            compaction.RunMerge(_tables([path]), NOW_MS), {}, tmp_path / "run.sst"
        )
    assert caught.value.path == str(path)


def test_raw_merge_reports_a_bad_checksum(tmp_path):
    extension = load_extension("compact")
    path = tmp_path / "000001.sst"
    _write_input(path, [(b"\x00a", n, 1, 0, b"v" * 40) for n in range(1, 50)], False)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    merge = extension.RawMerge([t.pin_frames() for t in _tables([path])], NOW_MS)
    with pytest.raises(CorruptionError, match="block checksum mismatch at offset 0"):
        _merge_to_file(merge, {}, tmp_path / "out.sst")


def test_raw_merge_pins_inputs_until_closed(tmp_path):
    extension = load_extension("compact")
    paths, _ = _random_inputs(tmp_path, 3, compression=False)
    files = OpenFileCache(100)
    tables = [
        SSTable(OsFileSystem(), str(p), n, os.path.getsize(p), BlockCache(0), files)
        for n, p in enumerate(paths)
    ]
    merge = extension.RawMerge([t.pin_frames() for t in tables], NOW_MS)
    assert all(entry.pins == 1 for entry in files._items.values())
    merge.close()
    assert all(entry.pins == 0 for entry in files._items.values())
    with pytest.raises(ValueError, match="closed"):
        merge.next_timeline({})


@pytest.mark.parametrize("first_seq", [5, 3], ids=["repeated", "lower"])
def test_merges_reject_cross_block_disorder(tmp_path, first_seq):
    extension = load_extension("compact")
    path = tmp_path / "000001.sst"
    # The 300-byte value ends the first block (256 bytes), so (a, 6) opens
    # the second, whose first entry is: tag, id length, id, seq, value.
    _write_input(
        path,
        [
            (b"\x00a", 1, 1, 0, b"v"),
            (b"\x00a", 5, 1, 0, b"x" * 300),
            (b"\x00a", 6, 1, 0, b"w"),
        ],
        False,
    )

    def rewrite(body):
        assert body[:5] == bytes([0x05, 2]) + b"\x00a" + bytes([6])
        body[4] = first_seq

    offset = _damage_block(path, 1, rewrite)
    for merge in (
        extension.RawMerge([t.pin_frames() for t in _tables([path])], NOW_MS),
        compaction.RunMerge(_tables([path]), NOW_MS),
    ):
        with pytest.raises(
            CorruptionError, match="previous block's last key"
        ) as caught:
            _merge_to_file(merge, {}, tmp_path / "out.sst")
        assert caught.value.path == str(path)
        assert caught.value.offset == offset


def test_background_corruption_gives_salvage_steps(tmp_path):
    options = {"memtable_bytes": 4096, "block_bytes": 256, "compression": False}
    path = tmp_path / "db"
    with tlsm.open(path, level_fanout=100, l0_stop_files=200, **options) as db:
        for number in range(3):
            for seq in range(40):
                db.append(f"t{seq % 4}", b"v" * 30)
            db.flush()
    (victim,) = sorted(path.glob("*.sst"))[:1]
    _damage_block(victim, 0, DAMAGE["count zero"])
    db = tlsm.open(path, level_fanout=2, **options)
    try:
        # The flush ends the wait after open; the merge then reads the victim.
        db.append("t0", b"w")
        db.flush()
        with pytest.raises(StorageIOError) as caught:
            db.wait_for_compaction(timeout=30)
        assert str(victim) in str(caught.value)
        assert f"tools/inspect_data.py {path} --verify" in str(caught.value)
        with pytest.raises(StorageIOError, match="writes are disabled"):
            db.append("t0", b"w")
    finally:
        db.close()
