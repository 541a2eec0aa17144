# Readers of the little-endian integers in table files (docs/format.md),
# inlined into every module that cimports them.

from libc.stdint cimport uint64_t


cdef inline Py_ssize_t read_u16(const unsigned char* data) noexcept:
    return data[0] | (data[1] << 8)


cdef inline uint64_t read_u32(const unsigned char* data) noexcept:
    return (<uint64_t>data[0] | (<uint64_t>data[1] << 8)
            | (<uint64_t>data[2] << 16) | (<uint64_t>data[3] << 24))


cdef inline uint64_t read_u64(const unsigned char* data) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(7, -1, -1):
        value = (value << 8) | data[i]
    return value
