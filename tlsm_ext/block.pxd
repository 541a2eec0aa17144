from libc.stdint cimport uint8_t, uint64_t


# A growing output buffer: data[0:size] is written, capacity is allocated
# (with realloc; the owner frees data).
cdef struct _Writer:
    uint8_t* data
    Py_ssize_t size
    Py_ssize_t capacity

cdef int _reserve(_Writer* writer, Py_ssize_t extra) except -1
cdef int _encode_slices(_Writer* writer, list slices) except -1
cdef int _put_raw_entry(_Writer* writer, const uint8_t* timeline,
                        Py_ssize_t timeline_length, bint new_timeline, uint64_t seq,
                        uint64_t previous_seq, uint64_t kind, uint64_t expires_at,
                        const uint8_t* value, Py_ssize_t value_length) except -1

cdef int _read_varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                      uint64_t* out) noexcept nogil
cdef list _decode(const uint8_t* buf, Py_ssize_t size)

cpdef bytes encode_block(object entries)
cpdef list decode_block(object data)
cdef object _scan(const uint8_t* buf, Py_ssize_t size, bytes timeline_id,
                  uint64_t start, uint64_t end, bint unbounded, bint reverse,
                  uint64_t now_ms, Py_ssize_t limit, list out)
