"""The server's RESP loop: pipelining, split input, malformed input, input and
output limits, concurrent clients and handler failures."""

import asyncio
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from conftest import ServerProcess, wait_until_blocked

import tlsm
from tlsm.server import Server, ServerConfig

HANG_LIMIT_SECONDS = 30


def name(prefix="p"):
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


def command(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def recv_until_closed(sock):
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def connect(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(HANG_LIMIT_SECONDS)
    return sock


# -- pipelining ------------------------------------------------------------------


def test_pipeline_of_1000_appends(client):
    timeline_id = name()
    pipe = client.pipeline(transaction=False)
    for index in range(1000):
        pipe.execute_command("TL.APPEND", timeline_id, b"m%d" % index)
    assert pipe.execute() == list(range(1, 1001))
    assert client.execute_command("TL.GET", timeline_id, 1000) == b"m999"


def test_pipeline_mixed_commands_in_order(client):
    timeline_id = name()
    pipe = client.pipeline(transaction=False)
    for index in range(500):
        pipe.execute_command("TL.APPEND", timeline_id, b"%d" % index)
        pipe.execute_command("TL.LAST", timeline_id)
    results = pipe.execute()
    assert results[0::2] == list(range(1, 501))
    assert results[1::2] == list(range(1, 501))


def test_one_chunk_of_1000_commands(shared_server):
    timeline_id = name()
    with connect(shared_server) as sock:
        sock.sendall(
            b"".join(command("TL.APPEND", timeline_id, b"x") for _ in range(1000))
        )
        expected = b"".join(b":%d\r\n" % seq for seq in range(1, 1001))
        assert recv_exactly(sock, len(expected)) == expected


def test_command_split_into_single_bytes(shared_server):
    timeline_id = name()
    request = command("TL.APPEND", timeline_id, b"split\r\npayload") + b"PING\r\n"
    with connect(shared_server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(request)):
            sock.sendall(request[index : index + 1])
        assert recv_exactly(sock, 11) == b":1\r\n+PONG\r\n"


def test_inline_commands(shared_server):
    timeline_id = name()
    with connect(shared_server) as sock:
        sock.sendall(
            f'TL.APPEND {timeline_id} "two words"\r\nTL.GET {timeline_id} 1\n'.encode()
        )
        assert recv_exactly(sock, 19) == b":1\r\n$9\r\ntwo words\r\n"


def test_concurrent_clients_get_distinct_seqs(shared_server):
    timeline_id = name()

    def append_many(_):
        client = shared_server.client()
        return [
            client.execute_command("TL.APPEND", timeline_id, b"x") for _ in range(100)
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        seqs = [seq for chunk in pool.map(append_many, range(8)) for seq in chunk]
    assert sorted(seqs) == list(range(1, 801))


# -- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"*1\r\n$abc\r\n",
        b"*2\r\n$4\r\nPING\r\n:5\r\n",
        b'PING "unclosed\r\n',
        b"*x\r\n",
    ],
)
def test_protocol_error_closes_only_that_connection(shared_server, garbage):
    other = shared_server.client()
    assert other.ping()
    with connect(shared_server) as sock:
        sock.sendall(b"PING\r\n" + garbage + b"PING\r\n")
        data = recv_until_closed(sock)
    assert data.startswith(b"+PONG\r\n-ERR Protocol error")
    assert data.count(b"\r\n") == 2
    assert other.ping()
    assert shared_server.process.poll() is None


def test_protocol_error_while_blocked_keeps_order(shared_server, client):
    timeline_id = name()
    with connect(shared_server) as sock:
        sock.sendall(
            command("TL.PULL", "BLOCK", 100, "TIMELINES", timeline_id, 0) + b"*x\r\n"
        )
        data = recv_until_closed(sock)
    assert data.startswith(b"*-1\r\n-ERR Protocol error")
    assert client.ping()


def test_unknown_command_keeps_connection(shared_server):
    with connect(shared_server) as sock:
        sock.sendall(b"NOSUCH a b\r\nPING\r\n")
        data = recv_exactly(sock, 1)
        while not data.endswith(b"+PONG\r\n"):
            data += sock.recv(4096)
    assert data.startswith(b"-ERR unknown command 'NOSUCH'")


# -- input and output limits --------------------------------------------------------------


@pytest.fixture
def limited_server(tmp_path):
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        ["--max-input-bytes", "1048576", "--max-output-bytes", "1048576"],
    ).start()
    yield server
    server.stop()


def test_input_limit_closes_connection(limited_server):
    other = limited_server.client()
    with connect(limited_server) as sock:
        sock.sendall(b"*3\r\n$9\r\nTL.APPEND\r\n$1\r\nt\r\n$3000000\r\n")
        try:
            sock.sendall(b"x" * 2_000_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_until_closed(sock)
    assert b"-ERR client input of " in data
    assert b"exceeds the limit of 1048576 bytes" in data
    assert other.ping()
    assert "exceed the limit of 1048576 bytes" in limited_server.log_text()


def test_output_limit_closes_slow_reader(limited_server):
    writer = limited_server.client()
    timeline_id = name()
    big = b"y" * (1024 * 1024)
    for _ in range(24):
        writer.execute_command("TL.APPEND", timeline_id, big)
    with connect(limited_server) as sock:
        sock.sendall(command("TL.RANGE", timeline_id, "-", "+"))
        # Read nothing until the server has given up on this client.
        for _ in range(3000):
            if "unread replies exceed the limit" in limited_server.log_text():
                break
            time.sleep(0.01)
        data = recv_until_closed(sock)
    assert len(data) < 24 * len(big)
    assert (
        "unread replies exceed the limit of 1048576 bytes" in limited_server.log_text()
    )
    assert writer.ping()


# -- handler failures (fault injected into an in-process server) --------------------------


@pytest.fixture
def in_process_server(tmp_path):
    """A Server on an event loop in a thread, so a test can patch its engine."""
    db = tlsm.open(str(tmp_path / "db"))
    server = Server(db, ServerConfig(port=0, data_dir=str(tmp_path / "db")))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(HANG_LIMIT_SECONDS)
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(HANG_LIMIT_SECONDS)
    loop.close()
    db.close()


def test_handler_exception_is_internal_error(in_process_server, monkeypatch, caplog):
    def broken_get(timeline_id, seq):
        raise RuntimeError("injected read failure")

    monkeypatch.setattr(in_process_server.db, "get", broken_get)
    client = redis.Redis(host="127.0.0.1", port=in_process_server.port)
    with (
        caplog.at_level(logging.ERROR, logger="tlsm.server"),
        pytest.raises(redis.ResponseError) as info,
    ):
        client.execute_command("TL.GET", "t", 1)
    assert str(info.value).startswith("internal error in tl.get:")
    assert "injected read failure" in str(info.value)
    assert any("tl.get" in record.getMessage() for record in caplog.records)
    assert client.execute_command("TL.APPEND", "t", b"x") == 1
    client.close()


def test_blocked_read_exception_is_internal_error(in_process_server, monkeypatch):
    client = redis.Redis(host="127.0.0.1", port=in_process_server.port)
    reader = redis.Redis(host="127.0.0.1", port=in_process_server.port)
    reader_id = reader.execute_command("CLIENT", "ID")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(
            reader.execute_command, "TL.PULL", "BLOCK", 0, "TIMELINES", "w", 0
        )
        wait_until_blocked(client, reader_id)

        def broken_scan(*args, **kwargs):
            raise RuntimeError("injected scan failure")

        monkeypatch.setattr(in_process_server.db, "scan", broken_scan)
        client.execute_command("TL.APPEND", "w", b"x")
        with pytest.raises(redis.ResponseError, match="injected scan failure"):
            future.result(HANG_LIMIT_SECONDS)
    assert reader.ping()
    client.close()
    reader.close()
