# cython: language_level=3
"""Cython implementation of tlsm.table_index.

Behaviour and exceptions match the pure-Python reference in
tlsm/table_index.py, which holds the public documentation.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from libc.string cimport memcmp

from tlsm_ext.little_endian cimport read_u16, read_u64

# Summary entry header (on disk): timeline_len u16 | min_seq u64 |
# max_seq u64 | count u64.
cdef Py_ssize_t SUMMARY_ENTRY_BYTES = 26


cdef inline uint64_t _hash(const unsigned char* data, Py_ssize_t length) noexcept nogil:
    # FNV-1a over the bytes, then a multiply-xorshift finish so that the
    # high bits, which pick the slot and tag, depend on every byte.
    cdef uint64_t value = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(length):
        value = (value ^ data[i]) * 1099511628211ULL
    value ^= value >> 29
    value *= 0xBF58476D1CE4E5B9ULL
    value ^= value >> 32
    return value


cdef class SummaryIndex:
    """Cython twin of tlsm.table_index.SummaryIndex; see there."""

    def __cinit__(self):
        self._starts = NULL
        self._slots = NULL
        self._count = 0
        self._mask = 0

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
        self._build_slots(buf)

    cdef int _build_slots(self, const unsigned char* buf) except -1:
        # At least twice as many slots as entries keeps linear probes short:
        # a lookup touches one slot and one entry on most calls, where a
        # binary search over a large summary misses the CPU cache at each
        # of its steps.
        cdef Py_ssize_t size = 8, i, slot, start, length
        cdef uint64_t hashed
        while size < 2 * self._count:
            size *= 2
        self._slots = <Slot*>PyMem_Malloc(size * sizeof(Slot))
        if self._slots == NULL:
            raise MemoryError()
        memset(self._slots, 0, size * sizeof(Slot))
        self._mask = size - 1
        for i in range(self._count):
            start = self._starts[i]
            length = read_u16(buf + start)
            hashed = _hash(buf + start + SUMMARY_ENTRY_BYTES, length)
            slot = <Py_ssize_t>(hashed & <uint64_t>self._mask)
            while self._slots[slot].entry != 0:
                slot = (slot + 1) & self._mask
            self._slots[slot].tag = <uint32_t>(hashed >> 32)
            self._slots[slot].entry = <uint32_t>(i + 1)
        return 0

    def __dealloc__(self):
        PyMem_Free(self._starts)
        PyMem_Free(self._slots)

    def __len__(self):
        return self._count

    def get(self, bytes timeline_id):
        """Return (min_seq, max_seq, count) of timeline_id, or None."""
        if self._count == 0:
            return None
        cdef const unsigned char* buf = &self._view[0]
        cdef const char* key = PyBytes_AS_STRING(timeline_id)
        cdef Py_ssize_t key_length = PyBytes_GET_SIZE(timeline_id)
        cdef uint64_t hashed = _hash(<const unsigned char*>key, key_length)
        cdef uint32_t tag = <uint32_t>(hashed >> 32)
        cdef Py_ssize_t slot = <Py_ssize_t>(hashed & <uint64_t>self._mask)
        cdef Py_ssize_t start
        cdef Slot* found
        while True:
            found = &self._slots[slot]
            if found.entry == 0:
                return None
            if found.tag == tag:
                start = self._starts[found.entry - 1]
                if (read_u16(buf + start) == key_length
                        and memcmp(buf + start + SUMMARY_ENTRY_BYTES, key,
                                   key_length) == 0):
                    return (read_u64(buf + start + 2), read_u64(buf + start + 10),
                            read_u64(buf + start + 18))
            slot = (slot + 1) & self._mask
