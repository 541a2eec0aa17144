"""Tests for tlsm.merge.merge_entries, run against whichever implementation is active.

tests/test_twins.py compares the Cython and pure-Python merges directly.
"""

import itertools
import random

import pytest

from tlsm import merge
from tlsm.errors import InvalidArgumentError
from tlsm.keys import MAX_SEQ
from tlsm.merge import merge_entries


def random_sources(
    rng, source_count, max_entries=30, timelines=(b"a", b"ab", b"b", b"c\x00")
):
    """Return source_count ascending runs whose keys overlap; values name the source."""
    sources = []
    for index in range(source_count):
        keys = sorted(
            {
                (rng.choice(timelines), rng.randint(0, 40))
                for _ in range(rng.randint(0, max_entries))
            }
        )
        sources.append([(t, s, 1, 0, b"source %d" % index) for t, s in keys])
    return sources


def expected_merge(sources, reverse=False):
    """Return the merge of sources computed with a dict (lowest source index wins)."""
    model = {}
    for source in reversed(sources):
        for entry in source:
            model[(entry[0], entry[1])] = entry
    return [model[key] for key in sorted(model, reverse=reverse)]


class CountingSource:
    """Iterable over entries that counts reads and raises when read past a limit."""

    def __init__(self, entries, max_reads=None):
        self.entries = entries
        self.max_reads = max_reads
        self.reads = 0

    def __iter__(self):
        for entry in self.entries:
            self._count_read()
            yield entry
        self._count_read()

    def _count_read(self):
        self.reads += 1
        if self.max_reads is not None and self.reads > self.max_reads:
            raise RuntimeError(
                f"source read {self.reads} times, limit {self.max_reads}"
            )


@pytest.mark.parametrize("reverse", [False, True])
def test_random_runs_match_dict_model(reverse):
    rng = random.Random(3 + reverse)
    for _ in range(300):
        sources = random_sources(rng, rng.randint(0, 8))
        if reverse:
            sources = [source[::-1] for source in sources]
        assert list(merge_entries(sources, reverse=reverse)) == expected_merge(
            sources, reverse
        )


def test_newest_source_wins():
    newest = [(b"t", 2, 1, 0, b"new"), (b"t", 3, 2, 0, b"")]
    older = [(b"t", 1, 1, 0, b"a"), (b"t", 2, 1, 0, b"old"), (b"t", 3, 1, 0, b"old")]
    oldest = [(b"t", 2, 1, 0, b"oldest"), (b"t", 4, 1, 0, b"d")]
    assert list(merge_entries([newest, older, oldest])) == [
        (b"t", 1, 1, 0, b"a"),
        (b"t", 2, 1, 0, b"new"),
        (b"t", 3, 2, 0, b""),
        (b"t", 4, 1, 0, b"d"),
    ]


def test_duplicate_consumed_from_older_sources():
    newest = CountingSource([(b"t", 1, 1, 0, b"new")])
    older = CountingSource([(b"t", 1, 1, 0, b"old")])
    merged = merge_entries([newest, older])
    assert next(merged) == (b"t", 1, 1, 0, b"new")
    with pytest.raises(StopIteration):
        next(merged)
    assert newest.reads == 2
    assert older.reads == 2


def test_timeline_order_is_bytewise():
    first = [(b"a", 9, 1, 0, b""), (b"ab", 1, 1, 0, b""), (b"b", 0, 1, 0, b"")]
    second = [(b"a\x00", 5, 1, 0, b""), (b"a\xff", 5, 1, 0, b"")]
    keys = [entry[:2] for entry in merge_entries([first, second])]
    assert keys == [(b"a", 9), (b"a\x00", 5), (b"ab", 1), (b"a\xff", 5), (b"b", 0)]


def test_no_sources_and_empty_sources():
    assert list(merge_entries([])) == []
    assert list(merge_entries([[], [], []])) == []
    assert list(merge_entries([[], [(b"t", 1, 1, 0, b"")], []], reverse=True)) == [
        (b"t", 1, 1, 0, b"")
    ]


def test_single_source_passes_through():
    source = [(b"t", seq, 1, 0, b"v%d" % seq) for seq in range(100)]
    merged = list(merge_entries([source]))
    assert merged == source
    assert all(out is entry for out, entry in zip(merged, source))


@pytest.mark.parametrize("reverse", [False, True])
def test_hundred_sources(reverse):
    rng = random.Random(100)
    sources = random_sources(rng, 100, max_entries=50)
    if reverse:
        sources = [source[::-1] for source in sources]
    assert list(merge_entries(sources, reverse)) == expected_merge(sources, reverse)


def test_extreme_seqs():
    first = [(b"t", 0, 1, 0, b""), (b"t", MAX_SEQ, 1, 0, b"first")]
    second = [(b"t", MAX_SEQ - 1, 1, 0, b""), (b"t", MAX_SEQ, 1, 0, b"second")]
    keys = [entry[1] for entry in merge_entries([first, second])]
    assert keys == [0, MAX_SEQ - 1, MAX_SEQ]
    assert list(merge_entries([first, second]))[-1][4] == b"first"


def test_accepts_iterables_and_generators():
    def generate():
        yield (b"t", 2, 1, 0, b"")

    merged = merge_entries(iter([generate(), ((b"t", 1, 1, 0, b""),)]))
    assert [entry[1] for entry in merged] == [1, 2]


def test_creating_merge_reads_nothing():
    source = CountingSource([(b"t", 1, 1, 0, b"")], max_reads=0)
    merge_entries([source])
    assert source.reads == 0


def test_limit_reads_few_entries():
    evens = CountingSource((b"t", seq, 1, 0, b"") for seq in range(0, 2_000_000, 2))
    odds = CountingSource((b"t", seq, 1, 0, b"") for seq in range(1, 2_000_000, 2))
    first_ten = list(itertools.islice(merge_entries([evens, odds]), 10))
    assert [entry[1] for entry in first_ten] == list(range(10))
    # One read per source to start, then one per entry returned after the first.
    assert evens.reads + odds.reads == 11


def test_source_not_read_past_needed_entry():
    early = CountingSource([(b"a", seq, 1, 0, b"") for seq in range(1, 6)])
    guarded = CountingSource([(b"z", 1, 1, 0, b"")], max_reads=1)
    merged = merge_entries([early, guarded])
    keys = [entry[:2] for entry in itertools.islice(merged, 6)]
    assert keys == [(b"a", 1), (b"a", 2), (b"a", 3), (b"a", 4), (b"a", 5), (b"z", 1)]
    assert guarded.reads == 1
    with pytest.raises(RuntimeError, match="source read 2 times, limit 1"):
        next(merged)
    with pytest.raises(StopIteration):
        next(merged)


@pytest.mark.parametrize(
    "source, reverse, message",
    [
        (
            [(b"t", 2, 1, 0, b""), (b"t", 1, 1, 0, b"")],
            False,
            "merge source 1 is not in strictly ascending order: key (b't', 1) follows (b't', 2)",
        ),
        (
            [(b"t", 2, 1, 0, b""), (b"t", 2, 1, 0, b"")],
            False,
            "merge source 1 is not in strictly ascending order: key (b't', 2) follows (b't', 2)",
        ),
        (
            [(b"t", 1, 1, 0, b""), (b"t", 2, 1, 0, b"")],
            True,
            "merge source 1 is not in strictly descending order: key (b't', 2) follows (b't', 1)",
        ),
        (
            [(b"b", 1, 1, 0, b""), (b"a", 5, 1, 0, b"")],
            False,
            "merge source 1 is not in strictly ascending order: key (b'a', 5) follows (b'b', 1)",
        ),
        (
            [[b"t", 1, 1, 0, b""]],
            False,
            "merge source 1 yielded list, expected an entry tuple (timeline_id, seq, ...)",
        ),
        (
            [(b"t",)],
            False,
            "merge source 1 yielded tuple, expected an entry tuple (timeline_id, seq, ...)",
        ),
        (
            [("t", 1, 1, 0, b"")],
            False,
            "merge source 1 yielded a timeline_id of type str, expected bytes",
        ),
        (
            [(b"t", -1, 1, 0, b"")],
            False,
            "merge source 1 yielded seq -1, expected an int in 0..18446744073709551615",
        ),
        (
            [(b"t", 2**64, 1, 0, b"")],
            False,
            (
                "merge source 1 yielded seq 18446744073709551616, expected an int "
                "in 0..18446744073709551615"
            ),
        ),
        (
            [(b"t", "1", 1, 0, b"")],
            False,
            "merge source 1 yielded seq '1', expected an int in 0..18446744073709551615",
        ),
    ],
)
def test_invalid_source_rejected(source, reverse, message):
    sources = [[], source]
    merged = merge_entries(sources, reverse=reverse)
    with pytest.raises(InvalidArgumentError) as info:
        list(merged)
    assert str(info.value) == message
    with pytest.raises(StopIteration):
        next(merged)


def test_source_exception_propagates_unchanged():
    def failing():
        yield (b"t", 1, 1, 0, b"")
        raise OSError("disk read failed")

    merged = merge_entries([failing(), [(b"t", 5, 1, 0, b"")]])
    assert next(merged)[1] == 1
    with pytest.raises(OSError, match="disk read failed"):
        next(merged)


def test_non_iterable_source_raises_type_error():
    merged = merge_entries([[], 5])
    with pytest.raises(TypeError):
        next(merged)


def test_implementation_name():
    assert merge.IMPLEMENTATION in ("cython", "python")
