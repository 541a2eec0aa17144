"""Blocking TL.PULL and IM.SYNC: every write path wakes them, timeouts return
nil, and each blocked request gets exactly one reply, in request order.

A test waits until the server reports the reader as blocked (CLIENT LIST
shows blocked=1 for its id) before it writes, so no test depends on timing.
"""

import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import wait_until_blocked

# Only a hung server reaches this bound; it is not a timing assertion.
HANG_LIMIT_SECONDS = 30


def name(prefix):
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def start_blocked(pool, shared_server, admin, *command, protocol=2):
    """Run command on a new connection in a thread; return its future once blocked."""
    reader = shared_server.client(protocol=protocol)
    client_id = reader.execute_command("CLIENT", "ID")
    future = pool.submit(reader.execute_command, *command)
    wait_until_blocked(admin, client_id)
    return future


# -- TL.PULL ---------------------------------------------------------------------


def test_pull_woken_by_append(pool, shared_server, client):
    timeline_id = name("pull")
    future = start_blocked(
        pool, shared_server, client, "TL.PULL", "BLOCK", 0, "TIMELINES", timeline_id, 0
    )
    client.execute_command("TL.APPEND", timeline_id, b"hello")
    result = future.result(HANG_LIMIT_SECONDS)
    assert result == [[timeline_id.encode(), [[1, b"hello"]]]]


def test_pull_woken_by_mappend(pool, shared_server, client):
    watched, other = name("pull"), name("pull")
    future = start_blocked(
        pool,
        shared_server,
        client,
        "TL.PULL",
        "BLOCK",
        60000,
        "TIMELINES",
        watched,
        "$",
    )
    client.execute_command("TL.MAPPEND", other, b"o", watched, b"w1", watched, b"w2")
    result = future.result(HANG_LIMIT_SECONDS)
    assert result == [[watched.encode(), [[1, b"w1"], [2, b"w2"]]]]


def test_pull_dollar_skips_existing_entries(pool, shared_server, client):
    timeline_id = name("pull")
    client.execute_command("TL.APPEND", timeline_id, b"old")
    future = start_blocked(
        pool,
        shared_server,
        client,
        "TL.PULL",
        "BLOCK",
        0,
        "TIMELINES",
        timeline_id,
        "$",
    )
    client.execute_command("TL.APPEND", timeline_id, b"new")
    assert future.result(HANG_LIMIT_SECONDS) == [[timeline_id.encode(), [[2, b"new"]]]]


def test_pull_returns_only_written_timelines(pool, shared_server, client):
    first, second = name("pull"), name("pull")
    future = start_blocked(
        pool, shared_server, client,
        "TL.PULL", "COUNT", 1, "BLOCK", 0, "TIMELINES", first, second, 0, 0,
    )  # fmt: skip
    client.execute_command("TL.MAPPEND", second, b"a", second, b"b")
    assert future.result(HANG_LIMIT_SECONDS) == [[second.encode(), [[1, b"a"]]]]


def test_pull_resp3_reply_is_map(pool, shared_server, client):
    timeline_id = name("pull")
    future = start_blocked(
        pool, shared_server, client, "TL.PULL", "BLOCK", 0, "TIMELINES", timeline_id, 0,
        protocol=3,
    )  # fmt: skip
    client.execute_command("TL.APPEND", timeline_id, b"x")
    assert future.result(HANG_LIMIT_SECONDS) == {timeline_id.encode(): [[1, b"x"]]}


def test_pull_without_block_returns_immediately(client, client3):
    timeline_id = name("pull")
    assert client.execute_command("TL.PULL", "TIMELINES", timeline_id, 0) is None
    assert client3.execute_command("TL.PULL", "TIMELINES", timeline_id, 0) is None
    client.execute_command("TL.APPEND", timeline_id, b"a")
    assert client.execute_command("TL.PULL", "TIMELINES", timeline_id, 0) == [
        [timeline_id.encode(), [[1, b"a"]]]
    ]


def test_pull_timeout_returns_nil(client, client3):
    timeline_id = name("pull")
    assert (
        client.execute_command("TL.PULL", "BLOCK", 50, "TIMELINES", timeline_id, 0)
        is None
    )
    assert (
        client3.execute_command("TL.PULL", "BLOCK", 50, "TIMELINES", timeline_id, 0)
        is None
    )


def test_pull_timeout_ignores_other_timelines(pool, shared_server, client):
    watched, other = name("pull"), name("pull")
    future = start_blocked(
        pool, shared_server, client, "TL.PULL", "BLOCK", 300, "TIMELINES", watched, 0
    )
    for index in range(20):
        client.execute_command("TL.APPEND", other, b"%d" % index)
    assert future.result(HANG_LIMIT_SECONDS) is None


def test_pull_syntax_errors(client):
    from redis import ResponseError

    with pytest.raises(ResponseError, match="TIMELINES"):
        client.execute_command("TL.PULL", "TIMELINES", "a", "b", 0)
    with pytest.raises(ResponseError, match="TIMELINES"):
        client.execute_command("TL.PULL", "COUNT", 1, "STREAMS", "a", 0)
    assert client.ping()


# -- IM.SYNC -----------------------------------------------------------------------


def test_sync_woken_by_send_fan_out(pool, shared_server, client):
    conversation = name("room")
    alice, bob = name("alice"), name("bob")
    client.execute_command("IM.JOIN", conversation, alice, bob)
    futures = [
        start_blocked(pool, shared_server, client, "IM.SYNC", user, "-", "BLOCK", 0)
        for user in (alice, bob)
    ]
    store_seq = client.execute_command("IM.SEND", conversation, alice, "m1", b"hey")
    expected = [[conversation.encode(), store_seq, alice.encode(), b"hey"]]
    for future in futures:
        page = future.result(HANG_LIMIT_SECONDS)
        assert page[0::2] == [b"messages", b"cursor", b"has_more", b"truncated"]
        assert page[1] == expected


def test_legacy_sync_woken_by_send(pool, shared_server, client):
    conversation, user = name("room"), name("user")
    client.execute_command("IM.JOIN", conversation, user)
    future = start_blocked(pool, shared_server, client, "IM.SYNC", user, 0, "BLOCK", 0)
    client.execute_command("IM.SEND", conversation, user, b"legacy")
    result = future.result(HANG_LIMIT_SECONDS)
    assert result == [[1, conversation.encode(), 1, user.encode(), b"legacy"]]


def test_sync_woken_by_join_into_read_fanout(pool, shared_server, client):
    # The join's marker is the first entry the reader gets. It must go on
    # waiting, now also on the conversation's store timeline.
    conversation, member, joiner = name("room"), name("member"), name("joiner")
    client.execute_command("IM.POLICY", conversation, "FANOUT-THRESHOLD", 1)
    client.execute_command("IM.JOIN", conversation, member)
    future = start_blocked(
        pool, shared_server, client, "IM.SYNC", joiner, "-", "BLOCK", 0
    )
    client.execute_command("IM.JOIN", conversation, joiner)
    client.execute_command("IM.SEND", conversation, member, "r1", b"read path")
    page = future.result(HANG_LIMIT_SECONDS)
    assert page[1] == [[conversation.encode(), 1, member.encode(), b"read path"]]


def test_sync_timeout_returns_nil(client, client3):
    user = name("nobody")
    assert client.execute_command("IM.SYNC", user, "-", "BLOCK", 50) is None
    assert client3.execute_command("IM.SYNC", user, "-", "BLOCK", 50) is None


def test_sync_not_woken_by_other_conversation(pool, shared_server, client):
    room, other_room = name("room"), name("room")
    carol, dave = name("carol"), name("dave")
    client.execute_command("IM.JOIN", room, carol)
    client.execute_command("IM.JOIN", other_room, dave)
    future = start_blocked(
        pool, shared_server, client, "IM.SYNC", carol, "-", "BLOCK", 300
    )
    client.execute_command("IM.SEND", other_room, dave, "x", b"not for carol")
    assert future.result(HANG_LIMIT_SECONDS) is None


# -- ordering and single reply -------------------------------------------------------


def read_replies(sock, count):
    """Read until count CRLF-terminated simple replies have arrived."""
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_blocked_request_holds_later_pipelined_requests(shared_server, client):
    timeline_id = name("order")
    with socket.create_connection(("127.0.0.1", shared_server.port)) as sock:
        sock.sendall(b"CLIENT ID\r\n")
        client_id = int(read_replies(sock, 1)[1:-2])
        request = f"TL.PULL BLOCK 0 TIMELINES {timeline_id} 0\r\nPING\r\n"
        sock.sendall(request.encode())
        wait_until_blocked(client, client_id)
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(65536)
        sock.settimeout(HANG_LIMIT_SECONDS)
        client.execute_command("TL.APPEND", timeline_id, b"v")
        expected = (
            b"*1\r\n*2\r\n$%d\r\n%b\r\n*1\r\n*2\r\n:1\r\n$1\r\nv\r\n+PONG\r\n"
            % (len(timeline_id), timeline_id.encode())
        )
        data = b""
        while len(data) < len(expected):
            data += sock.recv(65536)
        assert data == expected
        # A second write to the timeline must not produce a second reply.
        client.execute_command("TL.APPEND", timeline_id, b"w")
        sock.sendall(b"PING\r\n")
        assert read_replies(sock, 1) == b"+PONG\r\n"


def test_queued_blocking_request_blocks_after_resume(shared_server, client):
    first, second = name("order"), name("order")
    with socket.create_connection(("127.0.0.1", shared_server.port)) as sock:
        sock.settimeout(HANG_LIMIT_SECONDS)
        request = (
            f"TL.PULL BLOCK 0 TIMELINES {first} 0\r\n"
            f"TL.PULL BLOCK 100 TIMELINES {second} 0\r\n"
            "PING\r\n"
        )
        sock.sendall(b"CLIENT ID\r\n")
        client_id = int(read_replies(sock, 1)[1:-2])
        sock.sendall(request.encode())
        wait_until_blocked(client, client_id)
        client.execute_command("TL.APPEND", first, b"a")
        data = b""
        while not data.endswith(b"+PONG\r\n"):
            data += sock.recv(65536)
        # The queued second pull ran after the first replied, found nothing
        # and timed out; PING still came last.
        assert data.endswith(b"*-1\r\n+PONG\r\n")
        assert data.count(b"*-1\r\n") == 1


def test_client_disconnect_while_blocked(shared_server, client):
    timeline_id = name("gone")
    sock = socket.create_connection(("127.0.0.1", shared_server.port))
    sock.sendall(b"CLIENT ID\r\n")
    client_id = int(read_replies(sock, 1)[1:-2])
    sock.sendall(f"TL.PULL BLOCK 0 TIMELINES {timeline_id} 0\r\n".encode())
    wait_until_blocked(client, client_id)
    sock.close()
    assert client.execute_command("TL.APPEND", timeline_id, b"x") == 1
    assert client.ping()


# -- deletes ----------------------------------------------------------------------


def test_pull_on_deleted_timeline_gets_deleted_error(pool, shared_server, client):
    import redis

    timeline_id = name("gone")
    client.execute_command("TL.APPEND", timeline_id, b"old")
    future = start_blocked(
        pool,
        shared_server,
        client,
        "TL.PULL",
        "BLOCK",
        0,
        "TIMELINES",
        timeline_id,
        "$",
    )
    assert client.execute_command("TL.DELTIMELINE", timeline_id) == b"OK"
    with pytest.raises(redis.ResponseError, match="^DELETED .*continue above seq 1"):
        future.result(HANG_LIMIT_SECONDS)
    assert client.execute_command("TL.RANGE", timeline_id, "-", "+") == []
    assert client.execute_command("TL.APPEND", timeline_id, b"new") == 2


def test_del_and_trim_commands(client):
    timeline_id = name("trim")
    for index in range(10):
        client.execute_command("TL.APPEND", timeline_id, b"%d" % index)
    assert client.execute_command("TL.DEL", timeline_id, 5) == 1
    assert client.execute_command("TL.DEL", timeline_id, 5) == 0
    assert client.execute_command("TL.TRIM", timeline_id, 4) == b"OK"
    seqs = [
        entry[0] for entry in client.execute_command("TL.RANGE", timeline_id, "-", "+")
    ]
    assert seqs == [4, 6, 7, 8, 9, 10]
    assert client.execute_command("TL.LAST", timeline_id) == 10
