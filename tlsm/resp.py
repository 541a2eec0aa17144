"""Incremental parser for RESP requests, as a Redis server reads them.

The parser does no I/O: the server passes it the bytes it receives with
feed() and takes complete commands with next_command(). Two request forms
are accepted, chosen by the first byte of each request:

* ``*`` starts a multibulk request, an array of bulk strings:
  ``*<count>\\r\\n`` then, per argument, ``$<length>\\r\\n<bytes>\\r\\n``.
  redis-cli, redis-py and redis-benchmark send this form. A count of zero or
  below (``*0``, ``*-1``) is an empty request and yields no command.
* Any other byte starts an inline request: one line of words separated by
  spaces, ended by ``\\n`` or ``\\r\\n``, as typed into telnet. A word may be
  double-quoted, with the escapes ``\\"`` ``\\\\`` ``\\n`` ``\\r`` ``\\t``
  ``\\b`` ``\\a`` and ``\\xHH``, or single-quoted, where only ``\\'`` is an
  escape. A closing quote must be followed by a space or the end of the line.
  An empty line yields no command.

Lengths and counts are decimal integers without a sign or leading zeros (a
leading ``-`` is allowed for counts). Error messages follow Redis's wording,
start with "Protocol error:" and name the offending value and the limit.

The pure-Python implementation below is the reference. tlsm_ext/resp.pyx
implements the same class in Cython. When the extension is built, this module
rebinds RespParser to it, and the pure class stays reachable as
``PurePython.RespParser``.
"""

import types

from . import _impl
from .errors import InvalidArgumentError, ProtocolError

# redis-server 7.0.15 defaults proto-max-bulk-len to 512 MiB and rejects
# inline requests over 64 KiB. It accepts up to 2**31 - 1 arguments, so the
# argument limit here is our own: it bounds the list one request can build.
DEFAULT_MAX_BULK_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_ARGS = 1024 * 1024
DEFAULT_MAX_INLINE_BYTES = 64 * 1024

# A consumed prefix of the buffer is dropped once it is at least this long and
# at least half of the buffer, so compaction costs amortized O(1) per byte.
_COMPACT_MIN_BYTES = 4096
# Error messages show at most this many bytes of an offending value.
_SHOW_MAX_BYTES = 32

_CR = 0x0D
_LF = 0x0A
# Bytes skipped between inline words (C isspace) and bytes that end an
# unquoted word (Redis ends a word on space, tab, CR and LF only).
_SPACE_BYTES = frozenset(b" \t\n\r\v\f")
_WORD_END_BYTES = frozenset(b" \t\n\r")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {
    ord("n"): 0x0A,
    ord("r"): 0x0D,
    ord("t"): 0x09,
    ord("b"): 0x08,
    ord("a"): 0x07,
}


def _show(value):
    """Return value (bytes) as printable ASCII for an error message.

    Bytes outside 0x20..0x7e become \\xHH, so a message never contains a line
    break that would end an error reply early. Long values are cut to
    _SHOW_MAX_BYTES bytes and end in "...".
    """
    parts = []
    for byte in value[:_SHOW_MAX_BYTES]:
        if 0x20 <= byte <= 0x7E:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    if len(value) > _SHOW_MAX_BYTES:
        parts.append("...")
    return "".join(parts)


def _parse_length(text):
    """Return text (bytes) as an int, or None unless it is a valid RESP integer.

    Valid: an optional "-", then "0" or digits without a leading zero, within
    the signed 64-bit range. "-0", "+1", " 1" and "" are invalid.
    """
    if not text or len(text) > 20:
        return None
    negative = text[0] == 0x2D
    digits = text[1:] if negative else text
    if not digits or not digits.isdigit():
        return None
    if digits[0] == 0x30 and (len(digits) > 1 or negative):
        return None
    value = int(digits)
    if negative:
        value = -value
    if value < -(1 << 63) or value >= (1 << 63):
        return None
    return value


def _check_limit(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1 or value > (1 << 62):
        raise InvalidArgumentError(f"{name} {value} is outside 1..{1 << 62}")
    return value


def split_inline(line, max_args=DEFAULT_MAX_ARGS):
    """Split one inline request line (without its line ending) into words.

    Raises ProtocolError on unbalanced quotes or more than max_args words.
    """
    words = []
    size = len(line)
    i = 0
    while True:
        while i < size and line[i] in _SPACE_BYTES:
            i += 1
        if i >= size:
            return words
        word, i = _read_word(line, i)
        words.append(word)
        if len(words) > max_args:
            raise ProtocolError(
                "Protocol error: too many arguments in inline request, above "
                f"the limit of {max_args}"
            )


def _read_word(line, i):
    """Read one inline word starting at line[i]; return (word, next index)."""
    size = len(line)
    word = bytearray()
    while i < size:
        byte = line[i]
        if byte in _WORD_END_BYTES:
            break
        # A quote opens a quoted part even in the middle of a word, and the
        # closing quote ends the word.
        if byte == 0x22:  # '"'
            i = _read_double_quoted(line, i + 1, word)
            break
        if byte == 0x27:  # "'"
            i = _read_single_quoted(line, i + 1, word)
            break
        word.append(byte)
        i += 1
    return bytes(word), i


def _check_after_quote(line, i):
    """Raise unless line[i], just after a closing quote, is a space or the end."""
    if i < len(line) and line[i] not in _SPACE_BYTES:
        raise ProtocolError("Protocol error: unbalanced quotes in request")


def _read_double_quoted(line, i, word):
    """Append the body of a double-quoted word to word; return the index after it."""
    size = len(line)
    while i < size:
        byte = line[i]
        if byte == 0x5C and i + 1 < size:  # backslash
            escaped = line[i + 1]
            if (
                escaped == 0x78  # 'x'
                and i + 3 < size
                and line[i + 2] in _HEX_DIGITS
                and line[i + 3] in _HEX_DIGITS
            ):
                word.append(int(line[i + 2 : i + 4], 16))
                i += 4
            else:
                word.append(_ESCAPES.get(escaped, escaped))
                i += 2
        elif byte == 0x22:
            _check_after_quote(line, i + 1)
            return i + 1
        else:
            word.append(byte)
            i += 1
    raise ProtocolError("Protocol error: unbalanced quotes in request")


def _read_single_quoted(line, i, word):
    """Append the body of a single-quoted word to word; return the index after it."""
    size = len(line)
    while i < size:
        byte = line[i]
        if byte == 0x5C and i + 1 < size and line[i + 1] == 0x27:
            word.append(0x27)
            i += 2
        elif byte == 0x27:
            _check_after_quote(line, i + 1)
            return i + 1
        else:
            word.append(byte)
            i += 1
    raise ProtocolError("Protocol error: unbalanced quotes in request")


class RespParser:
    """Incremental RESP request parser.

    feed() appends received bytes and next_command() returns the next complete
    command as a list of bytes, or None when more bytes are needed. Call
    next_command() until it returns None after every feed(), because one feed
    may complete several pipelined commands.

    Limits (each an int of at least 1):

    * max_bulk_bytes: the largest bulk string accepted (Redis's
      proto-max-bulk-len, 512 MiB by default).
    * max_args: the most arguments in one request (1,048,576 by default).
    * max_inline_bytes: the longest inline request line, and the longest
      ``*<count>`` or ``$<length>`` line (64 KiB by default).

    A request that breaks the protocol or a limit raises ProtocolError. The
    parser is then unusable: every later feed() or next_command() raises a
    ProtocolError with the same message, so the server should send the error
    and close the connection.

    Memory: the parser keeps the bytes fed and not yet returned (in a buffer
    that may grow to about twice that size), plus one copy of the bulk string
    being extracted. It never allocates memory for a length that a client only
    announced. Each byte is scanned a bounded
    number of times however the input is split, so a 100 MB bulk fed in 1 KB
    chunks costs linear time.
    """

    def __init__(
        self,
        max_bulk_bytes=DEFAULT_MAX_BULK_BYTES,
        max_args=DEFAULT_MAX_ARGS,
        max_inline_bytes=DEFAULT_MAX_INLINE_BYTES,
    ):
        self._max_bulk_bytes = _check_limit("max_bulk_bytes", max_bulk_bytes)
        self._max_args = _check_limit("max_args", max_args)
        self._max_inline_bytes = _check_limit("max_inline_bytes", max_inline_bytes)
        self._buf = bytearray()
        self._pos = 0  # first unconsumed byte of _buf
        self._scan = 0  # where the next search for a line ending resumes
        self._args = None  # arguments of the multibulk request being read
        self._args_left = 0
        self._bulk_len = -1  # length of the bulk being read, -1 before its header
        self._partial_bytes = 0  # consumed bytes of the unfinished command
        self._error = None

    @property
    def max_bulk_bytes(self):
        """The largest bulk string accepted, in bytes."""
        return self._max_bulk_bytes

    @property
    def max_args(self):
        """The maximum number of arguments in one request."""
        return self._max_args

    @property
    def max_inline_bytes(self):
        """The maximum length of an inline line or a count line, in bytes."""
        return self._max_inline_bytes

    def feed(self, data):
        """Append data (any bytes-like object) to the input buffer.

        Raises ProtocolError if an earlier call raised one.
        """
        if self._error is not None:
            raise ProtocolError(self._error)
        self._buf += data

    def pending_bytes(self):
        """Return how many bytes were fed but not yet returned in a command.

        This includes the consumed part of an unfinished multibulk request, so
        a server can cap the memory one connection holds.
        """
        return len(self._buf) - self._pos + self._partial_bytes

    def next_command(self):
        """Return the next complete command as a list of bytes, or None.

        None means the buffer contains no complete command yet. Empty requests
        (``*0``, ``*-1``, blank inline lines) are skipped. Raises
        ProtocolError on malformed input or a broken limit.
        """
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            command = self._parse()
        except ProtocolError as exc:
            self._error = str(exc)
            raise
        self._compact()
        return command

    def _parse(self):
        buf = self._buf
        while True:
            if self._args is not None:
                return self._read_bulks()
            if self._pos >= len(buf):
                return None
            if buf[self._pos] == 0x2A:  # '*'
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

    def _compact(self):
        pos = self._pos
        if pos == 0:
            return
        if pos >= len(self._buf):
            self._buf.clear()
        elif pos >= _COMPACT_MIN_BYTES and pos * 2 >= len(self._buf):
            del self._buf[:pos]
        else:
            return
        self._scan -= pos
        self._pos = 0

    def _read_line(self, line_name):
        """Return the line after the marker byte at _pos, or None if incomplete.

        The line must end in CR LF. line_name names the line in error messages.
        """
        buf = self._buf
        start = self._pos
        end = buf.find(b"\r", max(self._scan, start + 1))
        if end < 0:
            if len(buf) - start > self._max_inline_bytes:
                raise ProtocolError(
                    f"Protocol error: too big {line_name} line (no CR LF within "
                    f"the limit of {self._max_inline_bytes} bytes)"
                )
            self._scan = len(buf)
            return None
        if end + 1 >= len(buf):
            self._scan = end
            return None
        if buf[end + 1] != _LF:
            raise ProtocolError(
                f"Protocol error: expected '\\n' after '\\r' in {line_name}, "
                f"got '{_show(buf[end + 1 : end + 2])}'"
            )
        line = bytes(buf[start + 1 : end])
        self._pos = end + 2
        self._scan = self._pos
        return line

    def _read_count(self):
        start = self._pos
        line = self._read_line("multibulk length")
        if line is None:
            return None
        count = _parse_length(line)
        if count is None:
            raise ProtocolError(
                f"Protocol error: invalid multibulk length '{_show(line)}'"
            )
        if count > self._max_args:
            raise ProtocolError(
                f"Protocol error: multibulk length {count} above the limit "
                f"of {self._max_args} arguments"
            )
        if count > 0:
            self._partial_bytes = self._pos - start
        return count

    def _read_bulks(self):
        """Read the remaining bulks of the current request; return it or None."""
        buf = self._buf
        while self._args_left > 0:
            if self._bulk_len < 0:
                if self._pos >= len(buf):
                    return None
                marker = buf[self._pos]
                if marker != 0x24:  # '$'
                    raise ProtocolError(
                        f"Protocol error: expected '$', got '{_show(bytes([marker]))}'"
                    )
                start = self._pos
                line = self._read_line("bulk length")
                if line is None:
                    return None
                self._bulk_len = self._check_bulk_len(line)
                self._partial_bytes += self._pos - start
            end = self._pos + self._bulk_len
            if len(buf) < end + 2:
                return None
            if buf[end] != _CR or buf[end + 1] != _LF:
                raise ProtocolError(
                    f"Protocol error: expected '\\r\\n' after a bulk string of "
                    f"{self._bulk_len} bytes, got '{_show(buf[end : end + 2])}'"
                )
            self._args.append(self._take(self._pos, end))
            self._partial_bytes += self._bulk_len + 2
            self._pos = end + 2
            self._scan = self._pos
            self._bulk_len = -1
            self._args_left -= 1
        command = self._args
        self._args = None
        self._partial_bytes = 0
        return command

    def _check_bulk_len(self, line):
        length = _parse_length(line)
        if length is None or length < 0:
            raise ProtocolError(f"Protocol error: invalid bulk length '{_show(line)}'")
        if length > self._max_bulk_bytes:
            raise ProtocolError(
                f"Protocol error: bulk length {length} above the limit of "
                f"{self._max_bulk_bytes} bytes"
            )
        return length

    def _take(self, start, end):
        """Return buf[start:end] as bytes with a single copy."""
        if end - start < _COMPACT_MIN_BYTES:
            return bytes(self._buf[start:end])
        with memoryview(self._buf) as view:
            return bytes(view[start:end])

    def _read_inline(self):
        """Read one inline request; return its words, [] for a blank line, or None."""
        buf = self._buf
        start = self._pos
        end = buf.find(b"\n", max(self._scan, start))
        if end < 0:
            line_bytes = len(buf) - start
            if buf[-1] == _CR:
                line_bytes -= 1
            if line_bytes > self._max_inline_bytes:
                raise self._inline_too_big()
            self._scan = len(buf)
            return None
        line_end = end
        if line_end > start and buf[line_end - 1] == _CR:
            line_end -= 1
        if line_end - start > self._max_inline_bytes:
            raise self._inline_too_big()
        line = bytes(buf[start:line_end])
        self._pos = end + 1
        self._scan = self._pos
        return split_inline(line, self._max_args)

    def _inline_too_big(self):
        return ProtocolError(
            "Protocol error: too big inline request (a line longer than the "
            f"limit of {self._max_inline_bytes} bytes)"
        )


PurePython = types.SimpleNamespace(RespParser=RespParser, split_inline=split_inline)

_extension = _impl.load_extension("resp")
if _extension is not None:
    RespParser = _extension.RespParser
    split_inline = _extension.split_inline
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
