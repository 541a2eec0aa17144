"""asyncio RESP server in front of one open engine.

Every connection is an asyncio.Protocol. The event-loop thread runs all
commands, so handlers never race each other, and it is the only writer of the
engine in this process (the IM layer relies on that).

Connection states:

    running   data_received feeds the parser and runs every complete command
              of the chunk in order, then sends all their replies with one
              transport.write.
    blocked   a TL.PULL or IM.SYNC with BLOCK found nothing. Its wait is
              registered under each of its timelines and, unless it waits
              forever, a timer fires at arrival + timeout. Later requests of
              the connection are parsed as they arrive and queued with their
              arrival time, but run only after the blocked one has replied,
              so replies keep request order. A write to a watched timeline
              makes the wait retry its read on the next loop pass. The first
              of data, timeout or shutdown sends the single reply, and the
              connection runs its queue until it is empty or blocks again.
    closing   after QUIT, a protocol error, a limit or shutdown: nothing more
              is read or run, and queued replies are flushed before the
              socket closes.

Shutdown (SIGINT or SIGTERM) stops accepting, stops reading, sends each
blocked wait its timeout reply, runs the commands already received (blocking
ones then return at once), flushes replies, closes connections and closes the
engine.
"""

import asyncio
import collections
import concurrent.futures
import functools
import logging
import os
import signal
import time

from . import commands, reply
from .commands import CloseAfterReply, CommandError
from .errors import CorruptionError, InvalidArgumentError, ProtocolError, StorageIOError
from .im import (
    DEFAULT_FANOUT_THRESHOLD,
    DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
    DEFAULT_SYNC_TTL_SECONDS,
    ImLayer,
)
from .keys import DEFAULT_MAX_PAYLOAD_BYTES
from .resp import RespParser

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7379
DEFAULT_DATA_DIR = "./tlsm-data"
# Redis's limits: a request bulk may be 512 MiB (proto-max-bulk-len) and a
# client's query buffer 1 GiB (client-query-buffer-limit).
MAX_BULK_BYTES = 512 * 1024 * 1024
MAX_ARGS = 1024 * 1024
MAX_INLINE_BYTES = 64 * 1024
DEFAULT_MAX_INPUT_BYTES = 1024 * 1024 * 1024
# Replies a client has not read yet. Above this the connection is closed.
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024 * 1024
# How long shutdown waits for clients to read their last replies.
SHUTDOWN_FLUSH_SECONDS = 5.0


# First words of an HTTP POST request; such a connection is closed unanswered.
_HTTP_WORDS = frozenset((b"post", b"host:"))


class ServerConfig:
    """Settings of one server; every field has the `tlsm serve` default."""

    def __init__(
        self,
        host=DEFAULT_HOST,
        port=DEFAULT_PORT,
        data_dir=DEFAULT_DATA_DIR,
        sync="none",
        max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES,
        max_input_bytes=DEFAULT_MAX_INPUT_BYTES,
        max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES,
        sync_interval_ms=100,
        wal_recovery="tolerate_tail",
        sync_ttl_seconds=DEFAULT_SYNC_TTL_SECONDS,
        idempotency_window_seconds=DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
        fanout_threshold=DEFAULT_FANOUT_THRESHOLD,
    ):
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.sync = sync
        self.sync_interval_ms = sync_interval_ms
        self.wal_recovery = wal_recovery
        self.max_payload_bytes = max_payload_bytes
        self.max_input_bytes = max_input_bytes
        self.max_output_bytes = max_output_bytes
        self.sync_ttl_seconds = sync_ttl_seconds
        self.idempotency_window_seconds = idempotency_window_seconds
        self.fanout_threshold = fanout_threshold


def server_version():
    """Return the tlsm version string."""
    import tlsm

    return getattr(tlsm, "__version__", "unknown")


class _Wait:
    """A registered BlockingRead of one connection.

    keys are the wake keys it is registered under; a read may change its
    request's timeline_ids, and the server then registers it again.
    """

    __slots__ = ("conn", "done", "keys", "request", "timer")

    def __init__(self, conn, request):
        self.conn = conn
        self.request = request
        self.keys = frozenset(request.timeline_ids)
        self.timer = None
        self.done = False


class Server:
    """The listening socket, its connections and the waits of blocked readers."""

    def __init__(self, db, config):
        self.db = db
        self.im = ImLayer(
            db,
            config.max_payload_bytes,
            sync_ttl=config.sync_ttl_seconds,
            idempotency_window=config.idempotency_window_seconds,
            fanout_threshold=config.fanout_threshold,
        )
        self.config = config
        self.version = server_version()
        self.port = None
        self.shutting_down = False
        self.connections = {}  # client id -> Connection
        self.total_connections = 0
        self.total_commands = 0
        self.started_at = time.time()
        self._next_client_id = 1
        self._listener = None
        self._loop = None
        # Wake key -> set of _Wait. A key is a timeline id (bytes) of the
        # default table, or (table name, timeline id) for IM tables.
        self._waits = {}
        self._ready = set()  # waits whose timelines were written
        self._retry_scheduled = False
        self._stopped = None
        # Group commit: with sync "always", replies wait here until one
        # fsync covers every write made since the last one.
        self.group_commit = config.sync == "always"
        self._held_replies = []
        self.group_commits = 0
        self.group_fsyncs = 0
        self._fsync_running = False
        self._fsync_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tlsm-fsync"
        )
        self._storage_warned = {}

    async def start(self):
        """Listen on config.host:config.port; port 0 picks a free port."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._listener = await self._loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    def hold_reply(self, conn, data):
        """Queue a reply until an fsync covers its write; schedule that fsync."""
        if not self._held_replies and not self._fsync_running:
            self._loop.call_soon(self._commit_group)
        self._held_replies.append((conn, data))

    def _commit_group(self):
        """Start one fsync, in the fsync thread, for every reply held so far.

        The event loop goes on serving requests while the disk syncs; their
        replies wait for the next fsync, which starts when this one ends.
        Each reply therefore goes out only after an fsync that began after
        its write was in the log, and replies keep their order.
        """
        if self._fsync_running or not self._held_replies:
            return
        held, self._held_replies = self._held_replies, []
        self.group_commits += 1
        self._fsync_running = True
        future = self._loop.run_in_executor(self._fsync_thread, self.db.sync)
        future.add_done_callback(functools.partial(self._group_synced, held))

    def _group_synced(self, held, future):
        """Send the replies of a finished group fsync, then start the next one."""
        self._fsync_running = False
        exc = future.exception()
        if exc is not None:
            log.error("group fsync failed, closing %d connections: %s", len(held), exc)
            for conn, _ in held:
                conn.abort_unsynced()
        else:
            if future.result():
                self.group_fsyncs += 1
            for conn, data in held:
                if data is None:
                    conn.transport.close()
                else:
                    conn.send(data)
        self._commit_group()

    def new_client_id(self):
        client_id = self._next_client_id
        self._next_client_id += 1
        self.total_connections += 1
        return client_id

    # -- blocking reads ------------------------------------------------

    def start_wait(self, conn, request, arrival):
        """Register request (a BlockingRead) of conn; return its _Wait."""
        wait = _Wait(conn, request)
        for timeline_id in wait.keys:
            self._waits.setdefault(timeline_id, set()).add(wait)
        if request.timeout is not None:
            # The deadline counts from the request's arrival, and no write
            # moves it.
            wait.timer = self._loop.call_at(
                arrival + request.timeout, self._expire, wait
            )
        return wait

    def notify_written(self, timeline_ids):
        """Wake the waits on timeline_ids; call after the write is in the log.

        Waits retry their reads on the next loop pass, not inside the
        writer's handler, so one connection's command never runs another
        connection's queue.
        """
        if not self._waits:
            return
        for timeline_id in timeline_ids:
            waits = self._waits.get(timeline_id)
            if waits:
                self._ready.update(waits)
        if self._ready and not self._retry_scheduled:
            self._retry_scheduled = True
            self._loop.call_soon(self._retry_ready)

    def notify_deleted(self, timeline_ids, error_reply):
        """End every wait on timeline_ids with error_reply (the timeline is gone)."""
        for timeline_id in timeline_ids:
            for wait in list(self._waits.get(timeline_id, ())):
                if not wait.done:
                    self.finish_wait(wait, error_reply)

    def _retry_ready(self):
        self._retry_scheduled = False
        ready, self._ready = self._ready, set()
        for wait in ready:
            if wait.done:
                continue
            try:
                result = wait.request.read()
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the server
                result = self._internal_error("blocked read", exc)
            if result is not None:
                self.finish_wait(wait, result)
            elif wait.keys != wait.request.timeline_ids:
                self._watch_again(wait)

    def _watch_again(self, wait):
        """Move wait to the wake keys its last read asked for."""
        keys = frozenset(wait.request.timeline_ids)
        for timeline_id in wait.keys - keys:
            self._unwatch(wait, timeline_id)
        for timeline_id in keys - wait.keys:
            self._waits.setdefault(timeline_id, set()).add(wait)
        wait.keys = keys

    def _unwatch(self, wait, timeline_id):
        waits = self._waits.get(timeline_id)
        if waits is not None:
            waits.discard(wait)
            if not waits:
                del self._waits[timeline_id]

    def _expire(self, wait):
        wait.timer = None
        if not wait.done:
            self.finish_wait(wait, wait.request.timeout_reply)

    def cancel_wait(self, wait):
        """Unregister wait without replying (its connection is gone)."""
        if wait.done:
            return
        wait.done = True
        if wait.timer is not None:
            wait.timer.cancel()
            wait.timer = None
        for timeline_id in wait.keys:
            self._unwatch(wait, timeline_id)

    def finish_wait(self, wait, result):
        """Send result as the single reply of wait and resume its connection."""
        self.cancel_wait(wait)
        wait.conn.resume(result)

    def blocked_clients(self):
        return sum(1 for conn in self.connections.values() if conn.wait is not None)

    def storage_error(self, name, exc):
        """Reply to a command that hit a damaged file or a failing disk.

        These are not server bugs: the reply names the file and offset, and
        the log gets one WARNING per kind of error every 10 seconds.
        """
        code = "CORRUPTION" if isinstance(exc, CorruptionError) else "IOERR"
        now = time.monotonic()
        if now - self._storage_warned.get(code, -1e9) >= 10:
            self._storage_warned[code] = now
            log.warning("command %s failed on storage: %s", name, exc)
        return reply.error(f"{code} {exc}")

    def _internal_error(self, name, exc):
        log.error("command %s failed: %r", name, exc, exc_info=exc)
        return reply.error(f"ERR internal error in {name}: {exc!r}")

    # -- INFO ----------------------------------------------------------

    def info_sections(self):
        """Return INFO sections as {name: {field: value}}."""
        config = self.config
        engine = {}
        _flatten_stats(engine, "", self.db.stats())
        return {
            "server": {
                "tlsm_version": self.version,
                "process_id": os.getpid(),
                "tcp_port": self.port,
                "uptime_in_seconds": int(time.time() - self.started_at),
            },
            "clients": {
                "connected_clients": len(self.connections),
                "blocked_clients": self.blocked_clients(),
            },
            "stats": {
                "total_connections_received": self.total_connections,
                "total_commands_processed": self.total_commands,
                "group_commits": self.group_commits,
                "group_fsyncs": self.group_fsyncs,
            },
            "persistence": {
                "data_dir": os.path.abspath(config.data_dir),
                "sync": config.sync,
                "max_payload_bytes": config.max_payload_bytes,
            },
            "engine": engine,
        }

    # -- shutdown ------------------------------------------------------

    def request_shutdown(self, signame):
        """Start shutdown from a signal handler; later calls only log."""
        if self._stopped.is_set():
            log.info("received %s, shutdown already in progress", signame)
            return
        log.info("received %s, shutting down", signame)
        self._stopped.set()

    async def serve_until_stopped(self):
        """Serve until request_shutdown, then shut down; the engine stays open."""
        await self._stopped.wait()
        await self.shutdown()

    async def shutdown(self):
        """Stop accepting, reply to requests already received, close connections."""
        self.shutting_down = True
        self._listener.close()
        for conn in list(self.connections.values()):
            conn.begin_shutdown()
        deadline = self._loop.time() + SHUTDOWN_FLUSH_SECONDS
        while self.connections and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections.values()):
            log.warning(
                "client %d did not read its replies within %.0f s of shutdown; "
                "dropping the connection",
                conn.client_id,
                SHUTDOWN_FLUSH_SECONDS,
            )
            conn.transport.abort()
        await self._listener.wait_closed()
        while self._fsync_running:
            await asyncio.sleep(0.001)
        self._fsync_thread.shutdown(wait=True)


def _flatten_stats(out, prefix, value):
    """Flatten the nested dicts and lists of db.stats() into "levels_0_files" keys."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        out[prefix] = value
        return
    for key, item in items:
        _flatten_stats(out, f"{prefix}_{key}" if prefix else str(key), item)


class Connection(asyncio.Protocol):
    """One client: parses its requests, runs them in order and writes replies."""

    def __init__(self, server):
        self.server = server
        self.db = server.db
        self.im = server.im
        self.proto = 2
        self.client_id = server.new_client_id()
        self.name = None
        self.lib_info = {}
        self.peer = "?"
        self.created = time.monotonic()
        self.transport = None
        self.wait = None  # _Wait while a blocking command waits
        self._parser = RespParser(MAX_BULK_BYTES, MAX_ARGS, MAX_INLINE_BYTES)
        # Requests received while blocked: (arrival, args), or (arrival,
        # ProtocolError) for the point where the input broke.
        self._queue = collections.deque()
        self._queued_bytes = 0
        self._closing = False
        self._input_broken = False  # a ProtocolError is queued, read nothing more
        self._write_paused = False
        self._max_input = server.config.max_input_bytes
        self._max_output = server.config.max_output_bytes

    # -- asyncio.Protocol ----------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.connections[self.client_id] = self
        log.debug("client %d connected from %s", self.client_id, self.peer)
        if self.server.shutting_down:
            transport.close()

    def connection_lost(self, exc):
        self._closing = True
        if self.wait is not None:
            self.server.cancel_wait(self.wait)
            self.wait = None
        self._queue.clear()
        self.server.connections.pop(self.client_id, None)
        log.debug("client %d disconnected: %s", self.client_id, exc or "closed")

    def pause_writing(self):
        # The client reads replies slower than it sends requests. Stop
        # reading until the transport's buffer drains.
        self._write_paused = True
        if not self._closing:
            self.transport.pause_reading()

    def resume_writing(self):
        self._write_paused = False
        if not (self._closing or self._input_broken or self.server.shutting_down):
            self.transport.resume_reading()

    def data_received(self, data):
        if self._closing or self._input_broken:
            return
        arrival = self.server._loop.time()
        parser = self._parser
        try:
            parser.feed(data)
        except ProtocolError as exc:
            self._fail_protocol([], exc)
            return
        if self.wait is not None:
            self._enqueue(arrival)
            return
        self._run_parser(arrival)

    # -- running commands ----------------------------------------------

    def _run_parser(self, arrival):
        """Run every complete command in the parser; write all replies at once."""
        out = []
        parser = self._parser
        execute = self.execute
        while True:
            try:
                args = parser.next_command()
            except ProtocolError as exc:
                self._fail_protocol(out, exc)
                return
            if args is None:
                break
            result = execute(args)
            if type(result) is bytes:
                out.append(result)
            elif not self._handle_special(out, result, arrival):
                # Blocked or closing: the rest of the chunk waits in the queue.
                if not self._closing:
                    self._enqueue(arrival)
                return
        if out:
            self._write(out)
        pending = parser.pending_bytes()
        if pending > self._max_input:
            self._fail_input_limit(pending)

    def _handle_special(self, out, result, arrival):
        """Handle a BlockingRead or CloseAfterReply; return False to stop the run."""
        if type(result) is CloseAfterReply:
            out.append(result.reply)
            self._write(out)
            self._close()
            return False
        if self.server.shutting_down:
            out.append(result.timeout_reply)
            return True
        if out:
            self._write(out)
            out.clear()
        self.wait = self.server.start_wait(self, result, arrival)
        return False

    def execute(self, args):
        """Run one command; return bytes or a BlockingRead or CloseAfterReply."""
        self.server.total_commands += 1
        spec = commands.COMMANDS.get(args[0].lower())
        if spec is None:
            if args[0].lower() in _HTTP_WORDS:
                # An HTTP request (perhaps a browser tricked into posting to
                # this port) is not a Redis client: stop reading at once.
                log.warning(
                    "client %d (%s) sent an HTTP request line; closing the connection",
                    self.client_id,
                    self.peer,
                )
                return CloseAfterReply(b"")
            return self._unknown_command(args)
        arity = spec.arity
        count = len(args)
        if (count != arity) if arity > 0 else (count < -arity):
            return reply.error(str(commands.wrong_arity_error(args[0])))
        try:
            return spec.handler(self, args)
        except CommandError as exc:
            return reply.error(str(exc))
        except InvalidArgumentError as exc:
            return reply.error(f"ERR {exc}")
        except (CorruptionError, StorageIOError) as exc:
            return self.server.storage_error(spec.name, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the server
            return self.server._internal_error(spec.name, exc)

    def _unknown_command(self, args):
        shown_args = " ".join(f"'{commands.show_arg(arg)}'" for arg in args[1:11])
        return reply.error(
            f"ERR unknown command '{commands.show_arg(args[0])}', "
            f"with args beginning with: {shown_args}"
        )

    # -- blocked state -------------------------------------------------

    def _enqueue(self, arrival):
        """Move complete commands from the parser to the queue while blocked."""
        parser = self._parser
        queue = self._queue
        while True:
            try:
                args = parser.next_command()
            except ProtocolError as exc:
                queue.append((arrival, exc))
                self._input_broken = True
                self.transport.pause_reading()
                return
            if args is None:
                break
            queue.append((arrival, args))
            self._queued_bytes += sum(map(len, args)) + 16 * len(args)
        buffered_bytes = self._queued_bytes + parser.pending_bytes()
        if buffered_bytes > self._max_input:
            self._fail_input_limit(buffered_bytes)

    def resume(self, result):
        """Send the reply of the finished wait, then run the queued commands."""
        self.wait = None
        if self._closing:
            return
        out = [result]
        queue = self._queue
        while queue:
            arrival, item = queue.popleft()
            if isinstance(item, ProtocolError):
                self._fail_protocol(out, item)
                return
            self._queued_bytes -= sum(map(len, item)) + 16 * len(item)
            result = self.execute(item)
            if type(result) is bytes:
                out.append(result)
            elif not self._handle_special(out, result, arrival):
                return
        self._write(out)
        if self.server.shutting_down:
            self._close()

    # -- output and closing --------------------------------------------

    def _write(self, out):
        data = out[0] if len(out) == 1 else b"".join(out)
        if self.server.group_commit:
            self.server.hold_reply(self, data)
        else:
            self.send(data)

    def abort_unsynced(self):
        """Drop the connection: its held replies cover writes that may not be durable."""
        if not self._closing:
            self._closing = True
            self.transport.abort()

    def send(self, data):
        """Write reply bytes to the transport, enforcing the output limit."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if self._write_paused:
            buffered = transport.get_write_buffer_size()
            if buffered > self._max_output:
                log.warning(
                    "client %d (%s): %d bytes of unread replies exceed the limit "
                    "of %d bytes; closing the connection",
                    self.client_id,
                    self.peer,
                    buffered,
                    self._max_output,
                )
                self._closing = True
                transport.abort()

    def _close(self):
        self._closing = True
        if self.server.group_commit:
            # Close only after the held replies before it are sent.
            self.server.hold_reply(self, None)
        else:
            self.transport.close()

    def _fail_protocol(self, out, exc):
        message = str(exc)
        if not message.startswith("Protocol error"):
            message = "Protocol error: " + message
        log.debug("client %d (%s): %s", self.client_id, self.peer, message)
        out.append(reply.error("ERR " + message))
        self._write(out)
        self._close()

    def _fail_input_limit(self, buffered_bytes):
        log.warning(
            "client %d (%s): %d bytes of unprocessed input exceed the limit of "
            "%d bytes; closing the connection",
            self.client_id,
            self.peer,
            buffered_bytes,
            self._max_input,
        )
        self._write(
            [
                reply.error(
                    f"ERR client input of {buffered_bytes} bytes exceeds the limit of "
                    f"{self._max_input} bytes; closing the connection"
                )
            ]
        )
        self._close()

    def begin_shutdown(self):
        """Stop reading, end a blocked wait with its timeout reply, run the queue."""
        if self._closing:
            return
        self.transport.pause_reading()
        if self.wait is not None:
            # resume() runs the queue and closes once it is empty.
            self.server.finish_wait(self.wait, self.wait.request.timeout_reply)
        elif not self._closing:
            self._close()

    # -- CLIENT support ------------------------------------------------

    def set_name(self, name):
        self.name = name or None

    def describe(self):
        """Return this connection's CLIENT LIST line."""
        name = self.name.decode("utf-8", "replace") if self.name else ""
        age = int(time.monotonic() - self.created)
        return (
            f"id={self.client_id} addr={self.peer} name={name} age={age} "
            f"resp={self.proto} blocked={int(self.wait is not None)} "
            f"lib-name={self.lib_info.get('lib-name', b'').decode('utf-8', 'replace')} "
            f"lib-ver={self.lib_info.get('lib-ver', b'').decode('utf-8', 'replace')}"
        )


# ---------------------------------------------------------------------------
# Entry point


def run(config):
    """Open the engine in config.data_dir and serve until SIGINT or SIGTERM.

    Returns the process exit code: 0 after a clean shutdown, 1 when the
    engine cannot be opened or the address cannot be bound.
    """
    import tlsm

    if os.path.exists(config.data_dir) and not os.path.isdir(config.data_dir):
        log.error(
            "cannot open data dir %s: it is a file, not a directory", config.data_dir
        )
        return 1
    try:
        os.makedirs(config.data_dir, exist_ok=True)
        # With "always", the server itself fsyncs once per event-loop pass
        # (group commit), so the engine runs in its "group" mode.
        db = tlsm.open(
            config.data_dir,
            sync="group" if config.sync == "always" else config.sync,
            sync_interval_ms=config.sync_interval_ms,
            wal_recovery=config.wal_recovery,
            max_payload_bytes=config.max_payload_bytes,
        )
    except (OSError, tlsm.TlsmError) as exc:
        log.error("cannot open data dir %s: %s", config.data_dir, exc)
        return 1
    try:
        code = asyncio.run(_serve(db, config))
    finally:
        try:
            db.close()
        except Exception:
            log.exception("closing the engine in %s failed", config.data_dir)
            code = 1
    if code == 0:
        log.info("tlsm stopped")
    return code


async def _serve(db, config):
    server = Server(db, config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_shutdown, signum.name)
    log.info(
        "tlsm %s serving on %s:%d (data dir %s, sync=%s)",
        server.version,
        config.host,
        server.port,
        os.path.abspath(config.data_dir),
        config.sync,
    )
    await server.serve_until_stopped()
    return 0
