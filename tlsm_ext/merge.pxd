from libc.stdint cimport uint64_t


cdef class _MergeIterator:
    cdef list _sources
    cdef list _iterators
    # Current head entry of each source, or None once the source is exhausted.
    cdef list _heads
    cdef Py_ssize_t _count
    # Key of each source's head, pointing into the timeline_id bytes of the
    # entry in _heads, which keeps that memory alive.
    cdef const char** _timelines
    cdef Py_ssize_t* _timeline_lengths
    cdef uint64_t* _seqs
    # Binary heap of source indices, ordered by head key, then source index.
    cdef Py_ssize_t* _heap
    cdef Py_ssize_t _heap_size
    cdef bint _reverse
    cdef bint _started
    cdef bint _finished
    # The entry returned last; the next call drops heads with the same key.
    cdef tuple _last_entry
    cdef const char* _last_timeline
    cdef Py_ssize_t _last_timeline_length
    cdef uint64_t _last_seq

    cdef int _start(self) except -1
    cdef int _pull(self, Py_ssize_t index) except -1
    cdef int _advance_top(self) except -1
    cdef int _compare(self, Py_ssize_t a, Py_ssize_t b) noexcept
    cdef bint _before(self, Py_ssize_t a, Py_ssize_t b) noexcept
    cdef void _sift_down(self, Py_ssize_t pos) noexcept
    cdef bint _top_is_last_key(self) noexcept
