"""Micro-benchmark of a compaction merge: RawMerge (Cython) against RunMerge.

Workload: 6 tables like the level-0 tables of successive flushes, each with
40,000 entries of 128 random bytes over 2,000 timelines, where every table
contains the next seqs of each timeline. One round merges all six into one
new table file (entries only, no side records), as compaction does, and
writes it without fsync. RunMerge decodes entries into tuples and merges
them with tlsm.merge; RawMerge (tlsm_ext/compact.pyx) reads the blocks in
place. Both write the same bytes.

Run: python -m pytest bench/micro/test_compaction_merge.py -q --benchmark-only
"""

import os
import random

import pytest

from tlsm import compaction
from tlsm.fs import OsFileSystem
from tlsm.open_files import OpenFileCache
from tlsm.sstable import BlockCache, SSTable
from tlsm.table_writer import TableWriter

TABLES = 6
ENTRIES_PER_TABLE = 40_000
TIMELINES = 2_000
VALUE_BYTES = 128
NOW_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def input_paths(tmp_path_factory):
    directory = tmp_path_factory.mktemp("merge-inputs")
    rng = random.Random(1)
    ids = [b"\x00user:%06d" % n for n in range(TIMELINES)]
    per_table = ENTRIES_PER_TABLE // TIMELINES
    paths = []
    for number in range(TABLES):
        path = directory / f"{number + 1:06d}.sst"
        writer = TableWriter(OsFileSystem(), str(path))
        first = number * per_table + 1
        seqs = list(range(first, first + per_table))
        for timeline_id in ids:
            values = [rng.randbytes(VALUE_BYTES) for _ in seqs]
            writer.add_run(timeline_id, seqs, [1] * per_table, [0] * per_table, values)
        writer.finish(sync=False)
        paths.append(path)
    # Newest first, as compaction passes its inputs.
    return paths[::-1]


def _tables(paths):
    fs = OsFileSystem()
    cache = BlockCache(0)
    files = OpenFileCache(100)
    return [
        SSTable(fs, str(path), n, os.path.getsize(path), cache, files)
        for n, path in enumerate(paths)
    ]


def _run_merge():
    return lambda tables: compaction.RunMerge(tables, NOW_MS)


def _raw_merge():
    try:
        from tlsm_ext import compact
    except ImportError:
        pytest.skip("tlsm_ext.compact is not built")
    return lambda tables: compact.RawMerge([t.pin_frames() for t in tables], NOW_MS)


@pytest.mark.parametrize(
    "make_merge", [_raw_merge, _run_merge], ids=["cython", "python"]
)
def test_merge_six_tables(benchmark, tmp_path, input_paths, make_merge):
    start = make_merge()
    output = tmp_path / "out.sst"

    def merge_once():
        merge = start(_tables(input_paths))
        writer = TableWriter(OsFileSystem(), str(output))
        try:
            while merge.next_timeline({}) is not None:
                merge.copy_timeline(writer.blocks)
        finally:
            merge.close()
        return writer.finish(sync=False)

    size = benchmark.pedantic(merge_once, rounds=5, iterations=1)
    benchmark.extra_info["entries"] = TABLES * ENTRIES_PER_TABLE
    assert size > TABLES * ENTRIES_PER_TABLE * VALUE_BYTES
