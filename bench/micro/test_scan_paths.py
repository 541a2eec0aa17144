"""Micro-benchmarks of the read collectors, Cython against the pure-Python twins.

Workloads (each run once per implementation, grouped side by side):

* scan-block-forward: the 30 entries of one timeline from a 3-timeline
  block of 128-byte values (about 4 KiB), ascending, limit 100.
* scan-block-newest: the newest 10 entries of the same timeline, reverse.
* collect-run-100: 100 entries from the middle of a memtable run of 10,000.
* collect-table-newest-20: the newest 20 entries of one timeline from a
  table of 50 timelines x 200 entries in 4 KiB blocks (blocks cached).
* parse-summary-10k: the summary body of a table with 10,000 timelines, as
  the first read of a table after open parses it.
* flush-by-entry, flush-by-run: a memtable of 20,000 entries over 500
  timelines written to a table with TableWriter.add per entry, and with
  TableWriter.add_run per timeline (same file).

Run: python -m pytest bench/micro/test_scan_paths.py -q --benchmark-only
"""

import os
import platform

import pytest
from implementations import implementations

from tlsm import block, scan
from tlsm.fs import OsFileSystem
from tlsm.keys import KIND_PUT, MAX_SEQ
from tlsm.memtable import Memtable
from tlsm.sstable import SSTable
from tlsm.table_writer import TableWriter

END = MAX_SEQ + 1
VALUE_BYTES = 128


@pytest.fixture(autouse=True)
def describe_machine(benchmark):
    benchmark.extra_info["python"] = platform.python_version()
    benchmark.extra_info["machine"] = (
        f"{platform.machine()} {platform.processor()}".strip()
    )


def one_block():
    entries = []
    for index in range(30):
        entries.append(
            (
                b"\x00room:%d" % (index // 10),
                100 + index,
                KIND_PUT,
                0,
                bytes([index]) * VALUE_BYTES,
            )
        )
    return block.PurePython.encode_block(entries)


@pytest.mark.benchmark(group="scan-block-forward")
@pytest.mark.parametrize("impl", implementations("block", block))
def test_scan_block_forward(benchmark, impl):
    data = one_block()

    def run():
        out = []
        impl.scan_block(data, b"\x00room:1", 0, END, False, 0, 100, out)
        return out

    assert len(benchmark(run)) == 10


@pytest.mark.benchmark(group="scan-block-newest")
@pytest.mark.parametrize("impl", implementations("block", block))
def test_scan_block_newest(benchmark, impl):
    data = one_block()

    def run():
        out = []
        impl.scan_block(data, b"\x00room:2", 0, END, True, 0, 10, out)
        return out

    assert [seq for seq, _ in benchmark(run)][0] == 129


@pytest.mark.benchmark(group="collect-run-100")
@pytest.mark.parametrize("impl", implementations("scan", scan))
def test_collect_run_100(benchmark, impl):
    count = 10_000
    run = (
        list(range(1, count + 1)),
        [KIND_PUT] * count,
        [0] * count,
        [b"v" * VALUE_BYTES] * count,
    )

    def collect():
        out = []
        impl.collect_run(run, 5000, count, False, 0, 100, out)
        return out

    assert len(benchmark(collect)) == 100


def write_table(path, timelines, per_timeline):
    writer = TableWriter(OsFileSystem(), str(path))
    for number in range(timelines):
        for seq in range(1, per_timeline + 1):
            writer.add((b"\x00tl:%05d" % number, seq, KIND_PUT, 0, b"p" * VALUE_BYTES))
    writer.finish()
    table = SSTable(
        OsFileSystem(), str(path), 1, os.path.getsize(path), scan.BlockCache(64 << 20)
    )
    table.load()
    return table


@pytest.mark.benchmark(group="collect-table-newest-20")
@pytest.mark.parametrize("impl", implementations("scan", scan))
def test_collect_table_newest_20(benchmark, impl, tmp_path):
    table = write_table(tmp_path / "000001.sst", 50, 200)

    def collect():
        out = []
        impl.collect_table(table, b"\x00tl:00025", 0, END, True, 0, 20, out)
        return out

    assert [seq for seq, _ in benchmark(collect)][0] == 200


@pytest.mark.benchmark(group="parse-summary-10k")
@pytest.mark.parametrize("impl", implementations("scan", scan))
def test_parse_summary_10k(benchmark, impl, tmp_path):
    table = write_table(tmp_path / "000001.sst", 10_000, 1)
    _, _, summary_offset, summary_size = table._footer
    body = bytes(table._read_framed(summary_offset, summary_size))
    assert len(benchmark(impl.parse_summary, body)) == 10_000


def flush_memtable():
    memtable = Memtable(1)
    for index in range(20_000):
        key = b"\x00tl:%05d" % (index % 500)
        memtable.add(key, index // 500 + 1, KIND_PUT, 0, b"p" * VALUE_BYTES)
    return memtable


@pytest.mark.benchmark(group="flush")
def test_flush_by_entry(benchmark, tmp_path):
    memtable = flush_memtable()

    def flush():
        writer = TableWriter(OsFileSystem(), str(tmp_path / "by_entry.sst"))
        for entry in memtable.entries():
            writer.add(entry)
        return writer.finish(sync=False)

    benchmark(flush)


@pytest.mark.benchmark(group="flush")
def test_flush_by_run(benchmark, tmp_path):
    memtable = flush_memtable()

    def flush():
        writer = TableWriter(OsFileSystem(), str(tmp_path / "by_run.sst"))
        for timeline_id, run in memtable.sorted_runs():
            writer.add_run(timeline_id, *run)
        return writer.finish(sync=False)

    benchmark(flush)
