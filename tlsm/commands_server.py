"""Connection and server commands: PING, ECHO, QUIT, SELECT, AUTH, HELLO,
CLIENT, CONFIG, INFO and COMMAND.

They follow the handler conventions of tlsm.commands, whose COMMANDS
table takes SERVER_TABLE from here when it is first used. COMMAND reads
tlsm.commands.COMMANDS when it runs.
"""

import fnmatch
import os

from . import commands, reply
from .commands import (
    MAX_COUNT,
    SERVER_NAME,
    CloseAfterReply,
    CommandError,
    _arg,
    parse_int,
    show_arg,
)


def cmd_ping(conn, args):
    """PING [message] -> PONG, or the message as a bulk string."""
    if len(args) == 1:
        return reply.PONG
    return reply.bulk(args[1])


def cmd_echo(conn, args):
    """ECHO message -> the message."""
    return reply.bulk(args[1])


def cmd_quit(conn, args):
    """QUIT -> OK, then the server closes the connection."""
    return CloseAfterReply(reply.OK)


def cmd_select(conn, args):
    """SELECT index -> OK for database 0, the only one."""
    if parse_int(args[1], "database index", 0, MAX_COUNT) != 0:
        raise CommandError(
            f"ERR DB index '{show_arg(args[1])}' is out of range: "
            "tlsm has only database 0"
        )
    return reply.OK


def cmd_auth(conn, args):
    """AUTH [username] password -> an error: tlsm has no passwords."""
    raise CommandError(
        "ERR AUTH called without any password configured: tlsm has no authentication"
    )


def server_info_map(conn):
    """Return the map that HELLO replies with."""
    return {
        "server": SERVER_NAME,
        "version": conn.server.version,
        "proto": conn.proto,
        "id": conn.client_id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


def cmd_hello(conn, args):
    """HELLO [protover [AUTH username password] [SETNAME name]] -> server map."""
    if len(args) >= 2:
        version = parse_int(args[1], "protocol version", 0, MAX_COUNT)
        if version not in (2, 3):
            raise CommandError(
                f"NOPROTO unsupported protocol version {version}, use 2 or 3"
            )
        name = None
        index = 2
        while index < len(args):
            option = args[index].upper()
            if option == b"AUTH" and index + 2 < len(args):
                # NOTE: tlsm has no authentication, so any credentials pass,
                # as they do for a Redis default user without a password.
                index += 3
            elif option == b"SETNAME" and index + 1 < len(args):
                name = args[index + 1]
                index += 2
            else:
                raise CommandError(
                    f"ERR syntax error in HELLO option '{show_arg(args[index])}'"
                )
        if name is not None:
            conn.set_name(validate_client_name(name))
        conn.proto = version
    return reply.encode_value(server_info_map(conn), conn.proto)


def validate_client_name(name):
    """Return name, raising CommandError if it contains spaces or control characters."""
    if any(byte <= 32 or byte >= 127 for byte in name):
        raise CommandError(
            f"ERR client name '{show_arg(name)}' contains spaces, newlines or "
            "other special characters"
        )
    return name


def cmd_client(conn, args):
    """CLIENT ID | SETNAME name | GETNAME | SETINFO attr value | INFO | LIST."""
    sub = args[1].upper()
    if sub == b"ID" and len(args) == 2:
        return b":%d\r\n" % conn.client_id
    if sub == b"SETNAME" and len(args) == 3:
        conn.set_name(validate_client_name(args[2]))
        return reply.OK
    if sub == b"GETNAME" and len(args) == 2:
        return (
            reply.null_bulk(conn.proto) if conn.name is None else reply.bulk(conn.name)
        )
    if sub == b"SETINFO" and len(args) == 4:
        attribute = args[2].upper()
        if attribute not in (b"LIB-NAME", b"LIB-VER"):
            raise CommandError(
                f"ERR unrecognized CLIENT SETINFO attribute '{show_arg(args[2])}', "
                "expected LIB-NAME or LIB-VER"
            )
        conn.lib_info[attribute.decode().lower()] = validate_client_name(args[3])
        return reply.OK
    if sub == b"INFO" and len(args) == 2:
        return reply.bulk(conn.describe().encode() + b"\n")
    if sub == b"LIST" and len(args) == 2:
        lines = [c.describe() for c in conn.server.connections.values()]
        return reply.bulk("".join(line + "\n" for line in lines).encode())
    if sub in (b"ID", b"SETNAME", b"GETNAME", b"SETINFO", b"INFO", b"LIST"):
        raise CommandError(
            f"ERR wrong number of arguments for 'client|{sub.decode().lower()}' command"
        )
    raise CommandError(
        f"ERR unknown subcommand '{show_arg(args[1])}' of CLIENT, expected "
        "ID, SETNAME, GETNAME, SETINFO, INFO or LIST"
    )


def cmd_config(conn, args):
    """CONFIG GET pattern [pattern ...] -> map of the matching parameters.

    Only a few read-only parameters exist, for tools such as redis-benchmark
    that read them at start.
    """
    if args[1].upper() != b"GET" or len(args) < 3:
        raise CommandError(
            "ERR only CONFIG GET pattern [pattern ...] is supported; "
            "tlsm takes its settings from the command line"
        )
    config = conn.server.config
    parameters = {
        "appendonly": "yes",
        "appendfsync": "always" if config.sync == "always" else "no",
        "save": "",
        "databases": "1",
        "dir": os.path.abspath(config.data_dir),
        "port": str(conn.server.port),
        "bind": config.host,
    }
    matched = {}
    for pattern in args[2:]:
        text = pattern.decode("utf-8", "replace").lower()
        for key, value in parameters.items():
            if fnmatch.fnmatchcase(key, text):
                matched[key] = value
    return reply.encode_value(matched, conn.proto)


def cmd_info(conn, args):
    """INFO [section ...] -> "key:value" lines under "# Section" headers."""
    sections = conn.server.info_sections()
    requested = [arg.decode("utf-8", "replace").lower() for arg in args[1:]]
    if not requested or any(
        name in ("all", "everything", "default") for name in requested
    ):
        requested = list(sections)
    lines = []
    for name in requested:
        fields = sections.get(name)
        if fields is None:
            continue
        if lines:
            lines.append("")
        lines.append("# " + name.capitalize())
        lines.extend(f"{key}:{value}" for key, value in fields.items())
    return reply.bulk(("\r\n".join(lines) + "\r\n").encode() if lines else b"")


def command_info(spec):
    """Return the COMMAND INFO entry of spec in the Redis 7 layout."""
    # name, arity, flags, first key, last key, key step, ACL categories,
    # tips, key specs, subcommands. TL and IM commands take their timeline
    # or conversation as the first argument, which tools treat as the key.
    keyed = spec.group in ("timeline", "im")
    flags = [reply.SimpleString(flag) for flag in spec.flags]
    return [
        spec.name,
        spec.arity,
        flags,
        1 if keyed else 0,
        1 if keyed else 0,
        1 if keyed else 0,
        [],
        [],
        [],
        [],
    ]


def command_docs(spec):
    """Return the COMMAND DOCS map of spec."""
    return {
        "summary": spec.summary,
        "since": "0.1.0",
        "group": spec.group,
        "arguments": [dict(argument) for argument in spec.arguments],
    }


def _lookup_specs(names):
    specs = []
    for name in names:
        spec = commands.COMMANDS.get(name.lower())
        specs.append((name, spec))
    return specs


def cmd_command(conn, args):
    """COMMAND | COMMAND COUNT | COMMAND INFO [name ...] | COMMAND DOCS [name ...]."""
    proto = conn.proto
    if len(args) == 1:
        return reply.encode_value(
            [command_info(s) for s in commands.COMMANDS.values()], proto
        )
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return b":%d\r\n" % len(commands.COMMANDS)
    if sub == b"INFO":
        if len(args) == 2:
            infos = [command_info(s) for s in commands.COMMANDS.values()]
        else:
            infos = [
                None if spec is None else command_info(spec)
                for _, spec in _lookup_specs(args[2:])
            ]
        return reply.encode_value(infos, proto)
    if sub == b"DOCS":
        if len(args) == 2:
            docs = {s.name: command_docs(s) for s in commands.COMMANDS.values()}
        else:
            docs = {
                spec.name: command_docs(spec)
                for _, spec in _lookup_specs(args[2:])
                if spec is not None
            }
        return reply.encode_value(docs, proto)
    raise CommandError(
        f"ERR unknown subcommand '{show_arg(args[1])}' of COMMAND, expected "
        "COUNT, INFO or DOCS"
    )


SERVER_TABLE = [
    # name, handler, arity, flags, group, summary, arguments
    ("ping", cmd_ping, -1, ("fast",), "connection",
     "Return PONG, or the message given.",
     [_arg("message", optional=True)]),
    ("echo", cmd_echo, 2, ("fast",), "connection",
     "Return the message given.", [_arg("message")]),
    ("hello", cmd_hello, -1, ("fast", "no-auth"), "connection",
     "Choose the protocol version and return the server's properties.",
     [_arg("protover", "integer", optional=True)]),
    ("auth", cmd_auth, -2, ("fast", "no-auth"), "connection",
     "Always fails: tlsm has no authentication.", [_arg("password")]),
    ("quit", cmd_quit, -1, ("fast",), "connection",
     "Close the connection after the reply.", []),
    ("select", cmd_select, 2, ("fast",), "connection",
     "Accept database 0, the only one.", [_arg("index", "integer")]),
    ("client", cmd_client, -2, (), "connection",
     "Client name, id and library information.",
     [_arg("subcommand"), _arg("argument", optional=True, multiple=True)]),
    ("command", cmd_command, -1, (), "server",
     "Describe the server's commands.",
     [_arg("subcommand", optional=True), _arg("name", optional=True, multiple=True)]),
    ("config", cmd_config, -2, (), "server",
     "Read a few configuration values (GET only).",
     [_arg("get", "pure-token", token="GET"), _arg("pattern", multiple=True)]),
    ("info", cmd_info, -1, (), "server",
     "Return server, client, statistics and engine information.",
     [_arg("section", optional=True, multiple=True)]),
]  # fmt: skip
