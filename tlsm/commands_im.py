"""IM.* command handlers of the RESP server (conventions in tlsm.commands).

The data model is in tlsm.im and docs/im.md, the wire forms in
docs/commands.md. tlsm.commands.COMMANDS takes IM_TABLE from here when
it is first used.
"""

from . import im_format as fmt
from . import reply
from .commands import (
    BlockingRead,
    CommandError,
    parse_block_timeout,
    parse_count,
    parse_int,
    parse_options,
    parse_seq,
    wrong_arity_error,
)
from .im import IdConflictError, NotMemberError, ResyncError
from .im_sync import SyncReader, legacy_sync
from .keys import MAX_SEQ

DEFAULT_SYNC_COUNT = 100
DEFAULT_HISTORY_COUNT = 20
MAX_POLICY_VALUE = (1 << 63) - 1


def _notify(conn, keys):
    if keys:
        conn.server.notify_written(keys)


def cmd_im_join(conn, args):
    """IM.JOIN conversation user [user ...] -> integer, the users newly added."""
    added, keys = conn.im.join(args[1], args[2:])
    _notify(conn, keys)
    return b":%d\r\n" % added


def cmd_im_leave(conn, args):
    """IM.LEAVE conversation user [user ...] -> integer, the members removed."""
    removed, keys = conn.im.leave(args[1], args[2:])
    _notify(conn, keys)
    return b":%d\r\n" % removed


def cmd_im_members(conn, args):
    """IM.MEMBERS conversation -> array of users in join order."""
    members = conn.im.members(args[1])
    return b"".join([b"*%d\r\n" % len(members)] + [reply.bulk(u) for u in members])


def _parse_policy_value(field):
    def parse(arg):
        return parse_int(arg, field, 0, MAX_POLICY_VALUE)

    return parse


_POLICY_OPTIONS = {
    b"FANOUT-THRESHOLD": _parse_policy_value("FANOUT-THRESHOLD"),
    b"RETENTION": _parse_policy_value("RETENTION seconds"),
}


def cmd_im_policy(conn, args):
    """IM.POLICY conversation [FANOUT-THRESHOLD n] [RETENTION s] -> policy map."""
    options = parse_options(args, 2, _POLICY_OPTIONS, "im.policy")
    layer = conn.im
    if options:
        keys = layer.set_policy(
            args[1],
            threshold=options.get(b"FANOUT-THRESHOLD"),
            retention=options.get(b"RETENTION"),
        )
        _notify(conn, keys)
    state = layer.conversation(args[1])
    policy = {
        "fanout": "read" if state.mode == fmt.MODE_READ else "write",
        "fanout_since": state.mode_since,
        "fanout_threshold": layer.threshold_of(state),
        "members": len(state.members),
        "retention": state.retention,
    }
    return reply.encode_value(policy, conn.proto)


def cmd_im_send(conn, args):
    """IM.SEND conversation sender [client_msg_id] payload -> integer store seq."""
    if len(args) == 4:
        client_msg_id, payload = None, args[3]
    elif len(args) == 5:
        client_msg_id, payload = args[3], args[4]
    else:
        raise wrong_arity_error(args[0])
    try:
        store_seq, keys = conn.im.send(args[1], args[2], payload, client_msg_id)
    except NotMemberError as exc:
        raise CommandError(f"NOTMEMBER {exc}") from None
    except IdConflictError as exc:
        raise CommandError(f"IDCONFLICT {exc}") from None
    _notify(conn, keys)
    return b":%d\r\n" % store_seq


_SYNC_OPTIONS = {b"COUNT": parse_count, b"BLOCK": parse_block_timeout}


def cmd_im_sync(conn, args):
    """IM.SYNC user cursor [COUNT n] [BLOCK ms] -> map of messages and next cursor."""
    user, token = args[1], args[2]
    options = parse_options(args, 3, _SYNC_OPTIONS, "im.sync")
    count = options.get(b"COUNT", DEFAULT_SYNC_COUNT)
    if token[:1].isdigit():
        return _legacy_sync(conn, user, parse_seq(token, "after_seq"), count, options)
    layer = conn.im
    proto = conn.proto
    try:
        first = SyncReader(layer, user, token)
    except fmt.CursorError as exc:
        raise CommandError(f"INVALIDCURSOR {exc}") from None
    except ResyncError as exc:
        raise CommandError(f"RESYNC {exc}") from None
    blocking = b"BLOCK" in options
    watch = set()

    def read(reader=None):
        try:
            reader = reader or SyncReader(layer, user, token)
            result = reader.run(count)
        except ResyncError as exc:
            return reply.error(f"RESYNC {exc}")
        if blocking and not result.messages and not result.truncated:
            watch.clear()
            watch.update(result.watch)
            return None
        return _encode_sync_result(result, proto)

    result = read(first)
    if result is not None:
        return result
    timeout = options[b"BLOCK"]
    timeout_reply = reply.null_array(proto)
    expires_in = first.expires_in()
    if expires_in is not None and (timeout is None or expires_in < timeout):
        # The cursor passes the sync retention during the wait.
        timeout = expires_in
        timeout_reply = reply.error(
            "RESYNC cursor passed the sync retention while the request waited; "
            "fetch history with IM.HISTORY and start again from the empty cursor '-'"
        )
    return BlockingRead(watch, read, timeout, timeout_reply)


def _encode_sync_result(result, proto):
    value = {
        "messages": [list(message) for message in result.messages],
        "cursor": result.cursor,
        "has_more": result.has_more,
        "truncated": [[scope, oldest] for scope, oldest in result.truncated],
    }
    return reply.encode_value(value, proto)


def _legacy_sync(conn, user, after_seq, count, options):
    layer = conn.im
    proto = conn.proto

    def read():
        if count == 0 or after_seq >= MAX_SEQ:
            return None
        messages = legacy_sync(layer, user, after_seq, count)
        if not messages:
            return None
        parts = [b"*%d\r\n" % len(messages)]
        null = reply.null_bulk(proto)
        for sync_seq, conversation, store_seq, sender, payload in messages:
            parts.append(b"*5\r\n:%d\r\n" % sync_seq)
            parts.append(reply.bulk(conversation))
            parts.append(b":%d\r\n" % store_seq)
            parts.append(null if sender is None else reply.bulk(sender))
            parts.append(null if payload is None else reply.bulk(payload))
        return b"".join(parts)

    result = read()
    if result is not None:
        return result
    if b"BLOCK" not in options:
        return reply.EMPTY_ARRAY
    watch = {("im.sync", user)}
    return BlockingRead(watch, read, options[b"BLOCK"], reply.null_array(proto))


def cmd_im_ack(conn, args):
    """IM.ACK user device cursor -> OK; stores the device's acknowledged cursor."""
    try:
        conn.im.ack(args[1], args[2], args[3])
    except fmt.CursorError as exc:
        raise CommandError(f"INVALIDCURSOR {exc}") from None
    return reply.OK


def cmd_im_cursor(conn, args):
    """IM.CURSOR user device -> the acknowledged cursor, or nil."""
    token = conn.im.acked_cursor(args[1], args[2])
    return reply.null_bulk(conn.proto) if token is None else reply.bulk(token)


_HISTORY_OPTIONS = {b"BEFORE": parse_seq, b"COUNT": parse_count}


def cmd_im_history(conn, args):
    """IM.HISTORY conversation [BEFORE seq] [COUNT n] -> messages, newest first."""
    options = parse_options(args, 2, _HISTORY_OPTIONS, "im.history")
    count = options.get(b"COUNT", DEFAULT_HISTORY_COUNT)
    if count == 0:
        return reply.EMPTY_ARRAY
    messages = conn.im.history(args[1], options.get(b"BEFORE"), count)
    parts = [b"*%d\r\n" % len(messages)]
    for store_seq, sender, payload in messages:
        parts.append(b"*3\r\n:%d\r\n" % store_seq)
        parts.append(reply.bulk(sender))
        parts.append(reply.bulk(payload))
    return b"".join(parts)


def cmd_im_read(conn, args):
    """IM.READ user conversation seq -> integer, the read marker now stored."""
    marker = conn.im.mark_read(args[1], args[2], parse_seq(args[3], "store seq"))
    return b":%d\r\n" % marker


def cmd_im_unread(conn, args):
    """IM.UNREAD user [conversation] -> integer, or a map conversation -> count."""
    if len(args) == 3:
        fmt.check_id(args[1], "user", fmt.MAX_USER_BYTES)
        return b":%d\r\n" % conn.im.unread(args[1], args[2])
    if len(args) != 2:
        raise wrong_arity_error(args[0])
    return reply.encode_value(conn.im.unread_all(args[1]), conn.proto)


def cmd_im_stats(conn, args):
    """IM.STATS -> map of the IM layer's counters since the server started."""
    return reply.encode_value(dict(conn.im.stats), conn.proto)


def _arg(name, arg_type="string", optional=False, multiple=False, token=None):
    argument = {"name": name, "type": arg_type}
    if token is not None:
        argument["token"] = token
    flags = [
        flag for flag, on in (("optional", optional), ("multiple", multiple)) if on
    ]
    if flags:
        argument["flags"] = [reply.SimpleString(flag) for flag in flags]
    return tuple(argument.items())


_CONVERSATION = _arg("conversation", "key")
_COUNT = _arg("count", "integer", optional=True, token="COUNT")

IM_TABLE = [
    # name, handler, arity, flags, group, summary, arguments
    ("im.join", cmd_im_join, -3, ("write",), "im",
     "Add users to a conversation and return how many were new.",
     [_CONVERSATION, _arg("user", multiple=True)]),
    ("im.leave", cmd_im_leave, -3, ("write",), "im",
     "Remove users from a conversation and return how many were members.",
     [_CONVERSATION, _arg("user", multiple=True)]),
    ("im.members", cmd_im_members, 2, ("readonly",), "im",
     "Return the members of a conversation in join order.",
     [_CONVERSATION]),
    ("im.policy", cmd_im_policy, -2, ("write",), "im",
     "Set or show a conversation's fan-out threshold and retention.",
     [_CONVERSATION,
      _arg("threshold", "integer", optional=True, token="FANOUT-THRESHOLD"),
      _arg("seconds", "integer", optional=True, token="RETENTION")]),
    ("im.send", cmd_im_send, -4, ("write",), "im",
     "Store a message once per client message id and fan it out.",
     [_CONVERSATION, _arg("sender"), _arg("client_msg_id", optional=True),
      _arg("payload")]),
    ("im.sync", cmd_im_sync, -3, ("readonly", "blocking"), "im",
     "Return a user's new messages after a cursor, waiting with BLOCK.",
     [_arg("user"), _arg("cursor"), _COUNT,
      _arg("milliseconds", "integer", optional=True, token="BLOCK")]),
    ("im.ack", cmd_im_ack, 4, ("write",), "im",
     "Store the cursor a device has processed.",
     [_arg("user"), _arg("device"), _arg("cursor")]),
    ("im.cursor", cmd_im_cursor, 3, ("readonly",), "im",
     "Return the cursor a device acknowledged last, or nil.",
     [_arg("user"), _arg("device")]),
    ("im.history", cmd_im_history, -2, ("readonly",), "im",
     "Return a conversation's messages, newest first.",
     [_CONVERSATION, _arg("seq", "integer", optional=True, token="BEFORE"), _COUNT]),
    ("im.read", cmd_im_read, 4, ("write",), "im",
     "Raise a user's read marker in a conversation.",
     [_arg("user"), _CONVERSATION, _arg("seq", "integer")]),
    ("im.unread", cmd_im_unread, -2, ("readonly",), "im",
     "Return unread counts of a user, per conversation.",
     [_arg("user"), _arg("conversation", optional=True)]),
    ("im.stats", cmd_im_stats, 1, ("readonly",), "server",
     "Return the IM layer's write and read counters.", []),
]  # fmt: skip
