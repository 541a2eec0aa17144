from libc.stdint cimport uint8_t, uint64_t


cdef int _read_varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                      uint64_t* out) noexcept nogil
cdef list _decode(const uint8_t* buf, Py_ssize_t size)

cpdef bytes encode_block(object entries)
cpdef list decode_block(object data)
cdef object _scan(const uint8_t* buf, Py_ssize_t size, bytes timeline_id,
                  uint64_t start, uint64_t end, bint unbounded, bint reverse,
                  uint64_t now_ms, Py_ssize_t limit, list out)
