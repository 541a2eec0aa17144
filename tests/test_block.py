"""Tests for tlsm.block, run against whichever implementation is active.

tests/test_twins.py compares the Cython and pure-Python codecs directly.
"""

import random

import pytest

from tlsm import block
from tlsm.block import decode_block, encode_block
from tlsm.errors import CorruptionError, InvalidArgumentError
from tlsm.keys import KIND_DELETE, KIND_PUT, MAX_KEY_BYTES, MAX_SEQ


def random_entries(rng, max_timelines=10, max_per_timeline=20, max_value=200):
    """Return a random list of entries strictly increasing by (timeline_id, seq)."""
    timelines = sorted(
        {
            rng.randbytes(rng.randint(1, 12))
            for _ in range(rng.randint(1, max_timelines))
        }
    )
    entries = []
    for timeline_id in timelines:
        seq = rng.choice([0, rng.randint(0, 1000), rng.randint(0, MAX_SEQ // 2)])
        for _ in range(rng.randint(1, max_per_timeline)):
            expires_at = rng.choice([0, 0, rng.randint(1, 2**41), MAX_SEQ])
            value = rng.randbytes(rng.randint(0, max_value))
            entries.append(
                (
                    timeline_id,
                    seq,
                    rng.choice([KIND_PUT, KIND_DELETE]),
                    expires_at,
                    value,
                )
            )
            seq += rng.choice([1, 1, 2, rng.randint(1, 2**20)])
    return entries


def corruption(data):
    """Return the CorruptionError that decode_block raises for data, or fail."""
    with pytest.raises(CorruptionError) as info:
        decode_block(data)
    return info.value


def test_layout_of_known_block():
    entries = [
        (b"a", 5, 1, 0, b"x"),
        (b"a", 7, 2, 9, b""),
        (b"bc", 300, 1, 0, b"yz"),
    ]
    expected = bytes.fromhex(
        "05 01 61 05 01 78"  # tag kind 1 | new timeline, len 1, "a", seq 5, len 1, "x"
        "0a 02 09 00"  # tag kind 2 | expiry, delta 2, expires_at 9, len 0
        "05 02 62 63 ac 02 02 79 7a"  # new timeline "bc", seq 300 as ac 02, "yz"
        "03 00 00 00"  # entry count
    )
    assert encode_block(entries) == expected
    assert decode_block(expected) == entries


def test_empty_block():
    assert encode_block([]) == b"\x00\x00\x00\x00"
    assert decode_block(b"\x00\x00\x00\x00") == []


def test_round_trip_random():
    rng = random.Random(5)
    for _ in range(200):
        entries = random_entries(rng)
        data = encode_block(entries)
        assert decode_block(data) == entries


def test_round_trip_extreme_values():
    long_id = b"\xff" * MAX_KEY_BYTES
    entries = [
        (b"\x00", 0, 0, 0, b""),
        (b"\x00", MAX_SEQ, 255, MAX_SEQ, b"v" * 70000),
        (b"\x00\x00", 1, 1, 1, b"\x00"),
        (long_id, 0, 2, 0, b""),
        (long_id, MAX_SEQ, 2, 0, b""),
    ]
    data = encode_block(entries)
    assert decode_block(data) == entries


def test_encode_accepts_lists_and_iterators():
    entries = [(b"t", 1, 1, 0, b"a"), (b"t", 2, 1, 0, b"b")]
    as_lists = [list(entry) for entry in entries]
    assert encode_block(iter(as_lists)) == encode_block(entries)


def test_decode_accepts_bytes_like():
    entries = [(b"t", 1, 1, 0, b"a"), (b"u", 2, 2, 5, b"bc")]
    data = encode_block(entries)
    padded = b"??" + data + b"??"
    assert decode_block(bytearray(data)) == entries
    assert decode_block(memoryview(padded)[2:-2]) == entries
    assert all(
        type(field) is bytes
        for entry in decode_block(memoryview(data))
        for field in (entry[0], entry[4])
    )


def test_decode_rejects_non_contiguous_buffer():
    with pytest.raises(TypeError):
        decode_block(memoryview(b"\x00\x00\x00\x00" * 2)[::2])


def test_decode_shares_timeline_objects():
    entries = [(b"room", seq, 1, 0, b"") for seq in range(1, 4)] + [
        (b"zoo", 1, 1, 0, b"")
    ]
    decoded = decode_block(encode_block(entries))
    assert decoded[0][0] is decoded[1][0]
    assert decoded[1][0] is decoded[2][0]
    assert decoded[3][0] == b"zoo"


INVALID_ENTRIES = [
    # (entries, exact InvalidArgumentError message)
    (
        [b"x"],
        "entry 0 must be a tuple (timeline_id, seq, kind, expires_at, value), not bytes",
    ),
    (
        [(b"t", 1, 1, 0)],
        "entry 0 has 4 fields, expected 5 (timeline_id, seq, kind, expires_at, value)",
    ),
    ([("t", 1, 1, 0, b"")], "entry 0: timeline_id must be bytes, not str"),
    ([(b"", 1, 1, 0, b"")], "entry 0: timeline_id is 0 bytes, outside 1..513"),
    ([(b"t" * 514, 1, 1, 0, b"")], "entry 0: timeline_id is 514 bytes, outside 1..513"),
    ([(b"t", -1, 1, 0, b"")], "entry 0: seq -1 is outside 0..18446744073709551615"),
    (
        [(b"t", 2**64, 1, 0, b"")],
        "entry 0: seq 18446744073709551616 is outside 0..18446744073709551615",
    ),
    ([(b"t", 1.0, 1, 0, b"")], "entry 0: seq must be an int, not float"),
    ([(b"t", True, 1, 0, b"")], "entry 0: seq must be an int, not bool"),
    ([(b"t", 1, 256, 0, b"")], "entry 0: kind 256 is outside 0..255"),
    ([(b"t", 1, -1, 0, b"")], "entry 0: kind -1 is outside 0..255"),
    ([(b"t", 1, None, 0, b"")], "entry 0: kind must be an int, not NoneType"),
    (
        [(b"t", 1, 1, -5, b"")],
        "entry 0: expires_at -5 is outside 0..18446744073709551615",
    ),
    ([(b"t", 1, 1, 0, "v")], "entry 0: value must be bytes, not str"),
    ([(b"t", 1, 1, 0, bytearray(b"v"))], "entry 0: value must be bytes, not bytearray"),
    (
        [(b"t", 1, 1, 0, b""), (b"t", 1, 1, 0, b"")],
        (
            "entry 1: key (b't', 1) does not follow the key (b't', 1) of entry 0 in "
            "strictly increasing (timeline_id, seq) order"
        ),
    ),
    (
        [(b"t", 5, 1, 0, b""), (b"t", 4, 1, 0, b"")],
        (
            "entry 1: key (b't', 4) does not follow the key (b't', 5) of entry 0 in "
            "strictly increasing (timeline_id, seq) order"
        ),
    ),
    (
        [(b"t", 1, 1, 0, b""), (b"u", 1, 1, 0, b""), (b"ta", 9, 1, 0, b"")],
        (
            "entry 2: key (b'ta', 9) does not follow the key (b'u', 1) of entry 1 in "
            "strictly increasing (timeline_id, seq) order"
        ),
    ),
]


@pytest.mark.parametrize("entries, message", INVALID_ENTRIES)
def test_encode_rejects_invalid_entries(entries, message):
    with pytest.raises(InvalidArgumentError) as info:
        encode_block(entries)
    assert str(info.value) == message


def test_encode_rejects_value_above_limit():
    value = bytes(256 * 1024 * 1024 + 1)
    with pytest.raises(InvalidArgumentError) as info:
        encode_block([(b"t", 1, 1, 0, value)])
    assert str(info.value) == (
        "entry 0: value is 268435457 bytes, above the limit of 268435456 bytes"
    )


CORRUPT_BLOCKS = [
    # (hex bytes, exact CorruptionError message, offset)
    ("", "block: 0 bytes is too short for the entry count at offset 0", 0),
    ("01 00 00", "block: 3 bytes is too short for the entry count at offset 0", 0),
    (
        "01 00 00 00",
        "block: entry count 1 is too large for 0 bytes of entries at offset 0",
        0,
    ),
    (
        "05 01 61 05 01 78 03 00 00 00",
        "block: entry count 3 is too large for 6 bytes of entries at offset 6",
        6,
    ),
    (
        "05 01 61 05 01 78 00 00 00 00",
        "block: entry beyond the entry count 0 at offset 0",
        0,
    ),
    (
        "05 01 61 05 03 78 78 78 02 00 00 00",
        "block: entry count 2 does not match the 1 entries found at offset 8",
        8,
    ),
    (
        "05 01 61 05 00 04 01 00 01 00 00 00",
        "block: entry beyond the entry count 1 at offset 5",
        5,
    ),
    ("81 08 01 61 05 00 01 00 00 00", "block: invalid kind 256 at offset 0", 0),
    ("ff ff ff 01 00 00 01 00 00 00", "block: invalid kind 1048575 at offset 0", 0),
    (
        "04 05 00 00 00 01 00 00 00",
        "block: first entry without a timeline id at offset 0",
        0,
    ),
    (
        "05 00 05 00 00 00 01 00 00 00",
        "block: invalid timeline id length 0 at offset 1",
        1,
    ),
    (
        "05 82 04 05 00 00 00 01 00 00 00",
        "block: invalid timeline id length 514 at offset 1",
        1,
    ),
    (
        "05 09 61 05 00 00 00 01 00 00 00",
        "block: timeline id length 9 past the end at offset 1",
        1,
    ),
    (
        "05 01 61 05 05 78 01 00 00 00",
        "block: value length 5 past the end at offset 4",
        4,
    ),
    (
        "05 01 61 05 ff ff ff ff 0f 01 00 00 00",
        "block: value length 4294967295 past the end at offset 4",
        4,
    ),
    ("05 01 61 05 80 01 00 00 00", "block: truncated varint at offset 4", 4),
    (
        "05 01 61 ff ff ff ff ff ff ff ff ff 02 00 02 00 00 00",
        "block: varint longer than 64 bits at offset 3",
        3,
    ),
    (
        "05 01 61 ff ff ff ff ff ff ff ff ff ff 00 01 00 00 00",
        "block: varint longer than 64 bits at offset 3",
        3,
    ),
    (
        "05 01 61 05 00 04 00 00 02 00 00 00",
        "block: seq delta 0 (seqs must increase) at offset 6",
        6,
    ),
    (
        "05 01 61 ff ff ff ff ff ff ff ff ff 01 00 04 01 00 02 00 00 00",
        "block: seq above 2**64-1 at offset 15",
        15,
    ),
    (
        "05 01 62 05 00 05 01 61 06 00 02 00 00 00",
        "block: timeline id not above the previous one at offset 6",
        6,
    ),
    (
        "05 01 61 05 00 05 01 61 06 00 02 00 00 00",
        "block: timeline id not above the previous one at offset 6",
        6,
    ),
    (
        "05 02 61 62 05 00 05 01 61 06 00 02 00 00 00",
        "block: timeline id not above the previous one at offset 7",
        7,
    ),
    (
        "07 01 61 05 00 00 01 00 00 00",
        "block: expires_at 0 with the expiry flag set at offset 4",
        4,
    ),
]


@pytest.mark.parametrize("hex_bytes, message, offset", CORRUPT_BLOCKS)
def test_decode_reports_corruption(hex_bytes, message, offset):
    error = corruption(bytes.fromhex(hex_bytes))
    assert str(error) == message
    assert error.offset == offset


def test_decode_accepts_longest_varint():
    data = bytes.fromhex("05 01 61 ff ff ff ff ff ff ff ff ff 01 00 01 00 00 00")
    assert decode_block(data) == [(b"a", MAX_SEQ, 1, 0, b"")]


def check_decoded(entries):
    """Assert that decoded entries are well formed and strictly ordered."""
    for entry in entries:
        timeline_id, seq, kind, expires_at, value = entry
        assert type(timeline_id) is bytes and 1 <= len(timeline_id) <= MAX_KEY_BYTES
        assert 0 <= seq <= MAX_SEQ
        assert 0 <= kind <= 255
        assert 0 <= expires_at <= MAX_SEQ
        assert type(value) is bytes
    keys = [(entry[0], entry[1]) for entry in entries]
    assert keys == sorted(set(keys))
    # Anything decode_block returns must be encodable again.
    encode_block(entries)


def decode_or_corruption(data):
    try:
        entries = decode_block(data)
    except CorruptionError as exc:
        assert str(exc).startswith("block: ")
        assert 0 <= exc.offset <= len(data)
        return
    check_decoded(entries)


def test_fuzz_random_bytes():
    rng = random.Random(21)
    for _ in range(5000):
        decode_or_corruption(rng.randbytes(rng.randint(0, 64)))


def test_fuzz_truncations():
    rng = random.Random(22)
    for _ in range(30):
        data = encode_block(
            random_entries(rng, max_timelines=3, max_per_timeline=5, max_value=20)
        )
        for end in range(len(data)):
            decode_or_corruption(data[:end])
            decode_or_corruption(data[:end] + data[-4:])


def test_fuzz_bit_flips_and_edits():
    rng = random.Random(23)
    for _ in range(4000):
        data = bytearray(
            encode_block(
                random_entries(rng, max_timelines=3, max_per_timeline=5, max_value=20)
            )
        )
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.5:
                data[pos] ^= 1 << rng.randrange(8)
            elif choice < 0.7:
                data[pos] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
            elif choice < 0.85:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        decode_or_corruption(bytes(data))


def test_implementation_name():
    assert block.IMPLEMENTATION in ("cython", "python")
