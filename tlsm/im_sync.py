"""IM.SYNC: a user's new messages from every conversation, behind one cursor.

A cursor is a position in the user's sync timeline plus, for each
conversation currently on read fan-out for the user, a position in that
conversation's store timeline (token layout in tlsm.im_format).

One read walks the sync timeline from its position:

- a message reference is delivered (after reading the store entry it
  points to);
- an "open" marker adds its conversation to the open set at the marker's
  store seq;
- a "close" marker first delivers the open conversation's store entries up
  to the marker's store seq, then drops the conversation. When COUNT runs
  out before that, the walk stops in front of the marker.

Because markers sit in the sync timeline in the order the switches
happened, a conversation's store seqs reach the device in increasing order
across every switch, and each exactly once. When the sync timeline is
exhausted, the remaining COUNT goes to the open conversations, each read
from its position.

Losses. A gap in a timeline (entries removed by TTL, retention or a trim
while they were still unread) is reported in `truncated` with the oldest
position still present, and reading resumes there. A gap in the sync
timeline may have taken markers too, so the open set is then rebuilt from
the user's current memberships. A cursor issued longer ago than the sync
TTL is rejected with ResyncError, as is one ahead of the sync timeline.
"""

from . import im_format as fmt
from .im import STORE_TABLE, SYNC_TABLE, ResyncError, wake_key


class SyncResult:
    """The outcome of one sync read.

    messages holds (conversation, store_seq, sender, payload) tuples,
    truncated (scope, oldest available position) pairs with scope b"" for
    the sync timeline, cursor the next token and watch the wake keys a
    blocked read waits on.
    """

    __slots__ = ("cursor", "has_more", "messages", "truncated", "watch")

    def __init__(self):
        self.messages = []
        self.truncated = []
        self.has_more = False
        self.cursor = None
        self.watch = ()


class SyncReader:
    """One sync read of one user from one cursor. Call run() once."""

    def __init__(self, layer, user, token):
        self.layer = layer
        self.user = user
        fmt.check_id(user, "user", fmt.MAX_USER_BYTES)
        now_ms = int(layer.clock() * 1000)
        self.now_ms = now_ms
        if token == fmt.EMPTY_CURSOR:
            self.sync_pos, self.open = 0, {}
            return
        issued_ms, self.sync_pos, self.open = fmt.decode_cursor(user, token)
        self.issued_ms = issued_ms
        age = (now_ms - issued_ms) / 1000
        if age > layer.sync_ttl:
            raise ResyncError(
                f"cursor was issued {age:.0f} s ago, beyond the sync retention of "
                f"{layer.sync_ttl:g} s: messages may be lost, so fetch history "
                "with IM.HISTORY and start again from the empty cursor '-'"
            )

    def expires_in(self):
        """Return seconds until this cursor passes the retention, or None for '-'."""
        issued = getattr(self, "issued_ms", None)
        if issued is None:
            return None
        return max(0.0, self.layer.sync_ttl - (self.now_ms - issued) / 1000)

    def run(self, count):
        """Read up to count messages; return a SyncResult."""
        layer = self.layer
        result = SyncResult()
        self.result = result
        self.budget = count
        self.refs = []  # (index in messages, conversation, store_seq)
        sync_last = layer.sync.last_seq(self.user)
        if self.sync_pos > sync_last:
            raise ResyncError(
                f"cursor position {self.sync_pos} is ahead of the sync timeline, "
                f"whose last position is {sync_last}: the server lost writes, so "
                "fetch history with IM.HISTORY and start again from the empty "
                "cursor '-'"
            )
        walked = self._walk_sync(sync_last)
        if walked:
            for conversation in sorted(self.open):
                if self.budget <= 0:
                    break
                self._read_open(conversation, None)
        self._resolve_refs()
        result.has_more = self._has_more(sync_last)
        result.cursor = fmt.encode_cursor(
            self.user, self.now_ms, self.sync_pos, self.open
        )
        result.watch = [wake_key(SYNC_TABLE, self.user)] + [
            wake_key(STORE_TABLE, conversation) for conversation in self.open
        ]
        return result

    def _walk_sync(self, sync_last):
        """Walk the sync timeline; return True when it was read to its end."""
        layer = self.layer
        stats = layer.stats
        while self.sync_pos < sync_last:
            if self.budget <= 0:
                return False
            chunk = list(
                layer.sync.scan(
                    self.user, start=self.sync_pos + 1, limit=self.budget + 16
                )
            )
            stats["sync_entries_read"] += len(chunk)
            first = chunk[0][0] if chunk else sync_last + 1
            if first > self.sync_pos + 1:
                self.result.truncated.append((b"", first))
                self.sync_pos = first - 1
                self._rebuild_open()
            for seq, data in chunk:
                kind, store_seq, conversation = fmt.decode_event(data)
                if kind == fmt.SYNC_KIND_MESSAGE:
                    if self.budget <= 0:
                        return False
                    self.refs.append(
                        (len(self.result.messages), conversation, store_seq)
                    )
                    self.result.messages.append(None)
                    self.budget -= 1
                elif kind == fmt.SYNC_KIND_OPEN:
                    self.open.setdefault(conversation, store_seq)
                elif kind == fmt.SYNC_KIND_CLOSE and conversation in self.open:
                    if not self._read_open(conversation, store_seq):
                        return False
                    del self.open[conversation]
                self.sync_pos = seq
        return True

    def _read_open(self, conversation, close_at):
        """Deliver an open conversation up to close_at (None: its end).

        Returns True when nothing below the bound is left unread.
        """
        layer = self.layer
        position = self.open[conversation]
        last = layer.store.last_seq(conversation)
        upper = last if close_at is None else min(close_at, last)
        if position >= upper:
            return True
        if self.budget <= 0:
            return False
        messages = layer.read_messages(
            conversation, position + 1, upper + 1, self.budget
        )
        layer.stats["store_entries_read_read_fanout"] += len(messages)
        layer.stats["delivered_read_fanout"] += len(messages)
        first = messages[0][0] if messages else upper + 1
        if first > position + 1:
            self.result.truncated.append((conversation, first))
        for store_seq, sender, payload in messages:
            self.result.messages.append((conversation, store_seq, sender, payload))
        self.budget -= len(messages)
        position = messages[-1][0] if messages else upper
        self.open[conversation] = position
        return position >= upper

    def _rebuild_open(self):
        """Rebuild the open set from current memberships after a sync-timeline gap."""
        layer = self.layer
        rebuilt = {}
        for conversation, current in layer.user_conversations(self.user).items():
            state = layer.conversation(conversation)
            if not current or state.mode != fmt.MODE_READ:
                continue
            start = max(state.members[self.user], state.mode_since)
            rebuilt[conversation] = self.open.get(conversation, start)
        self.open = rebuilt

    def _resolve_refs(self):
        """Fill in the messages that sync references point to."""
        layer = self.layer
        by_conversation = {}
        for index, conversation, store_seq in self.refs:
            by_conversation.setdefault(conversation, []).append((store_seq, index))
        messages = self.result.messages
        for conversation, wanted in by_conversation.items():
            found = _read_store_seqs(layer, conversation, [seq for seq, _ in wanted])
            for store_seq, index in wanted:
                sender, payload = found.get(store_seq, (None, None))
                messages[index] = (conversation, store_seq, sender, payload)
        layer.stats["delivered_write_fanout"] += len(self.refs)

    def _has_more(self, sync_last):
        if self.sync_pos < self.layer.sync.last_seq(self.user):
            return True
        store = self.layer.store
        return any(
            store.last_seq(conversation) > position
            for conversation, position in self.open.items()
        )


def _read_store_seqs(layer, conversation, seqs):
    """Return {store_seq: (sender, payload)} for the given seqs of a conversation.

    Dense seqs become one range scan, sparse ones one lookup each. A seq
    whose entry expired or was trimmed is absent from the result.
    """
    seqs = sorted(set(seqs))
    found = {}
    store = layer.store
    if seqs[-1] - seqs[0] < 2 * len(seqs):
        wanted = set(seqs)
        for seq, data in store.scan(conversation, start=seqs[0], end=seqs[-1] + 1):
            layer.stats["store_entries_read_write_fanout"] += 1
            if seq in wanted:
                found[seq] = fmt.decode_store_entry(data)
    else:
        for seq in seqs:
            layer.stats["store_entries_read_write_fanout"] += 1
            data = store.get(conversation, seq)
            if data is not None:
                found[seq] = fmt.decode_store_entry(data)
    return found


def legacy_sync(layer, user, after_seq, count):
    """Return (sync_seq, conversation, store_seq, sender, payload) tuples.

    The integer form of IM.SYNC: message references above after_seq in the
    sync timeline, markers skipped.
    NOTE: it reads only the sync timeline, so it misses every message of a
    conversation on read fan-out; cursors have no such gap.
    """
    fmt.check_id(user, "user", fmt.MAX_USER_BYTES)
    refs = []
    position = after_seq
    while len(refs) < count:
        chunk = list(layer.sync.scan(user, start=position + 1, limit=count - len(refs)))
        if not chunk:
            break
        for seq, data in chunk:
            kind, store_seq, conversation = fmt.decode_event(data)
            if kind == fmt.SYNC_KIND_MESSAGE:
                refs.append((seq, conversation, store_seq))
        position = chunk[-1][0]
    result = []
    cache = {}
    for sync_seq, conversation, store_seq in refs:
        if conversation not in cache:
            cache[conversation] = _read_store_seqs(
                layer, conversation, [s for _, c, s in refs if c == conversation]
            )
        sender, payload = cache[conversation].get(store_seq, (None, None))
        result.append((sync_seq, conversation, store_seq, sender, payload))
    return result
