"""Verification state of a replay: what each device received, and what it should have.

A device holds, per conversation its member joined, a position in that
conversation's sends (``ReplayPlan.conversation_sends``), starting at the
join. Each IM.SYNC entry ``[conversation, store_seq, sender, payload]``
must match the next expected send of its conversation by sender, payload
and store seq. Conversations interleave freely in a sync stream, but inside
one conversation the sends must arrive in order, each once.

Store seqs come from two sides that can arrive in either order: the IM.SEND
reply on the sender connection and the first IM.SYNC entry on a device
connection. Whichever comes first fixes ``store_seqs[s]`` and every later
report must agree with it.
"""

import array

import numpy as np

from .replay_input import ReplayPlan


class Device:
    """One simulated client of a member, with its own sync cursor."""

    __slots__ = (
        "checkpoint",
        "member",
        "mismatch",
        "number",
        "online_since",
        "positions",
        "received",
        "running",
        "user_id",
    )

    def __init__(self, member, number, user_id, joins):
        self.member = member
        self.number = number
        self.user_id = user_id
        self.checkpoint = b"-"
        # conversation index -> position of the next expected send in it
        self.positions = dict(joins)
        # perf_counter() when the current online session began, or None.
        self.online_since = None
        self.running = False
        self.received = 0
        self.mismatch = None

    @property
    def name(self):
        return f"device {self.number} of user {self.user_id.decode()}"


def format_name(name):
    """Decode a wire name for a message. IM.SYNC sends nil for a missing entry."""
    return "nil" if name is None else name.decode("utf-8", "backslashreplace")


def format_payload(data, limit=60):
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DeliveryChecker:
    """Compares device entries and send replies with a ReplayPlan.

    ``conversation_ids`` and ``user_ids`` are the wire names (bytes) of the
    plan's conversations and members. ``send_times[s]`` is the perf_counter()
    time at which IM.SEND of send ``s`` was written, or None before that.
    With ``verify`` false the checker only advances positions and records
    latencies.
    """

    def __init__(self, plan: ReplayPlan, conversation_ids, user_ids, verify=True):
        self.plan = plan
        self.conversation_ids = conversation_ids
        self.conversation_index = {name: c for c, name in enumerate(conversation_ids)}
        self.user_ids = user_ids
        self.verify = verify
        count = plan.send_count
        self.send_times = [None] * count
        self.store_seqs = [None] * count
        # Latencies in seconds of entries that arrived while their device was
        # online and that were sent after the device came online.
        self.delivery_latencies = array.array("f")
        self.entries_online = 0
        self.entries_caught_up = 0
        self.failures = []

    @property
    def entries_received(self):
        return self.entries_online + self.entries_caught_up

    def fail(self, message):
        """Record one verification failure; the first one is reported."""
        self.failures.append(message)

    def describe_send(self, s):
        plan = self.plan
        conversation = plan.send_conversation[s]
        position = plan.conversation_sends[conversation].index(s)
        return (
            f"send {s} (conversation {self.conversation_ids[conversation].decode()}, "
            f"position {position}, sender "
            f"{self.user_ids[plan.send_sender[s]].decode()})"
        )

    def agree_store_seq(self, s, store_seq, source):
        """Fix or check the store seq of send s, as reported by ``source``."""
        known = self.store_seqs[s]
        if known is None:
            self.store_seqs[s] = store_seq
        elif known != store_seq:
            self.fail(
                f"{self.describe_send(s)}: {source} reports store seq "
                f"{store_seq}, but {known} was seen before"
            )

    def process_entries(self, device, entries, now, online):
        """Check one IM.SYNC page of ``device`` received at ``now``.

        Each entry is ``[conversation, store_seq, sender, payload]`` with an
        integer store seq, as IM.SYNC returns it. Cost: O(len(entries)), a
        dict lookup and a few comparisons per entry. This is the replay's
        hot loop.
        """
        plan = self.plan
        payloads = plan.payloads
        send_message = plan.send_message
        conversation_sends = plan.conversation_sends
        send_times = self.send_times
        store_seqs = self.store_seqs
        record_latency = self.delivery_latencies.append
        verify = self.verify
        online_since = device.online_since if online else None
        positions = device.positions
        for entry in entries:
            if device.mismatch is not None:
                break
            c = self.conversation_index.get(entry[0])
            position = positions.get(c)
            if position is None or position >= len(conversation_sends[c]):
                self._fail_device(
                    device,
                    f"unexpected entry {self._describe_entry(entry)}: not a "
                    "conversation of the member, or past its last send",
                )
                break
            s = conversation_sends[c][position]
            if verify:
                if (
                    entry[3] != payloads[send_message[s]]
                    or entry[2] != self.user_ids[plan.send_sender[s]]
                ):
                    self._fail_mismatch(device, entry, s)
                    break
                known = store_seqs[s]
                if known is None:
                    store_seqs[s] = entry[1]
                elif known != entry[1]:
                    self.agree_store_seq(s, entry[1], device.name)
            positions[c] = position + 1
            sent = send_times[s]
            if sent is None:
                self._fail_device(
                    device,
                    f"received {self.describe_send(s)} before its IM.SEND was written",
                )
            elif online_since is not None and sent >= online_since:
                record_latency(now - sent)
        device.received += len(entries)
        if online:
            self.entries_online += len(entries)
        else:
            self.entries_caught_up += len(entries)

    def _fail_mismatch(self, device, entry, s):
        self._fail_device(
            device,
            f"entry {self._describe_entry(entry)} where {self.describe_send(s)} "
            f"with payload {format_payload(self.plan.payloads[self.plan.send_message[s]])} "
            "was expected",
        )

    def _fail_device(self, device, reason):
        if device.mismatch is None:
            device.mismatch = reason
            self.fail(f"{device.name}: {reason}")

    @staticmethod
    def _describe_entry(entry):
        conversation, store_seq, sender, payload = entry
        return (
            f"[conversation {format_name(conversation)}, store seq {int(store_seq)}, "
            f"sender {format_name(sender)}, payload {format_payload(payload)}]"
        )

    def check_complete(self, device):
        """Record a failure when ``device`` has not received its whole stream."""
        if device.mismatch is not None or not self.verify:
            return
        sends = self.plan.conversation_sends
        missing = 0
        first = None
        for c, position in device.positions.items():
            left = len(sends[c]) - position
            if left > 0:
                missing += left
                if first is None or sends[c][position] < first:
                    first = sends[c][position]
        if missing:
            self._fail_device(
                device,
                f"missing {missing} of {self.plan.expected_count(device.member)} "
                f"expected messages, the first being {self.describe_send(first)}",
            )


def percentile_ms(values, q):
    """Return the q-th percentile of ``values`` (seconds) in milliseconds, or nan."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.frombuffer(values, dtype=values.typecode), q)) * 1e3
