"""Tests of tlsm replay: input parsing, the delivery checker, and whole replays
of tests/data/irc-sample.jsonl.gz into a real server process."""

import gzip
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tlsm.errors import InvalidArgumentError
from tlsm.replay_check import DeliveryChecker, Device
from tlsm.replay_input import load_plan

SAMPLE = Path(__file__).parent / "data" / "irc-sample.jsonl.gz"
REPO = Path(__file__).resolve().parent.parent
SAMPLE_CHANNELS = ["ubuntu-2004-12-25", "ubuntu-2005-02-06"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_log(path, events):
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event) + "\n")
    return path


def message(channel, sender, text):
    return {"channel": channel, "kind": "message", "sender": sender, "text": text}


def system(channel, text):
    return {"channel": channel, "kind": "system", "sender": None, "text": text}


def wait_for_ping(client, process, log_path):
    """Poll PING until the server replies; fail if it exits or never replies."""
    for _ in range(200):
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}, see {log_path}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    pytest.fail(f"server did not answer PING within 200 tries, see {log_path}")


@pytest.fixture
def server(tmp_path):
    """Start `tlsm serve` on a free loopback port; yield a redis-py client."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tlsm.cli", "serve", "--port", str(port),
             "--data", str(tmp_path / "data")],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for_ping(client, process, log_path)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def run_replay(port, *options, file=SAMPLE):
    """Run `python -m tlsm.cli replay`; return the CompletedProcess."""
    command = [sys.executable, "-m", "tlsm.cli", "replay", str(file),
               "--host", "127.0.0.1", "--port", str(port),
               "--no-progress", *options]  # fmt: skip
    return subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600
    )


def port_of(client):
    return client.connection_pool.connection_kwargs["port"]


# Input


def test_plan_counts_sample():
    plan = load_plan(SAMPLE)
    assert plan.events == 1786
    assert plan.message_count == 1500
    assert plan.system_lines == 286
    assert plan.channels == SAMPLE_CHANNELS
    assert len(plan.members) == 94
    assert plan.membership_count == 97
    assert plan.expected_entries() == 40304


def test_plan_joins_at_first_message(tmp_path):
    path = write_log(tmp_path / "log.jsonl.gz", [
        system("a", "x has joined"),
        message("a", "u1", "hi"),
        message("a", "u2", "hello"),
        message("a", "u1", "again"),
        message("b", "u2", "other channel"),
        message("b", "u3", "héllo"),
    ])  # fmt: skip
    plan = load_plan(path)
    assert plan.system_lines == 1
    assert plan.members == ["u1", "u2", "u3"]
    assert list(plan.joins_before) == [1, 1, 0, 1, 1]
    assert plan.member_joins == [[(0, 0)], [(0, 1), (1, 0)], [(1, 1)]]
    assert [list(sends) for sends in plan.conversation_sends] == [[0, 1, 2], [3, 4]]
    assert plan.payloads[4] == "héllo".encode()


def test_plan_threads_become_conversations(tmp_path):
    threaded = message("a", "u2", "in thread")
    threaded["thread"] = "a#1"
    path = write_log(tmp_path / "log.jsonl.gz", [
        message("a", "u1", "hi"), threaded, message("a", "u1", "after"),
    ])  # fmt: skip
    plain = load_plan(path)
    assert plain.conversations == ["a"]
    assert plain.send_count == 3
    plan = load_plan(path, threads=True)
    assert plan.conversations == ["a", "a#1"]
    assert list(plan.send_conversation) == [0, 0, 1, 0]
    assert list(plan.send_message) == [0, 1, 1, 2]
    assert plan.member_joins == [[(0, 0)], [(0, 1), (1, 0)]]
    assert plan.channel_ends == [4]
    assert plan.expected_entries() == 3 + 2 + 1


def test_plan_limit_cuts_messages(tmp_path):
    path = write_log(tmp_path / "log.jsonl.gz", [
        message("a", "u1", "1"), message("a", "u2", "2"), message("b", "u1", "3"),
    ])  # fmt: skip
    plan = load_plan(path, limit=2)
    assert plan.message_count == 2
    assert plan.channels == ["a"]
    assert plan.member_joins == [[(0, 0)], [(0, 1)]]


def test_plan_rejects_split_channel(tmp_path):
    path = write_log(tmp_path / "log.jsonl.gz", [
        message("a", "u1", "1"), message("b", "u1", "2"), message("a", "u1", "3"),
    ])  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="input line 3: channel 'a'"):
        load_plan(path)


def test_plan_rejects_message_without_text(tmp_path):
    event = {"channel": "a", "kind": "message", "sender": "u1", "text": None}
    path = write_log(tmp_path / "log.jsonl.gz", [event])
    with pytest.raises(
        InvalidArgumentError, match="input line 1: message field 'text'"
    ):
        load_plan(path)


# Delivery checker, fed by hand


def make_checker(tmp_path):
    """A checker for two messages in conversation a (u1, u2) and one in b (u1)."""
    path = write_log(tmp_path / "log.jsonl.gz", [
        message("a", "u1", "one"),
        message("a", "u2", "two"),
        message("b", "u1", "three"),
    ])  # fmt: skip
    plan = load_plan(path)
    checker = DeliveryChecker(plan, [b"p/a", b"p/b"], [b"p/u1", b"p/u2"])
    for m in range(plan.message_count):
        checker.send_times[m] = 0.0
    device = Device(0, 1, b"p/u1", plan.member_joins[0])
    return checker, device


ENTRIES_U1 = [
    [b"p/a", 1, b"p/u1", b"one"],
    [b"p/a", 2, b"p/u2", b"two"],
    [b"p/b", 1, b"p/u1", b"three"],
]


def test_checker_accepts_exact_stream(tmp_path):
    checker, device = make_checker(tmp_path)
    checker.process_entries(device, ENTRIES_U1[:2], 1.0, online=True)
    checker.process_entries(device, ENTRIES_U1[2:], 1.0, online=False)
    checker.check_complete(device)
    assert checker.failures == []
    assert checker.entries_online == 2
    assert checker.entries_caught_up == 1


def test_checker_reports_gap(tmp_path):
    checker, device = make_checker(tmp_path)
    checker.process_entries(device, [ENTRIES_U1[2], ENTRIES_U1[1]], 1.0, online=True)
    assert len(checker.failures) == 1
    assert "device 1 of user p/u1" in checker.failures[0]
    assert "payload b'two'" in checker.failures[0]
    assert "position 0, sender p/u1" in checker.failures[0]


def test_checker_accepts_interleaved_conversations(tmp_path):
    checker, device = make_checker(tmp_path)
    order = [ENTRIES_U1[2], ENTRIES_U1[0], ENTRIES_U1[1]]
    checker.process_entries(device, order, 1.0, online=True)
    checker.check_complete(device)
    assert checker.failures == []


def test_checker_reports_repeated_entry(tmp_path):
    checker, device = make_checker(tmp_path)
    checker.process_entries(device, [ENTRIES_U1[0], ENTRIES_U1[0]], 1.0, online=True)
    assert "entry [conversation p/a, store seq 1" in checker.failures[0]
    assert "position 1, sender p/u2" in checker.failures[0]


def test_checker_reports_missing_tail(tmp_path):
    checker, device = make_checker(tmp_path)
    checker.process_entries(device, ENTRIES_U1[:2], 1.0, online=True)
    checker.check_complete(device)
    assert len(checker.failures) == 1
    assert "missing 1 of 3 expected messages" in checker.failures[0]
    assert "conversation p/b, position 0" in checker.failures[0]


def test_checker_reports_extra_entry(tmp_path):
    checker, device = make_checker(tmp_path)
    extra = [b"p/b", 2, b"p/u1", b"four"]
    checker.process_entries(device, ENTRIES_U1 + [extra], 1.0, online=True)
    assert "unexpected entry [conversation p/b, store seq 2" in checker.failures[0]


def test_checker_reports_store_seq_disagreement(tmp_path):
    checker, device = make_checker(tmp_path)
    checker.agree_store_seq(0, 7, "the IM.SEND reply")
    checker.process_entries(device, ENTRIES_U1[:1], 1.0, online=True)
    assert "reports store seq 1, but 7 was seen before" in checker.failures[0]


# Whole replays into a real server


def test_replay_sample_verifies(server):
    result = run_replay(port_of(server), "--prefix", "t/")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1786 events, 1500 messages, 286 system lines skipped" in out
    assert "conversations: 2 (0 threads), members: 94 (97 joins), devices: 188" in out
    assert "1500 sends" in out
    assert "1 retried with the same client message id" in out
    assert "written: 1500 store entries" in out
    assert "verify: OK, 2 histories and 188 devices (80608 entries)" in out
    plan = load_plan(SAMPLE)
    last_sender = plan.members[plan.send_sender[-1]]
    newest = server.execute_command("IM.HISTORY", "t/ubuntu-2005-02-06", "COUNT", 1)
    assert newest == [[750, b"t/" + last_sender.encode(), plan.payloads[-1]]]


def test_replay_limit_and_one_device(server):
    result = run_replay(port_of(server), "--limit", "200", "--devices-per-member", "1",
                        "--window", "3", "--count", "7")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 messages" in result.stdout
    assert "verify: OK, 1 histories" in result.stdout
    # No conversation reached the read fan-out threshold.
    assert (
        "read fan-out path: 0 delivered, no entries read per message" in result.stdout
    )


def test_replay_read_fanout_and_threads(server, tmp_path):
    events = []
    for index in range(60):
        event = message("c", f"u{index % 12}", f"line {index}")
        if index % 3 == 0:
            event["thread"] = f"c#{index % 2}"
        events.append(event)
    path = write_log(tmp_path / "threads.jsonl.gz", events)
    result = run_replay(port_of(server), "--threads", "--fanout-threshold", "5",
                        "--retry-every", "7", file=path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "conversations: 3 (2 threads)" in out
    assert "80 sends" in out
    assert "11 retried" in out
    assert "verify: OK, 3 histories" in out
    read_path = [line for line in out.splitlines() if "read fan-out path" in line]
    assert not read_path[0].startswith("read fan-out path: 0 delivered")


def test_replay_detects_foreign_message(server):
    conversation = "x/" + SAMPLE_CHANNELS[0]
    server.execute_command("IM.JOIN", conversation, "x/intruder")
    server.execute_command("IM.SEND", conversation, "x/intruder", "1", "not in the log")
    result = run_replay(port_of(server), "--prefix", "x/", "--limit", "300")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verify: FAILED" in result.stdout
    assert (
        f"history of {conversation}, entry 0: got store seq 1, sender x/intruder"
        in result.stdout
    )


def test_replay_detects_stray_sync_entry(server):
    # user2702 sends the first message of the sample. An earlier message in
    # another conversation puts an entry in its sync timeline that the replay
    # did not send, so its devices must report it.
    server.execute_command("IM.JOIN", "d/elsewhere", "d/user2702")
    server.execute_command("IM.SEND", "d/elsewhere", "d/user2702", "1", "stray")
    result = run_replay(port_of(server), "--prefix", "d/", "--limit", "100")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verify: FAILED, mismatches: 2; first: device " in result.stdout
    assert (
        "of user d/user2702: unexpected entry [conversation d/elsewhere"
        in result.stdout
    )


def test_replay_detects_repeated_prefix(server):
    first = run_replay(port_of(server), "--prefix", "r/", "--limit", "100")
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_replay(port_of(server), "--prefix", "r/", "--limit", "100")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "returned 0 instead of 1: the user was already a member" in second.stderr


def test_replay_unreachable_server():
    port = free_port()
    result = run_replay(port, "--limit", "10")
    assert result.returncode == 2
    assert f"cannot connect to the tlsm server at 127.0.0.1:{port}" in result.stderr
