"""One client connection of the RESP server: parsing, running, replying.

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
"""

import asyncio
import collections
import logging
import time

from . import commands, reply
from .commands import CloseAfterReply, CommandError
from .errors import CorruptionError, InvalidArgumentError, ProtocolError, StorageIOError
from .resp import RespParser

log = logging.getLogger(__name__)

# Parser limits: the largest bulk string (as Redis's proto-max-bulk-len), the
# most arguments in one request, and the longest inline command line.
MAX_BULK_BYTES = 512 * 1024 * 1024
MAX_ARGS = 1024 * 1024
MAX_INLINE_BYTES = 64 * 1024

# First words of an HTTP POST request; such a connection is closed unanswered.
_HTTP_WORDS = frozenset((b"post", b"host:"))


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
