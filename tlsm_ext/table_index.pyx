# cython: language_level=3
"""Cython implementation of tlsm.table_index.

Behaviour and exceptions match the pure-Python reference in
tlsm/table_index.py, which holds the public documentation.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from tlsm_ext.little_endian cimport read_u16, read_u64

# Summary entry header (on disk): timeline_len u16 | min_seq u64 |
# max_seq u64 | count u64.
cdef Py_ssize_t SUMMARY_ENTRY_BYTES = 26
# Lookups answered by binary search before the hash table is built. Most
# tables see few lookups right after open (hashing 10,000 ids takes about
# 0.2 ms), and busy ones recoup the build soon after.
cdef Py_ssize_t SEARCHES_BEFORE_HASHING = 32


cdef inline uint64_t _hash(const unsigned char* data, Py_ssize_t length) noexcept nogil:
    # Eight bytes at a time, each word folded in with a multiply, then a
    # multiply-xorshift finish so that the high bits, which pick the slot
    # and tag, depend on every byte.
    cdef uint64_t value = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>length * 0xFF51AFD7ED558CCDULL)
    cdef uint64_t word
    cdef Py_ssize_t i = 0
    while i + 8 <= length:
        memcpy(&word, data + i, 8)
        value = (value ^ word) * 0xC4CEB9FE1A85EC53ULL
        value ^= value >> 31
        i += 8
    if i < length:
        word = 0
        memcpy(&word, data + i, length - i)
        value = (value ^ word) * 0xC4CEB9FE1A85EC53ULL
        value ^= value >> 31
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
        self._searches = 0

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
            if count and not summary_id_rises(buf, self._starts[count - 1], pos):
                raise ValueError("summary timeline id not above the previous one", pos)
            self._starts[count] = pos
            count += 1
            pos += SUMMARY_ENTRY_BYTES + read_u16(buf + pos)
        self._count = count

    cdef int _build_slots(self, const unsigned char* buf) except -1:
        # At least twice as many slots as entries keeps linear probes short,
        # so a lookup touches one slot and one entry on most calls.
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

    def get(self, bytes timeline_id not None):
        """Return (min_seq, max_seq, count) of timeline_id, or None."""
        cdef Py_ssize_t start = self.find(PyBytes_AS_STRING(timeline_id),
                                          PyBytes_GET_SIZE(timeline_id))
        if start < 0:
            return None
        return _span_at(&self._view[0], start)

    cdef Py_ssize_t find(self, const char* key, Py_ssize_t key_length) except -2:
        """Return where key's entry starts in the summary body, or -1.

        The entry's min_seq, max_seq and count are the u64s at offsets 2,
        10 and 18 from that start (see span_of).
        """
        if self._count == 0:
            return -1
        cdef const unsigned char* buf = &self._view[0]
        if self._slots == NULL:
            if self._searches < SEARCHES_BEFORE_HASHING:
                self._searches += 1
                return self._search(buf, key, key_length)
            self._build_slots(buf)
        cdef uint64_t hashed = _hash(<const unsigned char*>key, key_length)
        cdef uint32_t tag = <uint32_t>(hashed >> 32)
        cdef Py_ssize_t slot = <Py_ssize_t>(hashed & <uint64_t>self._mask)
        cdef Py_ssize_t start
        cdef Slot* found
        while True:
            found = &self._slots[slot]
            if found.entry == 0:
                return -1
            if found.tag == tag:
                start = self._starts[found.entry - 1]
                if (read_u16(buf + start) == key_length
                        and memcmp(buf + start + SUMMARY_ENTRY_BYTES, key,
                                   key_length) == 0):
                    return start
            slot = (slot + 1) & self._mask

    cdef void span_of(self, Py_ssize_t start, uint64_t* min_seq, uint64_t* max_seq,
                      uint64_t* count) noexcept:
        """Store the span of the entry at start, a result of find()."""
        cdef const unsigned char* buf = &self._view[0]
        min_seq[0] = read_u64(buf + start + 2)
        max_seq[0] = read_u64(buf + start + 10)
        count[0] = read_u64(buf + start + 18)

    cdef Py_ssize_t _search(self, const unsigned char* buf, const char* key,
                            Py_ssize_t key_length) noexcept:
        # Binary search over the entries, which are in timeline_id order.
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
                return start
        return -1


cdef inline tuple _span_at(const unsigned char* buf, Py_ssize_t start):
    return (read_u64(buf + start + 2), read_u64(buf + start + 10),
            read_u64(buf + start + 18))
