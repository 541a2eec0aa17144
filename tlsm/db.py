"""The embedded engine: an LSM tree keyed by (timeline_id, seq).

DB combines the parts, each in its own module: the write path with its
commit groups and memtable switches (tlsm.commit), reads (tlsm.reads),
flush and compaction in two background threads (tlsm.compaction), and
recovery at open (tlsm.recovery). This module holds the public write
methods, tables, stats and the lifecycle.

The log is a preallocated file written through a memory mapping
(tlsm.fs.MappedLogFile): a record copied into it is in the page cache, so a
process crash loses no acknowledged write.

Opening replays unflushed logs (tlsm.recovery); options are validated in
tlsm.options. The next seq of a timeline is one above the highest seq found
in any memtable or table summary, so it continues above every acknowledged
seq, deleted and expired ones included.

Reads take a view (memtables, tables, tombstones) under the visibility lock
and then read without locks: memtable runs only grow, and a table removed
by compaction stays readable (its file stays pinned in the open-file
cache) until the last reader drops it.
"""

import bisect
import collections
import logging
import os
import re
import threading
import time

from . import keys
from . import tombstones as tomb
from .commit import CommitMixin
from .compaction import MaintenanceMixin
from .errors import ClosedError, InvalidArgumentError
from .fs import OsFileSystem
from .manifest import log_file_name, table_file_name
from .open_files import OpenFileCache
from .options import check_options
from .reads import ReadMixin
from .recovery import RecoveryMixin
from .sstable import BlockCache, SSTable
from .table import Table, WriteBatch, check_ttl
from .wal import LogWriter
from .writer import FastWriter

log = logging.getLogger(__name__)

# The largest first allocation of a log file. A log holds about one
# memtable of records, so it is preallocated at memtable_bytes up to this.
_MAX_LOG_CHUNK_BYTES = 64 * 1024 * 1024

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# Up to this many tables, a read checks every table's bloom filter. With
# more, it first picks by key range the one table of each disjoint level
# that can contain the timeline.
_RANGE_PICK_TABLES = 8


class _Version:
    """An immutable list of the sources a read consults, newest first.

    tables lists every table. tables_for(key) returns the ones that may
    hold key: level 0 and overlapping levels whole, and from each level
    with disjoint key ranges only the table whose range contains key.
    """

    __slots__ = ("memtables", "tables", "_overlapping", "_disjoint")

    def __init__(self, memtables, tables, overlapping=(), disjoint=()):
        self.memtables = memtables
        self.tables = tables
        # Tables of level 0 (and of tiered levels), newest first.
        self._overlapping = overlapping
        # Per leveled level: (smallest keys, largest keys, tables) in key order.
        self._disjoint = disjoint

    def tables_for(self, key):
        """Return the tables that may hold entries of key, newer levels first."""
        if not self._disjoint:
            return self.tables
        picked = list(self._overlapping)
        for smallest, largest, tables in self._disjoint:
            index = bisect.bisect_right(smallest, key) - 1
            if index >= 0 and key <= largest[index]:
                picked.append(tables[index])
        return tuple(picked)


class DB(RecoveryMixin, ReadMixin, CommitMixin, MaintenanceMixin):
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
        if self._manifest.compaction_style != "leveled" or len(tables) <= (
            _RANGE_PICK_TABLES
        ):
            self._version = _Version(memtables, tables)
            return
        overlapping = tuple(self._tables[info.number] for info in levels[0])
        disjoint = tuple(
            (
                [info.smallest for info in level],
                [info.largest for info in level],
                [self._tables[info.number] for info in level],
            )
            for level in levels[1:]
            if level
        )
        self._version = _Version(memtables, tables, overlapping, disjoint)

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
        for table in version.tables_for(key):
            # span() inline rather than max_seq(): this runs for every
            # timeline a batch writes first after an open.
            span = table.span(key)
            if span is not None and span[1] > seq:
                seq = span[1]
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

        A compaction in progress, in the background or in a compact() call
        of another thread, is abandoned at its next timeline (its inputs
        stay live), and close() waits only for that. Calling close() again
        does nothing.
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
            # A compact() of another thread stops at its next timeline.
            with self._compaction_lock:
                pass
            self._stop_syncer.set()
            if self._syncer is not None:
                self._syncer.join()
            self._log.close(sync=self._options["sync"] != "none")
            with self._visible_lock:
                self._closed = True
            for table in self._tables.values():
                table.close()
            self._tables.delete_replaced()
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
