# cython: language_level=3
"""Cython implementation of tlsm.table_writer.DataBlocks.

It writes the same bytes and raises the same errors as the pure-Python
twin in tlsm/table_writer.py, which documents the class. The block body is
encoded into a buffer that is kept from block to block, its frame goes
straight into the write buffer, and the crc comes from zlib's C function
when the build found zlib.h. Only the LZ4 call and the bookkeeping of
each block's index record go through Python objects.
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
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcpy

from tlsm_ext.block cimport _Writer, _encode_slices
from tlsm_ext.zlib_crc cimport TLSM_CRC_FROM_ZLIB, tlsm_zlib_crc32

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


cdef class DataBlocks:
    """The data blocks of a table being written; see tlsm.table_writer.DataBlocks."""

    cdef public object file
    cdef public Py_ssize_t block_bytes
    cdef public bint compression
    cdef public Py_ssize_t offset
    cdef public list index
    cdef public dict summary
    cdef public object max_expires_at
    cdef public Py_ssize_t entry_count
    cdef public object smallest
    cdef public object largest
    cdef list _pending
    cdef Py_ssize_t _pending_bytes
    cdef bytearray _buffer
    cdef _Writer _body

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

    def __dealloc__(self):
        free(self._body.data)

    def add_run(self, timeline_id, seqs, kinds, expires, values):
        """Add one timeline's entries; see tlsm.table_writer.DataBlocks.add_run."""
        cdef Py_ssize_t count = len(seqs)
        cdef Py_ssize_t position = 0, stop, size, overhead
        if not count:
            return
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
        """Write the block being filled, if it holds anything."""
        if self._pending:
            self._finish_block()

    cdef int _finish_block(self) except -1:
        cdef list slices = self._pending
        cdef tuple first = slices[0]
        cdef tuple last = slices[len(slices) - 1]
        cdef bytes body
        cdef const uint8_t* data
        cdef Py_ssize_t length, block_offset
        cdef uint8_t compression = _NONE
        if self.smallest is None:
            self.smallest = (first[0], first[1][first[5]])
        last_key = (last[0], last[1][last[6] - 1])
        self.largest = last_key
        self._body.size = 0
        if _encode_slices(&self._body, slices) == 0:
            body = PyBytes_FromStringAndSize(<char*>self._body.data, self._body.size)
        else:
            # The checked path: the same bytes, or the twin's error.
            from tlsm.block import encode_block_runs
            body = encode_block_runs(slices)
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
        self._pending = []
        self._pending_bytes = 0
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
        """Write what the buffer holds to the file."""
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
