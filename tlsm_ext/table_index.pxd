from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp

from tlsm_ext.little_endian cimport read_u16


cdef struct Slot:
    # Upper 32 bits of the timeline's hash, and its entry number + 1 (0
    # marks an empty slot).
    uint32_t tag
    uint32_t entry


cdef class SummaryIndex:
    # The summary body (any bytes-like object), read in place.
    cdef const unsigned char[::1] _view
    # Start of each entry in _body, in body (timeline_id) order.
    cdef Py_ssize_t* _starts
    cdef Py_ssize_t _count
    # Open-addressing hash table over the entries, linear probing.
    cdef Slot* _slots
    cdef Py_ssize_t _mask
    # Lookups answered by binary search while _slots is not built yet.
    cdef Py_ssize_t _searches

    cdef Py_ssize_t find(self, const char* key, Py_ssize_t key_length) except -2
    cdef void span_of(self, Py_ssize_t start, uint64_t* min_seq, uint64_t* max_seq,
                      uint64_t* count) noexcept
    cdef int _build_slots(self, const unsigned char* buf) except -1
    cdef Py_ssize_t _search(self, const unsigned char* buf, const char* key,
                            Py_ssize_t key_length) noexcept


cdef inline bint summary_id_rises(const unsigned char* buf, Py_ssize_t previous,
                                  Py_ssize_t start) noexcept:
    """Return whether the id of the summary entry at start sorts above the one
    at previous (entries: a u16 length, three u64s, then the id)."""
    cdef Py_ssize_t length_a = read_u16(buf + previous)
    cdef Py_ssize_t length_b = read_u16(buf + start)
    cdef int order = memcmp(buf + previous + 26, buf + start + 26,
                            length_a if length_a < length_b else length_b)
    return order < 0 or (order == 0 and length_a < length_b)
