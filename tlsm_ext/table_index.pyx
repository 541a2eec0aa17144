# cython: language_level=3
"""Cython implementation of tlsm.table_index.

Behaviour and exceptions match the pure-Python reference in
tlsm/table_index.py, which holds the public documentation.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from tlsm_ext.little_endian cimport read_u16, read_u64

# Summary entry header (on disk): timeline_len u16 | min_seq u64 |
# max_seq u64 | count u64.
cdef Py_ssize_t SUMMARY_ENTRY_BYTES = 26


cdef class SummaryIndex:
    """Cython twin of tlsm.table_index.SummaryIndex; see there."""

    def __cinit__(self):
        self._starts = NULL
        self._count = 0

    def __init__(self, body):
        # The body is used in place, without a copy: a table's summary can
        # take hundreds of kilobytes.
        self._view = body
        cdef const unsigned char* buf = &self._view[0] if len(self._view) else NULL
        cdef Py_ssize_t pos = 0, end = len(self._view), count = 0
        # Every entry takes at least its header, which bounds the count.
        cdef Py_ssize_t capacity = end // SUMMARY_ENTRY_BYTES + 1
        self._starts = <Py_ssize_t*>PyMem_Malloc(capacity * sizeof(Py_ssize_t))
        if self._starts == NULL:
            raise MemoryError()
        while pos < end:
            if pos + SUMMARY_ENTRY_BYTES > end:
                raise ValueError("truncated summary entry", pos)
            if pos + SUMMARY_ENTRY_BYTES + read_u16(buf + pos) > end:
                raise ValueError("summary overruns its block", 0)
            self._starts[count] = pos
            count += 1
            pos += SUMMARY_ENTRY_BYTES + read_u16(buf + pos)
        self._count = count

    def __dealloc__(self):
        PyMem_Free(self._starts)

    def __len__(self):
        return self._count

    def get(self, bytes timeline_id):
        """Return (min_seq, max_seq, count) of timeline_id, or None."""
        if self._count == 0:
            return None
        cdef const unsigned char* buf = &self._view[0]
        cdef const char* key = PyBytes_AS_STRING(timeline_id)
        cdef Py_ssize_t key_length = PyBytes_GET_SIZE(timeline_id)
        cdef Py_ssize_t low = 0, high = self._count, middle, start, length
        cdef int order
        while low < high:
            middle = (low + high) // 2
            start = self._starts[middle]
            length = read_u16(buf + start)
            order = memcmp(buf + start + SUMMARY_ENTRY_BYTES, key,
                           min(length, key_length))
            if order == 0 and length != key_length:
                order = -1 if length < key_length else 1
            if order < 0:
                low = middle + 1
            elif order > 0:
                high = middle
            else:
                return (read_u64(buf + start + 2), read_u64(buf + start + 10),
                        read_u64(buf + start + 18))
        return None
