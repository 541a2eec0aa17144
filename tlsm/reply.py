"""RESP2 and RESP3 reply encoder.

Every function returns the bytes of one reply, ready for transport.write.
Nothing here does I/O. The wire forms, fixed by the RESP specification:

    simple string   +OK\\r\\n
    error           -ERR message\\r\\n
    integer         :42\\r\\n
    bulk string     $5\\r\\nhello\\r\\n
    array           *2\\r\\n<element><element>
    null            RESP2: $-1\\r\\n (bulk) or *-1\\r\\n (array)   RESP3: _\\r\\n
    map             RESP3: %2\\r\\n<key><value><key><value>
                    RESP2: the same pairs as a flat array of 2n elements
    double          RESP3: ,1.5\\r\\n      RESP2: a bulk string
    boolean         RESP3: #t\\r\\n        RESP2: the integer 1 or 0

Callers build replies as lists of bytes and join them once, because one join
is much cheaper than growing a bytes object piece by piece.
"""

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
EMPTY_ARRAY = b"*0\r\n"

_NULL_BULK_RESP2 = b"$-1\r\n"
_NULL_ARRAY_RESP2 = b"*-1\r\n"
_NULL_RESP3 = b"_\r\n"


class SimpleString(str):
    """A str that encode_value sends as a simple string instead of a bulk string."""


def simple_string(text):
    """Encode text (str without CR or LF) as a simple string."""
    return b"+" + text.encode("utf-8") + b"\r\n"


def error(message):
    """Encode an error reply.

    message must start with an uppercase code word such as ERR or NOTMEMBER,
    because clients dispatch on it. CR and LF would end the reply early, so
    they are replaced by spaces.
    """
    if "\r" in message or "\n" in message:
        message = message.replace("\r", " ").replace("\n", " ")
    return b"-" + message.encode("utf-8", "replace") + b"\r\n"


def integer(value):
    """Encode an int as an integer reply."""
    return b":%d\r\n" % value


def bulk(data):
    """Encode bytes as a bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def array_header(length):
    """Return the header of an array of length elements."""
    return b"*%d\r\n" % length


def null_bulk(proto):
    """Encode the null that stands for a missing string (RESP2 $-1, RESP3 _)."""
    return _NULL_RESP3 if proto == 3 else _NULL_BULK_RESP2


def null_array(proto):
    """Encode the null that stands for a missing array (RESP2 *-1, RESP3 _)."""
    return _NULL_RESP3 if proto == 3 else _NULL_ARRAY_RESP2


def map_header(length, proto):
    """Return the header of a map of length pairs.

    RESP2 has no map type, so there the header opens a flat array of
    2 * length elements, the layout Redis uses for HGETALL.
    """
    if proto == 3:
        return b"%%%d\r\n" % length
    return b"*%d\r\n" % (2 * length)


def encode_value(value, proto):
    """Encode a nested Python value as one reply.

    bytes and str become bulk strings, SimpleString a simple string, int an
    integer, bool a boolean, float a double, None a null bulk string, list and
    tuple an array, dict a map. Raises TypeError for any other type. This is
    the slow, general path for replies off the hot path (HELLO, INFO,
    COMMAND); per-request replies are built with the functions above.
    """
    parts = []
    _encode_into(parts, value, proto)
    return b"".join(parts)


def _encode_into(parts, value, proto):
    if isinstance(value, bytes):
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif isinstance(value, SimpleString):
        parts.append(simple_string(value))
    elif isinstance(value, str):
        data = value.encode("utf-8")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, bool):
        # bool before int: bool is a subclass of int.
        if proto == 3:
            parts.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            parts.append(b":1\r\n" if value else b":0\r\n")
    elif isinstance(value, int):
        parts.append(b":%d\r\n" % value)
    elif isinstance(value, float):
        text = repr(value).encode("ascii")
        if proto == 3:
            parts.append(b"," + text + b"\r\n")
        else:
            parts.append(b"$%d\r\n%b\r\n" % (len(text), text))
    elif value is None:
        parts.append(null_bulk(proto))
    elif isinstance(value, (list, tuple)):
        parts.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(parts, item, proto)
    elif isinstance(value, dict):
        parts.append(map_header(len(value), proto))
        for key, item in value.items():
            _encode_into(parts, key, proto)
            _encode_into(parts, item, proto)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a RESP reply")
