from cpython.buffer cimport Py_buffer
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef class FastWriter:
    cdef object _write_lock
    cdef object _visible_lock
    cdef dict _last_seqs
    cdef Py_ssize_t _memtable_bytes
    cdef Py_ssize_t _max_payload
    cdef Py_ssize_t _max_batch
    cdef bint _sync_always
    # Per table prefix, a dict from timeline_id to its stored key, so a
    # repeated timeline costs one dict lookup instead of encoding the id and
    # hashing a new key. str and bytes ids have separate dicts, because an
    # ASCII str and its bytes hash alike.
    cdef dict _key_caches
    cdef dict _bytes_key_caches
    cdef bint _disabled
    # The attached memtable and its dict of runs, and the log file; None
    # when detached. While attached, the three buffers are held: the log's
    # mapping, its size_cell (_log_size points into it) and the memtable's
    # counters (_counts: entry count, approximate bytes).
    cdef object _memtable
    cdef dict _runs
    cdef object _log_file
    cdef Py_buffer _view
    cdef Py_buffer _size_view
    cdef Py_buffer _counts_view
    cdef bint _has_view
    cdef long long* _log_size
    cdef long long* _counts
    cdef public unsigned long long wal_bytes
    cdef public unsigned long long user_bytes

    cdef void _release_views(self) noexcept
    cdef bint _may_start(self, object table, object ttl, object sync) except -1
    cdef object _make_key(self, object prefix, object timeline_id)
    cdef int _next_seq(self, object key, uint64_t* seq) except -1
    cdef PyObject* _run_for(self, object key) except NULL
    cdef Py_ssize_t _put_entry(self, unsigned char* out, bytes key, uint64_t seq,
                               bytes payload) noexcept
    cdef void _seal_record(self, unsigned char* record, Py_ssize_t length) noexcept
    cdef int _add_to_run(self, PyObject* run, object key, object seq,
                         object payload) except -1
    cdef void _account(self, Py_ssize_t entries, Py_ssize_t user_bytes,
                       Py_ssize_t record_bytes) noexcept


cpdef uint32_t table_crc32(const unsigned char[:] data, uint32_t value=*)
