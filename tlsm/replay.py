"""``tlsm replay``: replay a real chat log into a tlsm server and verify it.

How the replay runs:

* Sending. Channels are replayed one after the other in input order, all on
  one connection, with up to ``--window`` IM.SEND commands in flight. One
  connection keeps each conversation's messages in send order without any
  waiting. A sender's IM.JOIN is pipelined right before its first message in
  a conversation, and with ``--fanout-threshold`` an IM.POLICY right before
  a conversation's first join. With ``--threads`` each reply thread is a
  conversation too, and a thread message is sent to its channel and then to
  its thread. Every IM.SEND carries a client message id, and every
  ``--retry-every``-th send is sent twice: the retry must return the same
  store seq. Send latency is the time from writing IM.SEND to parsing its
  reply.
* Devices. Each member has ``--devices-per-member`` devices, each with its
  own checkpoint. A device is online from its member's join until the last
  message of that channel is stored: it then sits in
  ``IM.SYNC user cursor COUNT c BLOCK ms`` on a connection taken from a
  pool of at most ``--max-connections``. When the channel ends the device goes
  offline after its current call returns, and its connection goes back to
  the pool. If the pool is exhausted a device waits for a connection, and it
  catches up from its cursor once it has one. After the last send every
  device, online before or not, drains its messages from its cursor
  (the final catch-up). Keeping all 30,000 devices of the full log online
  would take as many connections, which is why devices come and go with
  their channel.
* Delivery latency is the receive time of an IM.SYNC page minus the time the
  message's IM.SEND was written. It is recorded only for entries a device
  received while online that were sent after it came online, so catch-up
  after offline time does not count.
* Verification. Each device's entries are compared while they arrive with
  its expected stream (see replay_check), and a reply that reports lost
  entries (``truncated``) fails the replay. At the end, every conversation's
  history is read back page by page with IM.HISTORY and compared with the
  conversation's sends, and every device must have reached the end of its
  stream.
* Cost. IM.STATS is read before and after; the summary gives the entries
  and bytes written and the entries read per delivered message, for the
  write fan-out and the read fan-out path.

Names on the wire are ``<prefix><channel>`` for conversations and
``<prefix><sender>`` for users. The default prefix is a run id made of the
start time and random hex digits, so a replay into a data directory that
already contains an earlier replay uses fresh conversations and sync
timelines.
Exit status: 0 when everything matches, 1 when verification fails, and 2 when
the input is invalid or the server is unreachable or returns an error.
"""

import array
import asyncio
import functools
import logging
import secrets
import sys
import time

import hiredis
from tqdm import tqdm

from . import argtypes
from .errors import InvalidArgumentError
from .replay_check import (
    DeliveryChecker,
    Device,
)
from .replay_client import ConnectionPool, ServerReplyError, connect
from .replay_input import load_plan
from .replay_report import (
    DRAIN_CONNECTIONS,
    EXIT_ERROR,
    EXIT_MISMATCH,
    ReportMixin,
)

logger = logging.getLogger(__name__)


def add_arguments(parser):
    """Add the replay options to an argparse parser."""
    parser.add_argument("file", help="chat log as gzip-compressed JSON lines")
    parser.add_argument(
        "--host", default="127.0.0.1", help="server address (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=7379, help="server port (default: 7379)"
    )
    parser.add_argument(
        "--limit",
        type=argtypes.non_negative,
        default=None,
        help="replay only the first N messages",
    )
    parser.add_argument(
        "--devices-per-member",
        type=argtypes.positive,
        default=2,
        help="simulated devices per member, each with its own checkpoint",
    )
    parser.add_argument(
        "--window",
        type=argtypes.positive,
        default=128,
        help="IM.SEND commands in flight",
    )
    parser.add_argument(
        "--count",
        type=argtypes.positive,
        default=1000,
        help="IM.SYNC page size (COUNT)",
    )
    parser.add_argument(
        "--block-ms",
        type=argtypes.positive,
        default=250,
        help="IM.SYNC BLOCK timeout of online devices, in milliseconds",
    )
    parser.add_argument(
        "--max-connections",
        type=argtypes.positive,
        default=512,
        help="connections for online devices, so at most this many are online",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="prepended to every conversation and user name "
        "(default: a run id such as 20250101T120000-1a2b/)",
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="also replay each reply thread as its own conversation",
    )
    parser.add_argument(
        "--fanout-threshold",
        type=argtypes.positive,
        default=None,
        help="set this fan-out threshold on every conversation with IM.POLICY "
        "(default: the server's --fanout-threshold)",
    )
    parser.add_argument(
        "--retry-every",
        type=argtypes.non_negative,
        default=1000,
        help="send every Nth IM.SEND twice with the same client message id and "
        "check both replies agree; 0 turns retries off (default: 1000)",
    )
    parser.add_argument(
        "--ack-log",
        metavar="PATH",
        help="write one line per acknowledged IM.SEND (send number and store seq, "
        "tab-separated) to PATH as each reply arrives, so a crash test can check "
        "what the server acknowledged",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip comparing entries and histories with the input",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )


def run(args):
    """Run a replay as configured by ``add_arguments``; return the exit status."""
    prefix = args.prefix
    if prefix is None:
        prefix = time.strftime("%Y%m%dT%H%M%S-") + secrets.token_hex(2) + "/"
    try:
        plan = load_plan(args.file, limit=args.limit, threads=args.threads)
    except (InvalidArgumentError, OSError) as exc:
        print(f"tlsm replay: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    replay = _Replay(args, plan, prefix)
    try:
        return asyncio.run(replay.run())
    except ConnectionError as exc:
        print(f"tlsm replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ServerReplyError as exc:
        print(f"tlsm replay: server at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ReplayAborted as exc:
        print(f"tlsm replay: {exc}", file=sys.stderr)
        return exc.exit_status


def _stats_map(reply):
    """Return IM.STATS (a RESP2 field/value array) as {name: int}."""
    return {name.decode(): int(value) for name, value in zip(reply[::2], reply[1::2])}


class ReplayAborted(Exception):
    """Raised when a replay stops early. ``exit_status`` is what run() returns."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class _Replay(ReportMixin):
    """State of one replay run; see the module docstring for the design."""

    def __init__(self, args, plan, prefix):
        self.args = args
        self.plan = plan
        self.prefix = prefix
        encoded = prefix.encode("utf-8")
        self.conversation_ids = [
            encoded + c.encode("utf-8") for c in plan.conversations
        ]
        self.user_ids = [encoded + u.encode("utf-8") for u in plan.members]
        self.checker = DeliveryChecker(
            plan, self.conversation_ids, self.user_ids, verify=not args.no_verify
        )
        self.devices = [
            [
                Device(member, number, self.user_ids[member], joins)
                for number in range(1, args.devices_per_member + 1)
            ]
            for member, joins in enumerate(plan.member_joins)
        ]
        # Conversation index each member is online for, or -1 when offline.
        self.member_online_channel = [-1] * len(plan.members)
        self.sessions = set()
        self.replied = 0
        self.retries = 0
        self.stats_before = {}
        # Line-buffered, so each acknowledged send is on disk before the next.
        self.ack_log = (
            open(args.ack_log, "w", buffering=1) if args.ack_log else None  # noqa: SIM115
        )
        self.stats_after = {}
        self.send_latencies = array.array("d")
        # First reason to stop the replay, and its exit status.
        self.fatal = None
        self.fatal_status = EXIT_ERROR
        self.crash = None
        self.all_replied = None
        self.window = None
        # Position of each send in its conversation.
        self._send_positions = array.array("i", bytes(4 * plan.send_count))
        for sends in plan.conversation_sends:
            for position, s in enumerate(sends):
                self._send_positions[s] = position

    async def run(self):
        args = self.args
        sender = await connect(args.host, args.port)
        await sender.call("PING")
        self.pool = ConnectionPool(args.host, args.port, args.max_connections)
        self.window = asyncio.Semaphore(args.window)
        self.all_replied = asyncio.Event()
        if self.plan.send_count == 0:
            self.all_replied.set()
        self.stats_before = _stats_map(await sender.call("IM.STATS"))
        progress = tqdm(
            total=self.plan.send_count,
            unit="msg",
            desc="sent",
            disable=True if args.no_progress else None,
        )
        ticker = asyncio.create_task(self._update_progress(progress))
        try:
            started = time.perf_counter()
            await self._send_all(sender)
            await self.all_replied.wait()
            sent_at = time.perf_counter()
            await self._stop_sessions()
            self._raise_fatal()
            await self._drain_all()
            drained_at = time.perf_counter()
        finally:
            ticker.cancel()
            self._show_progress(progress)
            progress.close()
            self.pool.close()
            if self.ack_log is not None:
                self.ack_log.close()
        self.stats_after = _stats_map(await sender.call("IM.STATS"))
        if not args.no_verify:
            await self._verify_histories(sender)
            for devices in self.devices:
                for device in devices:
                    self.checker.check_complete(device)
        sender.close()
        self._print_summary(sent_at - started, drained_at - started)
        return self._exit_status()

    # Sending

    async def _send_all(self, sender):
        plan = self.plan
        policies_sent = set()
        retry_every = self.args.retry_every
        for channel in range(len(plan.channels)):
            for s in range(plan.channel_starts[channel], plan.channel_ends[channel]):
                self._raise_fatal()
                await self.window.acquire()
                member = plan.send_sender[s]
                c = plan.send_conversation[s]
                conversation = self.conversation_ids[c]
                if self.args.fanout_threshold and c not in policies_sent:
                    policies_sent.add(c)
                    sender.send(
                        (b"IM.POLICY", conversation, b"FANOUT-THRESHOLD",
                         self.args.fanout_threshold),
                        self._on_policy_reply,
                    )  # fmt: skip
                if plan.joins_before[s]:
                    sender.send(
                        (b"IM.JOIN", conversation, self.user_ids[member]),
                        functools.partial(self._on_join_reply, c, member),
                    )
                    if plan.conversation_is_channel[c]:
                        self._go_online(member, channel)
                command = (
                    b"IM.SEND", conversation, self.user_ids[member], b"%d" % s,
                    plan.payloads[plan.send_message[s]],
                )  # fmt: skip
                self.checker.send_times[s] = time.perf_counter()
                sender.send(command, functools.partial(self._on_send_reply, s))
                if retry_every and s % retry_every == retry_every - 1:
                    self.retries += 1
                    sender.send(command, functools.partial(self._on_retry_reply, s))

    def _on_policy_reply(self, reply):
        if isinstance(reply, (hiredis.ReplyError, ConnectionError)):
            self._set_fatal(f"IM.POLICY failed: {reply}")

    def _on_join_reply(self, conversation, member, reply):
        if isinstance(reply, (hiredis.ReplyError, ConnectionError)):
            self._set_fatal(f"IM.JOIN failed: {reply}")
        elif reply != 1:
            # Every later check would fail too, so stop at the cause.
            self._set_fatal(
                f"IM.JOIN {self.conversation_ids[conversation].decode()} "
                f"{self.user_ids[member].decode()} returned {reply!r} instead of 1: "
                f"the user was already a member; use a --prefix other than "
                f"{self.prefix!r}",
                EXIT_MISMATCH,
            )

    def _on_send_reply(self, s, reply):
        now = time.perf_counter()
        self.window.release()
        if isinstance(reply, (hiredis.ReplyError, ConnectionError)):
            self._set_fatal(
                f"IM.SEND of {self.checker.describe_send(s)} failed: {reply}"
            )
            self.all_replied.set()
            return
        self.send_latencies.append(now - self.checker.send_times[s])
        if self.ack_log is not None:
            self.ack_log.write(f"{s}\t{reply}\n")
        self.checker.agree_store_seq(s, reply, "the IM.SEND reply")
        self._check_store_order(s, reply)
        self.replied += 1
        channel = self.plan.conversation_channel[self.plan.send_conversation[s]]
        if s + 1 == self.plan.channel_ends[channel]:
            self._end_channel(channel)
        if self.replied == self.plan.send_count:
            self.all_replied.set()

    def _on_retry_reply(self, s, reply):
        if isinstance(reply, (hiredis.ReplyError, ConnectionError)):
            self._set_fatal(
                f"retried IM.SEND of {self.checker.describe_send(s)} failed: {reply}"
            )
            return
        self.checker.agree_store_seq(s, reply, "the retried IM.SEND reply")

    def _check_store_order(self, s, store_seq):
        plan = self.plan
        sends = plan.conversation_sends[plan.send_conversation[s]]
        position = self._send_positions[s]
        if position == 0:
            return
        previous = self.checker.store_seqs[sends[position - 1]]
        if previous is not None and store_seq <= previous:
            self.checker.fail(
                f"{self.checker.describe_send(s)}: store seq {store_seq} does "
                f"not exceed {previous} of the send before it"
            )

    def _set_fatal(self, message, exit_status=EXIT_ERROR):
        if self.fatal is None:
            self.fatal = message
            self.fatal_status = exit_status

    def _raise_fatal(self):
        if self.crash is not None:
            raise self.crash
        if self.fatal is not None:
            raise ReplayAborted(self.fatal, self.fatal_status)

    # Online devices

    def _go_online(self, member, channel):
        self.member_online_channel[member] = channel
        now = time.perf_counter()
        for device in self.devices[member]:
            if device.running:
                continue
            device.running = True
            device.online_since = now
            task = asyncio.create_task(self._online_session(device))
            self.sessions.add(task)
            task.add_done_callback(self._on_session_done)

    def _on_session_done(self, task):
        self.sessions.discard(task)
        # An unexpected exception is a bug in the replay. Keep the first one
        # so that the main task re-raises it with its traceback.
        failed = not task.cancelled() and task.exception() is not None
        if failed and self.crash is None:
            self.crash = task.exception()

    def _end_channel(self, channel):
        online = self.member_online_channel
        plan = self.plan
        start, end = plan.channel_starts[channel], plan.channel_ends[channel]
        for s in range(start, end):
            member = plan.send_sender[s]
            if plan.joins_before[s] and online[member] == channel:
                online[member] = -1

    async def _online_session(self, device):
        args = self.args
        online = self.member_online_channel
        connection = None
        try:
            connection = await self.pool.acquire()
            while online[device.member] >= 0 and self.fatal is None:
                page = await connection.call(
                    b"IM.SYNC", device.user_id, device.checkpoint,
                    b"COUNT", args.count, b"BLOCK", args.block_ms,
                )  # fmt: skip
                if page is not None:
                    self._take_page(device, page, online=True)
        except (ConnectionError, ServerReplyError) as exc:
            self._set_fatal(f"IM.SYNC for {device.name} failed: {exc}")
        finally:
            # No await between the loop test and this point, so a member that
            # comes back online either keeps this session or starts a new one.
            device.running = False
            device.online_since = None
            if connection is not None:
                self.pool.release(connection)

    async def _stop_sessions(self):
        for member in range(len(self.member_online_channel)):
            self.member_online_channel[member] = -1
        if self.sessions:
            await asyncio.gather(*self.sessions)

    def _take_page(self, device, page, online):
        """Check one IM.SYNC reply (RESP2 field/value array); return has_more."""
        fields = dict(zip(page[::2], page[1::2]))
        device.checkpoint = fields[b"cursor"]
        if fields[b"truncated"]:
            self.checker.fail(
                f"{device.name}: IM.SYNC reported lost entries {fields[b'truncated']!r}"
            )
        messages = fields[b"messages"]
        if messages:
            self.checker.process_entries(device, messages, time.perf_counter(), online)
        return bool(fields[b"has_more"])

    # Final catch-up

    async def _drain_all(self):
        queue = [device for devices in self.devices for device in devices]
        queue.reverse()
        workers = [
            asyncio.create_task(self._drain_worker(queue))
            for _ in range(min(DRAIN_CONNECTIONS, len(queue)))
        ]
        await asyncio.gather(*workers)

    async def _drain_worker(self, queue):
        connection = await connect(self.args.host, self.args.port)
        count = self.args.count
        try:
            while queue:
                device = queue.pop()
                while True:
                    page = await connection.call(
                        b"IM.SYNC", device.user_id, device.checkpoint, b"COUNT", count
                    )
                    if not self._take_page(device, page, online=False):
                        break
        finally:
            connection.close()
