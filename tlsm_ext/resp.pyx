# cython: language_level=3
"""Cython implementation of tlsm.resp.RespParser.

The behaviour, limits and error messages match the pure-Python reference in
tlsm/resp.py, which holds the public documentation.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcpy, memmove

from tlsm.errors import InvalidArgumentError, ProtocolError

# Same limits and thresholds as tlsm/resp.py.
DEFAULT_MAX_BULK_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_ARGS = 1024 * 1024
DEFAULT_MAX_INLINE_BYTES = 64 * 1024
cdef Py_ssize_t _COMPACT_MIN_BYTES = 4096
cdef Py_ssize_t _SHOW_MAX_BYTES = 32
# A buffer grown past this size is freed when it empties, so one large
# request does not pin its memory for the life of the connection.
cdef Py_ssize_t _SHRINK_ABOVE_BYTES = 1024 * 1024


def _show(value):
    """Return value (bytes) as printable ASCII for an error message."""
    parts = []
    for byte in value[:_SHOW_MAX_BYTES]:
        if 0x20 <= byte <= 0x7E:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    if len(value) > _SHOW_MAX_BYTES:
        parts.append("...")
    return "".join(parts)


cdef inline bint _is_space(unsigned char byte) noexcept nogil:
    return byte == 32 or (9 <= byte <= 13)


cdef inline bint _ends_word(unsigned char byte) noexcept nogil:
    return byte == 32 or byte == 9 or byte == 10 or byte == 13


cdef inline int _hex_value(unsigned char byte) noexcept nogil:
    if 48 <= byte <= 57:
        return byte - 48
    if 97 <= byte <= 102:
        return byte - 87
    if 65 <= byte <= 70:
        return byte - 55
    return -1


cdef inline unsigned char _unescape(unsigned char byte) noexcept nogil:
    if byte == 110:  # n
        return 10
    if byte == 114:  # r
        return 13
    if byte == 116:  # t
        return 9
    if byte == 98:  # b
        return 8
    if byte == 97:  # a
        return 7
    return byte


cdef bint _parse_length(const unsigned char* text, Py_ssize_t size,
                        long long* out) noexcept nogil:
    """Store text as a signed 64-bit integer in out; return 0 if it is invalid."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef unsigned long long value = 0
    cdef unsigned long long limit = 9223372036854775807ULL
    cdef unsigned int digit
    if size == 0 or size > 20:
        return 0
    if text[0] == 45:  # '-'
        negative = True
        i = 1
        limit += 1
    if i == size:
        return 0
    if text[i] == 48 and (size - i > 1 or negative):  # leading '0'
        return 0
    while i < size:
        digit = text[i] - 48
        if digit > 9:
            return 0
        if value > (limit - digit) // 10:
            return 0
        value = value * 10 + digit
        i += 1
    if negative:
        out[0] = <long long>(0ULL - value)
    else:
        out[0] = <long long>value
    return 1


cdef Py_ssize_t _read_quoted(const unsigned char* line, Py_ssize_t size,
                             Py_ssize_t i, unsigned char quote,
                             unsigned char* word, Py_ssize_t* length) noexcept nogil:
    """Copy the quoted part starting after line[i - 1] into word.

    Return the index after the closing quote, or -1 for unbalanced quotes.
    """
    cdef Py_ssize_t n = length[0]
    cdef unsigned char byte
    cdef int high, low
    while i < size:
        byte = line[i]
        if quote == 34 and byte == 92 and i + 1 < size:  # backslash in "..."
            if line[i + 1] == 120 and i + 3 < size:  # \xHH
                high = _hex_value(line[i + 2])
                low = _hex_value(line[i + 3])
                if high >= 0 and low >= 0:
                    word[n] = <unsigned char>(high * 16 + low)
                    n += 1
                    i += 4
                    continue
            word[n] = _unescape(line[i + 1])
            n += 1
            i += 2
        elif quote == 39 and byte == 92 and i + 1 < size and line[i + 1] == 39:
            word[n] = 39
            n += 1
            i += 2
        elif byte == quote:
            if i + 1 < size and not _is_space(line[i + 1]):
                return -1
            length[0] = n
            return i + 1
        else:
            word[n] = byte
            n += 1
            i += 1
    return -1


cdef list _split_words(const unsigned char* line, Py_ssize_t size, long long max_args):
    cdef list words = []
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t length
    cdef unsigned char byte
    # A word is never longer than its line, so one scratch buffer serves all.
    cdef unsigned char* word = <unsigned char*>malloc(size + 1)
    if word == NULL:
        raise MemoryError()
    try:
        while True:
            while i < size and _is_space(line[i]):
                i += 1
            if i >= size:
                return words
            length = 0
            while i < size:
                byte = line[i]
                if _ends_word(byte):
                    break
                if byte == 34 or byte == 39:
                    i = _read_quoted(line, size, i + 1, byte, word, &length)
                    if i < 0:
                        raise ProtocolError(
                            "Protocol error: unbalanced quotes in request"
                        )
                    break
                word[length] = byte
                length += 1
                i += 1
            words.append(PyBytes_FromStringAndSize(<char*>word, length))
            if len(words) > max_args:
                raise ProtocolError(
                    "Protocol error: too many arguments in inline request, above "
                    f"the limit of {max_args}"
                )
    finally:
        free(word)


def split_inline(line, max_args=DEFAULT_MAX_ARGS):
    """Split one inline request line into words; see tlsm.resp.split_inline."""
    cdef Py_buffer view
    PyObject_GetBuffer(line, &view, PyBUF_SIMPLE)
    try:
        return _split_words(<const unsigned char*>view.buf, view.len, max_args)
    finally:
        PyBuffer_Release(&view)


cdef long long _check_limit(str name, value) except -1:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1 or value > (1 << 62):
        raise InvalidArgumentError(f"{name} {value} is outside 1..{1 << 62}")
    return value


cdef class RespParser:
    """Incremental RESP request parser; see tlsm.resp.RespParser."""

    def __cinit__(self):
        self._buf = NULL
        self._args = None
        self._bulk_len = -1

    def __init__(self, max_bulk_bytes=DEFAULT_MAX_BULK_BYTES, max_args=DEFAULT_MAX_ARGS,
                 max_inline_bytes=DEFAULT_MAX_INLINE_BYTES):
        self.max_bulk_bytes = _check_limit("max_bulk_bytes", max_bulk_bytes)
        self.max_args = _check_limit("max_args", max_args)
        self.max_inline_bytes = _check_limit("max_inline_bytes", max_inline_bytes)

    def __dealloc__(self):
        free(self._buf)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t needed
        cdef Py_ssize_t capacity
        cdef unsigned char* grown
        if self._size + extra <= self._capacity:
            return 0
        # Moving the unconsumed tail to the front is cheaper than growing.
        if self._pos > 0:
            memmove(self._buf, self._buf + self._pos, self._size - self._pos)
            self._size -= self._pos
            self._scan -= self._pos
            self._pos = 0
        needed = self._size + extra
        if needed <= self._capacity:
            return 0
        capacity = max(needed, 2 * self._capacity, 4096)
        grown = <unsigned char*>realloc(self._buf, capacity)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._capacity = capacity
        return 0

    cdef void _compact(self) noexcept:
        cdef Py_ssize_t pos = self._pos
        if pos == 0:
            return
        if pos >= self._size:
            self._size = 0
            if self._capacity > _SHRINK_ABOVE_BYTES:
                free(self._buf)
                self._buf = NULL
                self._capacity = 0
        elif pos >= _COMPACT_MIN_BYTES and pos * 2 >= self._size:
            memmove(self._buf, self._buf + pos, self._size - pos)
            self._size -= pos
        else:
            return
        self._scan -= pos
        self._pos = 0

    def feed(self, data):
        cdef Py_buffer view
        if self._error is not None:
            raise ProtocolError(self._error)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len > 0:
                self._reserve(view.len)
                memcpy(self._buf + self._size, view.buf, view.len)
                self._size += view.len
        finally:
            PyBuffer_Release(&view)

    def pending_bytes(self):
        return self._size - self._pos + self._partial_bytes

    def next_command(self):
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            command = self._parse()
        except ProtocolError as exc:
            self._error = str(exc)
            raise
        self._compact()
        return command

    cdef object _parse(self):
        cdef object count
        cdef object command
        while True:
            if self._args is not None:
                return self._read_bulks()
            if self._pos >= self._size:
                return None
            if self._buf[self._pos] == 42:  # '*'
                count = self._read_count()
                if count is None:
                    return None
                if count > 0:
                    self._args = []
                    self._args_left = count
            else:
                command = self._read_inline()
                if command is None:
                    return None
                if command:
                    return command

    cdef Py_ssize_t _read_line(self, str line_name) except -2:
        """Find the CR LF ending the line that starts at _pos.

        Return the index of the CR and move _pos past the LF, or return -1
        when the line is incomplete.
        """
        cdef Py_ssize_t start = self._pos
        cdef Py_ssize_t begin = max(self._scan, start + 1)
        cdef const unsigned char* found = NULL
        cdef Py_ssize_t end
        if begin < self._size:
            found = <const unsigned char*>memchr(self._buf + begin, 13,
                                                 self._size - begin)
        if found == NULL:
            if self._size - start > self.max_inline_bytes:
                raise ProtocolError(
                    f"Protocol error: too big {line_name} line (no CR LF within "
                    f"the limit of {self.max_inline_bytes} bytes)"
                )
            self._scan = self._size
            return -1
        end = found - self._buf
        if end + 1 >= self._size:
            self._scan = end
            return -1
        if self._buf[end + 1] != 10:
            raise ProtocolError(
                f"Protocol error: expected '\\n' after '\\r' in {line_name}, "
                f"got '{_show(self._bytes(end + 1, end + 2))}'"
            )
        self._pos = end + 2
        self._scan = self._pos
        return end

    cdef bytes _bytes(self, Py_ssize_t start, Py_ssize_t end):
        return PyBytes_FromStringAndSize(<char*>self._buf + start, end - start)

    cdef object _read_count(self):
        cdef Py_ssize_t start = self._pos
        cdef Py_ssize_t end = self._read_line("multibulk length")
        cdef long long count
        if end < 0:
            return None
        if not _parse_length(self._buf + start + 1, end - start - 1, &count):
            raise ProtocolError(
                "Protocol error: invalid multibulk length "
                f"'{_show(self._bytes(start + 1, end))}'"
            )
        if count > self.max_args:
            raise ProtocolError(
                f"Protocol error: multibulk length {count} above the limit "
                f"of {self.max_args} arguments"
            )
        if count > 0:
            self._partial_bytes = self._pos - start
        return count

    cdef object _read_bulks(self):
        cdef Py_ssize_t start
        cdef Py_ssize_t end
        cdef unsigned char marker
        cdef list command
        while self._args_left > 0:
            if self._bulk_len < 0:
                if self._pos >= self._size:
                    return None
                marker = self._buf[self._pos]
                if marker != 36:  # '$'
                    raise ProtocolError(
                        f"Protocol error: expected '$', got '{_show(bytes([marker]))}'"
                    )
                start = self._pos
                end = self._read_line("bulk length")
                if end < 0:
                    return None
                self._bulk_len = self._check_bulk_len(start + 1, end)
                self._partial_bytes += self._pos - start
            # _bulk_len <= max_bulk_bytes <= 2**62, so this cannot overflow.
            end = self._pos + <Py_ssize_t>self._bulk_len
            if self._size < end + 2:
                return None
            if self._buf[end] != 13 or self._buf[end + 1] != 10:
                raise ProtocolError(
                    "Protocol error: expected '\\r\\n' after a bulk string of "
                    f"{self._bulk_len} bytes, got '{_show(self._bytes(end, end + 2))}'"
                )
            self._args.append(self._bytes(self._pos, end))
            self._partial_bytes += <Py_ssize_t>self._bulk_len + 2
            self._pos = end + 2
            self._scan = self._pos
            self._bulk_len = -1
            self._args_left -= 1
        command = self._args
        self._args = None
        self._partial_bytes = 0
        return command

    cdef long long _check_bulk_len(self, Py_ssize_t start, Py_ssize_t end) except -1:
        cdef long long length
        if not _parse_length(self._buf + start, end - start, &length) or length < 0:
            raise ProtocolError(
                "Protocol error: invalid bulk length "
                f"'{_show(self._bytes(start, end))}'"
            )
        if length > self.max_bulk_bytes:
            raise ProtocolError(
                f"Protocol error: bulk length {length} above the limit of "
                f"{self.max_bulk_bytes} bytes"
            )
        return length

    cdef object _read_inline(self):
        cdef Py_ssize_t start = self._pos
        cdef Py_ssize_t begin = max(self._scan, start)
        cdef const unsigned char* found = NULL
        cdef Py_ssize_t end
        cdef Py_ssize_t line_end
        cdef Py_ssize_t line_bytes
        if begin < self._size:
            found = <const unsigned char*>memchr(self._buf + begin, 10,
                                                 self._size - begin)
        if found == NULL:
            line_bytes = self._size - start
            if self._buf[self._size - 1] == 13:
                line_bytes -= 1
            if line_bytes > self.max_inline_bytes:
                raise self._inline_too_big()
            self._scan = self._size
            return None
        end = found - self._buf
        line_end = end
        if line_end > start and self._buf[line_end - 1] == 13:
            line_end -= 1
        if line_end - start > self.max_inline_bytes:
            raise self._inline_too_big()
        self._pos = end + 1
        self._scan = self._pos
        return _split_words(self._buf + start, line_end - start, self.max_args)

    def _inline_too_big(self):
        return ProtocolError(
            "Protocol error: too big inline request (a line longer than the "
            f"limit of {self.max_inline_bytes} bytes)"
        )
