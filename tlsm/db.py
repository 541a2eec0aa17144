"""The embedded engine: an LSM tree keyed by (timeline_id, seq).

Write path: a writer validates its operations and joins the commit queue.
The writer at its front leads a commit group: under the write lock it takes
the writes queued behind it, assigns each timeline its next seqs, appends
one log record for the whole group (and fsyncs it once when any write of
the group needs it), then applies the group to the active memtable under
the short visibility lock, so readers see a batch whole or not at all, and
see seq N of a timeline before N+1. Single appends and small batches of
puts first try the fast path (tlsm.writer), which does the same in one call
when no lock, flush, log growth, fsync or TTL is involved; whatever it
declines takes the path above.

The log is a preallocated file written through a memory mapping
(tlsm.fs.MappedLogFile): a record copied into it is in the page cache, so a
process crash loses no acknowledged write.

When the active memtable reaches memtable_bytes it becomes immutable, a new
log starts, and the background thread writes it to a level-0 table, records
the table in the manifest and deletes the log. A writer that fills the new
memtable before that flush ends waits for it (a write stall, bounded by one
flush). The same thread compacts (see tlsm.compaction). Reads are in
tlsm.reads.

Opening replays unflushed logs (tlsm.recovery); options are validated in
tlsm.options. The next seq of a timeline is one above the highest seq found
in any memtable or table summary, so it continues above every acknowledged
seq, deleted and expired ones included.

Reads take a view (memtables, tables, tombstones) under the visibility lock
and then read without locks: memtable runs only grow, and a table removed
by compaction stays readable through its open descriptor until the last
reader drops it.
"""

import collections
import logging
import os
import re
import threading
import time

from . import keys
from . import tombstones as tomb
from .compaction import MaintenanceMixin
from .errors import ClosedError, InvalidArgumentError, StorageIOError
from .fs import OsFileSystem
from .manifest import log_file_name, table_file_name
from .memtable import Memtable
from .open_files import OpenFileCache
from .options import check_options
from .reads import ReadMixin
from .recovery import RecoveryMixin
from .sstable import BlockCache, SSTable
from .table import OP_APPEND, Table, WriteBatch, check_sync_flag, check_ttl
from .wal import LogWriter, encode_batch
from .writer import FastWriter

log = logging.getLogger(__name__)

# The largest first allocation of a log file. A log holds about one
# memtable of records, so it is preallocated at memtable_bytes up to this.
_MAX_LOG_CHUNK_BYTES = 64 * 1024 * 1024

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

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


class _Version:
    """An immutable list of the sources a read consults, newest first."""

    __slots__ = ("memtables", "tables")

    def __init__(self, memtables, tables):
        self.memtables = memtables
        self.tables = tables


class DB(RecoveryMixin, ReadMixin, MaintenanceMixin):
    """A tlsm database in one directory. Use tlsm.open() to create one.

    All methods are thread-safe. A DB is a context manager that closes on
    exit. The read and write methods act on the table named "default"; see
    table() for others. See tlsm.open for options and durability.
    """

    def __init__(self, path, **options):
        self._options = check_options(options)
        self.path = os.fspath(path)
        self._fs = self._options["fs"] or OsFileSystem()
        self._clock = self._options["clock"] or time.time
        self._sync = self._options["sync"] == "always"
        self._max_payload = self._options["max_payload_bytes"]
        self._write_lock = threading.Lock()
        # Writes of the general path queue here; the one at the front leads
        # a commit group (see _write).
        self._commit_lock = threading.Lock()
        self._commit_queue = collections.deque()
        self._visible_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._work = threading.Condition(threading.Lock())
        self._stop_syncer = threading.Event()
        self._cache = BlockCache(self._options["block_cache_bytes"])
        self._open_files = OpenFileCache(self._options["max_open_files"])
        self._closed = True
        self._closing = False
        self._background_error = None
        self._last_seqs = {}
        self._tombstones = {}
        # Per leveled level, the largest key its last compaction took.
        self._pointers = {}
        # Compaction waits after open (see tlsm/compaction.py).
        self._compaction_deferred = True
        self._compacting = False
        self._stats = dict.fromkeys(
            (
                "flushes",
                "flush_bytes",
                "compactions",
                "trivial_moves",
                "compaction_bytes_read",
                "compaction_bytes_written",
                "dropped_expired",
                "dropped_deleted",
                "wal_bytes",
                "user_bytes",
                "recovered_entries",
                "recovery_dropped_bytes",
                "log_syncs",
                "commit_groups",
                "group_writes",
                "group_syncs",
                "synced_writes",
            ),
            0,
        )
        self._stats["stall_seconds"] = 0.0
        self._stats["stalls"] = 0
        self._lock_token = None
        self._fast = FastWriter(
            self._write_lock,
            self._visible_lock,
            self._last_seqs,
            self._options["memtable_bytes"],
            self._max_payload,
            self._options["max_batch_bytes"],
            self._sync,
        )
        self._open()
        # Recovery leaves every older entry in tables, and each key written
        # since then enters _last_seqs and is never evicted. So while no
        # table existed at open, a key absent from _last_seqs was never
        # written and its last seq is 0 without a lookup.
        self._empty_at_open = not any(self._manifest.levels)
        self._closed = False
        self._fast.attach(self._active, self._log.file)
        self._threads = [
            threading.Thread(target=loop, name=f"{name} {self.path}", daemon=True)
            for loop, name in (
                (self._flush_loop, "tlsm-flush"),
                (self._compaction_loop, "tlsm-compact"),
            )
        ]
        for thread in self._threads:
            thread.start()
        self._syncer = None
        if self._options["sync"] == "periodic":
            self._syncer = threading.Thread(
                target=self._periodic_sync_loop,
                name=f"tlsm-sync {self.path}",
                daemon=True,
            )
            self._syncer.start()

    def _now_ms(self):
        return self._clock() * 1000

    # Background work and the periodic syncer assign this on failure; the
    # setter also turns off the fast path, which does not check it.
    @property
    def _background_error(self):
        return self._background_failure

    @_background_error.setter
    def _background_error(self, exc):
        self._background_failure = exc
        if exc is not None:
            self._fast.disable()

    def _create_log(self, number):
        chunk_bytes = min(self._options["memtable_bytes"], _MAX_LOG_CHUNK_BYTES)
        path = os.path.join(self.path, log_file_name(number))
        return LogWriter(self._fs.create_log(path, chunk_bytes))

    def _make_table(self, info):
        path = os.path.join(self.path, table_file_name(info.number))
        return SSTable(
            self._fs, path, info.number, info.size, self._cache, self._open_files
        )

    def _install_version(self):
        if self._immutable is None:
            memtables = (self._active,)
        else:
            memtables = (self._active, self._immutable)
        # Level 0 newest first, then each deeper level; a key is written once,
        # so the order only matters for speed: newer tables hold newer seqs.
        levels = self._manifest.levels
        tables = tuple(self._tables[info.number] for level in levels for info in level)
        self._version = _Version(memtables, tables)

    def _add_tombstone(self, key, start, end):
        self._tombstones[key] = tomb.add_interval(
            self._tombstones.get(key, ()), start, end
        )

    # -- tables ----------------------------------------------------------

    def table(self, name, *, ttl=...):
        """Return the table called name, creating it if needed.

        ttl (seconds, or None for no expiry) sets the table's default TTL.
        For a new table it is stored with the table. For an existing table
        it replaces the stored default, which applies to entries appended
        from then on. Without ttl, a new table keeps entries forever.
        Names are 1 to 64 characters of letters, digits, "_", "-" and ".".
        """
        self._current_version()
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise InvalidArgumentError(
                f"table name {name!r} is invalid: use 1 to 64 letters, digits, '_', '-' or '.'"
            )
        new_ttl = None if ttl is ... else check_ttl(ttl)
        with self._work:
            handle = self._table_handles.get(name)
            if handle is not None and (ttl is ... or handle.ttl == new_ttl):
                return handle
            if handle is None:
                used = {spec["id"] for spec in self._manifest.tables.values()}
                free = next((i for i in range(keys.MAX_TABLES) if i not in used), None)
                if free is None:
                    raise InvalidArgumentError(
                        f"cannot create table {name!r}: the limit of {keys.MAX_TABLES} tables is reached"
                    )
                handle = Table(self, name, free, new_ttl)
            else:
                handle.ttl = new_ttl
            self._manifest.tables[name] = {"id": handle.table_id, "ttl": new_ttl}
            self._manifest.save(self._fs, self.path)
            self._table_handles[name] = handle
            return handle

    def tables(self):
        """Return the names of all tables."""
        return sorted(self._table_handles)

    def _resolve_table(self, table):
        if table is None:
            return self._default
        if isinstance(table, Table):
            if table._db is not self:
                raise InvalidArgumentError(
                    f"table {table.name!r} belongs to another database"
                )
            return table
        handle = self._table_handles.get(table)
        if handle is None:
            raise InvalidArgumentError(
                f"table {table!r} not found; create it with db.table()"
            )
        return handle

    # -- writes ----------------------------------------------------------

    def append(self, timeline_id, payload, *, ttl=None, sync=None):
        """Append payload to timeline_id and return its seq (1, 2, 3, ...).

        The write is in the log before this returns; see tlsm.open for what
        each sync mode keeps after a crash. sync=True fsyncs the log before
        returning whatever the database's mode; sync=False skips the fsync
        of sync="always" mode, for callers that group several writes and
        then call sync() once before acknowledging them. ttl (seconds) makes
        the entry expire. Raises InvalidArgumentError for a bad timeline_id
        or payload, StorageIOError when the log write fails (nothing is then
        written), ClosedError after close().
        """
        seq = self._fast.append(self._default, timeline_id, payload, ttl, sync)
        if seq:
            return seq
        return self._default._append_general(timeline_id, payload, ttl, sync)

    def append_batch(self, entries, *, ttl=None, sync=None):
        """Append several (timeline_id, payload) pairs atomically; return their seqs.

        All entries become durable and visible together, or none do. Entries
        for the same timeline get consecutive seqs in the order given. Every
        entry is validated before anything is written. sync and ttl are as
        for append(); use batch() or write() for batches across tables.
        """
        seqs = self._fast.append_batch(self._default, entries, ttl, sync)
        if seqs is not None:
            return seqs
        if self._cache_last_seqs(self._default, entries):
            seqs = self._fast.append_batch(self._default, entries, ttl, sync)
            if seqs is not None:
                return seqs
        return self._default._append_batch_general(entries, ttl, sync)

    def _cache_last_seqs(self, table, entries):
        """Fill the last-seq cache for the timelines of entries; True if any was missing.

        The fast path declines a batch with a timeline it has no last seq
        for; after this a retry can take it. Anything invalid is left to the
        general path, which raises the proper error.
        """
        if not self._fast.attached:
            return False
        missing = self._fast.uncached_keys(table, entries)
        if not missing:
            return False
        with self._write_lock:
            if self._closed or self._closing:
                return False
            for key in missing:
                self._last_seq_locked(key)
        return True

    def delete(self, timeline_id, seq, *, sync=None):
        """Delete one entry; its seq is never assigned again."""
        self._default.delete(timeline_id, seq, sync=sync)

    def trim(self, timeline_id, before_seq, *, sync=None):
        """Delete every entry with seq < before_seq, as one range tombstone."""
        self._default.trim(timeline_id, before_seq, sync=sync)

    def delete_timeline(self, timeline_id, *, sync=None):
        """Delete every entry of the timeline; later appends continue above its last seq."""
        self._default.delete_timeline(timeline_id, sync=sync)

    def batch(self, *, sync=None):
        """Return an empty WriteBatch; as a context manager it writes on exit."""
        self._current_version()
        return WriteBatch(self, sync)

    def write(self, batch, *, sync=None):
        """Apply a WriteBatch atomically.

        Returns one result per operation in order: the seq of each append,
        None for each delete.
        """
        if batch._db is not self:
            raise InvalidArgumentError("write batch belongs to another database")
        self._check_batch_size(batch.ops)
        return self._write(batch.ops, sync)

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
            raise StorageIOError(
                f"background work failed ({self._background_error}); writes are "
                "disabled, acknowledged data is safe in the log; reopen the database"
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
        """Turn the active memtable into the immutable one and start a new log."""
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
        self._attach_fast_path()
        # Syncing the old log here keeps sync() and the periodic mode's
        # promise for records written just before the switch.
        old_log.close(sync=self._options["sync"] != "none")
        self._stats["log_syncs"] += old_log.syncs

    def sync(self):
        """Make every write acknowledged so far durable against power loss.

        Costs one fdatasync of the log when it has unsynced records, and
        nothing otherwise; returns True when it ran one. Safe to call from
        any thread.
        """
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        return self._log.sync()

    def _periodic_sync_loop(self):
        interval = self._options["sync_interval_ms"] / 1000
        while not self._stop_syncer.wait(interval):
            try:
                self._log.sync()
            except Exception as exc:
                log.error("periodic sync of %s failed: %s", self.path, exc)
                with self._work:
                    self._background_error = exc
                    self._work.notify_all()
                return

    def _last_seq_locked(self, key):
        """Return the last seq assigned to key, caching it; needs the write lock."""
        seq = self._last_seqs.get(key)
        if seq is None:
            if self._empty_at_open:
                seq = 0
            else:
                seq = self._max_seq_in(self._version, key)
            self._last_seqs[key] = seq
        return seq

    @staticmethod
    def _max_seq_in(version, key, memtables=True):
        """Return the highest seq of key in version's memtables and tables, or 0."""
        if memtables:
            seq = 0
            for memtable in version.memtables:
                seq = max(seq, memtable.last_seq(key))
            # Tables hold flushed memtables and older data, so a seq in a
            # memtable is above every seq of key in the tables.
            if seq:
                return seq
        seq = 0
        for table in version.tables:
            seq = max(seq, table.max_seq(key))
        return seq

    # -- lifecycle -------------------------------------------------------

    def stats(self):
        """Return a dict of counters: levels, bytes written, cache hits, stalls.

        open_files is the number of table files open now, and
        open_file_hits and open_file_misses count the reads of table files
        that found the file open or had to open it (see max_open_files).
        """
        with self._visible_lock:
            levels = [
                {"files": len(level), "bytes": sum(i.size for i in level)}
                for level in self._manifest.levels
            ]
            memtable_bytes = self._active.approximate_bytes
            memtable_entries = len(self._active)
        stats = dict(self._stats)
        stats["wal_bytes"] += self._fast.wal_bytes
        stats["user_bytes"] += self._fast.user_bytes
        stats["log_syncs"] += self._log.syncs
        groups = stats["commit_groups"]
        stats["writes_per_group"] = stats["group_writes"] / groups if groups else 0.0
        syncs = stats["group_syncs"]
        stats["writes_per_sync"] = stats["synced_writes"] / syncs if syncs else 0.0
        user = stats["user_bytes"]
        written = (
            stats["wal_bytes"]
            + stats["flush_bytes"]
            + stats["compaction_bytes_written"]
        )
        lookups = self._cache.hits + self._cache.misses
        stats.update(
            levels=levels,
            memtable_bytes=memtable_bytes,
            memtable_entries=memtable_entries,
            block_cache_hits=self._cache.hits,
            block_cache_misses=self._cache.misses,
            block_cache_hit_rate=(self._cache.hits / lookups) if lookups else 0.0,
            block_cache_bytes=self._cache.used_bytes,
            open_files=self._open_files.open_files,
            open_file_hits=self._open_files.hits,
            open_file_misses=self._open_files.misses,
            write_amplification=(written / user) if user else 0.0,
            sync=self._options["sync"],
            tables=self.tables(),
        )
        return stats

    def close(self):
        """Flush the memtable, stop background work and release the directory.

        A background compaction in progress is abandoned (its inputs stay
        live), so close does not wait for it. Calling close() again does
        nothing.
        """
        if self._closed:
            return
        error = None
        try:
            if self._background_error is None:
                self.flush()
        except Exception as exc:
            error = exc
        with self._write_lock:
            with self._work:
                self._closing = True
                self._fast.disable()
                self._work.notify_all()
            for thread in self._threads:
                thread.join()
            self._stop_syncer.set()
            if self._syncer is not None:
                self._syncer.join()
            self._log.close(sync=self._options["sync"] != "none")
            with self._visible_lock:
                self._closed = True
            for table in self._tables.values():
                table.close()
            self._fs.unlock(self._lock_token)
            self._lock_token = None
        log.info("closed %s", self.path)
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<tlsm.DB {self.path!r} {state}>"
