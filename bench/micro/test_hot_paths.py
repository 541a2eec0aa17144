"""Micro-benchmarks of the Cython hot paths against their pure-Python twins.

Workloads (each run once per implementation, grouped so the table shows the
two side by side):

* block-decode, block-encode: one data block of 30 entries with 128-byte
  values in 3 timelines (about 4 KiB), every third entry with an expiry.
* merge-full: 8 overlapping sources of 2,000 entries each, merged completely.
* merge-limit-10: the first 10 entries of the same 8 sources.
* resp-pipeline: 1,000 SET commands with 100-byte values, as redis-py packs
  them, fed in one piece and parsed.
* resp-large-bulk: one SET with a 100 MiB value fed in 1 KiB chunks, with a
  next_command() call after each chunk, as a server does.

Run: python -m pytest bench/micro -q --benchmark-only
Add --benchmark-autosave to store results (with the machine description) in
.benchmarks/, and --benchmark-compare to compare with the last stored run.
"""

import itertools
import platform

import pytest
from implementations import implementations
from redis.connection import Connection

from tlsm import block, merge, resp

BLOCK_ENTRIES = 30
BLOCK_VALUE_BYTES = 128
MERGE_SOURCES = 8
MERGE_ENTRIES_PER_SOURCE = 2000
PIPELINE_COMMANDS = 1000
PIPELINE_VALUE_BYTES = 100
LARGE_BULK_BYTES = 100 * 1024 * 1024
LARGE_BULK_CHUNK_BYTES = 1024


@pytest.fixture(autouse=True)
def describe_machine(benchmark):
    benchmark.extra_info["python"] = platform.python_version()
    benchmark.extra_info["machine"] = (
        f"{platform.machine()} {platform.processor()}".strip()
    )


def block_entries():
    entries = []
    for index in range(BLOCK_ENTRIES):
        timeline_id = b"room:%04d" % (index // 10)
        expires_at = 1_700_000_000_000 + index if index % 3 == 0 else 0
        entries.append(
            (
                timeline_id,
                1000 + index,
                1,
                expires_at,
                bytes([index]) * BLOCK_VALUE_BYTES,
            )
        )
    return entries


@pytest.mark.benchmark(group="block-decode")
@pytest.mark.parametrize("impl", implementations("block", block))
def test_block_decode(benchmark, impl):
    data = block.PurePython.encode_block(block_entries())
    benchmark.extra_info["block_bytes"] = len(data)
    result = benchmark(impl.decode_block, data)
    assert len(result) == BLOCK_ENTRIES


@pytest.mark.benchmark(group="block-encode")
@pytest.mark.parametrize("impl", implementations("block", block))
def test_block_encode(benchmark, impl):
    entries = block_entries()
    result = benchmark(impl.encode_block, entries)
    assert result == block.PurePython.encode_block(entries)


def merge_sources():
    """Return MERGE_SOURCES runs; run i holds seqs i, i+3, i+6, ... so runs overlap."""
    return [
        [(b"room", i + 3 * n, 1, 0, b"v") for n in range(MERGE_ENTRIES_PER_SOURCE)]
        for i in range(MERGE_SOURCES)
    ]


@pytest.mark.benchmark(group="merge-full")
@pytest.mark.parametrize("impl", implementations("merge", merge))
def test_merge_full(benchmark, impl):
    sources = merge_sources()
    result = benchmark(lambda: sum(1 for _ in impl.merge_entries(sources)))
    assert result == len({entry[1] for source in sources for entry in source})


@pytest.mark.benchmark(group="merge-limit-10")
@pytest.mark.parametrize("impl", implementations("merge", merge))
def test_merge_limit_10(benchmark, impl):
    sources = merge_sources()
    result = benchmark(lambda: list(itertools.islice(impl.merge_entries(sources), 10)))
    assert len(result) == 10


def parse_all(parser_class, data):
    parser = parser_class()
    parser.feed(data)
    commands = 0
    while parser.next_command() is not None:
        commands += 1
    return commands


@pytest.mark.benchmark(group="resp-pipeline")
@pytest.mark.parametrize("impl", implementations("resp", resp))
def test_resp_pipeline(benchmark, impl):
    connection = Connection()
    data = b"".join(
        b"".join(
            connection.pack_command("SET", f"key:{i}", b"x" * PIPELINE_VALUE_BYTES)
        )
        for i in range(PIPELINE_COMMANDS)
    )
    benchmark.extra_info["stream_bytes"] = len(data)
    assert benchmark(parse_all, impl.RespParser, data) == PIPELINE_COMMANDS


def parse_large_bulk(parser_class, chunk):
    parser = parser_class()
    parser.feed(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % LARGE_BULK_BYTES)
    for _ in range(LARGE_BULK_BYTES // len(chunk)):
        parser.feed(chunk)
        parser.next_command()
    parser.feed(b"\r\n")
    return parser.next_command()


@pytest.mark.benchmark(group="resp-large-bulk")
@pytest.mark.parametrize("impl", implementations("resp", resp))
def test_resp_large_bulk(benchmark, impl):
    chunk = b"x" * LARGE_BULK_CHUNK_BYTES
    command = benchmark.pedantic(
        parse_large_bulk, args=(impl.RespParser, chunk), rounds=3, iterations=1
    )
    assert len(command[2]) == LARGE_BULK_BYTES
