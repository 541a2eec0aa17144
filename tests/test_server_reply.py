"""The reply encoder (tlsm/reply.py): exact bytes in RESP2 and RESP3, checked
against hiredis, the parser redis-py uses."""

import hiredis
import pytest

from tlsm import reply


def parse(data):
    reader = hiredis.Reader(protocolError=ValueError, replyError=lambda m: ("error", m))
    reader.feed(data)
    value = reader.gets()
    assert reader.gets() is False, "trailing bytes after one reply"
    return value


def test_scalars_exact_bytes():
    assert reply.simple_string("OK") == b"+OK\r\n"
    assert reply.integer(-7) == b":-7\r\n"
    assert reply.bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert reply.bulk(b"") == b"$0\r\n\r\n"
    assert reply.array_header(3) == b"*3\r\n"


def test_nulls_per_protocol():
    assert reply.null_bulk(2) == b"$-1\r\n"
    assert reply.null_array(2) == b"*-1\r\n"
    assert reply.null_bulk(3) == b"_\r\n"
    assert reply.null_array(3) == b"_\r\n"


def test_error_line_breaks_replaced():
    assert reply.error("ERR bad\r\nvalue") == b"-ERR bad  value\r\n"


def test_map_is_flat_array_in_resp2():
    data = reply.encode_value({"a": 1, "b": [b"x", None]}, 2)
    assert data == b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*2\r\n$1\r\nx\r\n$-1\r\n"
    assert parse(data) == [b"a", 1, b"b", [b"x", None]]


def test_map_in_resp3():
    data = reply.encode_value({"a": 1}, 3)
    assert data == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert parse(data) == {b"a": 1}


@pytest.mark.parametrize(
    "proto, expected",
    [(2, [1, 0, b"1.5"]), (3, [True, False, 1.5])],
)
def test_booleans_and_doubles(proto, expected):
    assert parse(reply.encode_value([True, False, 1.5], proto)) == expected


def test_simple_string_value():
    assert reply.encode_value([reply.SimpleString("write")], 2) == b"*1\r\n+write\r\n"


def test_unsupported_type_raises():
    with pytest.raises(TypeError, match="cannot encode set"):
        reply.encode_value({1, 2}, 2)
