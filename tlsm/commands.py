"""Command table and handlers of the RESP server.

Every handler is named cmd_<command> with dots turned into underscores
(cmd_tl_append serves TL.APPEND) and has the signature
handler(conn, args) -> result. args is the whole request as a list of bytes,
the command name first. conn is the server's Connection and provides
conn.db, conn.im, conn.server and conn.proto (2 or 3).

A handler returns one of:
- bytes: a complete encoded reply;
- BlockingRead: nothing to return yet, so the connection waits for a write
  to one of the listed timelines or for the timeout;
- CloseAfterReply: a reply after which the connection is closed (QUIT).

A handler signals a client mistake by raising CommandError, whose message
starts with the error code word, or InvalidArgumentError from the engine,
which the server sends as an ERR reply. Any other exception is a server bug:
the server logs it and replies ERR internal error.

The IM.* handlers live in tlsm.commands_im, and the connection and server
commands (PING, HELLO, CLIENT, COMMAND, CONFIG, INFO, ...) in
tlsm.commands_server. Timeline ids starting with "im:"
stay reserved in the default table, so TL.APPEND and TL.MAPPEND reject them.
"""

from . import reply
from .keys import MAX_SEQ

MAX_COUNT = (1 << 63) - 1
# Largest BLOCK timeout in milliseconds: about 31 years, far beyond any
# client's patience, and small enough for the event loop's float clock.
MAX_BLOCK_MS = 1 << 50
# Timeline ids reserved in the default table: the IM layer kept its data
# under this prefix before it moved to its own tables, and TL writes there
# stay rejected so old data directories are never mixed with new writes.
IM_PREFIX = b"im:"
SERVER_NAME = "tlsm"


class CommandError(Exception):
    """A client mistake; the message starts with the error code (ERR, NOTMEMBER)."""


class BlockingRead:
    """A read that found nothing and waits for a write or a timeout.

    read() returns the encoded reply once one of timeline_ids has entries to
    return, or None while there is still nothing. timeout is in seconds from
    the request's arrival, None to wait forever. timeout_reply is sent when
    the timeout expires or the server shuts down.
    """

    __slots__ = ("read", "timeline_ids", "timeout", "timeout_reply")

    def __init__(self, timeline_ids, read, timeout, timeout_reply):
        self.timeline_ids = timeline_ids
        self.read = read
        self.timeout = timeout
        self.timeout_reply = timeout_reply


class CloseAfterReply:
    """A reply after which the server closes the connection."""

    __slots__ = ("reply",)

    def __init__(self, reply_bytes):
        self.reply = reply_bytes


class CommandSpec:
    """One entry of the command table.

    arity counts the command name, as Redis does: a positive arity is the
    exact number of arguments, a negative one the minimum.
    """

    __slots__ = ("arguments", "arity", "flags", "group", "handler", "name", "summary")

    def __init__(self, name, handler, arity, flags, group, summary, arguments):
        self.name = name
        self.handler = handler
        self.arity = arity
        self.flags = flags
        self.group = group
        self.summary = summary
        self.arguments = arguments


# ---------------------------------------------------------------------------
# Argument parsing


def show_arg(arg, limit=64):
    """Return arg as printable text for an error message, cut to limit characters."""
    text = arg.decode("utf-8", "backslashreplace")
    # Control characters (a NUL, CR or LF) are shown escaped like bytes that
    # are not UTF-8, so an error line never carries them raw.
    text = "".join(
        f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def wrong_arity_error(name):
    """Return the error for a wrong number of arguments to command name (bytes)."""
    return CommandError(
        f"ERR wrong number of arguments for '{show_arg(name.lower())}' command"
    )


def parse_int(arg, field, minimum, maximum):
    """Parse arg as a decimal integer in minimum..maximum.

    Raises CommandError naming the value and the allowed range. Unlike int(),
    this rejects spaces, underscores and a leading plus sign.
    """
    digits = arg[1:] if arg[:1] == b"-" else arg
    if digits.isdigit() and len(digits) <= 20:
        value = int(arg)
        if minimum <= value <= maximum:
            return value
    raise CommandError(
        f"ERR value is not an integer or out of range: {field} '{show_arg(arg)}' "
        f"must be an integer in {minimum}..{maximum}"
    )


def parse_seq(arg, field="seq"):
    """Parse a seq: an integer in 0..MAX_SEQ."""
    return parse_int(arg, field, 0, MAX_SEQ)


def parse_count(arg):
    """Parse the value of a COUNT option: an integer of at least 0."""
    return parse_int(arg, "COUNT", 0, MAX_COUNT)


def parse_block_timeout(arg):
    """Parse a BLOCK value in milliseconds; return seconds, or None for 0 (forever)."""
    millis = parse_int(arg, "BLOCK timeout in milliseconds", 0, MAX_BLOCK_MS)
    return None if millis == 0 else millis / 1000.0


def parse_options(args, start, names, command):
    """Parse trailing NAME value options of a command.

    names maps an upper-case option name (bytes) to its parser. Returns a
    dict from option name to parsed value. Raises CommandError for an unknown
    option or a missing value.
    """
    options = {}
    index = start
    while index < len(args):
        name = args[index].upper()
        parser = names.get(name)
        if parser is None:
            raise CommandError(
                f"ERR syntax error: unexpected argument '{show_arg(args[index])}' "
                f"to '{command}'"
            )
        if index + 1 >= len(args):
            raise CommandError(
                f"ERR syntax error: option {name.decode()} of '{command}' needs a value"
            )
        options[name] = parser(args[index + 1])
        index += 2
    return options


def check_writable(timeline_id):
    """Raise CommandError when timeline_id is reserved for the IM layer."""
    if timeline_id.startswith(IM_PREFIX):
        raise CommandError(
            f"ERR timeline '{show_arg(timeline_id)}' is reserved for the IM layer "
            f"(ids starting with '{IM_PREFIX.decode()}'); IM data lives in its "
            "own tables, written by IM.* commands"
        )


# ---------------------------------------------------------------------------
# Reply encoding of entries


def encode_entries(entries):
    """Encode (seq, payload) pairs as an array of two-element arrays."""
    parts = [b"*%d\r\n" % len(entries)]
    append = parts.append
    for seq, payload in entries:
        append(b"*2\r\n:%d\r\n$%d\r\n%b\r\n" % (seq, len(payload), payload))
    return b"".join(parts)


# ---------------------------------------------------------------------------
# TL.* handlers


def cmd_tl_append(conn, args):
    """TL.APPEND timeline payload -> integer seq."""
    timeline_id = args[1]
    check_writable(timeline_id)
    seq = conn.db.append(timeline_id, args[2])
    conn.server.notify_written((timeline_id,))
    return b":%d\r\n" % seq


def cmd_tl_del(conn, args):
    """TL.DEL timeline seq -> 1 when an entry was deleted, else 0."""
    timeline_id = args[1]
    check_writable(timeline_id)
    seq = parse_seq(args[2])
    if conn.db.get(timeline_id, seq) is None:
        return b":0\r\n"
    conn.db.delete(timeline_id, seq)
    return b":1\r\n"


def cmd_tl_trim(conn, args):
    """TL.TRIM timeline before_seq -> OK; deletes every entry below before_seq."""
    timeline_id = args[1]
    check_writable(timeline_id)
    conn.db.trim(timeline_id, parse_seq(args[2], "before_seq"))
    return reply.OK


def cmd_tl_deltimeline(conn, args):
    """TL.DELTIMELINE timeline -> OK; blocked readers of it get a DELETED error."""
    timeline_id = args[1]
    check_writable(timeline_id)
    conn.db.delete_timeline(timeline_id)
    last = conn.db.last_seq(timeline_id)
    conn.server.notify_deleted(
        (timeline_id,),
        reply.error(
            f"DELETED timeline '{show_arg(timeline_id)}' was deleted while this "
            f"read waited; new appends continue above seq {last}"
        ),
    )
    return reply.OK


def cmd_tl_mappend(conn, args):
    """TL.MAPPEND timeline payload [timeline payload ...] -> array of seqs."""
    if len(args) % 2 == 0:
        raise wrong_arity_error(args[0])
    items = []
    for index in range(1, len(args), 2):
        check_writable(args[index])
        items.append((args[index], args[index + 1]))
    seqs = conn.db.append_batch(items)
    conn.server.notify_written({timeline_id for timeline_id, _ in items})
    parts = [b"*%d\r\n" % len(seqs)]
    parts.extend(b":%d\r\n" % seq for seq in seqs)
    return b"".join(parts)


def cmd_tl_get(conn, args):
    """TL.GET timeline seq -> bulk string or null."""
    payload = conn.db.get(args[1], parse_seq(args[2]))
    if payload is None:
        return reply.null_bulk(conn.proto)
    return reply.bulk(payload)


def cmd_tl_last(conn, args):
    """TL.LAST timeline -> integer, 0 for an empty timeline."""
    return b":%d\r\n" % conn.db.last_seq(args[1])


def parse_range_bound(arg, is_lower):
    """Parse an XRANGE-style bound into an inclusive seq.

    "-" and "+" are the open ends; "(" before a number makes the bound
    exclusive. An exclusive bound can step outside 0..MAX_SEQ, which gives an
    empty range, not an error.
    """
    if arg == b"-":
        return 0
    if arg == b"+":
        return MAX_SEQ
    if arg[:1] == b"(":
        seq = parse_seq(arg[1:], "range bound")
        return seq + 1 if is_lower else seq - 1
    return parse_seq(arg, "range bound")


def scan_inclusive(db, timeline_id, low, high, count, reverse):
    """Return the entries with low <= seq <= high, at most count of them."""
    if count == 0 or low > high or low > MAX_SEQ or high < 0:
        return []
    end = None if high >= MAX_SEQ else high + 1
    return list(db.scan(timeline_id, start=low, end=end, limit=count, reverse=reverse))


_RANGE_OPTIONS = {b"COUNT": parse_count}


def cmd_tl_range(conn, args):
    """TL.RANGE timeline start end [COUNT n] -> array of [seq, payload]."""
    low = parse_range_bound(args[2], is_lower=True)
    high = parse_range_bound(args[3], is_lower=False)
    options = parse_options(args, 4, _RANGE_OPTIONS, "tl.range")
    count = options.get(b"COUNT")
    return encode_entries(scan_inclusive(conn.db, args[1], low, high, count, False))


def cmd_tl_revrange(conn, args):
    """TL.REVRANGE timeline end start [COUNT n] -> entries, newest first."""
    high = parse_range_bound(args[2], is_lower=False)
    low = parse_range_bound(args[3], is_lower=True)
    options = parse_options(args, 4, _RANGE_OPTIONS, "tl.revrange")
    count = options.get(b"COUNT")
    return encode_entries(scan_inclusive(conn.db, args[1], low, high, count, True))


def parse_pull_args(db, args):
    """Parse TL.PULL arguments.

    Returns (count, blocking, timeout, timeline_ids, after_seqs).

    timeout is in seconds, None for BLOCK 0 (wait forever). "$" as a seq is
    resolved to the timeline's last seq at this moment.
    """
    count = None
    blocking = False
    timeout = None
    index = 1
    while index < len(args):
        option = args[index].upper()
        if option == b"TIMELINES":
            break
        if index + 1 >= len(args):
            raise CommandError(
                f"ERR syntax error: option '{show_arg(option)}' of 'tl.pull' "
                "needs a value"
            )
        if option == b"COUNT":
            count = parse_count(args[index + 1])
        elif option == b"BLOCK":
            blocking = True
            timeout = parse_block_timeout(args[index + 1])
        else:
            raise CommandError(
                f"ERR syntax error: unexpected argument '{show_arg(args[index])}' "
                "to 'tl.pull', expected COUNT, BLOCK or TIMELINES"
            )
        index += 2
    rest = args[index + 1 :]
    if index >= len(args) or not rest or len(rest) % 2:
        raise CommandError(
            "ERR syntax error: 'tl.pull' needs TIMELINES followed by the same "
            "number of timelines and seqs, for example TL.PULL TIMELINES t1 t2 0 0"
        )
    half = len(rest) // 2
    timeline_ids = rest[:half]
    after_seqs = []
    for timeline_id, arg in zip(timeline_ids, rest[half:]):
        after_seqs.append(db.last_seq(timeline_id) if arg == b"$" else parse_seq(arg))
    return count, blocking, timeout, timeline_ids, after_seqs


def cmd_tl_pull(conn, args):
    """TL.PULL [COUNT n] [BLOCK ms] TIMELINES t1 ... s1 ... -> entries above seqs."""
    db = conn.db
    count, blocking, timeout, timeline_ids, after_seqs = parse_pull_args(db, args)

    def read():
        found = []
        for timeline_id, after in zip(timeline_ids, after_seqs):
            if after >= MAX_SEQ or count == 0:
                continue
            entries = list(db.scan(timeline_id, start=after + 1, limit=count))
            if entries:
                found.append((timeline_id, entries))
        if not found:
            return None
        # RESP3: a map from timeline to entries. RESP2: an array of
        # [timeline, entries] pairs, the shape of XREAD.
        proto = conn.proto
        parts = [
            reply.map_header(len(found), 3) if proto == 3 else b"*%d\r\n" % len(found)
        ]
        for timeline_id, entries in found:
            if proto != 3:
                parts.append(b"*2\r\n")
            parts.append(reply.bulk(timeline_id))
            parts.append(encode_entries(entries))
        return b"".join(parts)

    result = read()
    if result is not None:
        return result
    nil = reply.null_array(conn.proto)
    if not blocking:
        return nil
    return BlockingRead(set(timeline_ids), read, timeout, nil)


# ---------------------------------------------------------------------------
# Command table


def _arg(name, arg_type="string", optional=False, multiple=False, token=None, parts=()):
    # One argument of COMMAND DOCS. redis-cli 7 builds its hints from these
    # and expects "arguments" in every argument of type block or oneof.
    argument = {"name": name, "type": arg_type}
    if token is not None:
        argument["token"] = token
    if parts:
        argument["arguments"] = [dict(part) for part in parts]
    flags = [
        flag for flag, on in (("optional", optional), ("multiple", multiple)) if on
    ]
    if flags:
        argument["flags"] = [reply.SimpleString(flag) for flag in flags]
    return tuple(argument.items())


_TIMELINE = _arg("timeline", "key")
_COUNT = _arg("count", "integer", optional=True, token="COUNT")
_BLOCK = _arg("milliseconds", "integer", optional=True, token="BLOCK")

_TABLE = [
    # name, handler, arity, flags, group, summary, arguments
    ("tl.append", cmd_tl_append, 3, ("write", "fast"), "timeline",
     "Append a payload to a timeline and return its seq.",
     [_TIMELINE, _arg("payload")]),
    ("tl.mappend", cmd_tl_mappend, -3, ("write",), "timeline",
     "Append to several timelines in one atomic batch and return the seqs.",
     [_arg("pair", "block", multiple=True, parts=[_TIMELINE, _arg("payload")])]),
    ("tl.del", cmd_tl_del, 3, ("write", "fast"), "timeline",
     "Delete the entry at a seq; return 1 if there was one, else 0.",
     [_TIMELINE, _arg("seq", "integer")]),
    ("tl.trim", cmd_tl_trim, 3, ("write", "fast"), "timeline",
     "Delete every entry below a seq, as one range tombstone.",
     [_TIMELINE, _arg("before_seq", "integer")]),
    ("tl.deltimeline", cmd_tl_deltimeline, 2, ("write", "fast"), "timeline",
     "Delete every entry of a timeline; its seqs continue above the last.",
     [_TIMELINE]),
    ("tl.get", cmd_tl_get, 3, ("readonly", "fast"), "timeline",
     "Return the payload at a seq, or null.",
     [_TIMELINE, _arg("seq", "integer")]),
    ("tl.last", cmd_tl_last, 2, ("readonly", "fast"), "timeline",
     "Return the last seq of a timeline, 0 when it is empty.",
     [_TIMELINE]),
    ("tl.range", cmd_tl_range, -4, ("readonly",), "timeline",
     "Return entries between two seqs, oldest first.",
     [_TIMELINE, _arg("start"), _arg("end"), _COUNT]),
    ("tl.revrange", cmd_tl_revrange, -4, ("readonly",), "timeline",
     "Return entries between two seqs, newest first.",
     [_TIMELINE, _arg("end"), _arg("start"), _COUNT]),
    ("tl.pull", cmd_tl_pull, -4, ("readonly", "blocking"), "timeline",
     "Return entries above a seq for each timeline, waiting with BLOCK.",
     [_COUNT, _BLOCK, _arg("timelines", "pure-token", token="TIMELINES"),
      _arg("timeline", "key", multiple=True), _arg("seq", multiple=True)]),
]  # fmt: skip


def __getattr__(attribute):
    """Build COMMANDS, the command table by lowercase name, on first use.

    tlsm.commands_im and tlsm.commands_server import helpers from this
    module, so their tables join it here rather than at import, and any of
    the three modules can be imported first.
    """
    if attribute != "COMMANDS":
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    from .commands_im import IM_TABLE
    from .commands_server import SERVER_TABLE

    table = {
        name.encode(): CommandSpec(
            name, handler, arity, flags, group, summary, arguments
        )
        for name, handler, arity, flags, group, summary, arguments in _TABLE
        + IM_TABLE
        + SERVER_TABLE
    }
    # Later lookups find the global and skip this function.
    globals()["COMMANDS"] = table
    return table
