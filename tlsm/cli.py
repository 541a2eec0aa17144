"""The `tlsm` command line.

`tlsm serve` runs the RESP server and `tlsm replay` replays a chat log.

Run `tlsm --help` or `tlsm <command> --help` for the options.
"""

import argparse
import logging
import sys

from . import argtypes, im, replay, server
from .keys import DEFAULT_MAX_PAYLOAD_BYTES
from .options import COMPACTION_STYLES, DEFAULT_OPTIONS

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser():
    """Return the argument parser of the `tlsm` command."""
    parser = argparse.ArgumentParser(
        prog="tlsm",
        description="Timeline storage engine for instant messaging.",
    )
    parser.add_argument(
        "--version", action="version", version=f"tlsm {server.server_version()}"
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        default="INFO",
        help="lowest level of log messages written to stderr (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    serve = subparsers.add_parser(
        "serve",
        help="run the RESP server",
        description="Serve TL.* and IM.* commands over RESP until SIGINT or SIGTERM.",
    )
    serve.add_argument(
        "--host",
        default=server.DEFAULT_HOST,
        help=f"address to listen on (default: {server.DEFAULT_HOST})",
    )
    serve.add_argument(
        "--port",
        type=argtypes.port,
        default=server.DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one (default: {server.DEFAULT_PORT})",
    )
    serve.add_argument(
        "--data",
        default=server.DEFAULT_DATA_DIR,
        help=f"data directory, created if missing (default: {server.DEFAULT_DATA_DIR})",
    )
    serve.add_argument(
        "--sync",
        choices=("none", "periodic", "always"),
        default="none",
        help="none: each write reaches the OS before its reply, which survives a "
        "process crash; periodic: also fsynced every --sync-interval-ms, so a "
        "power loss loses at most that much; always: each reply waits for an "
        "fsync that began after its write, shared by every write made while "
        "the previous fsync ran, which survives a power loss (default: none)",
    )
    serve.add_argument(
        "--wal-recovery",
        choices=("tolerate_tail", "point_in_time"),
        default="tolerate_tail",
        help="tolerate_tail: at start, cut a log tail torn by a crash but refuse "
        "to start when intact records follow damage; point_in_time: keep the "
        "records before the first damaged one and drop the rest "
        "(default: tolerate_tail)",
    )
    serve.add_argument(
        "--sync-interval-ms",
        type=argtypes.positive,
        default=100,
        help="fsync period of --sync periodic, in milliseconds (default: 100)",
    )
    serve.add_argument(
        "--max-payload-bytes",
        type=argtypes.payload_limit,
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        help="largest payload accepted, in bytes "
        f"(default: {DEFAULT_MAX_PAYLOAD_BYTES})",
    )
    serve.add_argument(
        "--memtable-bytes",
        type=argtypes.positive,
        default=DEFAULT_OPTIONS["memtable_bytes"],
        help="memtable size that triggers a flush to a table file "
        f"(default: {DEFAULT_OPTIONS['memtable_bytes']})",
    )
    serve.add_argument(
        "--compaction-style",
        choices=COMPACTION_STYLES,
        default=DEFAULT_OPTIONS["compaction_style"],
        help="leveled: each level below 0 has tables with disjoint key ranges, "
        "so a read visits one table per level; tiered: levels of sorted runs, "
        "which rewrites less data (default: leveled; see docs/engine.md)",
    )
    serve.add_argument(
        "--max-open-files",
        type=argtypes.positive,
        default=DEFAULT_OPTIONS["max_open_files"],
        help="table files kept open at once; keep it below the process's "
        f"ulimit -n (default: {DEFAULT_OPTIONS['max_open_files']})",
    )
    serve.add_argument(
        "--max-input-bytes",
        type=argtypes.positive,
        default=server.DEFAULT_MAX_INPUT_BYTES,
        help="unprocessed request bytes one client may have buffered before the "
        f"server closes its connection (default: {server.DEFAULT_MAX_INPUT_BYTES})",
    )
    serve.add_argument(
        "--max-output-bytes",
        type=argtypes.positive,
        default=server.DEFAULT_MAX_OUTPUT_BYTES,
        help="unread reply bytes one client may have buffered before the server "
        f"closes its connection (default: {server.DEFAULT_MAX_OUTPUT_BYTES})",
    )
    serve.add_argument(
        "--sync-ttl-seconds",
        type=argtypes.positive,
        default=im.DEFAULT_SYNC_TTL_SECONDS,
        help="how long IM sync entries are kept, in seconds; a cursor older than "
        f"this gets a RESYNC error (default: {im.DEFAULT_SYNC_TTL_SECONDS}, 7 days)",
    )
    serve.add_argument(
        "--idempotency-window-seconds",
        type=argtypes.positive,
        default=im.DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
        help="how long IM.SEND remembers a (sender, client message id), in seconds "
        f"(default: {im.DEFAULT_IDEMPOTENCY_WINDOW_SECONDS}, 1 day)",
    )
    serve.add_argument(
        "--fanout-threshold",
        type=argtypes.positive,
        default=im.DEFAULT_FANOUT_THRESHOLD,
        help="conversations with more members than this use read fan-out, the "
        "others write fan-out; IM.POLICY overrides it per conversation "
        f"(default: {im.DEFAULT_FANOUT_THRESHOLD})",
    )
    _add_log_level(serve)

    replay_parser = subparsers.add_parser(
        "replay",
        help="replay a chat log against a running server and verify delivery",
        description="Replay a chat log through IM.SEND and IM.SYNC and check "
        "that every device receives every message.",
    )
    replay.add_arguments(replay_parser)
    _add_log_level(replay_parser)
    return parser


def _add_log_level(subparser):
    # Accept --log-level after the command too; SUPPRESS keeps the value
    # given before the command when it is absent here.
    subparser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        default=argparse.SUPPRESS,
        help="lowest level of log messages written to stderr (default: INFO)",
    )


def main(argv=None):
    """Run `tlsm` with argv (default: sys.argv[1:]) and return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    if args.command == "serve":
        config = server.ServerConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data,
            sync=args.sync,
            sync_interval_ms=args.sync_interval_ms,
            wal_recovery=args.wal_recovery,
            max_payload_bytes=args.max_payload_bytes,
            max_input_bytes=args.max_input_bytes,
            max_output_bytes=args.max_output_bytes,
            sync_ttl_seconds=args.sync_ttl_seconds,
            idempotency_window_seconds=args.idempotency_window_seconds,
            fanout_threshold=args.fanout_threshold,
            engine_options={
                "memtable_bytes": args.memtable_bytes,
                "compaction_style": args.compaction_style,
                "max_open_files": args.max_open_files,
            },
        )
        return server.run(config)
    return replay.run(args)


if __name__ == "__main__":
    sys.exit(main())
