# cython: language_level=3
"""Cython implementation of tlsm.table_writer.DataBlocks.

It writes the same bytes and raises the same errors as the pure-Python
twin in tlsm/table_writer.py, which documents the class. The block body is
encoded into a buffer that is kept from block to block, its frame goes
straight into the write buffer, and the crc comes from zlib's C function
when the build found zlib.h. Only the LZ4 call and the bookkeeping of
each block's index record go through Python objects.

Merges add entries here through add_raw() and note_run(), C methods for
tlsm_ext.compact that take pointers into the blocks being merged, so a
merged entry never becomes a Python object.
"""

import zlib

import lz4.block

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcmp, memcpy

from tlsm_ext.block cimport _encode_slices, _put_raw_entry, _reserve
from tlsm_ext.zlib_crc cimport TLSM_CRC_FROM_ZLIB, tlsm_zlib_crc32

from tlsm.errors import InvalidArgumentError
from tlsm.sstable import COMPRESSION_LZ4, COMPRESSION_NONE, NEVER_EXPIRES

cdef object _lz4_compress = lz4.block.compress
cdef object _crc32 = zlib.crc32
cdef object _NEVER_EXPIRES = NEVER_EXPIRES
cdef uint8_t _NONE = COMPRESSION_NONE
cdef uint8_t _LZ4 = COMPRESSION_LZ4
# Kept equal to ENTRY_OVERHEAD and _WRITE_CHUNK in tlsm/table_writer.py.
cdef Py_ssize_t ENTRY_OVERHEAD = 12
cdef Py_ssize_t WRITE_CHUNK = 1 << 20
cdef Py_ssize_t TRAILER_BYTES = 5
cdef str _MIXED = "a data block cannot mix run slices and raw entries"


cdef class DataBlocks:
    """The data blocks of a table being written; see tlsm.table_writer.DataBlocks."""

    def __init__(self, file, Py_ssize_t block_bytes, compression):
        self.file = file
        self.block_bytes = block_bytes
        self.compression = bool(compression)
        self._pending = []
        self._pending_bytes = 0
        self._buffer = bytearray()
        self.offset = 0
        self.index = []
        self.summary = {}
        self.max_expires_at = 0
        self.entry_count = 0
        self.smallest = None
        self.largest = None
        self._raw_count = 0

    def __dealloc__(self):
        free(self._body.data)

    def add_run(self, timeline_id, seqs, kinds, expires, values):
        """Add one timeline's entries; see tlsm.table_writer.DataBlocks.add_run."""
        cdef Py_ssize_t count = len(seqs)
        cdef Py_ssize_t position = 0, stop, size, overhead
        if not count:
            return
        if self._raw_count:
            raise InvalidArgumentError(_MIXED)
        span = self.summary.get(timeline_id)
        if span is None:
            self.summary[timeline_id] = [seqs[0], seqs[count - 1], count]
        else:
            span[1] = seqs[count - 1]
            span[2] += count
        self.entry_count += count
        if 0 in expires:
            self.max_expires_at = _NEVER_EXPIRES
        elif self.max_expires_at != _NEVER_EXPIRES:
            self.max_expires_at = max(self.max_expires_at, max(expires))
        overhead = len(timeline_id) + ENTRY_OVERHEAD
        while position < count:
            # The first entry that brings the pending block to block_bytes
            # ends it.
            stop, size = _block_end(
                values, position, overhead, self.block_bytes - self._pending_bytes
            )
            self._pending.append(
                (timeline_id, seqs, kinds, expires, values, position, stop)
            )
            self._pending_bytes += size
            if self._pending_bytes >= self.block_bytes:
                self._finish_block()
            position = stop

    def finish_blocks(self):
        """Write the block being filled, unless it is empty."""
        if self._pending:
            self._finish_block()
        elif self._raw_count:
            self._finish_raw_block()

    cdef int add_raw(self, const uint8_t* timeline, Py_ssize_t timeline_length,
                     uint64_t seq, uint64_t kind, uint64_t expires_at,
                     const uint8_t* value, Py_ssize_t value_length) except -1:
        """Add one entry given by pointers, in key order after the last one.

        The caller has checked the fields and the order (a merge reads them
        from checked blocks) and reports each timeline's entries through
        note_run(). A block contains either raw entries or run slices.
        """
        cdef bint new_timeline
        if self._pending:
            raise InvalidArgumentError(_MIXED)
        if timeline_length > MAX_RAW_TIMELINE:
            raise InvalidArgumentError(
                f"timeline id of {timeline_length} bytes is above the limit "
                f"of {MAX_RAW_TIMELINE}"
            )
        new_timeline = (
            self._raw_count == 0
            or timeline_length != self._raw_timeline_length
            or memcmp(timeline, self._raw_timeline, timeline_length) != 0
        )
        if self.smallest is None:
            self.smallest = (
                PyBytes_FromStringAndSize(<const char*>timeline, timeline_length), seq
            )
        _put_raw_entry(&self._body, timeline, timeline_length, new_timeline, seq,
                       self._raw_seq, kind, expires_at, value, value_length)
        if new_timeline:
            memcpy(self._raw_timeline, timeline, timeline_length)
            self._raw_timeline_length = timeline_length
        self._raw_seq = seq
        self._raw_count += 1
        self._pending_bytes += timeline_length + value_length + ENTRY_OVERHEAD
        if self._pending_bytes >= self.block_bytes:
            self._finish_raw_block()
        return 0

    cdef int note_run(self, bytes timeline_id, uint64_t first_seq, uint64_t last_seq,
                      Py_ssize_t count, bint never_expires,
                      uint64_t max_expires_at) except -1:
        """Record count raw entries of timeline_id in the summary, as add_run does."""
        span = self.summary.get(timeline_id)
        if span is None:
            self.summary[timeline_id] = [first_seq, last_seq, count]
        else:
            span[1] = last_seq
            span[2] += count
        self.entry_count += count
        if never_expires:
            self.max_expires_at = _NEVER_EXPIRES
        elif self.max_expires_at != _NEVER_EXPIRES:
            self.max_expires_at = max(self.max_expires_at, max_expires_at)
        return 0

    cdef int _finish_raw_block(self) except -1:
        cdef uint8_t* out
        cdef Py_ssize_t count = self._raw_count
        _reserve(&self._body, 4)
        out = self._body.data + self._body.size
        out[0] = count & 0xFF
        out[1] = (count >> 8) & 0xFF
        out[2] = (count >> 16) & 0xFF
        out[3] = (count >> 24) & 0xFF
        self._body.size += 4
        body = PyBytes_FromStringAndSize(<char*>self._body.data, self._body.size)
        last_key = (
            PyBytes_FromStringAndSize(<const char*>self._raw_timeline,
                                      self._raw_timeline_length),
            self._raw_seq,
        )
        self._body.size = 0
        self._raw_count = 0
        self._pending_bytes = 0
        return self._emit_block(body, last_key)

    cdef int _finish_block(self) except -1:
        cdef list slices = self._pending
        cdef tuple first = slices[0]
        cdef tuple last = slices[len(slices) - 1]
        cdef bytes body
        if self.smallest is None:
            self.smallest = (first[0], first[1][first[5]])
        last_key = (last[0], last[1][last[6] - 1])
        self._body.size = 0
        if _encode_slices(&self._body, slices) == 0:
            body = PyBytes_FromStringAndSize(<char*>self._body.data, self._body.size)
        else:
            # The checked path: the same bytes, or the twin's error.
            from tlsm.block import encode_block_runs
            body = encode_block_runs(slices)
        _check_block_order(self.largest, (first[0], first[1][first[5]]))
        self._pending = []
        self._pending_bytes = 0
        return self._emit_block(body, last_key)

    cdef int _emit_block(self, bytes body, tuple last_key) except -1:
        """Compress body if that pays, frame it and record its index entry."""
        cdef const uint8_t* data
        cdef Py_ssize_t length, block_offset
        cdef uint8_t compression = _NONE
        self.largest = last_key
        if self.compression:
            packed = _lz4_compress(body)
            if len(packed) < len(body) - (len(body) >> 3):
                body = packed
                compression = _LZ4
        data = <const uint8_t*>PyBytes_AS_STRING(body)
        length = PyBytes_GET_SIZE(body)
        block_offset = self.offset
        self._append_frame(data, length, compression)
        self.index.append(
            (last_key[0], last_key[1], block_offset, self.offset - block_offset)
        )
        return 0

    cdef int _append_frame(self, const uint8_t* data, Py_ssize_t length,
                           uint8_t compression) except -1:
        """Append body | compression | crc to the write buffer."""
        cdef uint32_t crc
        cdef Py_ssize_t used = PyByteArray_GET_SIZE(self._buffer)
        cdef uint8_t* out
        if TLSM_CRC_FROM_ZLIB:
            crc = tlsm_zlib_crc32(0, data, <size_t>length)
            crc = tlsm_zlib_crc32(crc, &compression, 1)
        else:
            crc = _crc32(bytes([compression]), _crc32(data[:length]))
        PyByteArray_Resize(self._buffer, used + length + TRAILER_BYTES)
        out = <uint8_t*>PyByteArray_AS_STRING(self._buffer) + used
        memcpy(out, data, length)
        out += length
        out[0] = compression
        out[1] = crc & 0xFF
        out[2] = (crc >> 8) & 0xFF
        out[3] = (crc >> 16) & 0xFF
        out[4] = (crc >> 24) & 0xFF
        self.offset += length + TRAILER_BYTES
        if used + length + TRAILER_BYTES >= WRITE_CHUNK:
            self.write_buffer()
        return 0

    def append(self, data):
        """Append bytes to the file, through the write buffer."""
        self._buffer += data
        self.offset += len(data)
        if len(self._buffer) >= WRITE_CHUNK:
            self.write_buffer()

    def write_buffer(self):
        """Write the buffered bytes to the file."""
        self.file.write(self._buffer)
        self._buffer = bytearray()


cdef tuple _block_end(object values, Py_ssize_t start, Py_ssize_t overhead,
                      Py_ssize_t room):
    """Return (stop, size) as tlsm.block.run_block_end does."""
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t stop = start
    cdef object value
    if not PyList_CheckExact(values):
        from tlsm.block import run_block_end
        return run_block_end(values, start, overhead, room)
    while stop < PyList_GET_SIZE(values):
        value = <object>PyList_GET_ITEM(values, stop)
        if not PyBytes_CheckExact(value):
            # len() of anything else runs Python code; leave it to the twin.
            from tlsm.block import run_block_end
            return run_block_end(values, start, overhead, room)
        size += PyBytes_GET_SIZE(value) + overhead
        stop += 1
        if size >= room:
            break
    return stop, size


cdef int _check_block_order(object previous, tuple first) except -1:
    """Raise InvalidArgumentError unless key first sorts after key previous."""
    if previous is not None and first <= previous:
        raise InvalidArgumentError(
            f"key {first!r} does not follow the key {previous!r} that ends the "
            "previous block, in strictly increasing (timeline_id, seq) order"
        )
    return 0
