"""asyncio RESP server in front of one open engine.

Every connection is an asyncio.Protocol. The event-loop thread runs all
commands, so handlers never race each other, and it is the only writer of the
engine in this process (the IM layer relies on that).

Connections (tlsm.connection) parse and run requests; this module holds the
listening socket, the waits of blocked readers, group commit and shutdown.

Shutdown (SIGINT or SIGTERM) stops accepting, stops reading, sends each
blocked wait its timeout reply, runs the commands already received (blocking
ones then return at once), flushes replies, closes connections and closes the
engine.
"""

import asyncio
import concurrent.futures
import functools
import logging
import os
import signal
import time

from . import reply
from .connection import Connection
from .errors import CorruptionError
from .im import (
    DEFAULT_FANOUT_THRESHOLD,
    DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
    DEFAULT_SYNC_TTL_SECONDS,
    ImLayer,
)
from .keys import DEFAULT_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7379
DEFAULT_DATA_DIR = "./tlsm-data"
# A client's unprocessed input, like Redis's client-query-buffer-limit (1 GiB).
DEFAULT_MAX_INPUT_BYTES = 1024 * 1024 * 1024
# Replies a client has not read yet. Above this the connection is closed.
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024 * 1024
# How long shutdown waits for clients to read their last replies.
SHUTDOWN_FLUSH_SECONDS = 5.0


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
        engine_options=None,
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
        # More tlsm.open options (memtable_bytes, compaction_style, ...).
        self.engine_options = dict(engine_options or {})


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
        # With "always", the server fsyncs in a worker thread and sends each
        # reply only after an fsync that began after its write has ended
        # (group commit), so the engine runs in its "group" mode.
        db = tlsm.open(
            config.data_dir,
            sync="group" if config.sync == "always" else config.sync,
            sync_interval_ms=config.sync_interval_ms,
            wal_recovery=config.wal_recovery,
            max_payload_bytes=config.max_payload_bytes,
            # A batch must fit the largest payload the server accepts.
            max_batch_bytes=max(config.max_payload_bytes, 64 * 1024 * 1024),
            **config.engine_options,
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
