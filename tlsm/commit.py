"""The write path: commit groups, seq assignment and memtable switches.

A writer validates its operations and joins the commit queue. The writer
at its front leads a commit group. Under the write lock it takes the
writes queued behind it and assigns each timeline its next seqs. It
appends one log record for the whole group, and fsyncs it once when any
write of the group needs it. Then it applies the group to the active
memtable under the short visibility lock, so readers see a batch whole or
not at all, and see seq N of a timeline before N+1. A failed log write or fsync fails every
write of its group, and none of them becomes visible.

Single appends and small batches of puts first try the fast path
(tlsm.writer), which does the same in one call when no lock, flush, log
growth, fsync or TTL is involved. Whatever it declines takes the path
above.

When the active memtable reaches memtable_bytes it becomes immutable and a
new log starts; the flush thread (tlsm.compaction) writes it to a level-0
table. A writer that fills the new memtable before that flush ends waits
for it, and writers also wait while level 0 has l0_stop_files tables.
"""

import threading
import time

from . import keys
from .errors import ClosedError, CorruptionError, InvalidArgumentError, StorageIOError
from .memtable import Memtable
from .table import OP_APPEND, check_sync_flag
from .wal import encode_batch

# A commit group takes queued writes until their ids and payloads reach
# this many bytes; the leader's own write always goes in, however large.
_MAX_GROUP_BYTES = 1024 * 1024


class _PendingWrite:
    """One caller's write, waiting in the commit queue or being committed.

    The leader of its group fills results or error, sets done and releases
    wakeup, a lock created held, on which a follower blocks.
    """

    __slots__ = ("done", "error", "ops", "results", "sync", "wakeup")

    def __init__(self, ops, sync):
        self.ops = ops
        self.sync = sync
        self.results = None
        self.error = None
        self.done = False
        self.wakeup = None

    def byte_size(self):
        """Return the bytes of timeline ids and payloads in ops."""
        return sum(
            len(op[1]) + (len(op[2]) if op[0] == OP_APPEND else 0) for op in self.ops
        )


class CommitMixin:
    """Write-path methods of DB; expects the attributes DB.__init__ sets."""

    def _check_batch_size(self, ops):
        total = sum(len(op[1]) + len(op[2]) for op in ops if op[0] == OP_APPEND)
        if total > self._options["max_batch_bytes"]:
            raise InvalidArgumentError(
                f"write batch is {total} bytes, above the limit of "
                f"{self._options['max_batch_bytes']} bytes (option max_batch_bytes)"
            )

    def _write(self, ops, sync):
        """Commit ops through the commit queue and return their results.

        Writes queue in arrival order, and the one at the front leads a
        commit group. The leader takes the writes queued behind it (up to
        _MAX_GROUP_BYTES) and assigns their seqs. It appends them as one log
        record, fsyncs once if any of them needs it, and applies them to the
        memtable. Then it wakes the others with their results. A failed log
        write or fsync raises in every write of the group, and none of them
        is applied or acknowledged.
        """
        check_sync_flag(sync)
        if not ops:
            return []
        pending = _PendingWrite(ops, self._sync if sync is None else sync)
        with self._commit_lock:
            if self._commit_queue:
                pending.wakeup = threading.Lock()
                pending.wakeup.acquire()
            self._commit_queue.append(pending)
        interrupt = None
        if pending.wakeup is not None:
            interrupt = self._wait_turn(pending)
        if not pending.done:
            self._lead_group(pending)
        if interrupt is not None:
            raise interrupt
        if pending.error is not None:
            raise pending.error
        return pending.results

    @staticmethod
    def _wait_turn(pending):
        """Block until pending is committed or must lead; return a deferred interrupt.

        A waiter that left on KeyboardInterrupt could be handed the front of
        the queue and strand every write behind it, so an exception raised
        while waiting is returned and raised once the write is finished.
        """
        interrupt = None
        while True:
            try:
                # Released once a leader has committed this write, or once
                # it reaches the front of the queue and must lead.
                pending.wakeup.acquire()
                return interrupt
            except BaseException as exc:  # noqa: BLE001 - raised after the write
                interrupt = exc

    def _lead_group(self, leader):
        """Commit leader, the front of the queue, with the writes behind it."""
        group = [leader]
        try:
            with self._write_lock:
                if len(self._commit_queue) > 1:
                    group = self._take_group()
                self._check_writable()
                # The log may grow (a new mapping) or rotate below, which needs
                # the fast path to let go of the current mapping first.
                self._fast.detach()
                try:
                    self._commit_group(group)
                finally:
                    self._attach_fast_path()
        except BaseException as exc:  # noqa: BLE001 - each write raises it
            for pending in group:
                if pending.error is None:
                    pending.error = exc
        finally:
            self._finish_group(group)

    def _take_group(self):
        """Return the writes at the front of the queue that form the next group."""
        with self._commit_lock:
            queued = list(self._commit_queue)
        # Only the leader removes writes, so the front of the queue stays as
        # copied while others append behind it.
        group = [queued[0]]
        total = queued[0].byte_size()
        for pending in queued[1:]:
            total += pending.byte_size()
            if total > _MAX_GROUP_BYTES:
                break
            group.append(pending)
        return group

    def _finish_group(self, group):
        """Remove group from the queue, wake its followers and the next leader."""
        with self._commit_lock:
            queue = self._commit_queue
            for _ in group:
                queue.popleft()
            next_leader = queue[0] if queue else None
        group[0].done = True
        for pending in group[1:]:
            pending.done = True
            pending.wakeup.release()
        if next_leader is not None:
            next_leader.wakeup.release()

    def _commit_group(self, group):
        """Append the writes of group as one log record and apply them.

        Called with the write lock held. A write whose own seqs cannot be
        assigned gets its InvalidArgumentError and the others go on. The
        log record is in the log (and synced, when a write needs it) before
        any entry becomes visible, so an error from the log leaves nothing
        applied.
        """
        self._make_room()
        if len(group) == 1:
            # A lone write's InvalidArgumentError fails its group of one.
            leader = group[0]
            leader.results, records, assigned = self._assign_seqs(leader.ops, {})
            committed = 1
            sync = leader.sync
        else:
            records, assigned, committed, sync = self._assign_group(group)
        stats = self._stats
        stats["commit_groups"] += 1
        stats["group_writes"] += len(group)
        if not records:
            return
        record = encode_batch(records)
        self._log.add_record(record, sync)
        self._apply_records(records, assigned)
        if sync:
            stats["group_syncs"] += 1
            stats["synced_writes"] += committed
        stats["wal_bytes"] += len(record)
        stats["user_bytes"] += sum(len(entry[4]) + len(entry[0]) for entry in records)

    def _assign_group(self, group):
        """Assign seqs to the writes of group in order.

        Returns (records, assigned, committed, sync): the log entries, the
        last seq of each key, the number of writes that got seqs, and
        whether any of them needs an fsync.
        """
        assigned = {}
        records = []
        committed = 0
        sync = False
        for pending in group:
            try:
                results, new_records, new_assigned = self._assign_seqs(
                    pending.ops, assigned
                )
            except InvalidArgumentError as exc:
                pending.error = exc
                continue
            pending.results = results
            records.extend(new_records)
            assigned.update(new_assigned)
            committed += 1
            sync = sync or pending.sync
        return records, assigned, committed, sync

    def _apply_records(self, records, assigned):
        """Make logged entries visible, as one step under the visibility lock."""
        active = self._active
        with self._visible_lock:
            for entry in records:
                if entry[2] == keys.KIND_RANGE_DELETE:
                    end = int.from_bytes(entry[4], "little")
                    active.add_tombstone(entry[0], entry[1], end)
                    self._add_tombstone(entry[0], entry[1], end)
                else:
                    active.add(*entry)
            self._last_seqs.update(assigned)

    def _attach_fast_path(self):
        """Point the fast path at the active memtable and log, if writes may go on.

        Called with the write lock held.
        """
        if (
            self._closed
            or self._closing
            or self._log.broken is not None
            or self._background_error is not None
        ):
            self._fast.detach()
        else:
            self._fast.attach(self._active, self._log.file)

    def _assign_seqs(self, ops, earlier):
        """Turn operations into log entries, assigning seqs and clamping deletes.

        earlier maps keys to the last seqs that writes ahead of ops in the
        same commit group took. Returns (results, records, assigned), where
        assigned maps each key of ops to its last seq after ops.
        """
        assigned = {}
        results = []
        records = []
        for op, key, first, second in ops:
            last = assigned.get(key)
            if last is None:
                last = earlier.get(key)
            if last is None:
                last = self._last_seq_locked(key)
            if op == OP_APPEND:
                seq = last + 1
                if seq > keys.MAX_SEQ:
                    raise InvalidArgumentError(f"timeline {key[1:]!r} has no seq left")
                assigned[key] = seq
                results.append(seq)
                records.append((key, seq, keys.KIND_PUT, second, first))
            else:
                # A tombstone never reaches past the last assigned seq, so it
                # cannot hide entries appended after it.
                end = last + 1 if second is None else min(second, last + 1)
                assigned[key] = last
                results.append(None)
                if first < end:
                    value = end.to_bytes(8, "little")
                    records.append((key, first, keys.KIND_RANGE_DELETE, 0, value))
        return results, records, assigned

    def _check_writable(self):
        if self._closed or self._closing:
            raise ClosedError(f"database {self.path} is closed")
        if self._log.broken is not None:
            raise StorageIOError(
                f"log {self._log.path} could not be repaired after a failed write "
                f"({self._log.broken}); reopen the database"
            )
        if self._background_error is not None:
            advice = "reopen the database"
            if isinstance(self._background_error, CorruptionError):
                # Reopening alone meets the same table at the next merge.
                advice = (
                    "find the damaged table with python tools/inspect_data.py "
                    f"{self.path} --verify, and salvage its intact blocks with "
                    f"python tools/repair_manifest.py {self.path} --force before "
                    "reopening"
                )
            raise StorageIOError(
                f"background work failed ({self._background_error}); writes are "
                f"disabled, acknowledged data is safe in the log; {advice}"
            )

    def _make_room(self):
        if self._active.approximate_bytes < self._options["memtable_bytes"]:
            return
        # Two stalls bound what writers can pile up: one memtable being
        # flushed at a time, and at most l0_stop_files level-0 tables (each
        # read consults every one of them) until compaction merges them.
        # Both end when background work progresses, or raise if it failed.
        started = None
        stop_files = self._options["l0_stop_files"]
        levels = self._manifest.levels
        with self._work:
            while self._immutable is not None or len(levels[0]) >= stop_files:
                if started is None:
                    started = time.monotonic()
                    self._stats["stalls"] += 1
                # A stall is the signal to merge now, even right after open.
                self._compaction_deferred = False
                if self._background_error is not None:
                    self._check_writable()
                self._work.notify_all()
                self._work.wait(0.1)
        if started is not None:
            self._stats["stall_seconds"] += time.monotonic() - started
        self._rotate()

    def _rotate(self):
        """Turn the active memtable into the immutable one and start a new log.

        Leaves the fast path detached. The caller attaches it again after
        appending its own record, which may grow the new log.
        """
        number = self._manifest.allocate_file_number()
        new_log = self._create_log(number)
        if self._options["sync"] != "none":
            self._fs.sync_dir(self.path)
        old_log = self._log
        self._fast.detach()
        with self._work:
            with self._visible_lock:
                self._immutable = self._active
                self._active = Memtable(number)
                self._log = new_log
                self._install_version()
            self._work.notify_all()
        # Syncing the old log here keeps sync() and the periodic mode's
        # promise for records written just before the switch.
        old_log.close(sync=self._options["sync"] != "none")
        self._stats["log_syncs"] += old_log.syncs
