"""Server lifecycle: clean shutdown on SIGTERM and SIGINT, restarts on the
same data dir, and kill -9 in the middle of a stream of acknowledged sends."""

import signal
import socket
import threading

import pytest
import redis
from conftest import wait_until_blocked

HANG_LIMIT_SECONDS = 30


def recv_until_closed(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shutdown_then_restart_keeps_data(tlsm_server, signum):
    client = tlsm_server.client()
    pipe = client.pipeline(transaction=False)
    for index in range(2000):
        pipe.execute_command("TL.APPEND", f"t{index % 7}", b"v%d" % index)
    pipe.execute_command("IM.JOIN", "room", "a", "b")
    pipe.execute_command("IM.SEND", "room", "a", b"hi")
    pipe.execute()
    tlsm_server.signal(signum)
    assert tlsm_server.wait() == 0
    log = tlsm_server.log_text()
    assert f"received {signum.name}, shutting down" in log
    assert "tlsm stopped" in log

    tlsm_server.restart()
    client = tlsm_server.client()
    for timeline in range(7):
        entries = client.execute_command("TL.RANGE", f"t{timeline}", "-", "+")
        assert [payload for _, payload in entries] == [
            b"v%d" % index for index in range(timeline, 2000, 7)
        ]
    assert client.execute_command("IM.SYNC", "b", 0) == [[1, b"room", 1, b"a", b"hi"]]
    assert client.execute_command("TL.APPEND", "t0", b"next") == 287


def test_sigterm_wakes_blocked_reader_and_runs_queued_commands(tlsm_server):
    admin = tlsm_server.client()
    with socket.create_connection(("127.0.0.1", tlsm_server.port)) as sock:
        sock.settimeout(HANG_LIMIT_SECONDS)
        sock.sendall(b"CLIENT ID\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(100)
        client_id = int(reply[1:-2])
        sock.sendall(
            b"TL.PULL BLOCK 0 TIMELINES w 0\r\n"
            b"TL.APPEND queued v\r\n"
            b"TL.PULL BLOCK 0 TIMELINES w 0\r\n"
            b"PING\r\n"
        )
        wait_until_blocked(admin, client_id)
        tlsm_server.signal(signal.SIGTERM)
        data = recv_until_closed(sock)
    # Both pulls reply nil because the server is stopping; the write queued
    # behind the first pull still runs and is acknowledged.
    assert data == b"*-1\r\n:1\r\n*-1\r\n+PONG\r\n"
    assert tlsm_server.wait() == 0
    tlsm_server.restart()
    assert tlsm_server.client().execute_command("TL.GET", "queued", 1) == b"v"


def test_second_connection_refused_after_shutdown(tlsm_server):
    port = tlsm_server.port
    assert tlsm_server.terminate() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=HANG_LIMIT_SECONDS)


def test_restart_with_sync_always(tmp_path):
    from conftest import ServerProcess

    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", ["--sync", "always"]
    )
    server.start()
    try:
        client = server.client()
        assert client.execute_command("TL.APPEND", "s", b"durable") == 1
        assert "sync=always" in server.log_text()
        assert server.kill() == -signal.SIGKILL
        server.restart()
        assert server.client().execute_command("TL.GET", "s", 1) == b"durable"
    finally:
        server.stop()


# -- kill -9 during a stream of IM.SEND -----------------------------------------------

MEMBERS = {
    "room-a": ["ann", "ben", "cid"],
    "room-b": ["ben", "dot"],
}


def send_until_killed(port, acknowledged, stop):
    """Send messages round-robin until the connection fails; record each ack."""
    client = redis.Redis(host="127.0.0.1", port=port)
    index = 0
    rooms = list(MEMBERS)
    try:
        while not stop.is_set():
            room = rooms[index % len(rooms)]
            sender = MEMBERS[room][index % len(MEMBERS[room])]
            payload = b"msg-%d" % index
            store_seq = client.execute_command("IM.SEND", room, sender, payload)
            acknowledged.append((room, store_seq, sender.encode(), payload))
            index += 1
    except (redis.ConnectionError, ConnectionError):
        pass
    finally:
        client.close()


@pytest.mark.slow
def test_kill_9_during_sends_loses_no_acknowledged_message(tlsm_server):
    setup = tlsm_server.client()
    for room, users in MEMBERS.items():
        setup.execute_command("IM.JOIN", room, *users)
    acknowledged = []
    stop = threading.Event()
    sender = threading.Thread(
        target=send_until_killed, args=(tlsm_server.port, acknowledged, stop)
    )
    sender.start()
    for _ in range(HANG_LIMIT_SECONDS * 100):
        if len(acknowledged) >= 500:
            break
        threading.Event().wait(0.01)
    assert tlsm_server.kill() == -signal.SIGKILL
    stop.set()
    sender.join(HANG_LIMIT_SECONDS)
    assert len(acknowledged) >= 500

    tlsm_server.restart()
    client = tlsm_server.client()
    for room, users in MEMBERS.items():
        acked = {
            seq: (sender, payload)
            for r, seq, sender, payload in acknowledged
            if r == room
        }
        history = client.execute_command("IM.HISTORY", room, "COUNT", len(acked) + 10)
        stored = {seq: (sender, payload) for seq, sender, payload in history}
        # Every acknowledged send is stored as sent. At most one more send
        # (written, then killed before its reply) may be present.
        for seq, message in acked.items():
            assert stored.get(seq) == message, f"{room} seq {seq}"
        assert len(stored) - len(acked) in (0, 1)
        # Each member's sync timeline references exactly the stored messages,
        # because a send writes store and references in one atomic batch.
        for user in users:
            synced = client.execute_command("IM.SYNC", user, 0, "COUNT", 100000)
            referenced = [m[2] for m in synced if m[1] == room.encode()]
            assert referenced == sorted(stored), f"{user} in {room}"
            for message in synced:
                if message[1] == room.encode():
                    assert stored[message[2]] == (message[3], message[4])
        next_seq = client.execute_command("IM.SEND", room, users[0], b"after restart")
        assert next_seq == max(stored) + 1
        assert next_seq > max(acked)


def test_sync_always_groups_fsyncs(tmp_path):
    import threading

    from conftest import ServerProcess

    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", ["--sync", "always"]
    )
    server.start()
    try:
        acked = []

        def writer(index):
            client = server.client()
            pipe = client.pipeline(transaction=False)
            for i in range(50):
                pipe.execute_command("TL.APPEND", f"g{index}", b"%d" % i)
            acked.append(pipe.execute())

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(map(list, acked)) == [list(range(1, 51))] * 20
        stats = server.client().info("stats")
        # 1,000 acknowledged writes; a group fsync covers a whole pipeline or more.
        assert 0 < stats["group_commits"] <= 200
        assert server.kill() == -signal.SIGKILL
        server.restart()
        client = server.client()
        for index in range(20):
            assert client.execute_command("TL.LAST", f"g{index}") == 50
    finally:
        server.stop()


def test_restart_with_sync_periodic(tmp_path):
    from conftest import ServerProcess

    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        ["--sync", "periodic", "--sync-interval-ms", "20"],
    )
    server.start()
    try:
        client = server.client()
        assert client.execute_command("TL.APPEND", "p", b"kept") == 1
        assert "sync=periodic" in server.log_text()
        assert server.kill() == -signal.SIGKILL
        server.restart()
        assert server.client().execute_command("TL.GET", "p", 1) == b"kept"
    finally:
        server.stop()


def test_damaged_table_gets_corruption_reply(tmp_path):
    import os

    from conftest import ServerProcess

    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        client = server.client()
        pipe = client.pipeline(transaction=False)
        for index in range(500):
            pipe.execute_command("TL.APPEND", "damaged", b"x" * 100)
        pipe.execute()
        assert server.terminate() == 0
        (table,) = [n for n in os.listdir(server.data_dir) if n.endswith(".sst")]
        data = bytearray((server.data_dir / table).read_bytes())
        data[50] ^= 0xFF
        (server.data_dir / table).write_bytes(bytes(data))
        server.restart()
        client = server.client()
        with pytest.raises(
            redis.ResponseError, match="^CORRUPTION .*checksum mismatch"
        ):
            client.execute_command("TL.RANGE", "damaged", "-", "+")
        assert client.execute_command("PING") is True
        assert "internal error" not in server.log_text()
    finally:
        server.stop()


def test_http_request_closes_connection(shared_server):
    with socket.create_connection(("127.0.0.1", shared_server.port)) as sock:
        sock.settimeout(HANG_LIMIT_SECONDS)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: example\r\n\r\n")
        assert recv_until_closed(sock) == b""
    assert shared_server.client().execute_command("PING") is True


def test_mid_log_damage_needs_point_in_time_flag(tmp_path):
    import os

    from conftest import ServerProcess

    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        client = server.client()
        for index in range(40):
            client.execute_command("TL.APPEND", "w", b"v%d" % index)
        assert server.kill() == -signal.SIGKILL
        (log_name,) = [n for n in os.listdir(server.data_dir) if n.endswith(".log")]
        path = server.data_dir / log_name
        data = bytearray(path.read_bytes())
        length = int.from_bytes(data[4:8], "little")
        data[8 + length - 1] ^= 0xFF  # last byte of the first record
        path.write_bytes(bytes(data))
        server.process = None
        with pytest.raises(Exception):
            server.start()
        assert "followed by intact records" in server.log_text()
        server.extra_args = ["--wal-recovery", "point_in_time"]
        server.start()
        assert server.client().execute_command("TL.LAST", "w") == 0
    finally:
        server.stop()
