"""Byte layouts of the IM layer: table entries, composite timeline ids and cursors.

Everything here is on disk or on the wire: a later version must keep
reading these layouts and may only add new kinds. Integers are big-endian.

Tables (each a tlsm table, so their timelines never mix):

    im.store  timeline = conversation   store entry, one per message
    im.sync   timeline = user           sync entry: a message reference or a
                                        read fan-out marker (expires, sync TTL)
    im.conv   timeline = conversation   conversation event: join, leave,
                                        fan-out switch, policy
    im.user   timeline = user           user event: join or leave of a conversation
    im.idem   timeline = idem key       idempotency record (expires, window)
    im.ack    timeline = device key     a device's acknowledged cursor
    im.read   timeline = read key       a user's read marker in a conversation

    store entry:  kind u8 = 1 | sender_len u16 | sender | payload
    sync entry:   kind u8 | store_seq u64 | conversation
                  kind 1 message reference, 2 read fan-out opens after
                  store_seq, 3 read fan-out closes at store_seq (inclusive)
    conv event:   kind u8 | store_seq u64 | body
                  kind 1 join (body: user), 2 leave (body: user),
                  3 fan-out switch (body: mode u8, 0 write, 1 read),
                  4 threshold (body: u64, 0 = server default),
                  5 retention (body: u64 seconds, 0 = forever)
    user event:   kind u8 (1 join, 2 leave) | store_seq u64 | conversation
    idem record:  store_seq u64 | payload_crc32 u32 | conversation
    ack entry:    cursor token bytes
    read entry:   store_seq u64

    idem key:     sender_len u8 | sender | client_msg_id
    device key:   user_len u8 | user | device
    read key:     user_len u8 | user | conversation

In every event the store_seq is the conversation's last store seq when the
event was written, so a join at store_seq J admits messages above J and a
leave at L keeps messages up to L.

Cursor token (base64url without padding of):

    version u8 = 1 | issued_ms u64 | sync_pos u64 | open_count u16 |
    open_count x (store_pos u64 | conversation_len u16 | conversation) |
    crc32 u32 of (user + every byte before it)

The first base64 character of a version-1 token is "A", so a token is never
all digits and never "-", which keeps it apart from the legacy integer form
and from the empty cursor.
"""

import base64
import binascii
import struct
import zlib

from .errors import InvalidArgumentError

STORE_KIND_MESSAGE = 1

SYNC_KIND_MESSAGE = 1
SYNC_KIND_OPEN = 2
SYNC_KIND_CLOSE = 3

CONV_KIND_JOIN = 1
CONV_KIND_LEAVE = 2
CONV_KIND_FANOUT = 3
CONV_KIND_THRESHOLD = 4
CONV_KIND_RETENTION = 5

USER_KIND_JOIN = 1
USER_KIND_LEAVE = 2

MODE_WRITE = 0
MODE_READ = 1

CURSOR_VERSION = 1
EMPTY_CURSOR = b"-"

MAX_USER_BYTES = 255
MAX_CONVERSATION_BYTES = 256
MAX_DEVICE_BYTES = 256
MAX_CLIENT_MSG_ID_BYTES = 128
# A cursor names every read fan-out conversation of its user; this bounds
# the argument a client can make the server decode.
MAX_CURSOR_BYTES = 1024 * 1024

_STORE_HEADER = struct.Struct(">BH")
EVENT_HEADER = struct.Struct(">BQ")
_IDEM_HEADER = struct.Struct(">QI")
_U64 = struct.Struct(">Q")
_CURSOR_HEADER = struct.Struct(">BQQH")
_CURSOR_OPEN = struct.Struct(">QH")
_CRC = struct.Struct(">I")


class CursorError(InvalidArgumentError):
    """A cursor token is malformed, belongs to another user or fails its checksum."""


def check_id(value, field, limit):
    """Return value (bytes) after checking it is 1..limit bytes long."""
    if not value:
        raise InvalidArgumentError(f"{field} must not be empty")
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is {len(value)} bytes, above the limit of {limit} bytes"
        )
    return value


def encode_store_entry(sender, payload):
    """Return the store entry of a message."""
    return _STORE_HEADER.pack(STORE_KIND_MESSAGE, len(sender)) + sender + payload


def store_header_bytes(sender):
    """Return the bytes a store entry adds to the payload of sender's message."""
    return _STORE_HEADER.size + len(sender)


def decode_store_entry(data):
    """Return (sender, payload) of a store entry."""
    kind, sender_len = _STORE_HEADER.unpack_from(data)
    if kind != STORE_KIND_MESSAGE:
        raise InvalidArgumentError(f"store entry has unknown kind {kind}")
    end = _STORE_HEADER.size + sender_len
    return data[_STORE_HEADER.size : end], data[end:]


def encode_event(kind, store_seq, body):
    """Return a sync entry, conversation event or user event."""
    return EVENT_HEADER.pack(kind, store_seq) + body


def decode_event(data):
    """Return (kind, store_seq, body) of a sync entry or event."""
    kind, store_seq = EVENT_HEADER.unpack_from(data)
    return kind, store_seq, data[EVENT_HEADER.size :]


def encode_u64(value):
    return _U64.pack(value)


def decode_u64(data):
    return _U64.unpack_from(data)[0]


def composite_key(owner, name):
    """Return owner_len u8 | owner | name, the id of a per-owner timeline."""
    return bytes((len(owner),)) + owner + name


def encode_idem_record(store_seq, payload, conversation):
    return _IDEM_HEADER.pack(store_seq, zlib.crc32(payload)) + conversation


def decode_idem_record(data):
    """Return (store_seq, payload_crc32, conversation) of an idempotency record."""
    store_seq, crc = _IDEM_HEADER.unpack_from(data)
    return store_seq, crc, data[_IDEM_HEADER.size :]


def encode_cursor(user, issued_ms, sync_pos, open_positions):
    """Return the token of a cursor; open_positions maps conversation to store pos."""
    parts = [
        _CURSOR_HEADER.pack(CURSOR_VERSION, issued_ms, sync_pos, len(open_positions))
    ]
    for conversation in sorted(open_positions):
        parts.append(_CURSOR_OPEN.pack(open_positions[conversation], len(conversation)))
        parts.append(conversation)
    body = b"".join(parts)
    body += _CRC.pack(zlib.crc32(user + body))
    return base64.urlsafe_b64encode(body).rstrip(b"=")


def decode_cursor(user, token):
    """Return (issued_ms, sync_pos, {conversation: store_pos}) of a token.

    Raises CursorError naming the defect: bad base64, an unknown version, a
    wrong length or a checksum mismatch (which a cursor of another user
    also gives).
    """
    if len(token) > MAX_CURSOR_BYTES:
        raise CursorError(
            f"cursor is {len(token)} bytes, above the limit of {MAX_CURSOR_BYTES}"
        )
    try:
        body = base64.b64decode(
            token + b"=" * (-len(token) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        raise CursorError("cursor is not valid base64url") from None
    if len(body) < _CURSOR_HEADER.size + _CRC.size:
        raise CursorError(f"cursor is {len(body)} bytes long after decoding, too short")
    if body[0] != CURSOR_VERSION:
        raise CursorError(f"cursor has version {body[0]}, expected {CURSOR_VERSION}")
    (crc,) = _CRC.unpack_from(body, len(body) - _CRC.size)
    if zlib.crc32(user + body[: -_CRC.size]) != crc:
        raise CursorError(
            "cursor checksum mismatch: damaged, or issued to another user"
        )
    _, issued_ms, sync_pos, count = _CURSOR_HEADER.unpack_from(body)
    offset = _CURSOR_HEADER.size
    end = len(body) - _CRC.size
    positions = {}
    for _ in range(count):
        if offset + _CURSOR_OPEN.size > end:
            raise CursorError("cursor ends inside its conversation list")
        store_pos, length = _CURSOR_OPEN.unpack_from(body, offset)
        offset += _CURSOR_OPEN.size
        positions[body[offset : offset + length]] = store_pos
        offset += length
    if offset != end:
        raise CursorError(f"cursor has {end - offset} stray bytes after its list")
    return issued_ms, sync_pos, positions
