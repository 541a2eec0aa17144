"""Write fan-out against read fan-out on the Ubuntu IRC data.

Workload: the channels (and, with --threads, the reply threads) of a
chat log in the replay format, sent through tlsm.im.ImLayer on an embedded
engine with sync="none". Each sender joins a conversation right before its
first message there. After every --pull-every messages of a conversation,
every member pulls its sync stream with IM.SYNC's reader (COUNT 1000) from
its own cursor, so each message is delivered once per member.

The log is run twice on fresh data directories: once with every
conversation on write fan-out (threshold above every group) and once with
every conversation above --read-threshold members on read fan-out. Per
path it prints: send time, sync time, entries and bytes written, entries
read and the cost per delivered message.

    python bench/im_fanout.py ubuntu-irc-train.jsonl.gz --channels 12 --threads
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time

import tlsm
from tlsm.im import ImLayer
from tlsm.im_format import EMPTY_CURSOR
from tlsm.im_sync import SyncReader


def load(path, channel_limit, threads):
    """Return [(conversation, [(sender, payload)])] in log order."""
    conversations = {}
    channels = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            if event["kind"] != "message":
                continue
            channel = event["channel"]
            if channel not in conversations:
                if len(channels) == channel_limit:
                    break
                channels.append(channel)
                conversations[channel] = []
            message = (event["sender"].encode(), event["text"].encode())
            conversations[channel].append(message)
            thread = event.get("thread")
            if threads and thread:
                conversations.setdefault("t/" + thread, []).append(message)
    return list(conversations.items())


def run(conversations, threshold, pull_every):
    directory = tempfile.mkdtemp(prefix="im-fanout-")
    try:
        with tlsm.open(directory, sync="none") as db:
            layer = ImLayer(db, 1 << 20, fanout_threshold=threshold)
            cursors = {}
            send_seconds = sync_seconds = 0.0
            delivered = 0
            sent = 0
            for name, messages in conversations:
                conversation = name.encode()
                members = []
                for index, (sender, payload) in enumerate(messages):
                    started = time.perf_counter()
                    if sender not in cursors or sender not in members:
                        layer.join(conversation, [sender])
                        members.append(sender)
                        cursors.setdefault(sender, EMPTY_CURSOR)
                    sent += 1
                    layer.send(conversation, sender, payload, b"%d" % sent)
                    send_seconds += time.perf_counter() - started
                    last = index + 1 == len(messages)
                    if (index + 1) % pull_every == 0 or last:
                        started = time.perf_counter()
                        for user in members:
                            while True:
                                result = SyncReader(layer, user, cursors[user]).run(1000)
                                cursors[user] = result.cursor
                                delivered += len(result.messages)
                                if not result.has_more:
                                    break
                        sync_seconds += time.perf_counter() - started
            return layer.stats, send_seconds, sync_seconds, delivered
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report(label, stats, send_seconds, sync_seconds, delivered):
    reads = (
        stats["sync_entries_read"]
        + stats["store_entries_read_write_fanout"]
        + stats["store_entries_read_read_fanout"]
    )
    written = stats["store_entries_written"] + stats["sync_entries_written"]
    written_bytes = stats["store_bytes_written"] + stats["sync_bytes_written"]
    print(
        f"{label}: sends {stats['sends']} in {send_seconds:.2f} s "
        f"({stats['sends'] / send_seconds:,.0f}/s); entries written {written:,} "
        f"({written_bytes:,} bytes, {stats['markers_written']} markers); "
        f"delivered {delivered:,} in {sync_seconds:.2f} s "
        f"({sync_seconds / max(delivered, 1) * 1e6:.1f} us each); "
        f"entries read per delivered message {reads / max(delivered, 1):.2f}; "
        f"total {send_seconds + sync_seconds:.2f} s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--channels", type=int, default=20, help="channels to replay")
    parser.add_argument("--threads", action="store_true", help="add reply threads")
    parser.add_argument("--pull-every", type=int, default=50)
    parser.add_argument("--read-threshold", type=int, default=50)
    args = parser.parse_args()
    conversations = load(args.file, args.channels, args.threads)
    sizes = sorted(len({s for s, _ in m}) for _, m in conversations)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python "
        f"{platform.python_version()}; tlsm {tlsm.__version__}"
    )
    print(
        f"workload: {len(conversations)} conversations, "
        f"{sum(len(m) for _, m in conversations)} messages, members min "
        f"{sizes[0]} median {sizes[len(sizes) // 2]} max {sizes[-1]}, pull every "
        f"{args.pull_every} messages"
    )
    report("write fan-out", *run(conversations, 1 << 30, args.pull_every))
    report(
        f"read fan-out above {args.read_threshold}",
        *run(conversations, args.read_threshold, args.pull_every),
    )


if __name__ == "__main__":
    main()
