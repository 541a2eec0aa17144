"""The scan collectors, table metadata parsers and block cache, both ways.

Each Cython function of tlsm_ext.scan and tlsm_ext.block.scan_block is
compared with its pure-Python twin on the same seeded input (equal results,
same exception class and message), and the pure twins are checked against a
plain filter of decoded entries. The extensions are imported directly, so
the comparisons also run under TLSM_PURE_PYTHON=1.
"""

import os
import random

import pytest
from twins import load_extension, outcome

import tlsm
import tlsm.table_writer
from tlsm import block, keys, scan
from tlsm.fs import OsFileSystem
from tlsm.keys import KIND_PUT, MAX_SEQ
from tlsm.sstable import SSTable
from tlsm.table_writer import TableWriter

END = MAX_SEQ + 1


def random_block_entries(rng):
    timelines = sorted(
        {rng.randbytes(rng.randint(1, 3)) for _ in range(rng.randint(1, 4))}
    )
    entries = []
    for timeline_id in timelines:
        seq = rng.choice([0, rng.randint(0, 50), MAX_SEQ - 40])
        for _ in range(rng.randint(1, 10)):
            entries.append(
                (
                    timeline_id,
                    seq,
                    rng.choice([KIND_PUT, KIND_PUT, keys.KIND_DELETE]),
                    rng.choice([0, 0, rng.randint(1, 200)]),
                    rng.randbytes(rng.randint(0, 12)),
                )
            )
            seq += rng.randint(1, 3)
            if seq > MAX_SEQ:
                break
    return entries


def expected_scan(entries, timeline_id, start, end, reverse, now_ms, limit):
    matches = [
        (seq, value)
        for key, seq, kind, expires_at, value in entries
        if key == timeline_id
        and start <= seq < end
        and kind == KIND_PUT
        and (expires_at == 0 or expires_at > now_ms)
    ]
    if reverse:
        matches.reverse()
    return matches[:limit]


def random_range(rng, entries):
    timeline_id = rng.choice([entry[0] for entry in entries] + [b"\x00", b"\xff\xff"])
    start = rng.choice([0, rng.randint(0, 60), MAX_SEQ - 20])
    end = rng.choice([END, start + rng.randint(1, 30), MAX_SEQ])
    return timeline_id, start, max(end, start + 1)


def run_scan_block(function, data, timeline_id, start, end, reverse, now_ms, limit):
    out = []
    result = outcome(
        function, data, timeline_id, start, end, reverse, now_ms, limit, out
    )
    if result[0] == "ok":
        result = ("ok", bool(result[1]))
    return result, out


def test_scan_block_matches_decoded_filter():
    rng = random.Random(7)
    for _ in range(400):
        entries = random_block_entries(rng)
        data = block.encode_block(entries)
        timeline_id, start, end = random_range(rng, entries)
        reverse = rng.random() < 0.5
        now_ms = rng.randint(0, 250)
        limit = rng.choice([0, 1, 3, 1000])
        for function in (block.PurePython.scan_block, block.scan_block):
            out = []
            function(data, timeline_id, start, end, reverse, now_ms, limit, out)
            assert out == expected_scan(
                entries, timeline_id, start, end, reverse, now_ms, limit
            )


def test_scan_block_reports_next_block():
    entries = [(b"b", seq, KIND_PUT, 0, b"v") for seq in (5, 6, 7)]
    data = block.encode_block(entries)
    assert block.scan_block(data, b"b", 0, END, False, 0, 10, [])
    assert not block.scan_block(data, b"b", 0, 7, False, 0, 10, [])
    assert not block.scan_block(data, b"a", 0, END, False, 0, 10, [])
    assert block.scan_block(data, b"b", 0, END, True, 0, 10, [])
    assert not block.scan_block(data, b"b", 5, END, True, 0, 10, [])
    assert block.scan_block(data, b"a", 0, END, True, 0, 10, [])
    assert not block.scan_block(data, b"c", 0, END, True, 0, 10, [])
    assert block.scan_block(block.encode_block([]), b"b", 0, END, False, 0, 10, [])


def test_scan_block_twins():
    extension = load_extension("block")
    rng = random.Random(11)
    for _ in range(600):
        entries = random_block_entries(rng)
        data = bytearray(block.encode_block(entries))
        if rng.random() < 0.5 and data:
            for _ in range(rng.randint(1, 3)):
                position = rng.randrange(len(data))
                data[position] = rng.randrange(256)
            if rng.random() < 0.3:
                del data[rng.randrange(len(data)) :]
        data = bytes(data)
        timeline_id, start, end = random_range(rng, entries)
        args = (
            data,
            timeline_id,
            start,
            end,
            rng.random() < 0.5,
            rng.randint(0, 250),
            rng.choice([0, 2, 1000]),
        )
        assert run_scan_block(extension.scan_block, *args) == run_scan_block(
            block.PurePython.scan_block, *args
        )


def test_scan_block_accepts_buffers_twins():
    extension = load_extension("block")
    entries = [(b"t", seq, KIND_PUT, 0, b"x%d" % seq) for seq in range(1, 6)]
    data = block.encode_block(entries)
    for buffer in (bytearray(data), memoryview(data)):
        args = (buffer, b"t", 2, 5, False, 0, 10)
        assert run_scan_block(extension.scan_block, *args) == run_scan_block(
            block.PurePython.scan_block, *args
        )
    strided = memoryview(data)[::2]
    args = (strided, b"t", 0, END, False, 0, 10)
    result = run_scan_block(extension.scan_block, *args)
    assert result == run_scan_block(block.PurePython.scan_block, *args)
    assert result[0][1] is TypeError


def random_run(rng):
    count = rng.randint(0, 40)
    seqs = sorted(rng.sample(range(1, 200), count))
    kinds = [rng.choice([KIND_PUT, KIND_PUT, keys.KIND_DELETE]) for _ in seqs]
    expires = [rng.choice([0, 0, rng.randint(1, 300)]) for _ in seqs]
    values = [rng.randbytes(4) for _ in seqs]
    return (seqs, kinds, expires, values)


def test_collect_run_twins_and_filter():
    extension = load_extension("scan")
    rng = random.Random(3)
    for _ in range(500):
        run = random_run(rng)
        length = len(run[0])
        low = rng.randint(0, length)
        high = rng.randint(low, length + (1 if rng.random() < 0.1 else 0))
        reverse = rng.random() < 0.5
        now_ms = rng.randint(0, 300)
        limit = rng.choice([0, 1, 5, 100])
        results = []
        for function in (extension.collect_run, scan.PurePython.collect_run):
            out = []
            results.append(
                (outcome(function, run, low, high, reverse, now_ms, limit, out), out)
            )
        assert results[0] == results[1]
        if high <= length:
            entries = [
                (b"t", run[0][i], run[1][i], run[2][i], run[3][i])
                for i in range(low, high)
            ]
            assert results[0][1] == expected_scan(
                entries, b"t", 0, END, reverse, now_ms, limit
            )
        else:
            assert results[0][0][1] is IndexError


def write_table(path, runs, block_bytes=96):
    writer = TableWriter(OsFileSystem(), str(path), block_bytes=block_bytes)
    for timeline_id in sorted(runs):
        for seq, kind, expires_at, value in runs[timeline_id]:
            writer.add((timeline_id, seq, kind, expires_at, value))
    writer.finish()
    table = SSTable(
        OsFileSystem(), str(path), 1, os.path.getsize(path), scan.BlockCache(1 << 20)
    )
    table.load()
    return table


def table_runs(rng, timelines, first_seq, count):
    runs = {}
    for timeline_id in timelines:
        seqs = range(first_seq, first_seq + count)
        runs[timeline_id] = [
            (seq, KIND_PUT, rng.choice([0, 0, rng.randint(1, 300)]), rng.randbytes(20))
            for seq in seqs
        ]
    return runs


def test_collect_table_twins(tmp_path):
    extension = load_extension("scan")
    rng = random.Random(5)
    runs = table_runs(rng, [b"\x00a", b"\x00b", b"\x00c"], 10, 40)
    table = write_table(tmp_path / "000001.sst", runs)
    entries = [(key, *entry) for key in sorted(runs) for entry in runs[key]]
    for _ in range(300):
        timeline_id = rng.choice([b"\x00a", b"\x00b", b"\x00c", b"\x00bb", b"\x00"])
        start = rng.randint(0, 60)
        end = rng.choice([END, start + rng.randint(1, 50)])
        reverse = rng.random() < 0.5
        now_ms = rng.randint(0, 300)
        limit = rng.choice([1, 7, 1000])
        results = []
        for function in (extension.collect_table, scan.PurePython.collect_table):
            out = []
            count = function(
                table, timeline_id, start, end, reverse, now_ms, limit, out
            )
            results.append((count, out))
        assert results[0] == results[1]
        assert results[0][1] == expected_scan(
            entries, timeline_id, start, end, reverse, now_ms, limit
        )


def test_collect_range_twins(tmp_path):
    extension = load_extension("scan")
    rng = random.Random(9)
    timelines = [b"\x00a", b"\x00b"]
    older = write_table(tmp_path / "000001.sst", table_runs(rng, timelines, 1, 30))
    newer = write_table(tmp_path / "000002.sst", table_runs(rng, timelines, 31, 30))
    overlapping = write_table(
        tmp_path / "000003.sst", table_runs(rng, timelines, 50, 5)
    )
    run = ([], [], [], [])
    for seq in range(61, 90):
        run[0].append(seq)
        run[1].append(KIND_PUT)
        run[2].append(rng.choice([0, 100]))
        run[3].append(b"m%d" % seq)
    for _ in range(300):
        tables = rng.choice([(newer, older), (overlapping, newer, older), ()])
        runs = rng.choice([[(run, len(run[0]))], [(run, 10)], []])
        low = rng.randint(0, 80)
        high = rng.choice([END, low + rng.randint(1, 40)])
        memory_end = rng.choice([END, rng.randint(0, 100)])
        args = (
            runs,
            tables,
            rng.choice(timelines),
            low,
            high,
            memory_end,
            rng.random() < 0.5,
            rng.randint(0, 150),
            rng.choice([1, 20, 1000]),
        )
        results = []
        for function in (extension.collect_range, scan.PurePython.collect_range):
            out = []
            results.append((function(*args, out), out))
        assert results[0] == results[1]
        if overlapping in tables and scan.find_sources(*args[:6]):
            sources = scan.find_sources(*args[:6])
            if any(source[2] is overlapping for source in sources) and len(sources) > 1:
                assert results[0] == (False, [])


def mixed_runs(rng, timelines, count_range):
    """Return table runs of random kinds, expiries and seq gaps per timeline."""
    runs = {}
    for timeline_id in timelines:
        seq = rng.randint(0, 5)
        run = []
        for _ in range(rng.randint(*count_range)):
            kind = rng.choice([KIND_PUT, KIND_PUT, KIND_PUT, keys.KIND_DELETE])
            expires_at = rng.choice([0, 0, rng.randint(1, 300)])
            run.append((seq, kind, expires_at, rng.randbytes(rng.randint(0, 6))))
            seq += rng.randint(1, 3)
        runs[timeline_id] = run
    return runs


@pytest.mark.parametrize("block_bytes", [96, 4096])
def test_collect_table_repeated_twins(tmp_path, block_bytes):
    # A block scanned once is scanned again from the runs cached with it, so
    # every query runs twice. Tables whose ids share 1 or 16 leading bytes,
    # and queried ids outside the table, cover the packed index search. The
    # 4096-byte blocks hold runs of more than 64 entries.
    extension = load_extension("scan")
    rng = random.Random(11)
    timelines = [b"\x00a", b"\x00ab", b"\x00b", b"\x00b\x00", b"\x00bc", b"\x00c"]
    timelines += [b"\x00zzzzzzzzzz%d" % i for i in range(3)]
    queried = [
        *timelines,
        b"\x00",
        b"\x00aa",
        b"\x00zzzzzzzzzz",
        b"\x01",
        b"",
        b"\x00d",
    ]
    for prefix in (b"", b"\x07shared-prefix:"):
        ids = [prefix + timeline_id for timeline_id in timelines]
        runs = mixed_runs(rng, ids, (1, 150))
        path = tmp_path / f"{len(prefix)}-{block_bytes}.sst"
        table = write_table(path, runs, block_bytes=block_bytes)
        entries = [(key, *entry) for key in sorted(runs) for entry in runs[key]]
        for _ in range(400):
            timeline_id = prefix + rng.choice(queried)
            start = rng.randint(0, 200)
            end = rng.choice([END, start + rng.randint(1, 120), MAX_SEQ])
            reverse = rng.random() < 0.5
            now_ms = rng.randint(0, 300)
            limit = rng.choice([1, 7, 70, 1000])
            args = (timeline_id, start, end, reverse, now_ms, limit)
            expected = expected_scan(entries, *args)
            for _repeat in range(2):
                for function in (
                    extension.collect_table,
                    scan.PurePython.collect_table,
                ):
                    out = []
                    count = function(table, *args, out)
                    assert out == expected, (function, args)
                    assert count == len(expected)


def blocks_holding(table, timeline_id):
    """Return the number of data blocks of table with an entry of timeline_id."""
    return sum(
        any(entry[0] == timeline_id for entry in table.read_block(index))
        for index in range(len(table.index_keys))
    )


def test_collect_range_reads_only_timeline_blocks(tmp_path):
    # Small blocks put timeline boundaries on block boundaries often; a
    # scan of a whole timeline still reads exactly the blocks that hold it.
    extension = load_extension("scan")
    rng = random.Random(13)
    timelines = [b"\x00t%02d" % i for i in range(40)]
    runs = mixed_runs(rng, timelines, (1, 12))
    table = write_table(tmp_path / "000001.sst", runs, block_bytes=64)
    cache = table._cache
    for function in (extension.collect_range, scan.PurePython.collect_range):
        for timeline_id in timelines:
            expected_reads = blocks_holding(table, timeline_id)
            for reverse in (False, True):
                reads_before = cache.hits + cache.misses
                function([], (table,), timeline_id, 0, END, END, reverse, 0, 1000, [])
                reads = cache.hits + cache.misses - reads_before
                assert reads == expected_reads, (function, timeline_id, reverse)


def metadata_bodies(tmp_path):
    rng = random.Random(2)
    runs = table_runs(rng, [b"\x00x%d" % i for i in range(30)], 1, 12)
    table = write_table(tmp_path / "000009.sst", runs)
    index_offset, index_size, summary_offset, summary_size = table._footer
    index = bytes(table._read_framed(index_offset, index_size))
    summary = bytes(table._read_framed(summary_offset, summary_size))
    return table, index, summary


def test_parse_index_and_summary_twins(tmp_path):
    extension = load_extension("scan")
    table, index, summary = metadata_bodies(tmp_path)
    parsed = extension.parse_index(index)
    assert parsed == scan.PurePython.parse_index(index)
    assert parsed == (table.index_keys, table._block_offsets, table._block_sizes)
    assert extension.parse_summary(summary) == scan.PurePython.parse_summary(summary)
    assert len(extension.parse_summary(summary)) == 30
    rng = random.Random(4)
    for _ in range(200):
        for body, name in ((index, "parse_index"), (summary, "parse_summary")):
            cut = bytearray(body[: rng.randrange(len(body))])
            if cut and rng.random() < 0.5:
                cut[rng.randrange(len(cut))] = rng.randrange(256)
            assert outcome(getattr(extension, name), bytes(cut)) == outcome(
                getattr(scan.PurePython, name), bytes(cut)
            )


def cache_history(cache_class, operations):
    cache = cache_class(100)
    history = []
    for operation, file_number, index, charge in operations:
        if operation == "put":
            cache.put((file_number, index), b"b%d" % index, charge)
        elif operation == "get":
            history.append(cache.get((file_number, index)))
        else:
            cache.evict_file(file_number)
        history.append((cache.used_bytes, cache.hits, cache.misses))
    return history


def test_block_cache_twins():
    extension = load_extension("scan")
    rng = random.Random(8)
    operations = [
        (
            rng.choice(["put", "put", "get", "get", "evict"]),
            rng.randint(1, 3),
            rng.randint(0, 10),
            rng.randint(1, 120),
        )
        for _ in range(2000)
    ]
    history = cache_history(extension.BlockCache, operations)
    assert history == cache_history(scan.PurePython.BlockCache, operations)
    used = [entry[0] for entry in history if isinstance(entry, tuple)]
    assert max(used) <= 100
    assert any(isinstance(entry, bytes) for entry in history)


def test_unbounded_scan_reads_blocks_lazily(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=4096, block_bytes=256) as db:
        for i in range(3000):
            db.append("long", b"%05d" % i + b"p" * 40)
        db.flush()
        misses = db.stats()["block_cache_misses"]
        pairs = db.scan("long")
        first = [next(pairs) for _ in range(5)]
        assert [seq for seq, _ in first] == [1, 2, 3, 4, 5]
        assert db.stats()["block_cache_misses"] - misses <= 2
        assert sum(1 for _ in pairs) == 2995


def test_overlapping_sources_are_merged(tmp_path):
    with tlsm.open(tmp_path, memtable_bytes=1 << 20) as db:
        for i in range(1, 41):
            db.append("t", b"table%d" % i)
        db.flush()
        key = db._default.key("t")
        # The engine never writes an older seq into the memtable; doing it
        # here makes the memtable's range overlap the table's, so the scan
        # must merge and let the memtable's newer entry win.
        with db._write_lock:
            db._active.add(key, 20, KIND_PUT, 0, b"memtable20")
        pairs = list(db.scan("t", start=15, limit=10))
        assert [seq for seq, _ in pairs] == list(range(15, 25))
        assert dict(pairs)[20] == b"memtable20"
        reverse = list(db.scan("t", end=25, limit=6, reverse=True))
        assert [seq for seq, _ in reverse] == [24, 23, 22, 21, 20, 19]
        assert dict(reverse)[20] == b"memtable20"
        assert dict(db.scan("t"))[20] == b"memtable20"


def write_overlapping_blocks(path, monkeypatch):
    """Write a table whose second block goes back to seqs of the first one.

    TableWriter refuses that, so its check is switched off for this file:
    the table stands for one damaged on disk with valid checksums.
    """
    monkeypatch.setattr(
        tlsm.table_writer, "DataBlocks", tlsm.table_writer.PurePython.DataBlocks
    )
    monkeypatch.setattr(tlsm.table_writer, "_check_block_order", lambda *args: None)
    writer = TableWriter(OsFileSystem(), str(path), block_bytes=96)
    # Entries count 54 bytes each, so a block ends after two of them.
    writer.add_run(b"\x00a", [1, 2], [KIND_PUT] * 2, [0] * 2, [b"x" * 40] * 2)
    writer.add_run(b"\x00a", [2, 3, 4], [KIND_PUT] * 3, [0] * 3, [b"y" * 40] * 3)
    writer.finish()
    monkeypatch.undo()
    table = SSTable(
        OsFileSystem(), str(path), 1, os.path.getsize(path), scan.BlockCache(1 << 20)
    )
    table.load()
    assert len(table.index_keys) > 1
    return table


@pytest.mark.parametrize("reverse", [False, True])
def test_reads_reject_blocks_out_of_order(tmp_path, monkeypatch, reverse):
    extension = load_extension("scan")
    table = write_overlapping_blocks(tmp_path / "000001.sst", monkeypatch)
    for function in (extension.collect_table, scan.PurePython.collect_table):
        with pytest.raises(tlsm.CorruptionError, match="out of order") as caught:
            function(table, b"\x00a", 0, END, reverse, 0, 100, [])
        assert caught.value.path == table.path
    with pytest.raises(tlsm.CorruptionError, match="outside the block's range"):
        list(table.scan(b"\x00a", 0, END, reverse))


@pytest.mark.parametrize("reverse", [False, True])
def test_lazy_chunks_reject_blocks_out_of_order(tmp_path, monkeypatch, reverse):
    table = write_overlapping_blocks(tmp_path / "000001.sst", monkeypatch)
    with pytest.raises(tlsm.CorruptionError, match="out of order") as caught:
        list(table.chunks(b"\x00a", 0, END, reverse, 0))
    assert caught.value.path == table.path
