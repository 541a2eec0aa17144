"""Replay input: a chat log in JSON lines, turned into a send plan.

The input is a gzip-compressed file of JSON objects, one a line, in log order.
Each object has at least ``channel``, ``kind`` and, for ``kind == "message"``,
``sender`` and ``text``. Every other kind (join, part and rename lines written
by the IRC server) is counted and skipped.

The plan numbers messages from 0 in input order (the global message index).
Each channel becomes one conversation and must occupy one contiguous block of
messages, because the replay sends channels one after the other. A sender
joins a conversation right before its first message there, so a member's
expected sync stream is, per conversation it joined, the messages from its
join on. With contiguous channels those are ranges of global message indices.
"""

import array
import gzip
import json
from dataclasses import dataclass, field

from .errors import InvalidArgumentError


@dataclass
class ReplayPlan:
    """Messages, conversations and members of one replay.

    ``channels[c]`` is the name of conversation index ``c`` and its messages
    are the global indices ``channel_starts[c]`` to ``channel_ends[c] - 1``.
    Per message ``m``: ``message_channel[m]`` is its conversation index,
    ``message_sender[m]`` its member index, ``payloads[m]`` its UTF-8 text and
    ``joins_before[m]`` is 1 when the sender joins right before it. Member
    ``u`` is named ``members[u]`` and expects the messages in
    ``member_ranges[u]``, a list of ``(start, end)`` global index ranges in
    send order.
    """

    channels: list = field(default_factory=list)
    channel_starts: list = field(default_factory=list)
    channel_ends: list = field(default_factory=list)
    members: list = field(default_factory=list)
    member_ranges: list = field(default_factory=list)
    message_channel: array.array = field(default_factory=lambda: array.array("i"))
    message_sender: array.array = field(default_factory=lambda: array.array("i"))
    joins_before: bytearray = field(default_factory=bytearray)
    payloads: list = field(default_factory=list)
    events: int = 0
    system_lines: int = 0

    @property
    def message_count(self):
        return len(self.payloads)

    @property
    def membership_count(self):
        """Number of (member, conversation) pairs, one IM.JOIN each."""
        return sum(len(ranges) for ranges in self.member_ranges)

    def expected_entries(self):
        """Return the number of sync entries the plan writes (one per member)."""
        return sum(
            end - start for ranges in self.member_ranges for start, end in ranges
        )


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


class _PlanBuilder:
    """Accumulates messages into a ReplayPlan, one event at a time."""

    def __init__(self):
        self.plan = ReplayPlan()
        self._member_index = {}
        self._seen_channels = set()
        # Members that joined the current channel so far.
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
        message_index = len(plan.payloads)
        sender = event["sender"]
        member = self._member_index.get(sender)
        if member is None:
            member = len(plan.members)
            self._member_index[sender] = member
            plan.members.append(sender)
            plan.member_ranges.append([])
        joins = member not in self._joined
        if joins:
            self._joined.add(member)
            plan.member_ranges[member].append([message_index, None])
        plan.message_channel.append(len(plan.channels) - 1)
        plan.message_sender.append(member)
        plan.joins_before.append(1 if joins else 0)
        plan.payloads.append(event["text"].encode("utf-8"))
        plan.channel_ends[-1] = message_index + 1

    def _start_channel(self, channel, line_number):
        if channel in self._seen_channels:
            raise InvalidArgumentError(
                f"input line {line_number}: channel {channel!r} appears again "
                f"after channel {self.plan.channels[-1]!r}; the replay needs "
                f"each channel's events in one contiguous block"
            )
        self._close_channel()
        self._seen_channels.add(channel)
        self.plan.channels.append(channel)
        start = len(self.plan.payloads)
        self.plan.channel_starts.append(start)
        self.plan.channel_ends.append(start)
        self._joined = set()

    def _close_channel(self):
        if not self.plan.channels:
            return
        end = self.plan.channel_ends[-1]
        for member in self._joined:
            self.plan.member_ranges[member][-1][1] = end

    def finish(self):
        self._close_channel()
        plan = self.plan
        plan.member_ranges = [
            [(start, end) for start, end in ranges] for ranges in plan.member_ranges
        ]
        # A channel whose lines were all system lines sends nothing; it stays
        # in the plan with an empty range so indices remain stable.
        return plan


def load_plan(path, limit=None):
    """Read a gzip-compressed JSON-lines chat log into a ReplayPlan.

    The file is streamed line by line. ``limit`` keeps only the first
    ``limit`` messages (system lines before the cut are still counted).
    Raises InvalidArgumentError for malformed lines or non-contiguous
    channels, and OSError when the file cannot be read.
    """
    if limit is not None and limit < 0:
        raise InvalidArgumentError(f"limit must be at least 0, got {limit}")
    builder = _PlanBuilder()
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
