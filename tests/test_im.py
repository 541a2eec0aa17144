"""IM layer: membership, idempotent sends, history, read markers and the
entry layouts, on a real server and on the engine directly."""

import struct
import uuid

import pytest
import redis

import tlsm
from tlsm import im, im_format


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def as_map(value):
    """Return a RESP2 flat field/value array (or a RESP3 map) as a dict."""
    if isinstance(value, dict):
        return value
    return dict(zip(value[::2], value[1::2]))


def sync(client, user, cursor="-", *options):
    return as_map(client.execute_command("IM.SYNC", user, cursor, *options))


@pytest.fixture
def room(client):
    conversation = name("room")
    client.execute_command("IM.JOIN", conversation, "alice", "bob", "carol")
    return conversation


# -- membership --------------------------------------------------------------------


def test_join_counts_only_new_users(client):
    conversation = name("room")
    assert client.execute_command("IM.JOIN", conversation, "a", "b", "a") == 2
    assert client.execute_command("IM.JOIN", conversation, "b", "c") == 1
    assert client.execute_command("IM.JOIN", conversation, "c") == 0
    assert client.execute_command("IM.MEMBERS", conversation) == [b"a", b"b", b"c"]


def test_leave_counts_only_members(client):
    conversation = name("room")
    client.execute_command("IM.JOIN", conversation, "a", "b", "c")
    assert client.execute_command("IM.LEAVE", conversation, "b", "zed", "b") == 1
    assert client.execute_command("IM.MEMBERS", conversation) == [b"a", b"c"]
    assert client.execute_command("IM.LEAVE", conversation, "b") == 0


def test_members_of_unknown_conversation_is_empty(client):
    assert client.execute_command("IM.MEMBERS", name("none")) == []


def test_member_sees_only_messages_sent_while_member(client):
    conversation, early, late = name("room"), name("early"), name("late")
    client.execute_command("IM.JOIN", conversation, early)
    client.execute_command("IM.SEND", conversation, early, "m1", b"before join")
    client.execute_command("IM.JOIN", conversation, late)
    client.execute_command("IM.SEND", conversation, early, "m2", b"while member")
    client.execute_command("IM.LEAVE", conversation, late)
    client.execute_command("IM.SEND", conversation, early, "m3", b"after leave")
    client.execute_command("IM.JOIN", conversation, late)
    client.execute_command("IM.SEND", conversation, early, "m4", b"after rejoin")
    payloads = [m[3] for m in sync(client, late)[b"messages"]]
    assert payloads == [b"while member", b"after rejoin"]


def test_send_by_former_member_rejected(client):
    conversation, user = name("room"), name("user")
    client.execute_command("IM.JOIN", conversation, user)
    client.execute_command("IM.LEAVE", conversation, user)
    with pytest.raises(redis.ResponseError, match="^NOTMEMBER"):
        client.execute_command("IM.SEND", conversation, user, "id", b"x")


# -- sending -----------------------------------------------------------------------


def test_send_returns_store_seqs(client, room):
    assert client.execute_command("IM.SEND", room, "alice", "a1", b"one") == 1
    assert client.execute_command("IM.SEND", room, "bob", "b1", b"two") == 2


def test_legacy_send_without_client_msg_id(client, room):
    assert client.execute_command("IM.SEND", room, "alice", b"one") == 1
    assert client.execute_command("IM.SEND", room, "alice", b"one") == 2


def test_send_by_non_member_rejected(client, room):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SEND", room, "mallory", "m1", b"x")
    assert str(info.value).startswith("NOTMEMBER user 'mallory' is not a member")
    assert client.execute_command("IM.HISTORY", room) == []
    assert client.ping()


def test_send_retry_returns_first_seq(client, room):
    first = client.execute_command("IM.SEND", room, "alice", "retry-1", b"once")
    client.execute_command("IM.SEND", room, "bob", "other", b"between")
    again = client.execute_command("IM.SEND", room, "alice", "retry-1", b"once")
    assert again == first
    history = client.execute_command("IM.HISTORY", room)
    assert [entry[2] for entry in history] == [b"between", b"once"]
    payloads = [
        m[3] for m in sync(client, "carol")[b"messages"] if m[0] == room.encode()
    ]
    assert payloads.count(b"once") == 1


def test_client_msg_id_per_sender(client, room):
    assert client.execute_command("IM.SEND", room, "alice", "shared", b"a") == 1
    assert client.execute_command("IM.SEND", room, "bob", "shared", b"b") == 2


def test_reused_client_msg_id_with_other_payload_rejected(client, room):
    client.execute_command("IM.SEND", room, "alice", "reuse", b"first")
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SEND", room, "alice", "reuse", b"second")
    assert str(info.value).startswith("IDCONFLICT client message id 'reuse'")
    assert "store seq 1" in str(info.value)
    assert len(client.execute_command("IM.HISTORY", room)) == 1


def test_send_retry_after_restart(tlsm_server):
    client = tlsm_server.client()
    client.execute_command("IM.JOIN", "r", "x", "y")
    assert client.execute_command("IM.SEND", "r", "x", "cid-1", b"hello") == 1
    assert tlsm_server.terminate() == 0
    tlsm_server.restart()
    client = tlsm_server.client()
    assert client.execute_command("IM.SEND", "r", "x", "cid-1", b"hello") == 1
    assert client.execute_command("IM.HISTORY", "r") == [[1, b"x", b"hello"]]
    messages = sync(client, "y")[b"messages"]
    assert messages == [[b"r", 1, b"x", b"hello"]]


def test_send_retry_after_window_is_new_message(tmp_path):
    clock = [1000.0]
    with tlsm.open(str(tmp_path / "db"), clock=lambda: clock[0]) as db:
        layer = im.ImLayer(db, tlsm.DEFAULT_MAX_PAYLOAD_BYTES, idempotency_window=60)
        layer.join(b"r", [b"u"])
        assert layer.send(b"r", b"u", b"p", b"id")[0] == 1
        clock[0] += 30
        assert layer.send(b"r", b"u", b"p", b"id")[0] == 1
        clock[0] += 31
        assert layer.send(b"r", b"u", b"p", b"id")[0] == 2


def test_membership_survives_restart(tlsm_server):
    client = tlsm_server.client()
    client.execute_command("IM.JOIN", "r", "x", "y", "z")
    client.execute_command("IM.LEAVE", "r", "z")
    client.execute_command("IM.SEND", "r", "x", "1", b"before")
    assert tlsm_server.terminate() == 0
    tlsm_server.restart()
    client = tlsm_server.client()
    assert client.execute_command("IM.MEMBERS", "r") == [b"x", b"y"]
    assert client.execute_command("IM.JOIN", "r", "x", "w") == 1
    assert client.execute_command("IM.SEND", "r", "y", "2", b"after") == 2
    assert [m[3] for m in sync(client, "y")[b"messages"]] == [b"before", b"after"]
    assert [m[3] for m in sync(client, "w")[b"messages"]] == [b"after"]


def test_send_payload_limit_counts_store_header(client, room):
    payload = b"z" * (4 * 1024 * 1024)
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SEND", room, "alice", "big", payload)
    assert f"{len(payload)} bytes" in str(info.value)
    assert str(4 * 1024 * 1024 - 3 - len("alice")) in str(info.value)
    assert client.ping()


# -- history, read markers and unread counts -----------------------------------------------


def test_history_newest_first_with_before(client, room):
    for index in range(5):
        client.execute_command("IM.SEND", room, "bob", f"h{index}", b"h%d" % index)
    assert client.execute_command("IM.HISTORY", room, "COUNT", 2) == [
        [5, b"bob", b"h4"], [4, b"bob", b"h3"]
    ]  # fmt: skip
    assert client.execute_command("IM.HISTORY", room, "BEFORE", 3) == [
        [2, b"bob", b"h1"], [1, b"bob", b"h0"]
    ]  # fmt: skip
    assert len(client.execute_command("IM.HISTORY", room)) == 5


def test_history_default_count_is_20(client, room):
    pipe = client.pipeline(transaction=False)
    for index in range(25):
        pipe.execute_command("IM.SEND", room, "carol", f"c{index}", b"%d" % index)
    pipe.execute()
    history = client.execute_command("IM.HISTORY", room)
    assert len(history) == 20
    assert history[0][0] == 25


def test_unread_counts_from_read_marker(client):
    conversation, other = name("room"), name("room")
    reader, writer = name("reader"), name("writer")
    client.execute_command("IM.JOIN", conversation, reader, writer)
    client.execute_command("IM.JOIN", other, reader, writer)
    for index in range(5):
        client.execute_command("IM.SEND", conversation, writer, f"a{index}", b"x")
    client.execute_command("IM.SEND", other, writer, "b0", b"y")
    assert client.execute_command("IM.UNREAD", reader, conversation) == 5
    assert client.execute_command("IM.READ", reader, conversation, 3) == 3
    assert client.execute_command("IM.UNREAD", reader, conversation) == 2
    # A read marker never goes back.
    assert client.execute_command("IM.READ", reader, conversation, 1) == 3
    counts = client.execute_command("IM.UNREAD", reader)
    assert as_map(counts) == {conversation.encode(): 2, other.encode(): 1}


def test_unread_skips_messages_outside_membership(client):
    conversation, member, late = name("room"), name("member"), name("late")
    client.execute_command("IM.JOIN", conversation, member)
    for index in range(4):
        client.execute_command("IM.SEND", conversation, member, f"e{index}", b"x")
    client.execute_command("IM.JOIN", conversation, late)
    client.execute_command("IM.SEND", conversation, member, "in", b"x")
    client.execute_command("IM.LEAVE", conversation, late)
    client.execute_command("IM.SEND", conversation, member, "out", b"x")
    assert client.execute_command("IM.UNREAD", late, conversation) == 1


def test_read_markers_survive_restart(tlsm_server):
    client = tlsm_server.client()
    client.execute_command("IM.JOIN", "r", "x")
    for index in range(3):
        client.execute_command("IM.SEND", "r", "x", f"{index}", b"p")
    client.execute_command("IM.READ", "x", "r", 2)
    assert tlsm_server.terminate() == 0
    tlsm_server.restart()
    assert tlsm_server.client().execute_command("IM.UNREAD", "x", "r") == 1


# -- errors ---------------------------------------------------------------------------


def test_im_argument_errors(client, room):
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        client.execute_command("IM.SEND", room, "alice")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        client.execute_command("IM.SEND", room, "alice", "id", b"p", b"extra")
    with pytest.raises(redis.ResponseError, match="'soon'"):
        client.execute_command("IM.HISTORY", room, "BEFORE", "soon")
    with pytest.raises(redis.ResponseError, match="above the limit of 255 bytes"):
        client.execute_command("IM.JOIN", room, "u" * 600)
    with pytest.raises(redis.ResponseError, match="must not be empty"):
        client.execute_command("IM.JOIN", "", "u")
    with pytest.raises(redis.ResponseError, match="client_msg_id is 200 bytes"):
        client.execute_command("IM.SEND", room, "alice", "i" * 200, b"p")
    assert client.ping()


def test_im_replies_same_in_resp3(client3):
    conversation = name("room")
    client3.execute_command("IM.JOIN", conversation, "u1")
    client3.execute_command("IM.SEND", conversation, "u1", "1", b"p")
    assert client3.execute_command("IM.HISTORY", conversation) == [[1, b"u1", b"p"]]
    assert client3.execute_command("IM.MEMBERS", conversation) == [b"u1"]


# -- layouts in the engine --------------------------------------------------------------


def test_entries_use_documented_layouts(tmp_path):
    with tlsm.open(str(tmp_path / "db")) as db:
        layer = im.ImLayer(db, tlsm.DEFAULT_MAX_PAYLOAD_BYTES)
        layer.join(b"room", [b"alice", b"bob"])
        layer.send(b"room", b"alice", b"body", b"cid")
        store = db.table("im.store")
        assert store.get(b"room", 1) == struct.pack(">BH", 1, 5) + b"alice" + b"body"
        sync_entries = list(db.table("im.sync").scan(b"bob"))
        assert sync_entries == [(1, struct.pack(">BQ", 1, 1) + b"room")]
        events = [payload for _, payload in db.table("im.conv").scan(b"room")]
        assert events == [
            struct.pack(">BQ", 1, 0) + b"alice",
            struct.pack(">BQ", 1, 0) + b"bob",
        ]
        user_events = [payload for _, payload in db.table("im.user").scan(b"bob")]
        assert user_events == [struct.pack(">BQ", 1, 0) + b"room"]
        idem = list(db.table("im.idem").scan(b"\x05alicecid"))
        assert idem[0][1][:8] == struct.pack(">Q", 1)
        assert idem[0][1][12:] == b"room"
        assert db.table("im.idem").ttl == im.DEFAULT_IDEMPOTENCY_WINDOW_SECONDS
        assert db.table("im.sync").ttl == im.DEFAULT_SYNC_TTL_SECONDS
        assert db.table("im.store").ttl is None


def test_store_seq_mismatch_raises(tmp_path, monkeypatch):
    with tlsm.open(str(tmp_path / "db")) as db:
        layer = im.ImLayer(db, tlsm.DEFAULT_MAX_PAYLOAD_BYTES)
        layer.join(b"r", [b"u"])
        assert layer.send(b"r", b"u", b"first")[0] == 1
        real_last_seq = layer.store.last_seq

        # Reports one entry less than there is, as a second writer would cause.
        def stale_last_seq(timeline_id):
            return max(real_last_seq(timeline_id) - 1, 0)

        monkeypatch.setattr(layer.store, "last_seq", stale_last_seq)
        with pytest.raises(
            im.ImInvariantError, match="engine assigned 2, references carry 1"
        ):
            layer.send(b"r", b"u", b"second")


def test_cursor_round_trip_and_checks():
    token = im_format.encode_cursor(b"u", 123, 7, {b"big": 40, b"b2": 3})
    assert token[:1] == b"A"
    assert im_format.decode_cursor(b"u", token) == (123, 7, {b"big": 40, b"b2": 3})
    with pytest.raises(im_format.CursorError, match="checksum"):
        im_format.decode_cursor(b"other", token)
    damaged = token[:-3] + (b"B" if token[-3:-2] != b"B" else b"C") + token[-2:]
    with pytest.raises(im_format.CursorError):
        im_format.decode_cursor(b"u", damaged)


def test_store_entry_round_trip():
    entry = im_format.encode_store_entry(b"sender", b"\x00payload")
    assert im_format.decode_store_entry(entry) == (b"sender", b"\x00payload")
