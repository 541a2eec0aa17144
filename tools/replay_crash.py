"""Kill the server with SIGKILL in the middle of a replay, restart it, and check.

    python tools/replay_crash.py FILE [--limit N] [--kill-after-acks K]
                                 [--threads] [--fanout-threshold T] [--data DIR]

Starts `tlsm serve` on a free loopback port, runs `tlsm replay FILE` against
it with an acknowledgement log, and kills the server with SIGKILL once the
log contains K acknowledged IM.SENDs. It then restarts the server on the same
data directory and checks through it that:

- each conversation's store timeline is a prefix of its messages in input
  order, 1, 2, 3, ... with no gap, and holds every acknowledged send with
  its sender and payload;
- each member whose first send in a conversation was acknowledged received,
  through IM.SYNC from the start, every acknowledged message of that
  conversation from that send on, once each and in store order;
- a new send to each conversation gets the seq after the last stored one.

Exits 0 when everything holds, 1 naming the first failure, 2 when the run
could not be set up (for example the replay ended before the kill point).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import redis

from tlsm.replay_input import load_plan

PREFIX = "crash/"
_SERVING = re.compile(r"serving on [\d.]+:(\d+)")


class CheckFailed(Exception):
    pass


def start_server(data_dir, log_path):
    """Start `tlsm serve` on a free port; return (process, port)."""
    log_file = open(log_path, "w")  # noqa: SIM115 - the server process owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "tlsm.cli", "serve", "--port", "0", "--data", data_dir],
        stderr=log_file,
        stdout=log_file,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log_path) as f:
            ports = _SERVING.findall(f.read())
        if ports:
            return process, int(ports[-1])
        if process.poll() is not None:
            raise SystemExit(
                f"tlsm serve exited with {process.returncode}; see {log_path}"
            )
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"tlsm serve did not start within 60 s; see {log_path}")


def count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def replay_until_killed(args, work, port, server):
    """Run the replay and SIGKILL the server after args.kill_after_acks acks."""
    ack_path = os.path.join(work, "acks.tsv")
    command = [
        sys.executable, "-m", "tlsm.cli", "replay", args.file, "--port", str(port),
        "--prefix", PREFIX, "--no-progress", "--ack-log", ack_path,
    ]  # fmt: skip
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.threads:
        command.append("--threads")
    if args.fanout_threshold:
        command += ["--fanout-threshold", str(args.fanout_threshold)]
    with open(os.path.join(work, "replay.log"), "w") as output:
        replay = subprocess.Popen(command, stdout=output, stderr=output)
        while count_lines(ack_path) < args.kill_after_acks:
            if replay.poll() is not None:
                server.kill()
                raise SystemExit(
                    f"the replay ended (exit {replay.returncode}) before "
                    f"{args.kill_after_acks} acknowledged sends; lower --kill-after-acks"
                )
            time.sleep(0.002)
        server.send_signal(signal.SIGKILL)
        server.wait()
        replay.wait(timeout=120)
    acks = {}
    with open(ack_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].strip().isdigit():
                acks[int(parts[0])] = int(parts[1])
    return acks, replay.returncode


def read_history(client, conversation):
    """Return [(store_seq, sender, payload)] of a conversation, oldest first."""
    entries = []
    before = None
    while True:
        command = ["IM.HISTORY", conversation, "COUNT", 1000]
        if before is not None:
            command[2:2] = ["BEFORE", before]
        page = client.execute_command(*command)
        if not page:
            return entries[::-1]
        entries.extend((int(e[0]), e[1], e[2]) for e in page)
        before = int(page[-1][0])


def read_sync(client, user):
    """Return every (conversation, store_seq) IM.SYNC delivers to user from the start."""
    delivered = []
    cursor = "-"
    while True:
        reply = client.execute_command("IM.SYNC", user, cursor, "COUNT", 1000)
        # A map under RESP3 (redis-py's default may be either), pairs under RESP2.
        fields = (
            reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
        )
        delivered.extend((m[0], int(m[1])) for m in fields[b"messages"])
        cursor = fields[b"cursor"]
        if not int(fields[b"has_more"]):
            return delivered


def check_store(client, plan, acks, ids):
    """Check every touched conversation's store; return {c: stored count}."""
    touched = sorted({plan.send_conversation[s] for s in acks})
    stored = {}
    for c in touched:
        history = read_history(client, ids["conversation"][c])
        sends = plan.conversation_sends[c]
        if [seq for seq, _, _ in history] != list(range(1, len(history) + 1)):
            raise CheckFailed(
                f"conversation {plan.conversations[c]}: store seqs have a gap"
            )
        for seq, sender, payload in history:
            s = sends[seq - 1]
            expected = (
                ids["user"][plan.send_sender[s]],
                plan.payloads[plan.send_message[s]],
            )
            if (sender, payload) != expected:
                raise CheckFailed(
                    f"conversation {plan.conversations[c]} seq {seq}: stored message "
                    "differs from the input"
                )
        for position, s in enumerate(sends):
            if s in acks and acks[s] != position + 1:
                raise CheckFailed(
                    f"send {s} was acknowledged as seq {acks[s]}, not {position + 1}"
                )
            if s in acks and acks[s] > len(history):
                raise CheckFailed(
                    f"acknowledged send {s} (seq {acks[s]}) missing from "
                    f"{plan.conversations[c]} after restart"
                )
        stored[c] = len(history)
    return stored


def check_sync(client, plan, acks, ids):
    """Check each member's deliveries against the acknowledged sends; return the count."""
    checked = 0
    first_send = {}
    for s in sorted(acks):
        key = (plan.send_sender[s], plan.send_conversation[s])
        first_send.setdefault(key, s)
    by_member = {}
    for (member, c), s in first_send.items():
        by_member.setdefault(member, []).append((c, acks[s]))
    conversation_index = {cid: c for c, cid in enumerate(ids["conversation"])}
    acked_by_conversation = {}
    for s, seq in acks.items():
        acked_by_conversation.setdefault(plan.send_conversation[s], set()).add(seq)
    for member, joined in by_member.items():
        delivered = {}
        for conversation, seq in read_sync(client, ids["user"][member]):
            delivered.setdefault(conversation_index.get(conversation), []).append(seq)
        for c, join_seq in joined:
            seqs = delivered.get(c, [])
            if seqs != sorted(set(seqs)):
                raise CheckFailed(
                    f"member {plan.members[member]} got {plan.conversations[c]} "
                    "out of order or twice"
                )
            owed = {seq for seq in acked_by_conversation[c] if seq >= join_seq}
            missing = owed - set(seqs)
            if missing:
                raise CheckFailed(
                    f"member {plan.members[member]} never received acknowledged "
                    f"seqs {sorted(missing)[:5]} of {plan.conversations[c]}"
                )
            checked += len(owed)
    return checked


def check_continuation(client, plan, acks, ids, stored):
    last_sender = {}
    for s in sorted(acks):
        last_sender[plan.send_conversation[s]] = plan.send_sender[s]
    for c, count in stored.items():
        seq = client.execute_command(
            "IM.SEND", ids["conversation"][c], ids["user"][last_sender[c]],
            f"after-crash-{c}", b"after the crash",
        )  # fmt: skip
        if seq != count + 1:
            raise CheckFailed(
                f"{plan.conversations[c]}: first send after restart got seq {seq}, "
                f"expected {count + 1}"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="chat log as gzip-compressed JSON lines")
    parser.add_argument("--limit", type=int, help="replay only the first N messages")
    parser.add_argument(
        "--kill-after-acks", type=int, default=2000,
        help="acknowledged sends before the SIGKILL (default: 2000)",
    )  # fmt: skip
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--fanout-threshold", type=int)
    parser.add_argument("--data", help="data directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tlsm-replay-crash-")
    data_dir = args.data or os.path.join(work, "data")
    server, port = start_server(data_dir, os.path.join(work, "server-1.log"))
    acks, replay_status = replay_until_killed(args, work, port, server)
    print(
        f"killed the server after {len(acks)} acknowledged sends; replay exited {replay_status}"
    )
    server, port = start_server(data_dir, os.path.join(work, "server-2.log"))
    try:
        plan = load_plan(args.file, limit=args.limit, threads=args.threads)
        ids = {
            "conversation": [(PREFIX + name).encode() for name in plan.conversations],
            "user": [(PREFIX + name).encode() for name in plan.members],
        }
        client = redis.Redis(port=port)
        stored = check_store(client, plan, acks, ids)
        delivered = check_sync(client, plan, acks, ids)
        check_continuation(client, plan, acks, ids, stored)
    except CheckFailed as exc:
        print(f"FAILED: {exc} (server log and data in {work})")
        return 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(
        f"ok: {len(acks)} acknowledged sends in {len(stored)} conversations present "
        f"after restart ({sum(stored.values())} stored, {delivered} owed deliveries "
        "checked), and seqs continue above them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
