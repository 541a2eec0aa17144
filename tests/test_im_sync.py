"""IM.SYNC with cursors: paging, losses to TTL, resync, fan-out switches,
racing senders and blocked readers, on real servers over loopback."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from conftest import ServerProcess, wait_until_blocked

# Only a hung server reaches this bound; it is not a timing assertion.
HANG_LIMIT_SECONDS = 60
SHORT_TTL_SECONDS = 3


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def as_map(value):
    if isinstance(value, dict):
        return value
    return dict(zip(value[::2], value[1::2]))


def sync(client, user, cursor="-", *options):
    return as_map(client.execute_command("IM.SYNC", user, cursor, *options))


def drain(client, user, cursor="-", count=100):
    """Sync until has_more is false; return (messages, cursor)."""
    messages = []
    while True:
        page = sync(client, user, cursor, "COUNT", count)
        messages.extend(page[b"messages"])
        cursor = page[b"cursor"]
        if not page[b"has_more"]:
            return messages, cursor


@pytest.fixture(scope="module")
def short_ttl_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("short-ttl")
    server = ServerProcess(
        base / "data",
        base / "server.log",
        ["--sync-ttl-seconds", str(SHORT_TTL_SECONDS)],
    ).start()
    yield server
    server.stop()


# -- paging ---------------------------------------------------------------------------


def test_sync_count_two_of_five(client):
    conversation, user = name("room"), name("user")
    client.execute_command("IM.JOIN", conversation, user)
    for index in range(1, 6):
        client.execute_command(
            "IM.SEND", conversation, user, f"c{index}", b"%d" % index
        )
    page = sync(client, user, "-", "COUNT", 2)
    assert [m[1] for m in page[b"messages"]] == [1, 2]
    assert page[b"has_more"] == 1
    assert page[b"truncated"] == []
    rest = sync(client, user, page[b"cursor"])
    assert [m[1] for m in rest[b"messages"]] == [3, 4, 5]
    assert rest[b"has_more"] == 0
    assert sync(client, user, rest[b"cursor"])[b"messages"] == []


def test_sync_merges_conversations(client):
    user, other = name("user"), name("other")
    rooms = [name("room"), name("room")]
    for conversation in rooms:
        client.execute_command("IM.JOIN", conversation, user, other)
    for index in range(4):
        client.execute_command("IM.SEND", rooms[index % 2], other, f"m{index}", b"p")
    messages, _ = drain(client, user, count=3)
    assert [(m[0], m[1]) for m in messages] == [
        (rooms[0].encode(), 1),
        (rooms[1].encode(), 1),
        (rooms[0].encode(), 2),
        (rooms[1].encode(), 2),
    ]


def test_sync_reply_is_map_in_resp3(client, client3):
    conversation, user = name("room"), name("user")
    client.execute_command("IM.JOIN", conversation, user)
    client.execute_command("IM.SEND", conversation, user, "1", b"hi")
    page = client3.execute_command("IM.SYNC", user, "-")
    assert isinstance(page, dict)
    assert page[b"messages"] == [[conversation.encode(), 1, user.encode(), b"hi"]]
    assert page[b"has_more"] is False
    flat = client.execute_command("IM.SYNC", user, "-")
    assert flat[0::2] == [b"messages", b"cursor", b"has_more", b"truncated"]


def test_sync_cursor_rejections(client):
    user, other = name("user"), name("other")
    cursor = sync(client, user)[b"cursor"]
    for bad, reason in [
        ("!!!", "not valid base64url"),
        ("AAAA", "too short"),
        (cursor.decode()[:-2] + "zz", "checksum mismatch"),
    ]:
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command("IM.SYNC", user, bad)
        assert str(info.value).startswith("INVALIDCURSOR")
        assert reason in str(info.value)
    with pytest.raises(redis.ResponseError, match="^INVALIDCURSOR.*another user"):
        client.execute_command("IM.SYNC", other, cursor)


def test_ack_and_cursor(client):
    user = name("user")
    assert client.execute_command("IM.CURSOR", user, "phone") is None
    cursor = sync(client, user)[b"cursor"]
    assert client.execute_command("IM.ACK", user, "phone", cursor) == b"OK"
    assert client.execute_command("IM.CURSOR", user, "phone") == cursor
    assert client.execute_command("IM.CURSOR", user, "laptop") is None
    with pytest.raises(redis.ResponseError, match="^INVALIDCURSOR"):
        client.execute_command("IM.ACK", user, "phone", "garbage")


# -- losses and resync --------------------------------------------------------------------


def test_cursor_below_expired_entries_is_truncated(short_ttl_server):
    client = short_ttl_server.client()
    conversation, user = name("room"), name("user")
    client.execute_command("IM.JOIN", conversation, user)
    for index in range(1, 6):
        client.execute_command(
            "IM.SEND", conversation, user, f"c{index}", b"%d" % index
        )
    time.sleep(SHORT_TTL_SECONDS / 2 + 0.1)
    page = sync(client, user, "-", "COUNT", 2)
    assert [m[1] for m in page[b"messages"]] == [1, 2]
    client.execute_command("IM.SEND", conversation, user, "c6", b"6")
    # Entries 3 to 5 pass the TTL; the cursor and entry 6 do not.
    time.sleep(SHORT_TTL_SECONDS / 2 + 0.1)
    after = sync(client, user, page[b"cursor"])
    assert after[b"truncated"] == [[b"", 6]]
    assert [m[1] for m in after[b"messages"]] == [6]
    assert after[b"has_more"] == 0


def test_cursor_older_than_retention_gets_resync(short_ttl_server):
    client = short_ttl_server.client()
    user = name("user")
    cursor = sync(client, user)[b"cursor"]
    time.sleep(SHORT_TTL_SECONDS + 0.2)
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SYNC", user, cursor)
    assert str(info.value).startswith("RESYNC cursor was issued")
    assert "beyond the sync retention of 3 s" in str(info.value)
    assert sync(client, user, "-")[b"messages"] == []


def test_blocked_sync_gets_resync_when_cursor_expires(short_ttl_server):
    client = short_ttl_server.client()
    user = name("user")
    cursor = sync(client, user)[b"cursor"]
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SYNC", user, cursor, "BLOCK", 0)
    assert str(info.value).startswith("RESYNC cursor passed the sync retention")


# -- fan-out switches -------------------------------------------------------------------


def test_threshold_crossing_loses_and_repeats_nothing(client):
    conversation = name("room")
    a, b, c, d = (name(x) for x in "abcd")
    client.execute_command("IM.POLICY", conversation, "FANOUT-THRESHOLD", 3)
    client.execute_command("IM.JOIN", conversation, a, b, c)
    cursors = {a: "-", d: "-"}
    received = {a: [], d: []}

    def pull(user, count):
        page = sync(client, user, cursors[user], "COUNT", count)
        cursors[user] = page[b"cursor"]
        assert page[b"truncated"] == []
        received[user].extend(m[1] for m in page[b"messages"])

    def send(index):
        client.execute_command("IM.SEND", conversation, b, f"s{index}", b"%d" % index)

    def mode():
        return as_map(client.execute_command("IM.POLICY", conversation))[b"fanout"]

    for index in range(1, 4):
        send(index)
    pull(a, 2)
    assert mode() == b"write"
    client.execute_command("IM.JOIN", conversation, d)  # 4 members: read fan-out
    assert mode() == b"read"
    for index in range(4, 7):
        send(index)
    pull(a, 1)
    pull(d, 1)
    client.execute_command("IM.LEAVE", conversation, d)  # back to write fan-out
    assert mode() == b"write"
    for index in range(7, 9):
        send(index)
    pull(a, 1)
    client.execute_command("IM.JOIN", conversation, d)  # read fan-out again
    send(9)
    client.execute_command("IM.LEAVE", conversation, c)  # and write again
    send(10)
    for user in (a, d):
        while True:
            before = len(received[user])
            pull(user, 2)
            if len(received[user]) == before:
                break
    assert received[a] == list(range(1, 11))
    assert received[d] == [4, 5, 6, 9, 10]
    history = client.execute_command("IM.HISTORY", conversation, "COUNT", 100)
    assert len(history) == 10


def test_policy_threshold_switches_at_once(client):
    conversation, a, b = name("room"), name("a"), name("b")
    client.execute_command("IM.JOIN", conversation, a, b)
    client.execute_command("IM.SEND", conversation, a, "1", b"w")
    policy = as_map(
        client.execute_command("IM.POLICY", conversation, "FANOUT-THRESHOLD", 1)
    )
    assert policy[b"fanout"] == b"read"
    assert policy[b"fanout_since"] == 1
    client.execute_command("IM.SEND", conversation, a, "2", b"r")
    messages, _ = drain(client, b)
    assert [(m[1], m[3]) for m in messages] == [(1, b"w"), (2, b"r")]


# -- racing senders and blocked readers ----------------------------------------------------


@pytest.mark.parametrize("threshold", [100, 1])
def test_racing_senders_seen_once_in_order(shared_server, threshold):
    admin = shared_server.client()
    conversation, reader = name("room"), name("reader")
    senders = [name("s1"), name("s2")]
    admin.execute_command("IM.POLICY", conversation, "FANOUT-THRESHOLD", threshold)
    admin.execute_command("IM.JOIN", conversation, reader, *senders)
    per_sender = 150

    def send_all(sender):
        client = shared_server.client()
        for index in range(per_sender):
            client.execute_command(
                "IM.SEND", conversation, sender, f"{index}", b"%d" % index
            )

    threads = [threading.Thread(target=send_all, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    device = shared_server.client()
    cursor = "-"
    seen = []
    while len(seen) < 2 * per_sender:
        raw = device.execute_command(
            "IM.SYNC", reader, cursor, "COUNT", 7, "BLOCK", 5000
        )
        if raw is None:
            continue
        page = as_map(raw)
        cursor = page[b"cursor"]
        seen.extend(page[b"messages"])
    for thread in threads:
        thread.join(HANG_LIMIT_SECONDS)
    assert [m[1] for m in seen] == list(range(1, 2 * per_sender + 1))
    for sender in senders:
        payloads = [m[3] for m in seen if m[2] == sender.encode()]
        assert payloads == [b"%d" % index for index in range(per_sender)]
    assert sync(device, reader, cursor)[b"messages"] == []


def test_blocked_sync_not_woken_by_other_timeline(shared_server, client):
    conversation, other_room = name("room"), name("room")
    user, stranger = name("user"), name("stranger")
    client.execute_command("IM.JOIN", conversation, user)
    client.execute_command("IM.JOIN", other_room, stranger)
    cursor = sync(client, user)[b"cursor"]
    reader = shared_server.client()
    client_id = reader.execute_command("CLIENT", "ID")
    stop = threading.Event()
    writes = []

    def write_every_second():
        writer = shared_server.client()
        while not stop.wait(1.0):
            writes.append(
                writer.execute_command(
                    "IM.SEND", other_room, stranger, f"w{len(writes)}", b"x"
                )
            )

    with ThreadPoolExecutor(max_workers=2) as pool:
        future = pool.submit(
            reader.execute_command, "IM.SYNC", user, cursor, "BLOCK", 3000
        )
        wait_until_blocked(client, client_id)
        writer = pool.submit(write_every_second)
        result = future.result(HANG_LIMIT_SECONDS)
        stop.set()
        writer.result(HANG_LIMIT_SECONDS)
    assert result is None
    assert writes
    assert sync(client, user, cursor)[b"messages"] == []


def test_blocked_sync_woken_by_read_fanout_send(shared_server, client):
    conversation, a, b = name("room"), name("a"), name("b")
    client.execute_command("IM.POLICY", conversation, "FANOUT-THRESHOLD", 1)
    client.execute_command("IM.JOIN", conversation, a, b)
    cursor = sync(client, b)[b"cursor"]
    reader = shared_server.client()
    client_id = reader.execute_command("CLIENT", "ID")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(reader.execute_command, "IM.SYNC", b, cursor, "BLOCK", 0)
        wait_until_blocked(client, client_id)
        client.execute_command("IM.SEND", conversation, a, "1", b"pushed")
        page = as_map(future.result(HANG_LIMIT_SECONDS))
    assert page[b"messages"] == [[conversation.encode(), 1, a.encode(), b"pushed"]]
    # Pull from the pushed cursor: the pushed entry is not delivered again.
    assert sync(client, b, page[b"cursor"])[b"messages"] == []


def test_hundred_blocked_clients_get_one_reply_each(shared_server, client):
    conversation, writer = name("room"), name("writer")
    users = [name("u") for _ in range(100)]
    client.execute_command("IM.JOIN", conversation, writer, *users)
    readers = [shared_server.client() for _ in users]
    cursors = [sync(client, user)[b"cursor"] for user in users]
    with ThreadPoolExecutor(max_workers=100) as pool:
        futures = [
            pool.submit(r.execute_command, "IM.SYNC", u, c, "COUNT", 1000, "BLOCK", 0)
            for r, u, c in zip(readers, users, cursors)
        ]
        deadline = time.monotonic() + HANG_LIMIT_SECONDS
        while time.monotonic() < deadline:
            info = client.info("clients")
            if info["blocked_clients"] >= 100:
                break
            time.sleep(0.01)
        pipe = client.pipeline(transaction=False)
        for index in range(50):
            pipe.execute_command(
                "IM.SEND", conversation, writer, f"f{index}", b"%d" % index
            )
        pipe.execute()
        pages = [as_map(f.result(HANG_LIMIT_SECONDS)) for f in futures]
    for reader, user, page in zip(readers, users, pages):
        assert page[b"messages"], user
        seqs = [m[1] for m in page[b"messages"]]
        assert seqs == list(range(1, len(seqs) + 1))
        # A second reply to the blocked request would arrive here instead.
        assert reader.ping() is True
        rest, _ = drain(client, user, page[b"cursor"])
        assert seqs + [m[1] for m in rest] == list(range(1, 51))
