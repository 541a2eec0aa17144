# Lookups inside one table file, shared by tlsm_ext/scan.pyx: which data
# block may hold a key (BlockSearch), and where a timeline's entries start
# inside a checked block (BlockRuns). See block_lookup.pyx.

cimport cython
from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t prefix_of_bytes(const char* timeline, Py_ssize_t length) noexcept:
    # The first eight bytes of a timeline id, big-endian and zero-padded.
    cdef uint64_t prefix = 0
    cdef Py_ssize_t i
    for i in range(8):
        prefix = (prefix << 8) | (<uint8_t>timeline[i] if i < length else 0)
    return prefix


cdef struct IndexKey:
    # Eight bytes of the timeline id from BlockSearch.common_length on,
    # big-endian and zero-padded, so that unequal prefixes order keys
    # without reading the id itself.
    uint64_t prefix
    uint64_t seq
    Py_ssize_t timeline_at
    Py_ssize_t timeline_length


cdef struct Run:
    # The entries of one timeline in a block: the timeline id's place in
    # the body, and the first entry (its tag byte) and number of entries.
    uint64_t prefix
    Py_ssize_t timeline_at
    Py_ssize_t timeline_length
    Py_ssize_t entry_at
    Py_ssize_t entry_count


@cython.final
cdef class BlockSearch:
    cdef IndexKey* keys
    cdef Py_ssize_t count
    cdef bytes timelines
    # The first common_length bytes are equal in every timeline id here.
    cdef bytes common
    cdef Py_ssize_t common_length

    cdef int build(self, list index_keys) except -1
    cdef uint64_t prefix_of(self, const char* timeline, Py_ssize_t length) noexcept
    cdef int compare(self, Py_ssize_t position, uint64_t prefix,
                     const char* timeline, Py_ssize_t length, uint64_t seq) noexcept
    cdef Py_ssize_t bisect(self, uint64_t prefix, const char* timeline,
                           Py_ssize_t length, uint64_t seq) noexcept
    cdef int outside(self, const char* timeline, Py_ssize_t length) noexcept


cdef BlockSearch block_search_of(object table)


@cython.final
cdef class BlockRuns:
    cdef Run* runs
    cdef Py_ssize_t count

    cdef int build(self, const uint8_t* buf, Py_ssize_t size) except -1
    cdef Run* find(self, const uint8_t* buf, uint64_t prefix, const char* timeline,
                   Py_ssize_t length) noexcept


cdef int collect_from_run(const uint8_t* buf, Run* run, uint64_t first,
                          uint64_t last, bint reverse, uint64_t now_ms,
                          Py_ssize_t limit, list out) except -1
