from libc.stdint cimport uint8_t, uint64_t

from tlsm_ext.block cimport _Writer

# The longest timeline id (table byte included) that add_raw() accepts; it
# is above tlsm.keys.MAX_KEY_BYTES.
cdef enum:
    MAX_RAW_TIMELINE = 1024


cdef class DataBlocks:
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
    # The block of raw entries being filled: entry count, last key.
    cdef Py_ssize_t _raw_count
    cdef uint8_t _raw_timeline[MAX_RAW_TIMELINE]
    cdef Py_ssize_t _raw_timeline_length
    cdef uint64_t _raw_seq

    cdef int add_raw(self, const uint8_t* timeline, Py_ssize_t timeline_length,
                     uint64_t seq, uint64_t kind, uint64_t expires_at,
                     const uint8_t* value, Py_ssize_t value_length) except -1
    cdef int note_run(self, bytes timeline_id, uint64_t first_seq, uint64_t last_seq,
                      Py_ssize_t count, bint never_expires,
                      uint64_t max_expires_at) except -1
    cdef int _finish_raw_block(self) except -1
    cdef int _finish_block(self) except -1
    cdef int _emit_block(self, bytes body, tuple last_key) except -1
    cdef int _append_frame(self, const uint8_t* data, Py_ssize_t length,
                           uint8_t compression) except -1
