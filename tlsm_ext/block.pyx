# cython: language_level=3
"""Cython implementation of tlsm.block.

The layout, behaviour and error messages match the pure-Python reference in
tlsm/block.py, which holds the layout description and public documentation.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport (
    PyList_Check,
    PyList_CheckExact,
    PyList_GET_ITEM,
    PyList_GET_SIZE,
)
from cpython.long cimport PyLong_CheckExact
from cpython.tuple cimport PyTuple_Check, PyTuple_CheckExact, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from tlsm_ext.key_order cimport compare_keys

from tlsm import keys
from tlsm.errors import CorruptionError, InvalidArgumentError

# Same on-disk constants as tlsm/block.py.
cdef uint64_t TAG_NEW_TIMELINE = 0x01
cdef uint64_t TAG_HAS_EXPIRY = 0x02
cdef int TAG_KIND_SHIFT = 2
cdef uint64_t MAX_KIND = 255
cdef Py_ssize_t COUNT_BYTES = 4
cdef uint64_t MAX_COUNT = 0xFFFFFFFF
cdef Py_ssize_t MIN_ENTRY_BYTES = 3
cdef uint64_t MAX_SEQ = keys.MAX_SEQ
cdef Py_ssize_t MAX_KEY_BYTES = keys.MAX_KEY_BYTES
cdef Py_ssize_t MAX_PAYLOAD_BYTES_LIMIT = keys.MAX_PAYLOAD_BYTES_LIMIT
cdef uint64_t KIND_PUT = keys.KIND_PUT
# A u64 varint takes at most 10 bytes.
cdef Py_ssize_t MAX_VARINT_BYTES = 10

# _read_varint results.
cdef enum:
    VARINT_OK = 0
    VARINT_TRUNCATED = 1
    VARINT_TOO_LONG = 2


cdef int _read_varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                      uint64_t* out) noexcept nogil:
    """Decode the varint at buf[pos[0]], not reading at or past end.

    On success store the value in out, move pos past it and return VARINT_OK.
    """
    cdef Py_ssize_t p = pos[0]
    cdef uint64_t value = 0
    cdef unsigned int shift = 0
    cdef uint8_t byte
    while True:
        if p >= end:
            return VARINT_TRUNCATED
        byte = buf[p]
        p += 1
        if shift == 63 and byte > 1:
            return VARINT_TOO_LONG
        value |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            out[0] = value
            pos[0] = p
            return VARINT_OK
        shift += 7


cdef inline Py_ssize_t _put_varint(uint8_t* out, uint64_t value) noexcept nogil:
    """Write value as a varint at out; return the number of bytes written."""
    cdef Py_ssize_t n = 0
    while value >= 0x80:
        out[n] = <uint8_t>((value & 0x7F) | 0x80)
        value >>= 7
        n += 1
    out[n] = <uint8_t>value
    return n + 1


cdef object _corrupt(str problem, Py_ssize_t offset):
    return CorruptionError(f"block: {problem} at offset {offset}", offset=offset)


cdef object _varint_error(int result, Py_ssize_t offset):
    if result == VARINT_TRUNCATED:
        return _corrupt("truncated varint", offset)
    return _corrupt("varint longer than 64 bits", offset)


cdef inline int _read(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                      uint64_t* out) except -1:
    """Decode a varint like _read_varint, raising CorruptionError on failure."""
    cdef Py_ssize_t start = pos[0]
    cdef int result = _read_varint(buf, pos, end, out)
    if result != VARINT_OK:
        raise _varint_error(result, start)
    return 0


# Encoding


cdef int _reserve(_Writer* writer, Py_ssize_t extra) except -1:
    cdef Py_ssize_t capacity
    cdef uint8_t* grown
    if writer.size + extra <= writer.capacity:
        return 0
    capacity = max(writer.size + extra, 2 * writer.capacity, 4096)
    grown = <uint8_t*>realloc(writer.data, capacity)
    if grown == NULL:
        raise MemoryError()
    writer.data = grown
    writer.capacity = capacity
    return 0


cdef int _check_uint(object value, str name, Py_ssize_t index, uint64_t maximum,
                     uint64_t* out) except -1:
    """Store value (an int in 0..maximum) in out, or raise InvalidArgumentError."""
    cdef uint64_t result
    if PyLong_CheckExact(value):
        try:
            result = value
        except OverflowError:
            pass  # negative or above 64 bits: the checks below raise
        else:
            if result <= maximum:
                out[0] = result
                return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            f"entry {index}: {name} must be an int, not {type(value).__name__}"
        )
    if value < 0 or value > maximum:
        raise InvalidArgumentError(
            f"entry {index}: {name} {value} is outside 0..{maximum}"
        )
    out[0] = <uint64_t>value
    return 0


cdef int _check_shape(object entry, Py_ssize_t index) except -1:
    if not (PyTuple_Check(entry) or PyList_Check(entry)):
        raise InvalidArgumentError(
            f"entry {index} must be a tuple (timeline_id, seq, kind, expires_at, "
            f"value), not {type(entry).__name__}"
        )
    if len(entry) != 5:
        raise InvalidArgumentError(
            f"entry {index} has {len(entry)} fields, expected 5 (timeline_id, "
            "seq, kind, expires_at, value)"
        )
    return 0


cdef int _check_bytes(object value, str name, Py_ssize_t index) except -1:
    if not PyBytes_Check(value):
        raise InvalidArgumentError(
            f"entry {index}: {name} must be bytes, not {type(value).__name__}"
        )
    return 0


cdef int _compare_keys(bytes timeline_a, uint64_t seq_a,
                       bytes timeline_b, uint64_t seq_b) noexcept:
    """Return <0, 0 or >0 as key a sorts before, equal to or after key b."""
    return compare_keys(PyBytes_AS_STRING(timeline_a), PyBytes_GET_SIZE(timeline_a),
                        seq_a, PyBytes_AS_STRING(timeline_b),
                        PyBytes_GET_SIZE(timeline_b), seq_b)


cdef int _put_entry(_Writer* writer, bytes timeline, bint new_timeline,
                    uint64_t seq, uint64_t previous_seq, uint64_t kind,
                    uint64_t expires_at, bytes value) except -1:
    """Append one checked entry to writer in the block layout (see tlsm/block.py)."""
    return _put_raw_entry(
        writer, <const uint8_t*>PyBytes_AS_STRING(timeline),
        PyBytes_GET_SIZE(timeline), new_timeline, seq, previous_seq, kind,
        expires_at, <const uint8_t*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
    )


cdef int _put_raw_entry(_Writer* writer, const uint8_t* timeline,
                        Py_ssize_t timeline_length, bint new_timeline, uint64_t seq,
                        uint64_t previous_seq, uint64_t kind, uint64_t expires_at,
                        const uint8_t* value, Py_ssize_t value_length) except -1:
    """Append one checked entry, given by pointers, in the block layout."""
    cdef uint64_t tag = kind << TAG_KIND_SHIFT
    cdef uint8_t* out
    # Five varints plus the timeline id and the value.
    _reserve(writer, 5 * MAX_VARINT_BYTES + timeline_length + value_length)
    out = writer.data + writer.size
    if expires_at != 0:
        tag |= TAG_HAS_EXPIRY
    if new_timeline:
        out += _put_varint(out, tag | TAG_NEW_TIMELINE)
        out += _put_varint(out, <uint64_t>timeline_length)
        memcpy(out, timeline, timeline_length)
        out += timeline_length
        out += _put_varint(out, seq)
    else:
        out += _put_varint(out, tag)
        out += _put_varint(out, seq - previous_seq)
    if expires_at != 0:
        out += _put_varint(out, expires_at)
    out += _put_varint(out, <uint64_t>value_length)
    memcpy(out, value, value_length)
    out += value_length
    writer.size = out - writer.data
    return 0


cdef int _encode_entries(_Writer* writer, object entries) except -1:
    cdef Py_ssize_t index = 0
    cdef bytes timeline
    cdef bytes value
    cdef bytes previous_timeline = None
    cdef object previous_seq_object = 0
    cdef uint64_t seq, kind, expires_at
    cdef uint64_t previous_seq = 0
    cdef Py_ssize_t timeline_length, value_length
    cdef bint new_timeline
    cdef uint8_t* out
    for entry in entries:
        _check_shape(entry, index)
        (timeline_object, seq_object, kind_object,
         expires_at_object, value_object) = entry
        _check_bytes(timeline_object, "timeline_id", index)
        timeline = <bytes>timeline_object
        timeline_length = PyBytes_GET_SIZE(timeline)
        if timeline_length < 1 or timeline_length > MAX_KEY_BYTES:
            raise InvalidArgumentError(
                f"entry {index}: timeline_id is {timeline_length} bytes, outside "
                f"1..{MAX_KEY_BYTES}"
            )
        _check_uint(seq_object, "seq", index, MAX_SEQ, &seq)
        _check_uint(kind_object, "kind", index, MAX_KIND, &kind)
        _check_uint(expires_at_object, "expires_at", index, MAX_SEQ, &expires_at)
        _check_bytes(value_object, "value", index)
        value = <bytes>value_object
        value_length = PyBytes_GET_SIZE(value)
        if value_length > MAX_PAYLOAD_BYTES_LIMIT:
            raise InvalidArgumentError(
                f"entry {index}: value is {value_length} bytes, above the limit of "
                f"{MAX_PAYLOAD_BYTES_LIMIT} bytes"
            )
        new_timeline = True
        if previous_timeline is not None:
            if _compare_keys(timeline, seq, previous_timeline, previous_seq) <= 0:
                raise InvalidArgumentError(
                    f"entry {index}: key {(timeline, seq_object)!r} does not follow "
                    f"the key {(previous_timeline, previous_seq_object)!r} of entry "
                    f"{index - 1} in strictly increasing (timeline_id, seq) order"
                )
            new_timeline = (timeline_length != PyBytes_GET_SIZE(previous_timeline)
                            or memcmp(PyBytes_AS_STRING(timeline),
                                      PyBytes_AS_STRING(previous_timeline),
                                      timeline_length) != 0)

        _put_entry(writer, timeline, new_timeline, seq, previous_seq, kind,
                   expires_at, value)
        previous_timeline = timeline
        previous_seq = seq
        previous_seq_object = seq_object
        index += 1
    if <uint64_t>index > MAX_COUNT:
        raise InvalidArgumentError(
            f"block has {index} entries, above the limit of {MAX_COUNT}"
        )
    _reserve(writer, COUNT_BYTES)
    out = writer.data + writer.size
    out[0] = <uint8_t>(index & 0xFF)
    out[1] = <uint8_t>((index >> 8) & 0xFF)
    out[2] = <uint8_t>((index >> 16) & 0xFF)
    out[3] = <uint8_t>((index >> 24) & 0xFF)
    writer.size += COUNT_BYTES
    return 0


cpdef bytes encode_block(object entries):
    """Encode entries into block bytes; see tlsm.block.encode_block."""
    cdef _Writer writer
    writer.data = NULL
    writer.size = 0
    writer.capacity = 0
    try:
        _encode_entries(&writer, entries)
        return PyBytes_FromStringAndSize(<char*>writer.data, writer.size)
    finally:
        free(writer.data)


cdef bint _as_uint(object value, uint64_t maximum, uint64_t* out):
    """Store value in out and return True when it is an exact int in 0..maximum."""
    cdef uint64_t result
    if not PyLong_CheckExact(value):
        return False
    try:
        result = value
    except OverflowError:
        return False
    if result > maximum:
        return False
    out[0] = result
    return True


cdef bint _as_index(object value, Py_ssize_t* out):
    """Store value in out and return True when it is an exact int that fits."""
    if not PyLong_CheckExact(value):
        return False
    try:
        out[0] = value
    except OverflowError:
        return False
    return True


cdef int _encode_slice(_Writer* writer, bytes timeline, list seqs, list kinds,
                       list expires, list values, Py_ssize_t start,
                       Py_ssize_t stop, bint new_timeline,
                       uint64_t* previous_seq) except -1:
    """Encode entries start..stop-1 of one run slice; return 1 if one is invalid.

    Invalid covers anything encode_block would reject, and anything it would
    accept only through a slower check (an int subclass, for one), so the
    caller then takes the checked path.
    """
    cdef Py_ssize_t i, value_length
    cdef uint64_t seq, kind, expires_at
    cdef object value
    for i in range(start, stop):
        if not (_as_uint(<object>PyList_GET_ITEM(seqs, i), MAX_SEQ, &seq)
                and _as_uint(<object>PyList_GET_ITEM(kinds, i), MAX_KIND, &kind)
                and _as_uint(<object>PyList_GET_ITEM(expires, i), MAX_SEQ,
                             &expires_at)):
            return 1
        value = <object>PyList_GET_ITEM(values, i)
        if not PyBytes_Check(value):
            return 1
        value_length = PyBytes_GET_SIZE(value)
        if value_length > MAX_PAYLOAD_BYTES_LIMIT:
            return 1
        if not new_timeline and seq <= previous_seq[0]:
            return 1
        _put_entry(writer, timeline, new_timeline, seq, previous_seq[0], kind,
                   expires_at, <bytes>value)
        new_timeline = False
        previous_seq[0] = seq
    return 0


cdef int _encode_slices(_Writer* writer, list slices) except -1:
    """Encode run slices as _encode_entries encodes their entries.

    Returns 0 on success and 1, leaving writer partly filled, when some input
    needs the checked path of encode_block.
    """
    cdef Py_ssize_t count = 0, start, stop
    cdef bytes timeline
    cdef bytes previous_timeline = None
    cdef uint64_t previous_seq = 0
    cdef Py_ssize_t timeline_length
    cdef bint new_timeline
    cdef int order
    cdef uint8_t* out
    for run_slice in slices:
        if not PyTuple_CheckExact(run_slice) or PyTuple_GET_SIZE(run_slice) != 7:
            return 1
        (timeline_object, seqs, kinds, expires, values,
         start_object, stop_object) = run_slice
        if not (PyBytes_Check(timeline_object) and PyList_CheckExact(seqs)
                and PyList_CheckExact(kinds) and PyList_CheckExact(expires)
                and PyList_CheckExact(values)
                and _as_index(start_object, &start)
                and _as_index(stop_object, &stop)):
            return 1
        if (start < 0 or start > stop or stop > PyList_GET_SIZE(seqs)
                or stop > PyList_GET_SIZE(kinds) or stop > PyList_GET_SIZE(expires)
                or stop > PyList_GET_SIZE(values)):
            return 1
        if start == stop:
            continue
        timeline = <bytes>timeline_object
        timeline_length = PyBytes_GET_SIZE(timeline)
        if timeline_length < 1 or timeline_length > MAX_KEY_BYTES:
            return 1
        new_timeline = True
        if previous_timeline is not None:
            # A slice may continue the previous slice's timeline, in which
            # case its first seq must still rise.
            order = _compare_keys(timeline, 0, previous_timeline, 0)
            if order < 0:
                return 1
            new_timeline = order > 0
        if _encode_slice(writer, timeline, seqs, kinds, expires, values, start,
                         stop, new_timeline, &previous_seq):
            return 1
        previous_timeline = timeline
        count += stop - start
    if <uint64_t>count > MAX_COUNT:
        return 1
    _reserve(writer, COUNT_BYTES)
    out = writer.data + writer.size
    out[0] = <uint8_t>(count & 0xFF)
    out[1] = <uint8_t>((count >> 8) & 0xFF)
    out[2] = <uint8_t>((count >> 16) & 0xFF)
    out[3] = <uint8_t>((count >> 24) & 0xFF)
    writer.size += COUNT_BYTES
    return 0


def encode_block_runs(object slices):
    """Encode the entries of run slices; see tlsm.block.encode_block_runs.

    Any input the direct path does not take (an error, or a type it does not
    handle) goes through encode_block over entry tuples, which returns the
    same bytes or raises the same InvalidArgumentError as the pure twin.
    """
    cdef _Writer writer
    writer.data = NULL
    writer.size = 0
    writer.capacity = 0
    if PyList_CheckExact(slices):
        try:
            if _encode_slices(&writer, slices) == 0:
                return PyBytes_FromStringAndSize(<char*>writer.data, writer.size)
        finally:
            free(writer.data)
    # Imported here because tlsm.block imports this module while it loads.
    from tlsm.block import slice_entries
    return encode_block(slice_entries(slices))


def run_block_end(object values, Py_ssize_t start, Py_ssize_t overhead,
                  Py_ssize_t room):
    """Find where a block must end within a run; see tlsm.block.run_block_end."""
    cdef Py_ssize_t end = len(values)
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t stop = start
    cdef object value
    if start < 0 or start > end:
        raise InvalidArgumentError(f"run start {start} is outside 0..{end}")
    if not PyList_CheckExact(values):
        while stop < end:
            size += len(values[stop]) + overhead
            stop += 1
            if size >= room:
                break
        return stop, size
    # The size is checked on every step because len() of a value that is
    # not bytes runs Python code, which could shrink the list.
    while stop < PyList_GET_SIZE(values):
        value = <object>PyList_GET_ITEM(values, stop)
        if PyBytes_CheckExact(value):
            size += PyBytes_GET_SIZE(value) + overhead
        else:
            size += len(value) + overhead
        stop += 1
        if size >= room:
            break
    return stop, size


# Decoding


cdef list _decode(const uint8_t* buf, Py_ssize_t size):
    cdef Py_ssize_t body_end
    cdef uint64_t count
    if size < COUNT_BYTES:
        raise _corrupt(f"{size} bytes is too short for the entry count", 0)
    body_end = size - COUNT_BYTES
    count = (<uint64_t>buf[body_end]
             | (<uint64_t>buf[body_end + 1] << 8)
             | (<uint64_t>buf[body_end + 2] << 16)
             | (<uint64_t>buf[body_end + 3] << 24))
    if count > <uint64_t>(body_end // MIN_ENTRY_BYTES):
        raise _corrupt(
            f"entry count {count} is too large for {body_end} bytes of entries",
            body_end,
        )
    return _decode_entries(buf, body_end, count)


cdef list _decode_entries(const uint8_t* buf, Py_ssize_t body_end, uint64_t count):
    cdef list entries = []
    cdef object timeline = None
    cdef const uint8_t* timeline_start = NULL
    cdef uint64_t timeline_length = 0
    cdef uint64_t found = 0
    cdef uint64_t seq = 0
    cdef uint64_t tag, kind, length, delta, expires_at
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t entry_start, length_at, delta_at, expires_at_at
    cdef int order
    while pos < body_end:
        if found == count:
            raise _corrupt(f"entry beyond the entry count {count}", pos)
        entry_start = pos
        _read(buf, &pos, body_end, &tag)
        kind = tag >> TAG_KIND_SHIFT
        if kind > MAX_KIND:
            raise _corrupt(f"invalid kind {kind}", entry_start)
        if tag & TAG_NEW_TIMELINE:
            length_at = pos
            _read(buf, &pos, body_end, &length)
            if length == 0 or length > <uint64_t>MAX_KEY_BYTES:
                raise _corrupt(f"invalid timeline id length {length}", length_at)
            if length > <uint64_t>(body_end - pos):
                raise _corrupt(f"timeline id length {length} past the end", length_at)
            if timeline_start != NULL:
                order = memcmp(buf + pos, timeline_start, min(length, timeline_length))
                if order < 0 or (order == 0 and length <= timeline_length):
                    raise _corrupt("timeline id not above the previous one", length_at)
            timeline_start = buf + pos
            timeline_length = length
            # Entries of one timeline share this bytes object.
            timeline = PyBytes_FromStringAndSize(<const char*>timeline_start,
                                                 <Py_ssize_t>length)
            pos += <Py_ssize_t>length
            _read(buf, &pos, body_end, &seq)
        else:
            if timeline_start == NULL:
                raise _corrupt("first entry without a timeline id", entry_start)
            delta_at = pos
            _read(buf, &pos, body_end, &delta)
            if delta == 0:
                raise _corrupt("seq delta 0 (seqs must increase)", delta_at)
            if delta > MAX_SEQ - seq:
                raise _corrupt("seq above 2**64-1", delta_at)
            seq += delta
        expires_at = 0
        if tag & TAG_HAS_EXPIRY:
            expires_at_at = pos
            _read(buf, &pos, body_end, &expires_at)
            if expires_at == 0:
                raise _corrupt("expires_at 0 with the expiry flag set", expires_at_at)
        length_at = pos
        _read(buf, &pos, body_end, &length)
        if length > <uint64_t>(body_end - pos):
            raise _corrupt(f"value length {length} past the end", length_at)
        value = PyBytes_FromStringAndSize(<const char*>(buf + pos), <Py_ssize_t>length)
        pos += <Py_ssize_t>length
        entries.append((timeline, seq, kind, expires_at, value))
        found += 1
    if found != count:
        raise _corrupt(
            f"entry count {count} does not match the {found} entries found",
            body_end,
        )
    return entries


cpdef list decode_block(object data):
    """Decode block bytes into a list of entry tuples; see tlsm.block.decode_block."""
    cdef Py_buffer view
    if PyBytes_Check(data):
        return _decode(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    with memoryview(data) as checked:
        if not checked.c_contiguous:
            raise TypeError("decode_block requires a C-contiguous buffer")
        PyObject_GetBuffer(checked, &view, PyBUF_SIMPLE)
        try:
            return _decode(<const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)


# Scanning one timeline's range straight from block bytes


cdef struct _Match:
    uint64_t seq
    Py_ssize_t value_at
    Py_ssize_t value_length


cdef int _find_matches(const uint8_t* buf, Py_ssize_t body_end, uint64_t count,
                       const char* wanted, Py_ssize_t wanted_length,
                       uint64_t start, uint64_t end, bint unbounded,
                       uint64_t now_ms, _Match* matches, Py_ssize_t* match_count,
                       Py_ssize_t* first_at, Py_ssize_t* first_length,
                       uint64_t* first_seq, Py_ssize_t* last_at, Py_ssize_t* last_length,
                       uint64_t* last_seq) noexcept nogil:
    """Walk every entry with the checks of _decode_entries; return 0 if valid.

    Records the live puts of the wanted timeline in [start, end), and the
    first and last keys of the block (timeline offset, length and seq).
    """
    cdef uint64_t found = 0, seq = 0, tag, kind, length, delta, expires_at
    cdef Py_ssize_t pos = 0, timeline_at = -1
    cdef uint64_t timeline_length = 0
    cdef bint wanted_timeline = False
    cdef int order
    while pos < body_end:
        if found == count:
            return -1
        if _read_varint(buf, &pos, body_end, &tag) != VARINT_OK:
            return -1
        kind = tag >> TAG_KIND_SHIFT
        if kind > MAX_KIND:
            return -1
        if tag & TAG_NEW_TIMELINE:
            if _read_varint(buf, &pos, body_end, &length) != VARINT_OK:
                return -1
            if length == 0 or length > <uint64_t>MAX_KEY_BYTES:
                return -1
            if length > <uint64_t>(body_end - pos):
                return -1
            if timeline_at >= 0:
                order = memcmp(buf + pos, buf + timeline_at, min(length, timeline_length))
                if order < 0 or (order == 0 and length <= timeline_length):
                    return -1
            timeline_at = pos
            timeline_length = length
            wanted_timeline = (<Py_ssize_t>length == wanted_length
                               and memcmp(buf + pos, wanted, wanted_length) == 0)
            pos += <Py_ssize_t>length
            if _read_varint(buf, &pos, body_end, &seq) != VARINT_OK:
                return -1
        else:
            if timeline_at < 0:
                return -1
            if _read_varint(buf, &pos, body_end, &delta) != VARINT_OK:
                return -1
            if delta == 0 or delta > MAX_SEQ - seq:
                return -1
            seq += delta
        expires_at = 0
        if tag & TAG_HAS_EXPIRY:
            if _read_varint(buf, &pos, body_end, &expires_at) != VARINT_OK:
                return -1
            if expires_at == 0:
                return -1
        if _read_varint(buf, &pos, body_end, &length) != VARINT_OK:
            return -1
        if length > <uint64_t>(body_end - pos):
            return -1
        if found == 0:
            first_at[0] = timeline_at
            first_length[0] = <Py_ssize_t>timeline_length
            first_seq[0] = seq
        if (wanted_timeline and start <= seq and (unbounded or seq < end)
                and kind == KIND_PUT
                and (expires_at == 0 or expires_at > now_ms)):
            matches[match_count[0]].seq = seq
            matches[match_count[0]].value_at = pos
            matches[match_count[0]].value_length = <Py_ssize_t>length
            match_count[0] += 1
        pos += <Py_ssize_t>length
        found += 1
    if found != count:
        return -1
    last_at[0] = timeline_at
    last_length[0] = <Py_ssize_t>timeline_length
    last_seq[0] = seq
    return 0



def scan_block(object data, bytes timeline_id, uint64_t start, object end,
               bint reverse, uint64_t now_ms, Py_ssize_t limit, list out):
    """Append live entries of one timeline range to out; see tlsm.block.scan_block.

    end may be MAX_SEQ + 1, which the scan takes as no upper bound.
    """
    cdef bint unbounded = end > MAX_SEQ
    cdef uint64_t end_seq = MAX_SEQ if unbounded else <uint64_t>end
    cdef Py_buffer view
    cdef bint has_view = False
    cdef const uint8_t* buf
    cdef Py_ssize_t size
    if PyBytes_Check(data):
        buf = <const uint8_t*>PyBytes_AS_STRING(data)
        size = PyBytes_GET_SIZE(data)
    else:
        with memoryview(data) as checked:
            if not checked.c_contiguous:
                raise TypeError("decode_block requires a C-contiguous buffer")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        has_view = True
        buf = <const uint8_t*>view.buf
        size = view.len
    try:
        return _scan(buf, size, timeline_id, start, end_seq, unbounded, reverse,
                     now_ms, limit, out)
    finally:
        if has_view:
            PyBuffer_Release(&view)


cdef object _scan(const uint8_t* buf, Py_ssize_t size, bytes timeline_id,
                  uint64_t start, uint64_t end, bint unbounded, bint reverse,
                  uint64_t now_ms, Py_ssize_t limit, list out):
    cdef Py_ssize_t body_end = size - COUNT_BYTES
    cdef uint64_t count
    cdef _Match* matches
    cdef Py_ssize_t match_count = 0, first_at = 0, first_length = 0
    cdef Py_ssize_t last_at = 0, last_length = 0
    cdef Py_ssize_t i, j, emitted
    cdef uint64_t first_seq = 0, last_seq = 0
    cdef const char* wanted = PyBytes_AS_STRING(timeline_id)
    cdef Py_ssize_t wanted_length = PyBytes_GET_SIZE(timeline_id)
    cdef int status
    if size < COUNT_BYTES:
        _decode(buf, size)  # raises the decoder's CorruptionError
    count = (<uint64_t>buf[body_end]
             | (<uint64_t>buf[body_end + 1] << 8)
             | (<uint64_t>buf[body_end + 2] << 16)
             | (<uint64_t>buf[body_end + 3] << 24))
    if count > <uint64_t>(body_end // MIN_ENTRY_BYTES):
        _decode(buf, size)
    if count == 0:
        if body_end != 0:
            _decode(buf, size)
        return True
    matches = <_Match*>malloc(count * sizeof(_Match))
    if matches == NULL:
        raise MemoryError()
    try:
        status = _find_matches(buf, body_end, count, wanted, wanted_length, start, end,
                               unbounded, now_ms, matches, &match_count, &first_at, &first_length,
                               &first_seq,
                               &last_at, &last_length, &last_seq)
        if status != 0:
            # The decoder runs the same checks in the same order and raises
            # the same CorruptionError as the pure twin.
            _decode(buf, size)
            raise _corrupt("undecodable block", 0)
        emitted = min(match_count, max(limit, 0))
        for i in range(emitted):
            j = match_count - 1 - i if reverse else i
            out.append((
                matches[j].seq,
                PyBytes_FromStringAndSize(<const char*>(buf + matches[j].value_at),
                                          matches[j].value_length),
            ))
        # Whether the next block in scan order may hold more of the range.
        if reverse:
            return compare_keys(buf + first_at, first_length, first_seq, wanted,
                          wanted_length, start) > 0
        if unbounded:
            return compare_keys(buf + last_at, last_length, last_seq, wanted, wanted_length,
                          MAX_SEQ) <= 0
        return compare_keys(buf + last_at, last_length, last_seq, wanted, wanted_length,
                      end) < 0
    finally:
        free(matches)
