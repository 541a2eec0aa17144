"""Verification state of a replay: what each device received, and what it should have.

A device walks its member's expected stream while entries arrive: the
messages of every conversation the member joined, from its join on, in send
order (``ReplayPlan.member_ranges``). Each IM.SYNC entry must match the next
expected message by conversation, sender, payload and store seq, and its
sync seq must exceed the device's checkpoint. The device keeps only a cursor
into the plan (range index and global message index), so per-device state is
a few ints no matter how much it receives.

Store seqs come from two sides that can arrive in either order: the IM.SEND
reply on the sender connection and the first IM.SYNC entry on a device
connection. Whichever comes first fixes ``store_seqs[m]`` and every later
report must agree with it.
"""

import array

import numpy as np

from .replay_input import ReplayPlan


class Device:
    """One simulated client of a member, with its own sync checkpoint."""

    __slots__ = (
        "checkpoint",
        "member",
        "mismatch",
        "next_message",
        "number",
        "online_since",
        "range_end",
        "range_index",
        "received",
        "running",
        "user_id",
    )

    def __init__(self, member, number, user_id, ranges):
        self.member = member
        self.number = number
        self.user_id = user_id
        self.checkpoint = 0
        self.range_index = 0
        self.next_message, self.range_end = ranges[0] if ranges else (0, 0)
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
    plan's conversations and members. ``send_times[m]`` is the perf_counter()
    time at which IM.SEND of message ``m`` was written, or None before that.
    With ``verify`` false the checker only advances cursors and records
    latencies.
    """

    def __init__(self, plan: ReplayPlan, conversation_ids, user_ids, verify=True):
        self.plan = plan
        self.conversation_ids = conversation_ids
        self.user_ids = user_ids
        self.verify = verify
        # Per message m: the wire names an IM.SYNC entry must carry.
        self.payloads = plan.payloads
        self.message_conversations = [
            conversation_ids[channel] for channel in plan.message_channel
        ]
        self.message_senders = [user_ids[member] for member in plan.message_sender]
        count = plan.message_count
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

    def describe_message(self, m):
        plan = self.plan
        channel = plan.message_channel[m]
        return (
            f"message {m} (conversation {self.conversation_ids[channel].decode()}, "
            f"position {m - plan.channel_starts[channel]}, sender "
            f"{self.user_ids[plan.message_sender[m]].decode()})"
        )

    def agree_store_seq(self, m, store_seq, source):
        """Fix or check the store seq of message m, as reported by ``source``."""
        known = self.store_seqs[m]
        if known is None:
            self.store_seqs[m] = store_seq
        elif known != store_seq:
            self.fail(
                f"{self.describe_message(m)}: {source} reports store seq "
                f"{store_seq}, but {known} was seen before"
            )

    def process_entries(self, device, entries, now, online):
        """Check one IM.SYNC page of ``device`` received at ``now``.

        Each entry is ``[sync_seq, conversation, store_seq, sender, payload]``
        with integer seqs, as IM.SYNC returns it. Cost: O(len(entries)), a
        few comparisons per entry. This is the replay's hot loop.
        """
        ranges = self.plan.member_ranges[device.member]
        send_times = self.send_times
        store_seqs = self.store_seqs
        record_latency = self.delivery_latencies.append
        verify = self.verify
        online_since = device.online_since if online else None
        for entry in entries:
            sync_seq = entry[0]
            if sync_seq <= device.checkpoint:
                self._fail_device(
                    device,
                    f"sync seq {sync_seq} does not exceed checkpoint "
                    f"{device.checkpoint}",
                )
            device.checkpoint = sync_seq
            if device.mismatch is not None:
                continue
            m = device.next_message
            if m >= device.range_end:
                if not self._next_range(device, ranges, entry):
                    continue
                m = device.next_message
            if verify:
                if (
                    entry[4] != self.payloads[m]
                    or entry[1] != self.message_conversations[m]
                    or entry[3] != self.message_senders[m]
                ):
                    self._fail_mismatch(device, entry, m)
                    continue
                known = store_seqs[m]
                if known is None:
                    store_seqs[m] = entry[2]
                elif known != entry[2]:
                    self.agree_store_seq(m, entry[2], device.name)
            device.next_message = m + 1
            sent = send_times[m]
            if sent is None:
                self._fail_device(
                    device,
                    f"received {self.describe_message(m)} before its IM.SEND "
                    f"was written",
                )
            elif online_since is not None and sent >= online_since:
                record_latency(now - sent)
        device.received += len(entries)
        if online:
            self.entries_online += len(entries)
        else:
            self.entries_caught_up += len(entries)

    def _next_range(self, device, ranges, entry):
        """Move ``device`` to its next expected range; return False if none is left."""
        device.range_index += 1
        if device.range_index >= len(ranges):
            self._fail_device(
                device,
                f"unexpected extra entry {self._describe_entry(entry)} "
                f"after all {self._expected_count(device)} expected messages",
            )
            return False
        device.next_message, device.range_end = ranges[device.range_index]
        return True

    def _fail_mismatch(self, device, entry, m):
        self._fail_device(
            device,
            f"entry {self._describe_entry(entry)} where "
            f"{self.describe_message(m)} with payload "
            f"{format_payload(self.payloads[m])} was expected",
        )

    def _fail_device(self, device, reason):
        if device.mismatch is None:
            device.mismatch = reason
            self.fail(f"{device.name}: {reason}")

    @staticmethod
    def _describe_entry(entry):
        sync_seq, conversation, store_seq, sender, payload = entry
        return (
            f"[sync seq {int(sync_seq)}, conversation {format_name(conversation)}, "
            f"store seq {int(store_seq)}, sender {format_name(sender)}, "
            f"payload {format_payload(payload)}]"
        )

    def _expected_count(self, device):
        return sum(end - start for start, end in self.plan.member_ranges[device.member])

    def check_complete(self, device):
        """Record a failure when ``device`` has not received its whole stream."""
        if device.mismatch is not None or not self.verify:
            return
        ranges = self.plan.member_ranges[device.member]
        missing = device.range_end - device.next_message
        for start, end in ranges[device.range_index + 1 :]:
            missing += end - start
        if missing:
            first = device.next_message
            if first >= device.range_end:
                first = ranges[device.range_index + 1][0]
            self._fail_device(
                device,
                f"missing {missing} of {self._expected_count(device)} expected "
                f"messages, the first being {self.describe_message(first)}",
            )


def percentile_ms(values, q):
    """Return the q-th percentile of ``values`` (seconds) in milliseconds, or nan."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.frombuffer(values, dtype=values.typecode), q)) * 1e3
