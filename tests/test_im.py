"""IM layer: IM.* commands on a real server, the entry layouts in the engine,
membership rebuilt after a restart, and store-seq checking."""

import struct
import uuid

import pytest
import redis

import tlsm
from tlsm import im


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def room(client):
    conversation = name("room")
    client.execute_command("IM.JOIN", conversation, "alice", "bob", "carol")
    return conversation


# -- commands --------------------------------------------------------------------


def test_join_counts_only_new_users(client):
    conversation = name("room")
    assert client.execute_command("IM.JOIN", conversation, "a", "b", "a") == 2
    assert client.execute_command("IM.JOIN", conversation, "b", "c") == 1
    assert client.execute_command("IM.JOIN", conversation, "c") == 0
    assert client.execute_command("IM.MEMBERS", conversation) == [b"a", b"b", b"c"]


def test_members_of_unknown_conversation_is_empty(client):
    assert client.execute_command("IM.MEMBERS", name("none")) == []


def test_send_returns_store_seqs(client, room):
    assert client.execute_command("IM.SEND", room, "alice", b"one") == 1
    assert client.execute_command("IM.SEND", room, "bob", b"two") == 2


def test_send_by_non_member_rejected(client, room):
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SEND", room, "mallory", b"x")
    assert str(info.value).startswith("NOTMEMBER user 'mallory' is not a member")
    assert client.execute_command("TL.LAST", f"im:store:{room}") == 0
    assert client.ping()


def test_send_fans_out_to_every_member_including_sender(client, room):
    client.execute_command("IM.SEND", room, "alice", b"hello")
    for user in ("alice", "bob", "carol"):
        messages = client.execute_command("IM.SYNC", user, 0)
        assert [m[1:] for m in messages if m[1] == room.encode()] == [
            [room.encode(), 1, b"alice", b"hello"]
        ]


def test_sync_pages_with_count_and_after(client):
    user = name("dana")
    rooms = [name("room"), name("room")]
    for conversation in rooms:
        client.execute_command("IM.JOIN", conversation, user)
    for index in range(5):
        client.execute_command("IM.SEND", rooms[index % 2], user, b"m%d" % index)
    page = client.execute_command("IM.SYNC", user, 0, "COUNT", 3)
    assert [m[0] for m in page] == [1, 2, 3]
    assert [m[4] for m in page] == [b"m0", b"m1", b"m2"]
    assert [m[1] for m in page] == [
        rooms[0].encode(),
        rooms[1].encode(),
        rooms[0].encode(),
    ]
    assert [m[2] for m in page] == [1, 1, 2]
    rest = client.execute_command("IM.SYNC", user, 3)
    assert [m[0] for m in rest] == [4, 5]
    assert client.execute_command("IM.SYNC", user, 5) == []


def test_sync_default_count_is_100(client):
    user = name("eve")
    conversation = name("room")
    client.execute_command("IM.JOIN", conversation, user)
    pipe = client.pipeline(transaction=False)
    for index in range(150):
        pipe.execute_command("IM.SEND", conversation, user, b"%d" % index)
    pipe.execute()
    assert len(client.execute_command("IM.SYNC", user, 0)) == 100


def test_sync_resolves_sparse_references(client):
    # The user joins late, so the references skip most store seqs and the
    # server reads them one by one instead of scanning the whole range.
    conversation = name("room")
    early, late = name("early"), name("late")
    client.execute_command("IM.JOIN", conversation, early)
    for index in range(50):
        client.execute_command("IM.SEND", conversation, early, b"%d" % index)
    client.execute_command("IM.JOIN", conversation, late)
    client.execute_command("IM.SEND", conversation, early, b"late-1")
    for index in range(30):
        client.execute_command("IM.SEND", conversation, early, b"x%d" % index)
    client.execute_command("IM.SEND", conversation, late, b"late-2")
    messages = client.execute_command("IM.SYNC", late, 0)
    assert messages[0][2] == 51
    assert messages[0][4] == b"late-1"
    assert messages[-1][2:] == [82, late.encode(), b"late-2"]


def test_history_newest_first_with_before(client, room):
    for index in range(5):
        client.execute_command("IM.SEND", room, "bob", b"h%d" % index)
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
        pipe.execute_command("IM.SEND", room, "carol", b"%d" % index)
    pipe.execute()
    history = client.execute_command("IM.HISTORY", room)
    assert len(history) == 20
    assert history[0][0] == 25


def test_im_replies_same_in_resp3(client3):
    conversation = name("room")
    client3.execute_command("IM.JOIN", conversation, "u1")
    client3.execute_command("IM.SEND", conversation, "u1", b"p")
    assert client3.execute_command("IM.HISTORY", conversation) == [[1, b"u1", b"p"]]
    assert client3.execute_command("IM.MEMBERS", conversation) == [b"u1"]


def test_im_argument_errors(client, room):
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        client.execute_command("IM.SEND", room, "alice")
    with pytest.raises(redis.ResponseError, match="'soon'"):
        client.execute_command("IM.HISTORY", room, "BEFORE", "soon")
    with pytest.raises(redis.ResponseError, match="above the limit of 504 bytes"):
        client.execute_command("IM.JOIN", room, "u" * 600)
    with pytest.raises(redis.ResponseError, match="must not be empty"):
        client.execute_command("IM.JOIN", "", "u")
    assert client.ping()


def test_send_payload_limit_counts_sender_header(client, room):
    payload = b"z" * (4 * 1024 * 1024)
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("IM.SEND", room, "alice", payload)
    assert f"{len(payload)} bytes" in str(info.value)
    assert str(4 * 1024 * 1024 - 2 - len("alice")) in str(info.value)
    assert client.ping()


# -- entry layouts as stored ---------------------------------------------------------


def test_entries_use_documented_layouts(client, room):
    client.execute_command("IM.SEND", room, "alice", b"body")
    store = client.execute_command("TL.GET", f"im:store:{room}", 1)
    assert store == struct.pack(">H", 5) + b"alice" + b"body"
    sync = client.execute_command("TL.RANGE", "im:sync:bob", "-", "+")
    references = [payload for _, payload in sync]
    assert struct.pack(">BQ", 1, 1) + room.encode() in references
    members = client.execute_command("TL.RANGE", f"im:members:{room}", "-", "+")
    assert [payload for _, payload in members] == [
        b"\x01alice",
        b"\x01bob",
        b"\x01carol",
    ]


# -- restart and the IM layer on the engine directly ---------------------------------------


def test_membership_survives_restart(tlsm_server):
    client = tlsm_server.client()
    client.execute_command("IM.JOIN", "r", "x", "y")
    client.execute_command("IM.SEND", "r", "x", b"before")
    assert tlsm_server.terminate() == 0
    tlsm_server.restart()
    client = tlsm_server.client()
    assert client.execute_command("IM.MEMBERS", "r") == [b"x", b"y"]
    assert client.execute_command("IM.JOIN", "r", "x", "z") == 1
    assert client.execute_command("IM.SEND", "r", "y", b"after") == 2
    assert [m[4] for m in client.execute_command("IM.SYNC", "y", 0)] == [
        b"before",
        b"after",
    ]


def test_store_seq_mismatch_raises(tmp_path):
    with tlsm.open(str(tmp_path / "db")) as db:
        layer = im.ImLayer(db, tlsm.DEFAULT_MAX_PAYLOAD_BYTES)
        layer.join(b"r", [b"u"])
        real_last_seq = db.last_seq

        class StaleLastSeq:
            """Reports one entry less than there is, as a second writer would cause."""

            def __getattr__(self, attribute):
                return getattr(db, attribute)

            def last_seq(self, timeline_id):
                return max(real_last_seq(timeline_id) - 1, 0)

        layer._db = StaleLastSeq()
        assert layer.send(b"r", b"u", b"first")[0] == 1
        with pytest.raises(
            im.ImInvariantError, match="engine assigned 2, references carry 1"
        ):
            layer.send(b"r", b"u", b"second")


def test_sync_entry_of_unknown_kind_rejected():
    with pytest.raises(im.ImInvariantError, match="unknown kind 7"):
        im.decode_sync_entry(struct.pack(">BQ", 7, 1) + b"r")


def test_store_entry_round_trip():
    entry = im.encode_store_entry(b"sender", b"\x00payload")
    assert im.decode_store_entry(entry) == (b"sender", b"\x00payload")
