"""SummaryIndex: timeline lookups in a table's raw summary body.

The extension binary-searches the body for a table's first lookups and then
hashes the ids into a table over it; the pure twin parses it into a dict. Both must return the same spans and raise the same errors, also on
truncated and damaged bodies.
"""

import random
import struct

import pytest
from twins import implementations

from tlsm import scan, table_index
from tlsm.keys import MAX_SEQ

_SUMMARY_ENTRY = struct.Struct("<HQQQ")


def summary_body(spans):
    parts = []
    for timeline_id in sorted(spans):
        min_seq, max_seq, count = spans[timeline_id]
        parts.append(_SUMMARY_ENTRY.pack(len(timeline_id), min_seq, max_seq, count))
        parts.append(timeline_id)
    return b"".join(parts)


def random_spans(rng, count):
    spans = {}
    while len(spans) < count:
        # Short ids share prefixes, so the search compares ids that differ
        # only in length or in their last byte.
        timeline_id = bytes(rng.choice(b"\x00ab\xff") for _ in range(rng.randint(1, 5)))
        min_seq = rng.choice([0, 1, rng.randint(0, MAX_SEQ)])
        spans[timeline_id] = (min_seq, rng.randint(min_seq, MAX_SEQ), rng.randint(0, 9))
    return spans


def outcome(function, *args):
    try:
        return ("ok", function(*args))
    except ValueError as exc:
        return ("error", exc.args)


@pytest.mark.parametrize(
    "implementation", implementations(table_index, "table_index", "SummaryIndex")
)
def test_summary_index_finds_every_span(implementation):
    rng = random.Random(1)
    # 1,024 ids fill half of the extension's 2,048 slots, the highest load
    # it allows, so some lookups probe several slots.
    for count in (0, 1, 2, 3, 50, 400, 1024):
        spans = random_spans(rng, count)
        index = implementation(summary_body(spans))
        assert len(index) == count
        for timeline_id, span in spans.items():
            assert index.get(timeline_id) == span
        for _ in range(200):
            absent = rng.randbytes(rng.randint(1, 6))
            assert index.get(absent) == spans.get(absent)


def test_summary_index_twins_agree_on_damage():
    extension = pytest.importorskip("tlsm_ext.table_index").SummaryIndex
    pure = table_index.PurePython.SummaryIndex
    rng = random.Random(3)
    body = summary_body(random_spans(rng, 30))
    for _ in range(300):
        cut = bytearray(body[: rng.randrange(len(body) + 1)])
        if cut and rng.random() < 0.5:
            cut[rng.randrange(len(cut))] = rng.randrange(256)
        data = bytes(cut)
        expected = outcome(scan.PurePython.parse_summary, data)
        assert outcome(lambda d: dict(pure(d)._spans), data) == expected
        assert outcome(scan.parse_summary, data) == expected
        # Ids out of order are rejected, so every lookup in an accepted body
        # returns the twin's span, by binary search and by hash.
        ext = outcome(extension, data)
        if expected[0] == "error":
            assert ext[:3] == expected[:3]
            continue
        assert ext[0] == "ok"
        spans = expected[1]
        for _ in range(2):
            assert {key: ext[1].get(key) for key in spans} == spans
            for _ in range(40):
                assert ext[1].get(b"absent") == spans.get(b"absent")


@pytest.mark.parametrize(
    "implementation", implementations(table_index, "table_index", "SummaryIndex")
)
@pytest.mark.parametrize("ids", [[b"a", b"a"], [b"b", b"a"], [b"ab", b"a"]])
def test_summary_ids_out_of_order_are_rejected(implementation, ids):
    entries = [_SUMMARY_ENTRY.pack(len(i), 1, 2, 2) + i for i in ids]
    body = b"".join(entries)
    problem = ("summary timeline id not above the previous one", len(entries[0]))
    with pytest.raises(ValueError) as caught:
        implementation(body)
    assert caught.value.args == problem
    for parse in (scan.PurePython.parse_summary, scan.parse_summary):
        with pytest.raises(ValueError) as caught:
            parse(body)
        assert caught.value.args == problem


@pytest.mark.parametrize(
    "implementation", implementations(table_index, "table_index", "SummaryIndex")
)
@pytest.mark.parametrize("timeline_id", [None, "a", 7])
def test_summary_index_rejects_ids_not_bytes(implementation, timeline_id):
    index = implementation(summary_body({b"a": (1, 2, 2)}))
    with pytest.raises(TypeError):
        index.get(timeline_id)
