"""Tests for tlsm.resp.RespParser, run against whichever implementation is active.

tests/test_twins.py compares the Cython and pure-Python parsers directly.
"""

import random
import shutil
import socket
import subprocess
import threading
import time

import pytest
from redis.connection import Connection

from tlsm import resp
from tlsm.errors import InvalidArgumentError, ProtocolError
from tlsm.resp import RespParser


def parse_all(data, chunk_sizes=None, parser=None):
    """Feed data in chunks and return every command parsed, in order.

    chunk_sizes is None for one feed, an int for fixed-size chunks, or a
    random.Random for random chunk sizes of 1..64 bytes.
    """
    parser = parser or RespParser()
    commands = []
    pos = 0
    while pos < len(data):
        if chunk_sizes is None:
            size = len(data)
        elif isinstance(chunk_sizes, int):
            size = chunk_sizes
        else:
            size = chunk_sizes.randint(1, 64)
        parser.feed(data[pos : pos + size])
        pos += size
        while (command := parser.next_command()) is not None:
            commands.append(command)
    return commands


def case_id(value):
    """Return a short test id for a parametrized value."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_error(data, chunk_sizes=None, **limits):
    """Return the ProtocolError message raised while parsing data, or fail."""
    with pytest.raises(ProtocolError) as info:
        parse_all(data, chunk_sizes, RespParser(**limits))
    return str(info.value)


VALID_CASES = [
    # (request bytes, commands expected)
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", [[b"GET", b"key"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", [[b"SET", b"k", b""]]),
    (b"*1\r\n$4\r\na\r\nb\r\n", [[b"a\r\nb"]]),
    (b"*2\r\n$1\r\n\x00\r\n$2\r\n\xff\xfe\r\n", [[b"\x00", b"\xff\xfe"]]),
    (b"*0\r\n*1\r\n$1\r\na\r\n", [[b"a"]]),
    (b"*-1\r\n*-7\r\n", []),
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"set  k \t v\r\n", [[b"set", b"k", b"v"]]),
    (b"\r\n\n   \r\nPING\r\n", [[b"PING"]]),
    (b'echo "a b"\r\n', [[b"echo", b"a b"]]),
    (b'echo "q\\"q" "b\\\\s"\r\n', [[b"echo", b'q"q', b"b\\s"]]),
    (b'echo "\\n\\r\\t\\b\\a\\z"\r\n', [[b"echo", b"\n\r\t\x08\x07z"]]),
    (b'echo "\\x41\\x7a\\xZZ\\x4"\r\n', [[b"echo", b"AzxZZx4"]]),
    (b"echo 'it''s'\r\n", None),  # closing quote followed by a quote
    (b"echo 'a\\'b' 'c\\nd'\r\n", [[b"echo", b"a'b", b"c\\nd"]]),
    (b'echo ab"c d"\r\n', [[b"echo", b"abc d"]]),
    (b"echo \"\" ''\r\n", [[b"echo", b"", b""]]),
    (b"echo a\rb\r\n", [[b"echo", b"a", b"b"]]),
    (b"*1\r\n$3\r\nabc\r\nPING\r\n*1\r\n$1\r\nx\r\n", [[b"abc"], [b"PING"], [b"x"]]),
]
VALID_PARSES = [case for case in VALID_CASES if case[1] is not None]


@pytest.mark.parametrize("data, expected", VALID_PARSES, ids=case_id)
def test_valid_whole(data, expected):
    assert parse_all(data) == expected


@pytest.mark.parametrize("data, expected", VALID_PARSES, ids=case_id)
def test_valid_byte_at_a_time(data, expected):
    assert parse_all(data, chunk_sizes=1) == expected


@pytest.mark.parametrize("data, expected", VALID_PARSES, ids=case_id)
def test_valid_with_trailing_bytes(data, expected):
    trailing = b"*2\r\n$3\r\nGET\r\n$5\r\nab"
    parser = RespParser()
    assert parse_all(data + trailing, parser=parser) == expected
    assert parser.pending_bytes() == len(trailing)
    parser.feed(b"cde\r\n")
    assert parser.next_command() == [b"GET", b"abcde"]
    assert parser.pending_bytes() == 0
    assert parser.next_command() is None


def test_quote_followed_by_quote_rejected():
    message = parse_error(b"echo 'it''s'\r\n")
    assert message == "Protocol error: unbalanced quotes in request"


def test_pipelined_commands_one_feed():
    rng = random.Random(7)
    expected = []
    data = bytearray()
    for i in range(2000):
        args = [b"SET", b"key:%d" % i, rng.randbytes(rng.randint(0, 300))]
        expected.append(args)
        data += b"".join(Connection().pack_command(*args))
    assert parse_all(bytes(data)) == expected


def test_random_chunks_match_whole():
    rng = random.Random(11)
    data = bytearray()
    for i in range(300):
        if i % 3 == 0:
            data += b"SET k%d v%d\r\n" % (i, i)
        else:
            args = [
                rng.randbytes(rng.randint(0, 100)) for _ in range(rng.randint(1, 5))
            ]
            data += b"".join(Connection().pack_command(*args))
    whole = parse_all(bytes(data))
    assert len(whole) == 300
    assert parse_all(bytes(data), chunk_sizes=rng) == whole
    assert parse_all(bytes(data), chunk_sizes=1) == whole


def test_redis_py_packed_commands():
    args = ["SET", "key", b"\r\n\x00binary", 12345, 1.5, "\u00e9"]
    packed = b"".join(Connection().pack_command(*args))
    assert parse_all(packed) == [
        [b"SET", b"key", b"\r\n\x00binary", b"12345", b"1.5", "\u00e9".encode()]
    ]


ERROR_CASES = [
    # (request bytes, limits, exact ProtocolError message)
    (b"*x\r\n", {}, "Protocol error: invalid multibulk length 'x'"),
    (b"*\r\n", {}, "Protocol error: invalid multibulk length ''"),
    (b"*01\r\n", {}, "Protocol error: invalid multibulk length '01'"),
    (b"*+1\r\n", {}, "Protocol error: invalid multibulk length '+1'"),
    (b"*-0\r\n", {}, "Protocol error: invalid multibulk length '-0'"),
    (b"*1 \r\n", {}, "Protocol error: invalid multibulk length '1 '"),
    (
        b"*99999999999999999999\r\n",
        {},
        "Protocol error: invalid multibulk length '99999999999999999999'",
    ),
    (b"*1\x00\r\n", {}, "Protocol error: invalid multibulk length '1\\x00'"),
    (
        b"*2000000\r\n",
        {},
        "Protocol error: multibulk length 2000000 above the limit of 1048576 arguments",
    ),
    (
        b"*4\r\n",
        {"max_args": 3},
        "Protocol error: multibulk length 4 above the limit of 3 arguments",
    ),
    (b"*1\r\nx", {}, "Protocol error: expected '$', got 'x'"),
    (b"*1\r\n\n", {}, "Protocol error: expected '$', got '\\x0a'"),
    (b"*2\r\n$1\r\na\r\n:1\r\n", {}, "Protocol error: expected '$', got ':'"),
    (b"*1\r\n$x\r\n", {}, "Protocol error: invalid bulk length 'x'"),
    (b"*1\r\n$-1\r\n", {}, "Protocol error: invalid bulk length '-1'"),
    (b"*1\r\n$\r\n", {}, "Protocol error: invalid bulk length ''"),
    (b"*1\r\n$007\r\n", {}, "Protocol error: invalid bulk length '007'"),
    (
        b"*1\r\n$600000000\r\n",
        {},
        "Protocol error: bulk length 600000000 above the limit of 536870912 bytes",
    ),
    (
        b"*1\r\n$11\r\n",
        {"max_bulk_bytes": 10},
        "Protocol error: bulk length 11 above the limit of 10 bytes",
    ),
    (
        b"*1\r\n$1\r\nabc",
        {},
        "Protocol error: expected '\\r\\n' after a bulk string of 1 bytes, got 'bc'",
    ),
    (
        b"*1\rx",
        {},
        "Protocol error: expected '\\n' after '\\r' in multibulk length, got 'x'",
    ),
    (
        b"*1\r\n$1\r\r",
        {},
        "Protocol error: expected '\\n' after '\\r' in bulk length, got '\\x0d'",
    ),
    (b'echo "abc\r\n', {}, "Protocol error: unbalanced quotes in request"),
    (b"echo 'abc\r\n", {}, "Protocol error: unbalanced quotes in request"),
    (b'echo "a"b\r\n', {}, "Protocol error: unbalanced quotes in request"),
    (b"echo 'a'b\r\n", {}, "Protocol error: unbalanced quotes in request"),
    (b'echo "abc\\"\r\n', {}, "Protocol error: unbalanced quotes in request"),
    (b'echo "abc\\\r\n', {}, "Protocol error: unbalanced quotes in request"),
    (
        b"a b c d\r\n",
        {"max_args": 3},
        "Protocol error: too many arguments in inline request, above the limit of 3",
    ),
    (
        b"x" * 11,
        {"max_inline_bytes": 10},
        "Protocol error: too big inline request (a line longer than the limit of 10 bytes)",
    ),
    (
        b"x" * 11 + b"\r\n",
        {"max_inline_bytes": 10},
        "Protocol error: too big inline request (a line longer than the limit of 10 bytes)",
    ),
    (
        b"x" * (64 * 1024 + 1),
        {},
        "Protocol error: too big inline request (a line longer than the limit of 65536 bytes)",
    ),
    (
        b"*" + b"1" * 11,
        {"max_inline_bytes": 10},
        "Protocol error: too big multibulk length line (no CR LF within the limit of 10 bytes)",
    ),
    (
        b"*1\r\n$" + b"1" * 11,
        {"max_inline_bytes": 10},
        "Protocol error: too big bulk length line (no CR LF within the limit of 10 bytes)",
    ),
]


@pytest.mark.parametrize("data, limits, message", ERROR_CASES, ids=case_id)
def test_error_whole(data, limits, message):
    assert parse_error(data, **limits) == message


@pytest.mark.parametrize("data, limits, message", ERROR_CASES, ids=case_id)
def test_error_byte_at_a_time(data, limits, message):
    assert parse_error(data, chunk_sizes=1, **limits) == message


def test_error_value_shown_printable_and_cut():
    message = parse_error(b"*1\r\n$" + b"\n" * 40 + b"\r\n")
    assert message == "Protocol error: invalid bulk length '" + "\\x0a" * 32 + "...'"
    assert "\n" not in message


def test_error_after_valid_commands():
    parser = RespParser()
    parser.feed(b"PING\r\n*1\r\n$1\r\na\r\n*1\r\n$z\r\nPING\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() == [b"a"]
    with pytest.raises(ProtocolError):
        parser.next_command()


def test_parser_unusable_after_error():
    parser = RespParser()
    parser.feed(b"*1\r\n$z\r\n")
    with pytest.raises(ProtocolError) as first:
        parser.next_command()
    with pytest.raises(ProtocolError) as again:
        parser.next_command()
    assert str(again.value) == str(first.value)
    with pytest.raises(ProtocolError) as on_feed:
        parser.feed(b"PING\r\n")
    assert str(on_feed.value) == str(first.value)


def test_limits_at_boundary_accepted():
    parser = RespParser(max_bulk_bytes=10, max_args=3, max_inline_bytes=10)
    parser.feed(b"*3\r\n$10\r\n0123456789\r\n$0\r\n\r\n$1\r\nz\r\n")
    assert parser.next_command() == [b"0123456789", b"", b"z"]
    parser.feed(b"x" * 10 + b"\r\n")
    assert parser.next_command() == [b"x" * 10]
    parser.feed(b"a b c\n")
    assert parser.next_command() == [b"a", b"b", b"c"]
    # Ten bytes and a CR are no line over the limit yet: the CR may end it.
    parser.feed(b"y" * 10 + b"\r")
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"y" * 10]


def test_inline_limit_ignores_final_cr_only():
    parser = RespParser(max_inline_bytes=10)
    parser.feed(b"y" * 10 + b"\r\r")
    with pytest.raises(ProtocolError):
        parser.next_command()


def test_default_limits():
    parser = RespParser()
    assert parser.max_bulk_bytes == 512 * 1024 * 1024
    assert parser.max_args == 1024 * 1024
    assert parser.max_inline_bytes == 64 * 1024


@pytest.mark.parametrize("name", ["max_bulk_bytes", "max_args", "max_inline_bytes"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10", 1 << 63])
def test_invalid_limits_rejected(name, value):
    with pytest.raises(InvalidArgumentError) as info:
        RespParser(**{name: value})
    assert name in str(info.value)


def test_pending_bytes_counts_partial_command():
    parser = RespParser()
    assert parser.pending_bytes() == 0
    parser.feed(b"*2\r\n$3\r\nGET\r\n$4\r\nke")
    assert parser.next_command() is None
    assert parser.pending_bytes() == 19
    parser.feed(b"y1\r\nPI")
    assert parser.next_command() == [b"GET", b"key1"]
    assert parser.pending_bytes() == 2
    parser.feed(b"NG\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.pending_bytes() == 0


def test_pending_bytes_grows_with_unfinished_bulk():
    parser = RespParser()
    header = b"*1\r\n$1000000\r\n"
    parser.feed(header)
    fed = len(header)
    for _ in range(100):
        parser.feed(b"x" * 1000)
        fed += 1000
        assert parser.next_command() is None
        assert parser.pending_bytes() == fed


def test_large_bulk_in_small_chunks():
    # 16 MiB in 1 KiB chunks: a parser that rescans or re-slices its whole
    # buffer on each feed would do about 128 GiB of copying here.
    size = 16 * 1024 * 1024
    parser = RespParser()
    parser.feed(b"*2\r\n$3\r\nSET\r\n$%d\r\n" % size)
    chunk = bytes(range(256)) * 4
    for _ in range(size // len(chunk)):
        parser.feed(chunk)
        assert parser.next_command() is None
    parser.feed(b"\r\nPING\r\n")
    command = parser.next_command()
    assert command[0] == b"SET"
    assert len(command[1]) == size
    assert command[1][:1024] == chunk
    assert command[1][-1024:] == chunk
    assert parser.next_command() == [b"PING"]
    assert parser.pending_bytes() == 0


def test_long_unterminated_inline_fed_bytewise():
    parser = RespParser()
    for _ in range(64 * 1024):
        parser.feed(b"a")
        assert parser.next_command() is None
    parser.feed(b"\r\n")
    assert parser.next_command() == [b"a" * (64 * 1024)]


def test_feed_accepts_bytes_like():
    parser = RespParser()
    parser.feed(bytearray(b"PI"))
    parser.feed(memoryview(b"NG\r\n"))
    assert parser.next_command() == [b"PING"]


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        pos = rng.randrange(len(data) + 1)
        if choice < 0.3 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.5:
            data[pos:pos] = rng.choice(
                [b"\r", b"\n", b"\r\n", b"$", b"*", b'"', b"'", b"\\", b"-"]
            )
        elif choice < 0.7:
            del data[pos : pos + rng.randint(1, 4)]
        elif choice < 0.85:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            data[pos:pos] = str(rng.choice([0, 1, 9, -1, 10**20])).encode()
    return bytes(data)


def _fuzz_outcome(data, chunks):
    """Parse data fed in chunks; return (commands, ProtocolError message or None)."""
    parser = RespParser(max_bulk_bytes=1000, max_args=50, max_inline_bytes=200)
    commands = []
    pos = 0
    try:
        while pos < len(data):
            if chunks is None:
                size = len(data)
            elif isinstance(chunks, int):
                size = chunks
            else:
                size = chunks.randint(1, 16)
            parser.feed(data[pos : pos + size])
            pos += size
            while (command := parser.next_command()) is not None:
                assert isinstance(command, list) and command
                assert all(type(arg) is bytes for arg in command)
                commands.append(command)
            assert 0 <= parser.pending_bytes() <= len(data)
    except ProtocolError as exc:
        message = str(exc)
        assert message.startswith("Protocol error: ")
        assert "\r" not in message and "\n" not in message
        return commands, message
    return commands, None


def test_fuzz_only_protocol_error_escapes():
    rng = random.Random(1234)
    seeds = [
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"SET k \"a\\x41 b\" 'c\\'d'\r\n",
        b"GET key\n",
        b"*0\r\n*-1\r\n",
    ]
    for _ in range(3000):
        data = b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randint(1, 300))
        else:
            data = _mutate(rng, data)
        whole = _fuzz_outcome(data, None)
        bytewise = _fuzz_outcome(data, 1)
        random_chunks = _fuzz_outcome(data, random.Random(rng.random()))
        # However the bytes are split, the commands and the error are the same.
        assert bytewise == whole, data
        assert random_chunks == whole, data


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ParsingServer:
    """Loopback TCP server that parses requests and replies +OK to each command."""

    def __init__(self):
        self.commands = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                parser = RespParser()
                while data := conn.recv(65536):
                    parser.feed(data)
                    while (command := parser.next_command()) is not None:
                        self.commands.append(command)
                        conn.sendall(b"+OK\r\n")

    def close(self):
        self.listener.close()


@pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli is not installed"
)
def test_redis_cli_requests_parsed():
    server = _ParsingServer()
    try:
        args = ["SET", "key with space", "line1\nline2", "\u00e9"]
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(server.port), *args],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == b"OK"
        assert server.commands == [[arg.encode() for arg in args]]
    finally:
        server.close()


def _redis_reply(port, request):
    """Send request on a new connection to redis-server; return its reply line or bulk."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        header = reader.readline()
        if header.startswith(b"$"):
            return reader.read(int(header[1:]) + 2)[:-2]
        return header


def _start_redis_server():
    port = _free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            return process, port
        except ConnectionRefusedError:
            time.sleep(0.05)
    process.terminate()
    process.wait(timeout=30)
    pytest.fail("redis-server did not accept connections")


INLINE_WORDS = [
    b'"a b"',
    b'"q\\"q"',
    b'"\\n\\t\\x41\\xzz"',
    b"'a\\'b'",
    b"'c\\nd'",
    b'ab"c d"',
    b'""',
    b"plain",
    b'"\\\\"',
    b"'\\\\'",
    b"a\x0bb",
    b'"a"\x0bb',
    b'"a"b',
    b"'a'b",
    b'"abc',
    b"x'y",
    b'"\\x4"',
    b"a\tb",
]


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)
def test_inline_words_match_redis_server():
    """Send inline ECHO requests to a real redis-server and compare the outcome."""
    process, port = _start_redis_server()
    try:
        for word in INLINE_WORDS:
            request = b"ECHO " + word + b"\r\n"
            reply = _redis_reply(port, request)
            if reply.startswith(b"-ERR Protocol error"):
                message = parse_error(request)
                assert reply == b"-ERR " + message.encode() + b"\r\n", word
            elif reply.startswith(b"-"):
                # Redis rejected the ECHO itself, e.g. for a wrong argument count.
                assert len(parse_all(request)[0]) != 2, (word, reply)
            else:
                assert parse_all(request) == [[b"ECHO", reply]], word
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_implementation_name():
    assert resp.IMPLEMENTATION in ("cython", "python")
