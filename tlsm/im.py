"""IM layer: conversations, members, idempotent sends and hybrid fan-out.

The layer keeps everything in engine tables (layouts in tlsm.im_format and
docs/im.md), so a restart keeps conversations, members, fan-out modes,
idempotency records, device cursors and read markers.

Fan-out. A conversation with at most `threshold` members uses write
fan-out: each send appends one reference per member to the members' sync
timelines. Above the threshold it uses read fan-out: a send writes only the
store entry and members read the store timeline from their cursor. The
mode switches when a join, leave or threshold change crosses the
threshold. The switch is recorded as a conversation event at the store seq
B of that moment, and every member's sync timeline gets a marker: "read
fan-out opens after B" or "closes at B". A member who joins or leaves
while the conversation is on read fan-out gets the same marker for its own
join or leave point. A device walking its sync timeline therefore learns
exactly which store seqs to read from which store timeline, and in which
order, with no message lost or repeated across a switch (see
tlsm.im_sync).

Single writer. Store seqs that references carry are computed before the
write as last_seq + 1. That is correct because the server runs every IM write
on its event-loop thread and TL commands cannot write IM tables. The seq
the engine assigns is compared afterwards as a check.

Every write of one command (store entry, references, markers, events,
idempotency record) goes into one atomic db.write() batch.
"""

import logging
import zlib

from . import im_format as fmt
from .errors import InvalidArgumentError, TlsmError
from .im_format import check_id

log = logging.getLogger(__name__)

DEFAULT_SYNC_TTL_SECONDS = 7 * 86400
DEFAULT_IDEMPOTENCY_WINDOW_SECONDS = 86400
# Chosen from bench/im_fanout.py on the Ubuntu IRC data; docs/im.md has the figures.
DEFAULT_FANOUT_THRESHOLD = 50

STORE_TABLE = "im.store"
SYNC_TABLE = "im.sync"
CONV_TABLE = "im.conv"
USER_TABLE = "im.user"
IDEM_TABLE = "im.idem"
ACK_TABLE = "im.ack"
READ_TABLE = "im.read"


class NotMemberError(TlsmError):
    """The sender of a message is not a member of the conversation."""


class IdConflictError(TlsmError):
    """A client message id was already used for another conversation or payload."""


class ResyncError(TlsmError):
    """A cursor is older than the sync retention, or ahead of the sync timeline."""


class ImInvariantError(TlsmError):
    """The engine assigned a store seq other than the one the references carry."""


def show(value):
    return value.decode("utf-8", "backslashreplace")


def wake_key(table, timeline_id):
    """Return the key under which the server registers waits on a timeline."""
    return (table, timeline_id)


class Conversation:
    """In-memory state of one conversation, rebuilt from its im.conv events.

    members maps each current member to its join point (store seq), in join
    order. intervals maps every user who ever joined to its membership
    intervals [(join, leave or None)]. mode is MODE_WRITE or MODE_READ and
    mode_since the store seq of the last switch (0 without one).
    """

    __slots__ = ("intervals", "members", "mode", "mode_since", "retention", "threshold")

    def __init__(self):
        self.members = {}
        self.intervals = {}
        self.mode = fmt.MODE_WRITE
        self.mode_since = 0
        self.threshold = 0
        self.retention = 0

    def apply(self, kind, store_seq, body):
        """Apply one event; return False for a kind this version does not know."""
        if kind == fmt.CONV_KIND_JOIN:
            self.members[body] = store_seq
            self.intervals.setdefault(body, []).append([store_seq, None])
        elif kind == fmt.CONV_KIND_LEAVE:
            self.members.pop(body, None)
            self.intervals[body][-1][1] = store_seq
        elif kind == fmt.CONV_KIND_FANOUT:
            self.mode = body[0]
            self.mode_since = store_seq
        elif kind == fmt.CONV_KIND_THRESHOLD:
            self.threshold = fmt.decode_u64(body)
        elif kind == fmt.CONV_KIND_RETENTION:
            self.retention = fmt.decode_u64(body)
        else:
            return False
        return True


class ImLayer:
    """IM operations on an open engine.

    Not thread-safe: the server calls it from its event-loop thread only, and
    send() relies on that (see the module docstring). Conversation and user
    state is cached after first use. Methods take and return bytes.
    Write methods return the wake keys of the timelines they wrote.
    """

    def __init__(
        self,
        db,
        max_payload_bytes,
        sync_ttl=DEFAULT_SYNC_TTL_SECONDS,
        idempotency_window=DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
        fanout_threshold=DEFAULT_FANOUT_THRESHOLD,
        clock=None,
    ):
        self._db = db
        self._max_payload_bytes = max_payload_bytes
        self.sync_ttl = sync_ttl
        self.fanout_threshold = fanout_threshold
        self.clock = clock or db._clock
        self.store = db.table(STORE_TABLE, ttl=None)
        self.sync = db.table(SYNC_TABLE, ttl=sync_ttl)
        self.conv = db.table(CONV_TABLE, ttl=None)
        self.user_events = db.table(USER_TABLE, ttl=None)
        self.idem = db.table(IDEM_TABLE, ttl=idempotency_window)
        self.acks = db.table(ACK_TABLE, ttl=None)
        self.reads = db.table(READ_TABLE, ttl=None)
        # NOTE: both caches grow with the conversations and users used since
        # the start; they are never trimmed.
        self._conversations = {}
        self._user_conversations = {}
        self.stats = dict.fromkeys(
            (
                "sends",
                "duplicate_sends",
                "store_entries_written",
                "store_bytes_written",
                "sync_entries_written",
                "sync_bytes_written",
                "markers_written",
                "sync_entries_read",
                "store_entries_read_write_fanout",
                "store_entries_read_read_fanout",
                "delivered_write_fanout",
                "delivered_read_fanout",
            ),
            0,
        )

    # -- state ------------------------------------------------------------

    def conversation(self, conversation):
        """Return the cached Conversation, loading its events on first use."""
        state = self._conversations.get(conversation)
        if state is None:
            check_id(conversation, "conversation", fmt.MAX_CONVERSATION_BYTES)
            state = Conversation()
            for _, data in self.conv.scan(conversation):
                if not state.apply(*fmt.decode_event(data)):
                    log.warning(
                        "skipping event of unknown kind %d in conversation %r",
                        data[0],
                        conversation,
                    )
            self._conversations[conversation] = state
        return state

    def user_conversations(self, user):
        """Return {conversation: True if a current member} for every one user joined."""
        cached = self._user_conversations.get(user)
        if cached is None:
            check_id(user, "user", fmt.MAX_USER_BYTES)
            cached = {}
            for _, data in self.user_events.scan(user):
                kind, _, conversation = fmt.decode_event(data)
                cached[conversation] = kind == fmt.USER_KIND_JOIN
            self._user_conversations[user] = cached
        return cached

    def threshold_of(self, state):
        return state.threshold or self.fanout_threshold

    def members(self, conversation):
        """Return the current members of conversation in join order."""
        return list(self.conversation(conversation).members)

    # -- membership -------------------------------------------------------

    def join(self, conversation, users):
        """Add users; return (number newly added, wake keys).

        Members already present and repeats are skipped. A join admits the
        messages sent after it. All writes are one atomic batch.
        """
        for user in users:
            check_id(user, "user", fmt.MAX_USER_BYTES)
        state = self.conversation(conversation)
        added = []
        for user in users:
            if user not in state.members and user not in added:
                added.append(user)
        if not added:
            return 0, []
        point = self.store.last_seq(conversation)
        batch = self._db.batch()
        writer = _EventWriter(self, batch, conversation, state, point)
        for user in added:
            writer.membership(fmt.CONV_KIND_JOIN, user)
            if state.mode == fmt.MODE_READ:
                writer.marker(user, fmt.SYNC_KIND_OPEN)
        writer.rebalance()
        return len(added), writer.commit()

    def leave(self, conversation, users):
        """Remove users; return (number removed, wake keys).

        A leaver keeps the messages sent up to its leave. Non-members are
        skipped. All writes are one atomic batch.
        """
        state = self.conversation(conversation)
        removed = []
        for user in users:
            if user in state.members and user not in removed:
                removed.append(user)
        if not removed:
            return 0, []
        point = self.store.last_seq(conversation)
        batch = self._db.batch()
        writer = _EventWriter(self, batch, conversation, state, point)
        for user in removed:
            if state.mode == fmt.MODE_READ:
                writer.marker(user, fmt.SYNC_KIND_CLOSE)
            writer.membership(fmt.CONV_KIND_LEAVE, user)
        writer.rebalance()
        return len(removed), writer.commit()

    def set_policy(self, conversation, threshold=None, retention=None):
        """Set a conversation's fan-out threshold and/or retention; return wake keys.

        threshold 0 means the server default; retention is in seconds, 0
        for forever, and applies to messages stored from now on.
        """
        state = self.conversation(conversation)
        point = self.store.last_seq(conversation)
        batch = self._db.batch()
        writer = _EventWriter(self, batch, conversation, state, point)
        if threshold is not None:
            writer.event(fmt.CONV_KIND_THRESHOLD, fmt.encode_u64(threshold))
        if retention is not None:
            writer.event(fmt.CONV_KIND_RETENTION, fmt.encode_u64(retention))
        writer.rebalance()
        return writer.commit()

    # -- sending ----------------------------------------------------------

    def send(self, conversation, sender, payload, client_msg_id=None):
        """Store a message and fan it out; return (store seq, wake keys).

        With client_msg_id, a retry with the same (sender, client_msg_id)
        inside the idempotency window returns the first store seq and writes
        nothing; its wake keys are empty. Raises NotMemberError,
        IdConflictError when the id was used for another conversation or
        payload, InvalidArgumentError for ids or a payload above their
        limits, and ImInvariantError when the engine assigned an unexpected
        store seq.
        """
        check_id(sender, "sender", fmt.MAX_USER_BYTES)
        room = self._max_payload_bytes - fmt.store_header_bytes(sender)
        if len(payload) > room:
            raise InvalidArgumentError(
                f"message payload is {len(payload)} bytes, above the limit of "
                f"{room} bytes (max_payload_bytes {self._max_payload_bytes} minus "
                f"{fmt.store_header_bytes(sender)} bytes of store entry header)"
            )
        state = self.conversation(conversation)
        idem_key = None
        if client_msg_id is not None:
            check_id(client_msg_id, "client_msg_id", fmt.MAX_CLIENT_MSG_ID_BYTES)
            idem_key = fmt.composite_key(sender, client_msg_id)
            earlier = self._find_send(idem_key, conversation, payload)
            if earlier is not None:
                self.stats["duplicate_sends"] += 1
                return earlier, []
        if sender not in state.members:
            raise NotMemberError(
                f"user '{show(sender)}' is not a member of conversation "
                f"'{show(conversation)}': add it with IM.JOIN first"
            )
        store_seq = self.store.last_seq(conversation) + 1
        batch = self._db.batch()
        entry = fmt.encode_store_entry(sender, payload)
        batch.append(conversation, entry, table=self.store, ttl=state.retention or None)
        keys = [wake_key(STORE_TABLE, conversation)]
        stats = self.stats
        stats["sends"] += 1
        stats["store_entries_written"] += 1
        stats["store_bytes_written"] += len(entry) + len(conversation)
        if state.mode == fmt.MODE_WRITE:
            reference = fmt.encode_event(fmt.SYNC_KIND_MESSAGE, store_seq, conversation)
            for user in state.members:
                batch.append(user, reference, table=self.sync)
                keys.append(wake_key(SYNC_TABLE, user))
                stats["sync_bytes_written"] += len(reference) + len(user)
            stats["sync_entries_written"] += len(state.members)
        if idem_key is not None:
            record = fmt.encode_idem_record(store_seq, payload, conversation)
            batch.append(idem_key, record, table=self.idem)
        seqs = self._db.write(batch)
        if seqs[0] != store_seq:
            # The references already written point at the wrong message.
            # Only a second writer of this store timeline can cause it.
            log.error(
                "conversation %r: engine assigned store seq %d, references carry %d",
                conversation,
                seqs[0],
                store_seq,
            )
            raise ImInvariantError(
                f"store seq mismatch in conversation {conversation!r}: engine "
                f"assigned {seqs[0]}, references carry {store_seq}"
            )
        return store_seq, keys

    def _find_send(self, idem_key, conversation, payload):
        """Return the store seq of an earlier send with idem_key, or None."""
        for _, data in self.idem.scan(idem_key, reverse=True, limit=1):
            store_seq, crc, first_conversation = fmt.decode_idem_record(data)
            if first_conversation != conversation or crc != zlib.crc32(payload):
                raise IdConflictError(
                    f"client message id '{show(idem_key[1 + idem_key[0] :])}' of "
                    f"sender '{show(idem_key[1 : 1 + idem_key[0]])}' was already "
                    f"used for store seq {store_seq} of conversation "
                    f"'{show(first_conversation)}' with another payload or "
                    "conversation; use a new id for a new message"
                )
            return store_seq
        return None

    # -- reading ----------------------------------------------------------

    def read_messages(self, conversation, start, end, limit):
        """Return [(store_seq, sender, payload)] with start <= seq < end."""
        result = []
        for store_seq, data in self.store.scan(
            conversation, start=start, end=end, limit=limit
        ):
            sender, payload = fmt.decode_store_entry(data)
            result.append((store_seq, sender, payload))
        return result

    def history(self, conversation, before, count):
        """Return up to count messages with store seq < before, newest first.

        Each is (store_seq, sender, payload). before=None starts at the newest.
        """
        check_id(conversation, "conversation", fmt.MAX_CONVERSATION_BYTES)
        result = []
        for store_seq, data in self.store.scan(
            conversation, end=before, limit=count, reverse=True
        ):
            sender, payload = fmt.decode_store_entry(data)
            result.append((store_seq, sender, payload))
        return result

    # -- device cursors and read markers ------------------------------------

    def ack(self, user, device, token):
        """Store token as the acknowledged cursor of (user, device)."""
        check_id(user, "user", fmt.MAX_USER_BYTES)
        check_id(device, "device", fmt.MAX_DEVICE_BYTES)
        fmt.decode_cursor(user, token)
        key = fmt.composite_key(user, device)
        self._replace_single(self.acks, key, token)

    def acked_cursor(self, user, device):
        """Return the acknowledged cursor of (user, device), or None."""
        check_id(user, "user", fmt.MAX_USER_BYTES)
        check_id(device, "device", fmt.MAX_DEVICE_BYTES)
        for _, token in self.acks.scan(
            fmt.composite_key(user, device), reverse=True, limit=1
        ):
            return token
        return None

    def _replace_single(self, table, key, value):
        # One live entry per key: append the new one and trim the rest in
        # the same batch. The seq is last + 1 because this thread is the
        # only writer.
        last = table.last_seq(key)
        batch = self._db.batch()
        batch.append(key, value, table=table)
        batch.trim(key, last + 1, table=table)
        self._db.write(batch)

    def mark_read(self, user, conversation, store_seq):
        """Raise the read marker of user in conversation to store_seq; return it.

        A marker never goes back: a lower store_seq leaves it as it is.
        """
        check_id(user, "user", fmt.MAX_USER_BYTES)
        check_id(conversation, "conversation", fmt.MAX_CONVERSATION_BYTES)
        current = self.read_marker(user, conversation)
        if store_seq > current:
            key = fmt.composite_key(user, conversation)
            self._replace_single(self.reads, key, fmt.encode_u64(store_seq))
            current = store_seq
        return current

    def read_marker(self, user, conversation):
        key = fmt.composite_key(user, conversation)
        for _, data in self.reads.scan(key, reverse=True, limit=1):
            return fmt.decode_u64(data)
        return 0

    def unread(self, user, conversation):
        """Return the number of messages of conversation above user's read marker.

        Counts store seqs inside the user's membership intervals, so
        messages sent while the user was not a member never count.
        NOTE: messages removed by the conversation's retention still count.
        """
        state = self.conversation(conversation)
        read = self.read_marker(user, conversation)
        last = self.store.last_seq(conversation)
        total = 0
        for joined, left in state.intervals.get(user, ()):
            upper = last if left is None else min(left, last)
            total += max(0, upper - max(joined, read))
        return total

    def unread_all(self, user):
        """Return {conversation: unread count} for the user's current conversations."""
        return {
            conversation: self.unread(user, conversation)
            for conversation, current in self.user_conversations(user).items()
            if current
        }


class _EventWriter:
    """Builds the batch of one membership or policy change of a conversation.

    Events and markers are applied to the cached state only after the batch
    is written, so a failed write leaves the cache as the engine has it.
    """

    def __init__(self, layer, batch, conversation, state, point):
        self.layer = layer
        self.batch = batch
        self.conversation = conversation
        self.state = state
        self.point = point
        self.events = []
        self.keys = [wake_key(CONV_TABLE, conversation)]
        self.members = dict(state.members)
        self.mode = state.mode
        self.threshold = state.threshold

    def event(self, kind, body):
        data = fmt.encode_event(kind, self.point, body)
        self.batch.append(self.conversation, data, table=self.layer.conv)
        self.events.append((kind, self.point, body))
        if kind == fmt.CONV_KIND_THRESHOLD:
            self.threshold = fmt.decode_u64(body)

    def membership(self, kind, user):
        self.event(kind, user)
        user_kind = (
            fmt.USER_KIND_JOIN if kind == fmt.CONV_KIND_JOIN else fmt.USER_KIND_LEAVE
        )
        data = fmt.encode_event(user_kind, self.point, self.conversation)
        self.batch.append(user, data, table=self.layer.user_events)
        if kind == fmt.CONV_KIND_JOIN:
            self.members[user] = self.point
        else:
            self.members.pop(user, None)

    def marker(self, user, kind):
        data = fmt.encode_event(kind, self.point, self.conversation)
        self.batch.append(user, data, table=self.layer.sync)
        self.keys.append(wake_key(SYNC_TABLE, user))
        self.layer.stats["markers_written"] += 1

    def rebalance(self):
        """Switch the fan-out mode when the member count crossed the threshold."""
        threshold = self.threshold or self.layer.fanout_threshold
        wanted = fmt.MODE_READ if len(self.members) > threshold else fmt.MODE_WRITE
        if wanted == self.mode:
            return
        self.event(fmt.CONV_KIND_FANOUT, bytes((wanted,)))
        kind = fmt.SYNC_KIND_OPEN if wanted == fmt.MODE_READ else fmt.SYNC_KIND_CLOSE
        for user in self.members:
            self.marker(user, kind)
        self.mode = wanted
        log.debug(
            "conversation %r switched to %s fan-out at store seq %d with %d members",
            self.conversation,
            "read" if wanted == fmt.MODE_READ else "write",
            self.point,
            len(self.members),
        )

    def commit(self):
        """Write the batch, then apply it to the caches; return the wake keys."""
        layer = self.layer
        layer._db.write(self.batch)
        for kind, point, body in self.events:
            self.state.apply(kind, point, body)
            if kind in (fmt.CONV_KIND_JOIN, fmt.CONV_KIND_LEAVE):
                cached = layer._user_conversations.get(body)
                if cached is not None:
                    cached[self.conversation] = kind == fmt.CONV_KIND_JOIN
        return self.keys
