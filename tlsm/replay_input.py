"""Replay input: a chat log in JSON lines, turned into a send plan.

The input is a gzip-compressed file of JSON objects, one a line, in log order.
Each object has at least ``channel``, ``kind`` and, for ``kind == "message"``,
``sender`` and ``text``; ``thread`` optionally names a reply thread. Every
other kind (join, part and rename lines written by the IRC server) is
counted and skipped, and its text is never read.

Messages are numbered from 0 in input order (the message index). Each
channel is one conversation and must occupy one contiguous block of lines,
because the replay sends channels one after the other. With threads on,
each thread is a conversation too, and a message of a thread is sent twice:
to its channel and, right after, to its thread. Sends are numbered from 0
in the order the replay issues them (the send index).

A sender joins a conversation right before its first send there, so a
member's expected stream in a conversation is that conversation's sends
from the member's join on.
"""

import array
import gzip
import json
from dataclasses import dataclass, field

from .errors import InvalidArgumentError


@dataclass
class ReplayPlan:
    """Messages, sends, conversations and members of one replay.

    ``channels`` contains the channel names in input order; conversation index
    ``c`` is named ``conversations[c]``, belongs to channel
    ``conversation_channel[c]`` and is a channel itself when
    ``conversation_is_channel[c]``. Its sends are ``conversation_sends[c]``,
    an array of send indices in send order. Per send ``s``:
    ``send_conversation[s]``, ``send_message[s]`` (message index),
    ``send_sender[s]`` (member index) and ``joins_before[s]`` (1 when the
    sender joins right before it). The sends of channel ``k`` are the send
    indices ``channel_starts[k]`` to ``channel_ends[k] - 1``. Member ``u`` is
    named ``members[u]`` and ``member_joins[u]`` lists its joins as
    ``(conversation, position in conversation_sends)``.
    """

    channels: list = field(default_factory=list)
    channel_starts: list = field(default_factory=list)
    channel_ends: list = field(default_factory=list)
    conversations: list = field(default_factory=list)
    conversation_channel: list = field(default_factory=list)
    conversation_is_channel: list = field(default_factory=list)
    conversation_sends: list = field(default_factory=list)
    members: list = field(default_factory=list)
    member_joins: list = field(default_factory=list)
    send_conversation: array.array = field(default_factory=lambda: array.array("i"))
    send_message: array.array = field(default_factory=lambda: array.array("i"))
    send_sender: array.array = field(default_factory=lambda: array.array("i"))
    joins_before: bytearray = field(default_factory=bytearray)
    payloads: list = field(default_factory=list)
    events: int = 0
    system_lines: int = 0

    @property
    def message_count(self):
        return len(self.payloads)

    @property
    def send_count(self):
        return len(self.send_conversation)

    @property
    def membership_count(self):
        """Number of (member, conversation) pairs, one IM.JOIN each."""
        return sum(len(joins) for joins in self.member_joins)

    def expected_count(self, member):
        """Return the number of sends member ``member`` should receive."""
        sends = self.conversation_sends
        return sum(
            len(sends[c]) - position for c, position in self.member_joins[member]
        )

    def expected_entries(self):
        """Return the number of deliveries the plan expects per device."""
        return sum(self.expected_count(member) for member in range(len(self.members)))


def _check_event(event, line_number):
    if not isinstance(event, dict):
        raise InvalidArgumentError(
            f"input line {line_number}: expected a JSON object, "
            f"got {type(event).__name__}"
        )
    channel = event.get("channel")
    if not isinstance(channel, str) or not channel:
        raise InvalidArgumentError(
            f"input line {line_number}: field 'channel' must be a non-empty string"
        )
    if event.get("kind") != "message":
        return
    for name in ("sender", "text"):
        if not isinstance(event.get(name), str):
            raise InvalidArgumentError(
                f"input line {line_number}: message field {name!r} must be a "
                f"string, got {event.get(name)!r}"
            )
    if not event["sender"]:
        raise InvalidArgumentError(f"input line {line_number}: sender is empty")
    thread = event.get("thread")
    if thread is not None and (not isinstance(thread, str) or not thread):
        raise InvalidArgumentError(
            f"input line {line_number}: field 'thread' must be null or a "
            f"non-empty string, got {thread!r}"
        )


class _PlanBuilder:
    """Accumulates messages into a ReplayPlan, one event at a time."""

    def __init__(self, threads):
        self.plan = ReplayPlan()
        self.threads = threads
        self._member_index = {}
        self._conversation_index = {}
        self._seen_channels = set()
        # (member, conversation) pairs joined so far.
        self._joined = set()

    def add(self, event, line_number):
        plan = self.plan
        plan.events += 1
        channel = event["channel"]
        if not plan.channels or plan.channels[-1] != channel:
            self._start_channel(channel, line_number)
        if event["kind"] != "message":
            plan.system_lines += 1
            return
        message = len(plan.payloads)
        plan.payloads.append(event["text"].encode("utf-8"))
        member = self._member(event["sender"])
        self._add_send(self._conversation(channel, True), member, message)
        thread = event.get("thread")
        if self.threads and thread is not None:
            self._add_send(self._conversation(thread, False), member, message)
        plan.channel_ends[-1] = plan.send_count

    def _member(self, sender):
        plan = self.plan
        member = self._member_index.get(sender)
        if member is None:
            member = len(plan.members)
            self._member_index[sender] = member
            plan.members.append(sender)
            plan.member_joins.append([])
        return member

    def _conversation(self, name, is_channel):
        plan = self.plan
        index = self._conversation_index.get(name)
        if index is None:
            index = len(plan.conversations)
            self._conversation_index[name] = index
            plan.conversations.append(name)
            plan.conversation_channel.append(len(plan.channels) - 1)
            plan.conversation_is_channel.append(is_channel)
            plan.conversation_sends.append(array.array("i"))
        elif plan.conversation_channel[index] != len(plan.channels) - 1:
            raise InvalidArgumentError(
                f"conversation {name!r} continues in channel {plan.channels[-1]!r} "
                f"after channel {plan.channels[plan.conversation_channel[index]]!r}; "
                "the replay needs each thread inside one channel"
            )
        return index

    def _add_send(self, conversation, member, message):
        plan = self.plan
        joins = (member, conversation) not in self._joined
        sends = plan.conversation_sends[conversation]
        if joins:
            self._joined.add((member, conversation))
            plan.member_joins[member].append((conversation, len(sends)))
        sends.append(plan.send_count)
        plan.send_conversation.append(conversation)
        plan.send_message.append(message)
        plan.send_sender.append(member)
        plan.joins_before.append(1 if joins else 0)

    def _start_channel(self, channel, line_number):
        if channel in self._seen_channels:
            raise InvalidArgumentError(
                f"input line {line_number}: channel {channel!r} appears again "
                f"after channel {self.plan.channels[-1]!r}; the replay needs "
                f"each channel's events in one contiguous block"
            )
        self._seen_channels.add(channel)
        self.plan.channels.append(channel)
        start = self.plan.send_count
        self.plan.channel_starts.append(start)
        self.plan.channel_ends.append(start)

    def finish(self):
        # A channel whose lines were all system lines sends nothing; it stays
        # in the plan with an empty range so indices remain stable.
        return self.plan


def load_plan(path, limit=None, threads=False):
    """Read a gzip-compressed JSON-lines chat log into a ReplayPlan.

    The file is streamed line by line. ``limit`` keeps only the first
    ``limit`` messages (system lines before the cut are still counted), and
    ``threads`` makes each reply thread a conversation too. Raises
    InvalidArgumentError for malformed lines or non-contiguous channels,
    and OSError when the file cannot be read.
    """
    if limit is not None and limit < 0:
        raise InvalidArgumentError(f"limit must be at least 0, got {limit}")
    builder = _PlanBuilder(threads)
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and builder.plan.message_count >= limit:
                break
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(
                    f"input line {line_number}: invalid JSON ({exc.msg} at "
                    f"column {exc.colno})"
                ) from None
            _check_event(event, line_number)
            builder.add(event, line_number)
    return builder.finish()
