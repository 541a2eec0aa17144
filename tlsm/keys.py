"""Keys, entry kinds and input limits shared by every layer.

An entry is the tuple ``(timeline_id, seq, kind, expires_at, value)``:
``timeline_id`` is bytes, ``seq`` an unsigned 64-bit integer, ``kind`` one of
the KIND_* constants, ``expires_at`` Unix time in milliseconds (0 = never) and
``value`` bytes. Entries order by ``(timeline_id, seq)``: bytes compare
lexicographically, seqs numerically. The KIND_* values are stored on disk and
must never change.
"""

from .errors import InvalidArgumentError

# On disk: entry kinds in log records and table blocks.
KIND_PUT = 1
KIND_DELETE = 2
# A range tombstone in the log: seq is the range start and the value contains
# the exclusive end as a little-endian u64. Tables keep tombstones in their
# own block, never among entries.
KIND_RANGE_DELETE = 3

MAX_SEQ = (1 << 64) - 1

# Limits on caller input. A timeline id longer than this is almost certainly
# a mistake (ids are user or conversation names), and a payload above the
# default limit belongs in a blob store with a reference in the timeline.
MAX_TIMELINE_ID_BYTES = 512
# Stored keys are one table-id byte followed by the timeline id.
MAX_TABLES = 256
MAX_KEY_BYTES = MAX_TIMELINE_ID_BYTES + 1
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# Hard ceiling for the max_payload_bytes option: the log and block formats
# store lengths as 32-bit values.
MAX_PAYLOAD_BYTES_LIMIT = 256 * 1024 * 1024


def encode_timeline_id(timeline_id):
    """Return timeline_id as bytes, validating type and length.

    Raises InvalidArgumentError for anything other than a non-empty str
    (encoded as UTF-8) or bytes of at most MAX_TIMELINE_ID_BYTES.
    """
    if isinstance(timeline_id, str):
        try:
            encoded = timeline_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"timeline_id {timeline_id[:40]!r} is not encodable as UTF-8 ({exc.reason})"
            ) from None
    elif isinstance(timeline_id, (bytes, bytearray, memoryview)):
        encoded = bytes(timeline_id)
    else:
        raise InvalidArgumentError(
            f"timeline_id must be str or bytes, not {type(timeline_id).__name__}"
        )
    if not encoded:
        raise InvalidArgumentError("timeline_id must not be empty")
    if len(encoded) > MAX_TIMELINE_ID_BYTES:
        raise InvalidArgumentError(
            f"timeline_id is {len(encoded)} bytes, above the limit of "
            f"{MAX_TIMELINE_ID_BYTES} bytes"
        )
    return encoded


def check_payload(payload, max_payload_bytes):
    """Return payload as bytes, validating type and size."""
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, (bytearray, memoryview)):
        data = bytes(payload)
    else:
        raise InvalidArgumentError(
            f"payload must be bytes, not {type(payload).__name__}"
        )
    if len(data) > max_payload_bytes:
        raise InvalidArgumentError(
            f"payload is {len(data)} bytes, above the limit of "
            f"{max_payload_bytes} bytes (option max_payload_bytes)"
        )
    return data


def check_seq(seq, name="seq"):
    """Return seq as int, raising InvalidArgumentError unless 0 <= seq <= MAX_SEQ."""
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(seq).__name__}")
    if seq < 0 or seq > MAX_SEQ:
        raise InvalidArgumentError(f"{name} {seq} is outside 0..{MAX_SEQ}")
    return seq
