cdef class RespParser:
    cdef readonly long long max_bulk_bytes
    cdef readonly long long max_args
    cdef readonly long long max_inline_bytes
    # Input buffer: bytes [_pos, _size) of _buf are fed but not consumed.
    cdef unsigned char* _buf
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _pos
    # Where the next search for a line ending resumes (>= _pos).
    cdef Py_ssize_t _scan
    # State of the multibulk request being read (_args is None outside one).
    cdef list _args
    cdef long long _args_left
    cdef long long _bulk_len
    cdef Py_ssize_t _partial_bytes
    cdef object _error

    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef void _compact(self) noexcept
    cdef object _parse(self)
    cdef Py_ssize_t _read_line(self, str line_name) except -2
    cdef object _read_count(self)
    cdef object _read_bulks(self)
    cdef long long _check_bulk_len(self, Py_ssize_t start, Py_ssize_t end) except -1
    cdef object _read_inline(self)
    cdef bytes _bytes(self, Py_ssize_t start, Py_ssize_t end)


cdef list _split_words(const unsigned char* line, Py_ssize_t size, long long max_args)
