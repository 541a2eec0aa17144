"""Codec for table data blocks: sorted entries packed with shared key parts.

Layout (on disk, frozen: changing it makes existing tables unreadable)::

    block  := entry* | count (u32, little-endian)
    entry  := tag (varint)
              | timeline_len (varint) | timeline_id   present iff tag bit 0
              | seq_or_delta (varint)
              | expires_at (varint)                  present iff tag bit 1
              | value_len (varint) | value

    tag bit 0      timeline_id differs from the previous entry's (always set
                   on the first entry)
    tag bit 1      expires_at != 0
    tag bits 2..9  kind (kind = tag >> 2, 0..255)
    seq_or_delta   the full seq when tag bit 0 is set, else seq minus the
                   previous entry's seq (at least 1)
    varint         unsigned LEB128: 7 bits per byte, low bits first, high bit
                   set on every byte but the last, at most 10 bytes

Entries in a block are strictly increasing by (timeline_id, seq). An entry
is the tuple ``(timeline_id, seq, kind, expires_at, value)`` described in
tlsm.keys. The timeline_id field contains the stored key (a table-id byte and
the timeline id), so it is 1 to MAX_KEY_BYTES bytes.

The pure-Python implementation below is the reference. tlsm_ext/block.pyx
implements the same functions in Cython. When the extension is built, this
module rebinds encode_block, encode_block_runs, run_block_end, decode_block
and scan_block to them, and the pure functions stay reachable through
``PurePython``.
"""

import itertools
import types

from . import _impl
from .errors import CorruptionError, InvalidArgumentError
from .keys import KIND_PUT, MAX_KEY_BYTES, MAX_PAYLOAD_BYTES_LIMIT, MAX_SEQ

# On disk: tag bits.
TAG_NEW_TIMELINE = 0x01
TAG_HAS_EXPIRY = 0x02
TAG_KIND_SHIFT = 2
MAX_KIND = 255
COUNT_BYTES = 4
MAX_COUNT = 0xFFFFFFFF
# The smallest entry is 3 bytes (tag, seq delta, value length), so a count
# above a third of the entry bytes cannot be right.
MIN_ENTRY_BYTES = 3


def _check_uint(value, name, index, maximum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            f"entry {index}: {name} must be an int, not {type(value).__name__}"
        )
    if value < 0 or value > maximum:
        raise InvalidArgumentError(
            f"entry {index}: {name} {value} is outside 0..{maximum}"
        )


def _check_entry(entry, index):
    """Validate one entry for encode_block and return its five fields."""
    if not isinstance(entry, (tuple, list)):
        raise InvalidArgumentError(
            f"entry {index} must be a tuple (timeline_id, seq, kind, expires_at, "
            f"value), not {type(entry).__name__}"
        )
    if len(entry) != 5:
        raise InvalidArgumentError(
            f"entry {index} has {len(entry)} fields, expected 5 (timeline_id, "
            "seq, kind, expires_at, value)"
        )
    timeline_id, seq, kind, expires_at, value = entry
    if not isinstance(timeline_id, bytes):
        raise InvalidArgumentError(
            f"entry {index}: timeline_id must be bytes, "
            f"not {type(timeline_id).__name__}"
        )
    if not 1 <= len(timeline_id) <= MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"entry {index}: timeline_id is {len(timeline_id)} bytes, outside "
            f"1..{MAX_KEY_BYTES}"
        )
    _check_uint(seq, "seq", index, MAX_SEQ)
    _check_uint(kind, "kind", index, MAX_KIND)
    _check_uint(expires_at, "expires_at", index, MAX_SEQ)
    if not isinstance(value, bytes):
        raise InvalidArgumentError(
            f"entry {index}: value must be bytes, not {type(value).__name__}"
        )
    if len(value) > MAX_PAYLOAD_BYTES_LIMIT:
        raise InvalidArgumentError(
            f"entry {index}: value is {len(value)} bytes, above the limit of "
            f"{MAX_PAYLOAD_BYTES_LIMIT} bytes"
        )
    return timeline_id, seq, kind, expires_at, value


def _put_varint(out, value):
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_block(entries):
    """Encode entries (an iterable of entry tuples) into block bytes.

    Entries must be strictly increasing by (timeline_id, seq). Raises
    InvalidArgumentError, naming the entry index, when an entry is not a
    5-item tuple or list, a field has the wrong type or is out of range, or
    the order is broken. The ranges are: timeline_id 1..MAX_KEY_BYTES bytes,
    seq and expires_at 0..MAX_SEQ, kind 0..255, and value at most
    MAX_PAYLOAD_BYTES_LIMIT bytes. Costs O(total bytes).
    """
    out = bytearray()
    previous_timeline = None
    previous_seq = 0
    count = 0
    for index, entry in enumerate(entries):
        timeline_id, seq, kind, expires_at, value = _check_entry(entry, index)
        if previous_timeline is not None and (timeline_id, seq) <= (
            previous_timeline,
            previous_seq,
        ):
            raise InvalidArgumentError(
                f"entry {index}: key {(timeline_id, seq)!r} does not follow the key "
                f"{(previous_timeline, previous_seq)!r} of entry {index - 1} in "
                "strictly increasing (timeline_id, seq) order"
            )
        tag = kind << TAG_KIND_SHIFT
        if expires_at:
            tag |= TAG_HAS_EXPIRY
        if timeline_id != previous_timeline:
            _put_varint(out, tag | TAG_NEW_TIMELINE)
            _put_varint(out, len(timeline_id))
            out += timeline_id
            _put_varint(out, seq)
        else:
            _put_varint(out, tag)
            _put_varint(out, seq - previous_seq)
        if expires_at:
            _put_varint(out, expires_at)
        _put_varint(out, len(value))
        out += value
        previous_timeline = timeline_id
        previous_seq = seq
        count += 1
    if count > MAX_COUNT:
        raise InvalidArgumentError(
            f"block has {count} entries, above the limit of {MAX_COUNT}"
        )
    out += count.to_bytes(COUNT_BYTES, "little")
    return bytes(out)


def slice_entries(slices):
    """Return the entry tuples that encode_block_runs(slices) encodes, in order.

    Raises InvalidArgumentError when a slice is not a 7-item tuple or its
    range is not within every one of its four lists.
    """
    entries = []
    for number, run_slice in enumerate(slices):
        if not isinstance(run_slice, tuple) or len(run_slice) != 7:
            raise InvalidArgumentError(
                f"run slice {number} must be a tuple (timeline_id, seqs, kinds, "
                f"expires, values, start, stop), not {run_slice!r:.80}"
            )
        timeline_id, seqs, kinds, expires, values, start, stop = run_slice
        length = min(len(seqs), len(kinds), len(expires), len(values))
        if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= length):
            raise InvalidArgumentError(
                f"run slice {number}: range {start!r}..{stop!r} is not within "
                f"0..{length}, the length of its shortest list"
            )
        entries.extend(
            zip(
                itertools.repeat(timeline_id, stop - start),
                seqs[start:stop],
                kinds[start:stop],
                expires[start:stop],
                values[start:stop],
            )
        )
    return entries


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def encode_block_runs(slices):
    """Encode the entries of run slices into block bytes.

    slices is a list of ``(timeline_id, seqs, kinds, expires, values, start,
    stop)`` tuples: the four lists are parallel columns of one timeline's
    entries, and the slice contributes their items start..stop-1. The result
    and every InvalidArgumentError, with its entry index counted across all
    slices, are those of encode_block over the same entries as tuples (see
    slice_entries, which also raises for a malformed slice). The Cython
    version builds no tuple per entry. Costs O(total bytes).
    """
    return _pure_encode_block(slice_entries(slices))


def run_block_end(values, start, overhead, room):
    """Find the end of the block that a run's entries from start on extend.

    Each entry counts len(values[i]) + overhead bytes, and room is the size
    at which the block ends. Returns (stop, size): stop is one past the
    first entry whose running total from start reaches room, or len(values)
    when none does, and size is the total of entries start..stop-1. At least one entry is counted when start is below
    len(values). Raises InvalidArgumentError when start is outside
    0..len(values), and TypeError when a value has no len(). Costs
    O(stop - start).
    """
    end = len(values)
    if not 0 <= start <= end:
        raise InvalidArgumentError(f"run start {start} is outside 0..{end}")
    size = 0
    stop = start
    while stop < end:
        size += len(values[stop]) + overhead
        stop += 1
        if size >= room:
            break
    return stop, size


def _corrupt(problem, offset):
    return CorruptionError(f"block: {problem} at offset {offset}", offset=offset)


def _read_varint(buf, pos, end):
    """Return (value, position after it) for the varint at buf[pos], before end."""
    start = pos
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise _corrupt("truncated varint", start)
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise _corrupt("varint longer than 64 bits", start)
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _block_bytes(data):
    """Return the raw bytes of data, which must be a C-contiguous bytes-like object."""
    if isinstance(data, bytes):
        return data
    with memoryview(data) as view:
        if not view.c_contiguous:
            raise TypeError("decode_block requires a C-contiguous buffer")
        return view.tobytes()


def decode_block(data):
    """Decode block bytes (bytes, bytearray or memoryview) into a list of entry tuples.

    Entries that share a timeline share one timeline_id bytes object. Raises
    CorruptionError("block: <problem> at offset N", offset=N) on any malformed
    input: a truncated or over-long varint, a length past the end, a kind
    above 255, a timeline id or seq out of order, an expiry flag with
    expires_at 0, or an entry count that does not match the entries. Raises
    TypeError when data is not a C-contiguous bytes-like object.
    Costs O(len(data)).
    """
    buf = _block_bytes(data)
    size = len(buf)
    if size < COUNT_BYTES:
        raise _corrupt(f"{size} bytes is too short for the entry count", 0)
    body_end = size - COUNT_BYTES
    count = int.from_bytes(buf[body_end:], "little")
    if count > body_end // MIN_ENTRY_BYTES:
        raise _corrupt(
            f"entry count {count} is too large for {body_end} bytes of entries",
            body_end,
        )
    return _decode_entries(buf, body_end, count)


def _decode_entries(buf, body_end, count):
    entries = []
    timeline_id = None
    seq = 0
    pos = 0
    while pos < body_end:
        if len(entries) == count:
            raise _corrupt(f"entry beyond the entry count {count}", pos)
        entry_start = pos
        tag, pos = _read_varint(buf, pos, body_end)
        kind = tag >> TAG_KIND_SHIFT
        if kind > MAX_KIND:
            raise _corrupt(f"invalid kind {kind}", entry_start)
        if tag & TAG_NEW_TIMELINE:
            length_at = pos
            length, pos = _read_varint(buf, pos, body_end)
            if length == 0 or length > MAX_KEY_BYTES:
                raise _corrupt(f"invalid timeline id length {length}", length_at)
            if length > body_end - pos:
                raise _corrupt(f"timeline id length {length} past the end", length_at)
            new_timeline = buf[pos : pos + length]
            pos += length
            if timeline_id is not None and new_timeline <= timeline_id:
                raise _corrupt("timeline id not above the previous one", length_at)
            timeline_id = new_timeline
            seq, pos = _read_varint(buf, pos, body_end)
        else:
            if timeline_id is None:
                raise _corrupt("first entry without a timeline id", entry_start)
            delta_at = pos
            delta, pos = _read_varint(buf, pos, body_end)
            if delta == 0:
                raise _corrupt("seq delta 0 (seqs must increase)", delta_at)
            seq += delta
            if seq > MAX_SEQ:
                raise _corrupt("seq above 2**64-1", delta_at)
        expires_at = 0
        if tag & TAG_HAS_EXPIRY:
            expires_at_at = pos
            expires_at, pos = _read_varint(buf, pos, body_end)
            if expires_at == 0:
                raise _corrupt("expires_at 0 with the expiry flag set", expires_at_at)
        length_at = pos
        length, pos = _read_varint(buf, pos, body_end)
        if length > body_end - pos:
            raise _corrupt(f"value length {length} past the end", length_at)
        value = buf[pos : pos + length]
        pos += length
        entries.append((timeline_id, seq, kind, expires_at, value))
    if len(entries) != count:
        raise _corrupt(
            f"entry count {count} does not match the {len(entries)} entries found",
            body_end,
        )
    return entries


def scan_block(data, timeline_id, start, end, reverse, now_ms, limit, out):
    """Append the live entries of one timeline range in a block to out.

    Appends ``(seq, value)`` for each entry of timeline_id with
    start <= seq < end, kind KIND_PUT and expires_at 0 or above now_ms (an
    int, Unix milliseconds), ascending by seq or descending when reverse is
    true, at most limit of them. Returns True when the next block in that
    direction may hold more of the range: forward, when the block's last
    key is below (timeline_id, end); in reverse, when its first key is above
    (timeline_id, start); always for an empty block. The whole block is
    checked as decode_block checks it and raises the same CorruptionError
    and TypeError. Costs O(len(data)) plus the pairs appended.
    """
    entries = _pure_decode_block(data)
    matches = [
        (entry[1], entry[4])
        for entry in entries
        if entry[0] == timeline_id
        and start <= entry[1] < end
        and entry[2] == KIND_PUT
        and (not entry[3] or entry[3] > now_ms)
    ]
    if reverse:
        matches.reverse()
    out.extend(matches[: max(limit, 0)])
    if not entries:
        return True
    if reverse:
        return entries[0][:2] > (timeline_id, start)
    return entries[-1][:2] < (timeline_id, end)


_pure_encode_block = encode_block
_pure_decode_block = decode_block

PurePython = types.SimpleNamespace(
    encode_block=encode_block,
    encode_block_runs=encode_block_runs,
    run_block_end=run_block_end,
    decode_block=decode_block,
    scan_block=scan_block,
)

_extension = _impl.load_extension("block")
if _extension is not None:
    encode_block = _extension.encode_block
    encode_block_runs = _extension.encode_block_runs
    run_block_end = _extension.run_block_end
    decode_block = _extension.decode_block
    scan_block = _extension.scan_block
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
