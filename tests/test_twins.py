"""Compare each Cython extension with its pure-Python twin on the same seeded input.

Both must return equal results and raise the same exception classes with the
same messages. The extensions are imported directly, so these comparisons run
even when TLSM_PURE_PYTHON=1 selects the twins elsewhere. A comparison is
skipped only when its extension is not built.
"""

import random
import subprocess
import sys

import pytest
from conftest import REPO, server_env
from twins import load_extension, outcome

from tlsm import block, merge, resp, survivors
from tlsm.errors import InvalidArgumentError
from tlsm.keys import MAX_SEQ

# Block codec


def random_entries(rng):
    timelines = sorted(
        {rng.randbytes(rng.randint(1, 6)) for _ in range(rng.randint(1, 4))}
    )
    entries = []
    for timeline_id in timelines:
        seq = rng.choice([0, rng.randint(0, 100), MAX_SEQ - 50])
        for _ in range(rng.randint(1, 8)):
            expires_at = rng.choice([0, rng.randint(1, 2**45), MAX_SEQ])
            entries.append(
                (
                    timeline_id,
                    seq,
                    rng.randint(0, 255),
                    expires_at,
                    rng.randbytes(rng.randint(0, 40)),
                )
            )
            seq += rng.randint(1, 3)
    return entries


def spoil_entries(rng, entries):
    """Return entries with one field made invalid or the order broken."""
    entries = [list(entry) for entry in entries]
    index = rng.randrange(len(entries))
    field = rng.randrange(6)
    bad_values = {
        0: ["t", b"", b"x" * 514, None],
        1: [-1, 2**64, 1.5, True, "3"],
        2: [-1, 256, None, 2.0],
        3: [-1, 2**64, b"0"],
        4: ["v", bytearray(b"v"), 5],
    }
    if field == 5:
        entries.append(list(entries[rng.randrange(len(entries))]))
    else:
        entries[index][field] = rng.choice(bad_values[field])
    return [tuple(entry) for entry in entries]


def mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        pos = rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.5:
            data[pos] ^= 1 << rng.randrange(8)
        elif choice < 0.7:
            del data[pos:]
        elif choice < 0.85:
            del data[pos]
        else:
            data.insert(pos, rng.randrange(256))
    return bytes(data)


def test_block_encode_twins():
    extension = load_extension("block")
    rng = random.Random(31)
    for _ in range(1000):
        entries = random_entries(rng)
        if rng.random() < 0.5:
            entries = spoil_entries(rng, entries)
        expected = outcome(block.PurePython.encode_block, entries)
        assert outcome(extension.encode_block, entries) == expected, entries


def entries_to_slices(rng, entries):
    """Return run slices holding entries, split at random, with filler around.

    Consecutive entries of one timeline may land in one slice or several,
    and each slice's lists hold unrelated items before start and after stop.
    """
    slices = []
    position = 0
    while position < len(entries):
        stop = position + 1
        while (
            stop < len(entries)
            and entries[stop][0] == entries[position][0]
            and rng.random() < 0.8
        ):
            stop += 1
        before = rng.randint(0, 2)
        after = rng.randint(0, 2)
        columns = [
            [None] * before
            + [entry[field] for entry in entries[position:stop]]
            + ["filler"] * after
            for field in range(1, 5)
        ]
        slices.append(
            (entries[position][0], *columns, before, before + stop - position)
        )
        position = stop
    return slices


def spoil_slices(rng, slices):
    """Return slices with one slice malformed, or in a form only the slow path takes."""
    slices = list(slices)
    index = rng.randrange(len(slices))
    timeline_id, seqs, kinds, expires, values, start, stop = slices[index]
    choice = rng.randrange(7)
    if choice == 0:
        slices[index] = list(slices[index])
    elif choice == 1:
        slices[index] = slices[index][:6]
    elif choice == 2:
        slices[index] = (timeline_id, seqs, kinds, expires, values, start, stop + 4)
    elif choice == 3:
        slices[index] = (timeline_id, seqs, kinds, expires, values, stop, start)
    elif choice == 4:
        slices[index] = (timeline_id, seqs, kinds, expires, values, -1, stop)
    elif choice == 5:
        slices[index] = (timeline_id, tuple(seqs), kinds, expires, values, start, stop)
    else:
        slices[index] = (timeline_id, seqs, kinds, expires, values, True, stop)
    return slices


def test_block_encode_runs_twins():
    extension = load_extension("block")
    rng = random.Random(33)
    for _ in range(2000):
        entries = random_entries(rng)
        if rng.random() < 0.4:
            entries = spoil_entries(rng, entries)
        slices = entries_to_slices(rng, entries)
        if rng.random() < 0.2:
            slices = spoil_slices(rng, slices)
            expected = outcome(block.PurePython.encode_block_runs, slices)
        else:
            expected = outcome(block.PurePython.encode_block, entries)
            assert outcome(block.PurePython.encode_block_runs, slices) == expected
        assert outcome(extension.encode_block_runs, slices) == expected, slices
        assert outcome(extension.encode_block_runs, iter(slices)) == expected


def test_block_encode_runs_empty_twins():
    extension = load_extension("block")
    expected = block.PurePython.encode_block([])
    for slices in [
        [],
        [(b"t", [], [], [], [], 0, 0)],
        [(b"", [1], [1], [0], [b""], 1, 1)],
    ]:
        assert extension.encode_block_runs(slices) == expected
        assert block.PurePython.encode_block_runs(slices) == expected


def test_run_block_end_twins():
    extension = load_extension("block")
    rng = random.Random(34)
    for _ in range(2000):
        values = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(0, 40))]
        if values and rng.random() < 0.2:
            values[rng.randrange(len(values))] = rng.choice(
                [bytearray(b"xy"), "abc", 7]
            )
        if rng.random() < 0.2:
            values = tuple(values)
        start = rng.randint(-2, len(values) + 2)
        overhead = rng.randint(0, 30)
        room = rng.randint(1, 2000)
        expected = outcome(
            block.PurePython.run_block_end, values, start, overhead, room
        )
        actual = outcome(extension.run_block_end, values, start, overhead, room)
        assert actual == expected, (values, start, overhead, room)


def test_block_decode_twins():
    extension = load_extension("block")
    rng = random.Random(32)
    for _ in range(3000):
        data = block.PurePython.encode_block(random_entries(rng))
        choice = rng.random()
        if choice < 0.1:
            data = rng.randbytes(rng.randint(0, 40))
        elif choice < 0.9:
            data = mutate_bytes(rng, data)
        expected = outcome(block.PurePython.decode_block, data)
        assert outcome(extension.decode_block, data) == expected, data.hex()
        assert outcome(extension.decode_block, memoryview(data)) == expected, data.hex()


def test_block_decode_type_errors_twins():
    extension = load_extension("block")
    for data in [None, 5, "text", memoryview(b"\x00" * 8)[::2]]:
        expected = outcome(block.PurePython.decode_block, data)
        assert expected[0] == "error"
        assert outcome(extension.decode_block, data) == expected


# Merge


class RecordingSource:
    """Iterable that records how many entries were read and may fail after some."""

    def __init__(self, entries, fail_after=None):
        self.entries = entries
        self.fail_after = fail_after
        self.reads = 0

    def __iter__(self):
        for entry in self.entries:
            if self.fail_after is not None and self.reads >= self.fail_after:
                raise RuntimeError(f"source failed after {self.reads} reads")
            self.reads += 1
            yield entry


def random_runs(rng, reverse):
    runs = []
    for index in range(rng.randint(0, 6)):
        keys = sorted(
            {
                (rng.choice([b"a", b"b", b"ba"]), rng.randint(0, 25))
                for _ in range(rng.randint(0, 12))
            }
        )
        run = [(t, s, 1, 0, b"%d" % index) for t, s in keys]
        if reverse:
            run.reverse()
        if run and rng.random() < 0.1:
            # Break the order, or plant an invalid entry.
            position = rng.randrange(len(run))
            run.insert(
                position,
                rng.choice([run[position], (b"a",), ("a", 1), (b"a", -1), [b"a", 1]]),
            )
        runs.append(run)
    return runs


def run_merge(merge_entries, runs, reverse, fail_after, take):
    """Return what a merge yields and raises, and how far it read each source."""
    sources = [RecordingSource(run, limit) for run, limit in zip(runs, fail_after)]
    merged = merge_entries(sources, reverse)
    results = []
    error = None
    try:
        for entry in merged:
            results.append(entry)
            if len(results) == take:
                break
    except Exception as exc:  # noqa: BLE001 - the comparison covers every class
        error = (type(exc), str(exc))
    return results, error, [source.reads for source in sources]


def test_merge_twins():
    extension = load_extension("merge")
    rng = random.Random(33)
    for _ in range(2000):
        reverse = rng.random() < 0.5
        runs = random_runs(rng, reverse)
        fail_after = [rng.choice([None, None, None, rng.randint(0, 5)]) for _ in runs]
        take = rng.choice([None, rng.randint(1, 10)])
        expected = run_merge(
            merge.PurePython.merge_entries, runs, reverse, fail_after, take
        )
        actual = run_merge(extension.merge_entries, runs, reverse, fail_after, take)
        assert actual == expected, (runs, reverse, fail_after, take)


# RESP parser


def random_stream(rng):
    pieces = [
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"SET k \"a\\x41 b\" 'c\\'d'\r\n",
        b"GET key\n",
        b"*0\r\n*-1\r\n\r\n",
        b"*2\r\n$0\r\n\r\n$2\r\n\r\n\r\n",
    ]
    data = bytearray(b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))))
    for _ in range(rng.randint(0, 3)):
        pos = rng.randrange(len(data) + 1)
        choice = rng.random()
        if choice < 0.4 and pos < len(data):
            data[pos] = rng.randrange(256)
        elif choice < 0.7:
            data[pos:pos] = rng.choice(
                [b"\r", b"\n", b"$", b"*", b'"', b"'", b"\\", b"-1", b"99"]
            )
        else:
            del data[pos : pos + rng.randint(1, 3)]
    return bytes(data)


def run_parser(parser_class, data, chunk_sizes):
    """Feed data in the given chunk sizes; record every call's result and pending_bytes."""
    parser = parser_class(max_bulk_bytes=100, max_args=8, max_inline_bytes=40)
    trace = []
    pos = 0
    for size in chunk_sizes:
        trace.append(("feed", outcome(parser.feed, data[pos : pos + size])))
        pos += size
        while True:
            result = outcome(parser.next_command)
            trace.append(("next", result, parser.pending_bytes()))
            if result[0] == "error" or result[1] is None:
                break
        if trace[-1][1][0] == "error":
            break
    return trace


def test_resp_parser_twins():
    extension = load_extension("resp")
    rng = random.Random(34)
    for _ in range(3000):
        data = (
            random_stream(rng)
            if rng.random() < 0.9
            else rng.randbytes(rng.randint(1, 80))
        )
        chunk_sizes = []
        remaining = len(data)
        while remaining > 0:
            size = min(remaining, rng.choice([1, 2, 3, 7, 64]))
            chunk_sizes.append(size)
            remaining -= size
        expected = run_parser(resp.PurePython.RespParser, data, chunk_sizes)
        assert run_parser(extension.RespParser, data, chunk_sizes) == expected, data


def test_split_inline_twins():
    extension = load_extension("resp")
    rng = random.Random(35)
    alphabet = b"ab \"'\\x4Fn\t\r\x0b"
    for _ in range(5000):
        line = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        max_args = rng.choice([1, 3, 100])
        expected = outcome(resp.PurePython.split_inline, line, max_args)
        assert outcome(extension.split_inline, line, max_args) == expected, line


@pytest.mark.parametrize(
    "limits",
    [
        {"max_args": 0},
        {"max_bulk_bytes": -5},
        {"max_inline_bytes": 2.5},
        {"max_args": True},
    ],
)
def test_resp_parser_limit_errors_twins(limits):
    extension = load_extension("resp")
    with pytest.raises(InvalidArgumentError) as pure_info:
        resp.PurePython.RespParser(**limits)
    with pytest.raises(InvalidArgumentError) as extension_info:
        extension.RespParser(**limits)
    assert str(extension_info.value) == str(pure_info.value)


# Runs of surviving entries


def random_merged_entries(rng):
    entries = []
    for timeline in sorted(rng.sample([b"a", b"b", b"cc", b"d\xff", b"e"], 3)):
        seq = 0
        for _ in range(rng.randint(0, 12)):
            seq += rng.randint(1, 3)
            expires_at = rng.choice([0, 0, 50, 150])
            kind = rng.choice([1, 1, 1, 1, 2])
            entries.append((timeline, seq, kind, expires_at, rng.randbytes(3)))
    return entries


def run_survivors(function, entries, tombstones, now_ms, max_run):
    counts = {"dropped_expired": 0, "dropped_deleted": 0}
    runs = list(function(iter(entries), tombstones, now_ms, counts, max_run))
    return runs, counts


def test_surviving_runs_twins():
    extension = load_extension("survivors")
    rng = random.Random(44)
    for _ in range(2000):
        entries = random_merged_entries(rng)
        tombstones = {
            timeline: [(low, low + rng.randint(1, 6))]
            for timeline in (b"a", b"cc", b"e")
            for low in [rng.randint(0, 20)]
            if rng.random() < 0.5
        }
        now_ms = rng.choice([0, 100, 200])
        max_run = rng.choice([1, 2, 4096])
        expected = run_survivors(
            survivors.PurePython.surviving_runs, entries, tombstones, now_ms, max_run
        )
        actual = run_survivors(
            extension.surviving_runs, entries, tombstones, now_ms, max_run
        )
        assert actual == expected, (entries, tombstones, now_ms, max_run)
        kept = sum(len(run[1]) for run in expected[0])
        dropped = sum(expected[1].values())
        assert kept + dropped <= len(entries)


# Import order


EXTENSION_MODULES = sorted(path.stem for path in (REPO / "tlsm_ext").glob("*.pyx"))
PACKAGE_MODULES = sorted(
    path.stem for path in (REPO / "tlsm").glob("*.py") if path.stem != "__init__"
)


def import_first(module):
    """Import module in a fresh interpreter; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        check=False,
        capture_output=True,
        env=server_env(),
        timeout=60,
    )


def test_every_module_imports_first():
    failures = {}
    for name in PACKAGE_MODULES:
        result = import_first(f"tlsm.{name}")
        if result.returncode:
            failures[name] = result.stderr.decode()[-300:]
    assert len(PACKAGE_MODULES) > 30
    assert failures == {}


@pytest.mark.parametrize("name", EXTENSION_MODULES)
def test_extension_imports_before_tlsm(name):
    load_extension(name)
    result = import_first(f"tlsm_ext.{name}")
    assert result.returncode == 0, result.stderr.decode()[-1500:]
