from libc.stdint cimport uint64_t


cdef class BlockCache:
    cdef public Py_ssize_t capacity_bytes
    cdef public Py_ssize_t used_bytes
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses
    # (file_number, block_index) -> (body, charge), oldest first.
    cdef object _items

    cdef object lookup(self, object key)
    cdef tuple lookup_item(self, object key)
    cdef int attach_runs(self, object key, object body, object runs) except -1
    cdef int store(self, object key, object body, Py_ssize_t charge) except -1


cpdef Py_ssize_t collect_run(tuple run, Py_ssize_t low, Py_ssize_t high,
                             bint reverse, object now_ms, Py_ssize_t limit,
                             list out) except -1


cpdef Py_ssize_t collect_table(object table, bytes timeline_id, uint64_t start,
                               object end, bint reverse, uint64_t now_ms,
                               Py_ssize_t limit, list out) except -1
