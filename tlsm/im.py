"""IM layer: conversations, members and per-user sync on top of timelines.

Data model (docs/im.md has the full account with examples):

- im:store:<conversation>    one entry per message, in send order. The store
                             seq is the message's position in the conversation.
- im:sync:<user>             one entry per message the user receives, in the
                             order the server accepted them. A device stores the
                             last sync seq it processed and reads on from it.
- im:members:<conversation>  one entry per join. The member list is rebuilt
                             from it on first use after a start, so membership
                             survives restarts without a separate table.

Entry layouts (on disk: never change them, add a new kind instead). Integers
are big-endian.

    store entry:   sender_len u16 | sender bytes | payload bytes
    sync entry:    kind u8 = 1 (message reference) | store_seq u64 | conversation bytes
    members entry: kind u8 = 1 (join) | user bytes

A sync entry references the store entry instead of copying the payload, so a
send to a group of N members writes the payload once and N small references.
IM.SEND writes the store entry and the N references in one atomic batch: a
crash leaves either all of them or none.

The store seq that the references carry is computed before the write as
last_seq(store) + 1. That is right only while this process is the only
writer of im:* timelines, which the server ensures by rejecting TL writes to
them and running every IM write on its event-loop thread. The seq the engine
returns is compared with it after the write as a check of that assumption.
"""

import logging
import struct

from .errors import InvalidArgumentError, TlsmError
from .keys import MAX_TIMELINE_ID_BYTES

log = logging.getLogger(__name__)

IM_PREFIX = b"im:"
STORE_PREFIX = b"im:store:"
SYNC_PREFIX = b"im:sync:"
MEMBERS_PREFIX = b"im:members:"

# On disk: kind bytes of sync and members entries.
SYNC_KIND_MESSAGE = 1
MEMBERS_KIND_JOIN = 1

_STORE_HEADER = struct.Struct(">H")
_SYNC_HEADER = struct.Struct(">BQ")

MAX_USER_BYTES = MAX_TIMELINE_ID_BYTES - len(SYNC_PREFIX)
MAX_CONVERSATION_BYTES = MAX_TIMELINE_ID_BYTES - len(MEMBERS_PREFIX)


class NotMemberError(TlsmError):
    """The sender of a message is not a member of the conversation."""


class ImInvariantError(TlsmError):
    """The engine assigned a store seq other than the one the references carry."""


def _check_id(value, field, limit):
    if not value:
        raise InvalidArgumentError(f"{field} must not be empty")
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is {len(value)} bytes, above the limit of {limit} bytes"
        )
    return value


def store_timeline(conversation):
    """Return the id of the store timeline of conversation (bytes)."""
    _check_id(conversation, "conversation", MAX_CONVERSATION_BYTES)
    return STORE_PREFIX + conversation


def sync_timeline(user):
    """Return the id of the sync timeline of user (bytes)."""
    _check_id(user, "user", MAX_USER_BYTES)
    return SYNC_PREFIX + user


def members_timeline(conversation):
    """Return the id of the members timeline of conversation (bytes)."""
    _check_id(conversation, "conversation", MAX_CONVERSATION_BYTES)
    return MEMBERS_PREFIX + conversation


def encode_store_entry(sender, payload):
    """Return the store entry of a message: sender length, sender, payload."""
    return _STORE_HEADER.pack(len(sender)) + sender + payload


def decode_store_entry(data):
    """Return (sender, payload) from a store entry."""
    (sender_len,) = _STORE_HEADER.unpack_from(data)
    end = _STORE_HEADER.size + sender_len
    return data[_STORE_HEADER.size : end], data[end:]


def encode_sync_entry(conversation, store_seq):
    """Return the sync entry that references message store_seq of conversation."""
    return _SYNC_HEADER.pack(SYNC_KIND_MESSAGE, store_seq) + conversation


def decode_sync_entry(data):
    """Return (conversation, store_seq) from a sync entry.

    Raises ImInvariantError for a kind this version does not know.
    """
    kind, store_seq = _SYNC_HEADER.unpack_from(data)
    if kind != SYNC_KIND_MESSAGE:
        raise ImInvariantError(f"sync entry has unknown kind {kind}")
    return data[_SYNC_HEADER.size :], store_seq


class ImLayer:
    """IM operations on an open engine.

    Not thread-safe: the server calls it from its event-loop thread only, and
    send() relies on that (see the module docstring). Membership is cached
    per conversation after its first use. Methods take and return bytes.
    """

    def __init__(self, db, max_payload_bytes):
        self._db = db
        self._max_payload_bytes = max_payload_bytes
        # conversation -> (members in join order, the same as a set)
        # NOTE: the cache is never trimmed, so it grows with the number of
        # conversations used since the start (one list of user ids each).
        self._members = {}

    def _load_members(self, conversation):
        cached = self._members.get(conversation)
        if cached is None:
            ordered = []
            seen = set()
            for _, entry in self._db.scan(members_timeline(conversation)):
                if entry[:1] != bytes((MEMBERS_KIND_JOIN,)):
                    log.warning(
                        "skipping members entry of unknown kind %r in conversation %r",
                        entry[:1],
                        conversation,
                    )
                    continue
                user = entry[1:]
                if user not in seen:
                    seen.add(user)
                    ordered.append(user)
            cached = (ordered, seen)
            self._members[conversation] = cached
        return cached

    def members(self, conversation):
        """Return the members of conversation in the order they joined."""
        return list(self._load_members(conversation)[0])

    def join(self, conversation, users):
        """Add users to conversation.

        Returns (number of users newly added, ids of the timelines written).
        Users already in the conversation, and repeats within users, are
        skipped. All joins are one atomic batch.
        """
        timeline_id = members_timeline(conversation)
        for user in users:
            sync_timeline(user)
        ordered, seen = self._load_members(conversation)
        added = []
        for user in users:
            if user not in seen and user not in added:
                added.append(user)
        if not added:
            return 0, ()
        self._db.append_batch(
            [(timeline_id, bytes((MEMBERS_KIND_JOIN,)) + user) for user in added]
        )
        ordered.extend(added)
        seen.update(added)
        return len(added), (timeline_id,)

    def send(self, conversation, sender, payload):
        """Store a message and reference it from every member's sync timeline.

        Returns (store seq, ids of the timelines written). Raises
        NotMemberError when sender is not a member, InvalidArgumentError when
        an id or the payload exceeds its limit, and ImInvariantError when the
        engine assigned an unexpected store seq.
        """
        store_id = store_timeline(conversation)
        sync_timeline(sender)
        room = self._max_payload_bytes - _STORE_HEADER.size - len(sender)
        if len(payload) > room:
            raise InvalidArgumentError(
                f"message payload is {len(payload)} bytes, above the limit of "
                f"{room} bytes (max_payload_bytes {self._max_payload_bytes} minus "
                f"{_STORE_HEADER.size + len(sender)} bytes of sender header)"
            )
        ordered, seen = self._load_members(conversation)
        if sender not in seen:
            raise NotMemberError(
                f"user '{sender.decode('utf-8', 'backslashreplace')}' is not a member "
                f"of conversation '{conversation.decode('utf-8', 'backslashreplace')}'"
                ": add it with IM.JOIN first"
            )
        store_seq = self._db.last_seq(store_id) + 1
        reference = encode_sync_entry(conversation, store_seq)
        batch = [(store_id, encode_store_entry(sender, payload))]
        batch.extend((SYNC_PREFIX + user, reference) for user in ordered)
        seqs = self._db.append_batch(batch)
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
        return store_seq, [timeline_id for timeline_id, _ in batch]

    def sync(self, user, after_seq, count):
        """Return up to count messages of user's sync timeline above after_seq.

        Each is (sync_seq, conversation, store_seq, sender, payload). sender
        and payload are None when the store entry is missing.
        """
        refs = []
        for sync_seq, entry in self._db.scan(
            sync_timeline(user), start=after_seq + 1, limit=count
        ):
            conversation, store_seq = decode_sync_entry(entry)
            refs.append((sync_seq, conversation, store_seq))
        messages = self._resolve(refs)
        result = []
        for sync_seq, conversation, store_seq in refs:
            sender, payload = messages.get((conversation, store_seq), (None, None))
            result.append((sync_seq, conversation, store_seq, sender, payload))
        return result

    def _resolve(self, refs):
        """Read the store entries that refs point to.

        Returns {(conversation, store_seq): (sender, payload)}.
        """
        found = {}
        index = 0
        while index < len(refs):
            # A run of consecutive references to one conversation becomes a
            # single scan when its seqs are dense, else one get per seq.
            conversation = refs[index][1]
            end = index
            while end < len(refs) and refs[end][1] == conversation:
                end += 1
            seqs = sorted({ref[2] for ref in refs[index:end]})
            store_id = store_timeline(conversation)
            if seqs[-1] - seqs[0] < 2 * len(seqs):
                requested_seqs = set(seqs)
                for seq, data in self._db.scan(
                    store_id, start=seqs[0], end=seqs[-1] + 1
                ):
                    if seq in requested_seqs:
                        found[(conversation, seq)] = decode_store_entry(data)
            else:
                for seq in seqs:
                    data = self._db.get(store_id, seq)
                    if data is not None:
                        found[(conversation, seq)] = decode_store_entry(data)
            index = end
        return found

    def history(self, conversation, before, count):
        """Return up to count messages with store seq < before, newest first.

        Each is (store_seq, sender, payload). before=None starts at the newest.
        """
        result = []
        for store_seq, data in self._db.scan(
            store_timeline(conversation), end=before, limit=count, reverse=True
        ):
            sender, payload = decode_store_entry(data)
            result.append((store_seq, sender, payload))
        return result
