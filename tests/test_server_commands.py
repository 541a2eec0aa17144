"""TL.* and generic commands against a real server: reply shapes in RESP2 and
RESP3, argument errors, and the connection staying usable after each error."""

import uuid

import pytest
import redis

MAX_SEQ = (1 << 64) - 1


def new_timeline(prefix="t"):
    return f"{prefix}:{uuid.uuid4().hex}"


def raw(client, *args):
    """Send one command and return the reply without redis-py's reply callbacks."""
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command(*args)
        return connection.read_response()
    finally:
        client.connection_pool.release(connection)


def append_all(client, timeline_id, payloads):
    return [client.execute_command("TL.APPEND", timeline_id, p) for p in payloads]


# -- TL.APPEND, TL.MAPPEND, TL.GET, TL.LAST ---------------------------------


def test_append_returns_consecutive_seqs(client):
    timeline_id = new_timeline()
    assert append_all(client, timeline_id, [b"a", b"b", b"c"]) == [1, 2, 3]
    assert client.execute_command("TL.LAST", timeline_id) == 3


def test_append_accepts_binary_and_empty_payloads(client):
    timeline_id = new_timeline()
    payload = bytes(range(256)) + b"\r\n$-1\r\n"
    client.execute_command("TL.APPEND", timeline_id, payload)
    client.execute_command("TL.APPEND", timeline_id, b"")
    assert client.execute_command("TL.GET", timeline_id, 1) == payload
    assert client.execute_command("TL.GET", timeline_id, 2) == b""


def test_get_missing_is_nil_in_both_protocols(client, client3):
    timeline_id = new_timeline()
    assert client.execute_command("TL.GET", timeline_id, 1) is None
    assert client3.execute_command("TL.GET", timeline_id, 1) is None


def test_last_of_empty_timeline_is_zero(client):
    assert client.execute_command("TL.LAST", new_timeline()) == 0


def test_mappend_returns_seqs_in_order(client):
    first, second = new_timeline(), new_timeline()
    client.execute_command("TL.APPEND", first, b"x")
    seqs = client.execute_command("TL.MAPPEND", first, b"a", second, b"b", first, b"c")
    assert seqs == [2, 1, 3]
    assert client.execute_command("TL.GET", first, 3) == b"c"
    assert client.execute_command("TL.GET", second, 1) == b"b"


def test_mappend_is_all_or_nothing(client):
    good, bad = new_timeline(), "x" * 513
    with pytest.raises(redis.ResponseError, match="513 bytes"):
        client.execute_command("TL.MAPPEND", good, b"a", bad, b"b")
    assert client.execute_command("TL.LAST", good) == 0


def test_mappend_odd_arguments_is_arity_error(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("TL.MAPPEND", "t", b"a", "u")
    assert str(info.value) == "wrong number of arguments for 'tl.mappend' command"


def test_commands_are_case_insensitive(client):
    timeline_id = new_timeline()
    assert client.execute_command("tl.append", timeline_id, b"a") == 1
    assert client.execute_command("Tl.GeT", timeline_id, 1) == b"a"


# -- TL.RANGE and TL.REVRANGE ------------------------------------------------


@pytest.fixture
def five(client):
    timeline_id = new_timeline()
    append_all(client, timeline_id, [b"p1", b"p2", b"p3", b"p4", b"p5"])
    return timeline_id


def test_range_open_bounds(client, five):
    entries = client.execute_command("TL.RANGE", five, "-", "+")
    assert entries == [[1, b"p1"], [2, b"p2"], [3, b"p3"], [4, b"p4"], [5, b"p5"]]


def test_range_bounds_are_inclusive(client, five):
    assert client.execute_command("TL.RANGE", five, 2, 4) == [
        [2, b"p2"], [3, b"p3"], [4, b"p4"]
    ]  # fmt: skip


def test_range_exclusive_bounds(client, five):
    assert client.execute_command("TL.RANGE", five, "(2", "(4") == [[3, b"p3"]]
    assert client.execute_command("TL.RANGE", five, "(0", "(1") == []


def test_range_count_limits(client, five):
    assert client.execute_command("TL.RANGE", five, "-", "+", "COUNT", 2) == [
        [1, b"p1"], [2, b"p2"]
    ]  # fmt: skip
    assert client.execute_command("TL.RANGE", five, "-", "+", "count", 0) == []


def test_range_empty_when_start_above_end(client, five):
    assert client.execute_command("TL.RANGE", five, 4, 2) == []


def test_range_up_to_max_seq(client, five):
    assert len(client.execute_command("TL.RANGE", five, 0, MAX_SEQ)) == 5
    assert client.execute_command("TL.RANGE", five, f"({MAX_SEQ}", "+") == []


def test_revrange_newest_first(client, five):
    assert client.execute_command("TL.REVRANGE", five, "+", "-", "COUNT", 2) == [
        [5, b"p5"], [4, b"p4"]
    ]  # fmt: skip
    assert client.execute_command("TL.REVRANGE", five, "(4", 2) == [
        [3, b"p3"], [2, b"p2"]
    ]  # fmt: skip


def test_range_reply_same_in_resp3(client3, five):
    assert client3.execute_command("TL.RANGE", five, 1, 2) == [[1, b"p1"], [2, b"p2"]]


# -- TL writes to IM timelines -----------------------------------------------


def test_append_to_im_timeline_rejected(client):
    with pytest.raises(redis.ResponseError, match="reserved for the IM layer"):
        client.execute_command("TL.APPEND", "im:store:room", b"x")
    with pytest.raises(redis.ResponseError, match="reserved for the IM layer"):
        client.execute_command("TL.MAPPEND", "ok", b"x", "im:sync:u", b"y")
    assert client.execute_command("TL.LAST", "im:store:room") == 0


# -- argument errors -----------------------------------------------------------


def test_wrong_arity_message(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("TL.APPEND", "t")
    assert str(info.value) == "wrong number of arguments for 'tl.append' command"
    assert client.ping()


@pytest.mark.parametrize(
    "args, bad_value",
    [
        (("TL.GET", "t", "abc"), "abc"),
        (("TL.GET", "t", "-1"), "-1"),
        (("TL.GET", "t", " 1"), " 1"),
        (("TL.GET", "t", str(MAX_SEQ + 1)), str(MAX_SEQ + 1)),
        (("TL.RANGE", "t", "x", "+"), "x"),
        (("TL.RANGE", "t", "-", "+", "COUNT", "many"), "many"),
        (("TL.PULL", "COUNT", "-5", "TIMELINES", "t", "0"), "-5"),
        (("TL.PULL", "BLOCK", "soon", "TIMELINES", "t", "0"), "soon"),
        (("IM.SYNC", "u", "1.5"), "1.5"),
    ],
)
def test_non_integer_values_rejected(client, args, bad_value):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command(*args)
    message = str(info.value)
    assert message.startswith("value is not an integer or out of range")
    assert f"'{bad_value}'" in message
    assert client.ping()


def test_unknown_command_names_it(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("FOO", "bar", "baz")
    assert str(info.value) == (
        "unknown command 'FOO', with args beginning with: 'bar' 'baz'"
    )
    assert client.ping()


def test_unknown_command_escapes_control_bytes(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command(b"F\x00O", b"\r\nb\xff")
    assert str(info.value) == (
        "unknown command 'F\\x00O', with args beginning with: '\\x0d\\x0ab\\xff'"
    )
    assert client.ping()


def test_unknown_option_rejected(client):
    with pytest.raises(redis.ResponseError, match="unexpected argument 'LIMIT'"):
        client.execute_command("TL.RANGE", "t", "-", "+", "LIMIT", 1)


def test_oversized_timeline_id_names_size_and_limit(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("TL.APPEND", "x" * 600, b"p")
    assert "600 bytes" in str(info.value)
    assert "512 bytes" in str(info.value)
    assert client.ping()


def test_oversized_payload_names_size_and_limit(client):
    payload = b"x" * (4 * 1024 * 1024 + 1)
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("TL.APPEND", new_timeline(), payload)
    assert str(4 * 1024 * 1024 + 1) in str(info.value)
    assert str(4 * 1024 * 1024) in str(info.value)
    assert client.ping()


def test_empty_timeline_id_rejected(client):
    with pytest.raises(redis.ResponseError, match="must not be empty"):
        client.execute_command("TL.APPEND", "", b"p")
    assert client.ping()


def test_error_replies_start_with_code_word(shared_server):
    import socket

    with socket.create_connection(("127.0.0.1", shared_server.port)) as sock:
        sock.sendall(b"TL.GET t x\r\nNOPE\r\n")
        data = b""
        while data.count(b"\r\n") < 2:
            data += sock.recv(4096)
    first, second = data.split(b"\r\n")[:2]
    assert first.startswith(b"-ERR value is not an integer")
    assert second.startswith(b"-ERR unknown command 'NOPE'")


# -- connection and server commands --------------------------------------------


def test_ping_and_echo(client, client3):
    assert raw(client, "PING") == b"PONG"
    assert raw(client, "PING", "hi") == b"hi"
    assert raw(client, "ECHO", b"a\r\nb") == b"a\r\nb"
    assert raw(client3, "PING") == b"PONG"


def test_hello_switches_protocol(shared_server):
    client = shared_server.client(protocol=2)
    reply2 = client.execute_command("HELLO")
    assert isinstance(reply2, list)
    fields = dict(zip(reply2[::2], reply2[1::2]))
    assert fields[b"proto"] == 2
    assert fields[b"server"] == b"tlsm"
    reply3 = client.execute_command("HELLO", 3)
    assert isinstance(reply3, dict)
    assert reply3[b"proto"] == 3
    assert set(reply3) == {
        b"server", b"version", b"proto", b"id", b"mode", b"role", b"modules"
    }  # fmt: skip


def test_hello_setname_and_auth_accepted(shared_server):
    client = shared_server.client(protocol=2)
    client.execute_command("HELLO", 3, "AUTH", "default", "pw", "SETNAME", "me")
    assert client.execute_command("CLIENT", "GETNAME") in (b"me", "me")


def test_hello_unsupported_version(client):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("HELLO", 4)
    assert str(info.value).startswith("NOPROTO unsupported protocol version 4")
    assert client.ping()


def test_resp3_client_connects_with_hello(client3):
    assert client3.execute_command("CLIENT", "ID") > 0
    info = client3.execute_command("CLIENT", "INFO")
    assert b"resp=3" in info


def test_client_subcommands(client):
    client_id = client.execute_command("CLIENT", "ID")
    assert client.execute_command("CLIENT", "GETNAME") is None
    assert client.execute_command("CLIENT", "SETNAME", "worker-1")
    assert client.execute_command("CLIENT", "GETNAME") == b"worker-1"
    assert client.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x")
    listing = client.execute_command("CLIENT", "LIST")
    assert f"id={client_id} ".encode() in listing
    with pytest.raises(redis.ResponseError, match="contains spaces"):
        client.execute_command("CLIENT", "SETNAME", "a b")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        client.execute_command("CLIENT", "KILL", "x")


def test_select_only_zero(client):
    assert client.execute_command("SELECT", 0)
    with pytest.raises(redis.ResponseError, match="out of range"):
        client.execute_command("SELECT", 1)


def test_info_sections(client):
    info = client.info()
    assert info["tlsm_version"]
    assert info["connected_clients"] >= 1
    assert "total_commands_processed" in info
    assert "wal_bytes" in info
    only_clients = client.info("clients")
    assert "connected_clients" in only_clients
    assert "tlsm_version" not in only_clients


def test_command_count_and_info(client, client3):
    count = raw(client, "COMMAND", "COUNT")
    assert count == len(raw(client, "COMMAND"))
    assert count == len(raw(client3, "COMMAND"))
    info = raw(client, "COMMAND", "INFO", "tl.append", "nope")
    assert info[0][0] == b"tl.append"
    assert info[0][1] == 3
    assert info[1] is None


def test_command_docs_shapes(client, client3):
    docs2 = raw(client, "COMMAND", "DOCS", "tl.range")
    assert docs2[0] == b"tl.range"
    assert b"summary" in docs2[1]
    docs3 = raw(client3, "COMMAND", "DOCS", "tl.range")
    assert set(docs3) == {b"tl.range"}
    assert docs3[b"tl.range"][b"group"] == b"timeline"
    everything = raw(client3, "COMMAND", "DOCS")
    assert b"im.send" in everything
    assert b"tl.pull" in everything


def test_config_get(client):
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert "save" in client.config_get("*")
    with pytest.raises(redis.ResponseError, match="only CONFIG GET"):
        client.execute_command("CONFIG", "SET", "save", "")


def test_quit_closes_connection(shared_server):
    import socket

    with socket.create_connection(("127.0.0.1", shared_server.port)) as sock:
        sock.sendall(b"QUIT\r\nPING\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data == b"+OK\r\n"


def test_auth_reports_no_password(client):
    with pytest.raises(redis.ResponseError, match="no authentication"):
        client.execute_command("AUTH", "secret")


# -- redis-cli -------------------------------------------------------------------


def run_cli(redis_cli, server, *args):
    import subprocess

    result = subprocess.run(
        [redis_cli, "-h", "127.0.0.1", "-p", str(server.port), *args],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_redis_cli_round_trip(redis_cli, shared_server):
    timeline_id = new_timeline("cli")
    assert run_cli(redis_cli, shared_server, "TL.APPEND", timeline_id, "hello") == "1\n"
    assert run_cli(redis_cli, shared_server, "TL.GET", timeline_id, "1") == "hello\n"
    out = run_cli(redis_cli, shared_server, "TL.RANGE", timeline_id, "-", "+")
    assert out == "1\nhello\n"


def test_redis_cli_resp3_pull_map(redis_cli, shared_server):
    timeline_id = new_timeline("cli")
    run_cli(redis_cli, shared_server, "TL.APPEND", timeline_id, "x")
    out = run_cli(
        redis_cli, shared_server, "-3", "TL.PULL", "TIMELINES", timeline_id, "0"
    )
    assert timeline_id in out
    assert "x" in out


def test_redis_cli_help_from_command_docs(redis_cli, shared_server):
    # redis-cli builds its help table from COMMAND DOCS in interactive mode,
    # and "help <command>" uses the same table when given as arguments.
    out = run_cli(redis_cli, shared_server, "COMMAND", "DOCS", "TL.PULL")
    assert "TIMELINES" in out


def test_redis_cli_interactive_session(redis_cli, shared_server):
    # Interactive redis-cli 7 loads COMMAND DOCS at start and crashes on a
    # malformed reply, so run it on a pseudo-terminal as a person would.
    import os
    import pty
    import select
    import time

    timeline_id = new_timeline("tty")
    pid, fd = pty.fork()
    if pid == 0:
        # The forked child must never return into pytest.
        try:
            os.execv(
                redis_cli, [redis_cli, "-h", "127.0.0.1", "-p", str(shared_server.port)]
            )
        finally:
            os._exit(127)
    output = b""
    lines = [
        f"TL.APPEND {timeline_id} hi",
        "help TL.PULL",
        f"TL.LAST {timeline_id}",
        "quit",
    ]
    deadline = time.monotonic() + 60
    status = None
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while status is None and time.monotonic() < deadline:
        # poll, not select: select() rejects descriptors above 1023.
        if poller.poll(100):
            try:
                output += os.read(fd, 65536)
            except OSError:
                pass
        if b"[6n" in output:
            # Reply to linenoise's cursor position query.
            output = output.replace(b"\x1b[6n", b"")
            os.write(fd, b"\x1b[1;1R")
        elif lines and output.rstrip().endswith(b">"):
            os.write(fd, lines.pop(0).encode() + b"\r")
            output += b"\n"
        done, status_code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = status_code
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)
    assert status == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "(integer) 1" in text
    assert "TIMELINES" in text
