"""The embedded engine: an LSM tree keyed by (timeline_id, seq).

Write path: a writer validates its entries, takes the write lock, assigns
each timeline its next seqs, appends one log record for the whole batch
(and fsyncs it in sync="always" mode), then inserts the entries into the
active memtable under the short visibility lock, so readers see a batch
whole or not at all, and see seq N of a timeline before N+1.

When the active memtable reaches memtable_bytes it becomes immutable, a new
log starts, and the background thread writes it to a level-0 table, records
the table in the manifest and deletes the log. A writer that fills the new
memtable before that flush ends waits for it (a write stall, bounded by one
flush). The same thread compacts: when a level holds level_fanout tables,
it merges them into one table that becomes the newest of the next level.

Recovery (open): read the manifest, replay every log it does not mark as
flushed into a memtable, write that memtable to a level-0 table, start a
new log, save the manifest, then delete the flushed logs and any table file
the manifest does not name (the output of an interrupted flush or
compaction). The next seq of a timeline is one above the highest seq found
in any memtable or in any table summary, so it continues above every
acknowledged seq.

Reads take a version (memtables and tables) under the visibility lock and
then read without locks: memtable runs only grow, and a table removed by
compaction stays readable through its open descriptor until the last
reader drops it.
"""

import logging
import os
import re
import threading
import time
import weakref

from . import keys
from . import merge as merge_module
from .errors import ClosedError, InvalidArgumentError, StorageIOError
from .fs import OsFileSystem
from .manifest import Manifest, TableInfo
from .memtable import Memtable
from .sstable import BlockCache, Table, TableWriter
from .wal import LogWriter, encode_batch, read_log

log = logging.getLogger(__name__)

SYNC_MODES = ("none", "periodic", "always")

DEFAULT_OPTIONS = {
    "sync": "none",
    "sync_interval_ms": 100,
    "memtable_bytes": 32 * 1024 * 1024,
    "block_bytes": 4096,
    "block_cache_bytes": 64 * 1024 * 1024,
    "compression": True,
    "level_fanout": 4,
    "max_payload_bytes": keys.DEFAULT_MAX_PAYLOAD_BYTES,
    "max_batch_bytes": 64 * 1024 * 1024,
    "create_if_missing": True,
    "fs": None,
}

_FILE_NAME = re.compile(r"^(\d{6,})\.(log|sst)$")
_END = keys.MAX_SEQ + 1


def _log_name(number):
    return f"{number:06d}.log"


def _table_name(number):
    return f"{number:06d}.sst"


class _Version:
    """An immutable view of the sources a read consults, newest first."""

    __slots__ = ("memtables", "tables")

    def __init__(self, memtables, tables):
        self.memtables = memtables
        self.tables = tables


class _Cancelled(Exception):
    pass


def _check_options(options):
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid options: {', '.join(sorted(DEFAULT_OPTIONS))}"
        )
    merged = dict(DEFAULT_OPTIONS, **options)
    if merged["sync"] not in SYNC_MODES:
        raise InvalidArgumentError(
            f"sync={merged['sync']!r} is invalid; use one of {', '.join(SYNC_MODES)}"
        )
    for name, low in (
        ("memtable_bytes", 4096),
        ("block_bytes", 256),
        ("block_cache_bytes", 0),
        ("level_fanout", 2),
        ("max_payload_bytes", 1),
        ("max_batch_bytes", 1),
        ("sync_interval_ms", 1),
    ):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"option {name}={value!r} must be an int >= {low}")
    if merged["max_payload_bytes"] > keys.MAX_PAYLOAD_BYTES_LIMIT:
        raise InvalidArgumentError(
            f"option max_payload_bytes={merged['max_payload_bytes']} is above the "
            f"limit of {keys.MAX_PAYLOAD_BYTES_LIMIT}"
        )
    return merged


class DB:
    """A tlsm database in one directory. Use tlsm.open() to create one.

    All methods are thread-safe. A DB is a context manager that closes on
    exit. See tlsm.open for options and durability guarantees.
    """

    def __init__(self, path, **options):
        self._options = _check_options(options)
        self.path = os.fspath(path)
        self._fs = self._options["fs"] or OsFileSystem()
        self._sync = self._options["sync"] == "always"
        self._stop_syncer = threading.Event()
        self._max_payload = self._options["max_payload_bytes"]
        self._write_lock = threading.Lock()
        self._visible_lock = threading.Lock()
        self._work = threading.Condition(threading.Lock())
        self._cache = BlockCache(self._options["block_cache_bytes"])
        self._closed = True
        self._closing = False
        self._background_error = None
        self._last_seqs = {}
        self._stats = {
            "flushes": 0,
            "flush_bytes": 0,
            "compactions": 0,
            "compaction_bytes_read": 0,
            "compaction_bytes_written": 0,
            "stall_seconds": 0.0,
            "wal_bytes": 0,
            "user_bytes": 0,
            "recovered_entries": 0,
            "recovery_dropped_bytes": 0,
        }
        self._lock_token = None
        self._open()
        self._closed = False
        self._thread = threading.Thread(
            target=self._background_loop, name=f"tlsm-bg {self.path}", daemon=True
        )
        self._thread.start()
        self._syncer = None
        if self._options["sync"] == "periodic":
            self._syncer = threading.Thread(
                target=self._periodic_sync_loop, name=f"tlsm-sync {self.path}", daemon=True
            )
            self._syncer.start()

    # -- open and recovery ---------------------------------------------

    def _open(self):
        fs = self._fs
        if not fs.exists(self.path):
            if not self._options["create_if_missing"]:
                raise InvalidArgumentError(
                    f"data directory {self.path} does not exist (create_if_missing=False)"
                )
            fs.makedirs(self.path)
        self._lock_token = fs.lock(os.path.join(self.path, "LOCK"))
        try:
            self._recover()
        except BaseException:
            fs.unlock(self._lock_token)
            self._lock_token = None
            raise

    def _recover(self):
        fs = self._fs
        started = time.monotonic()
        manifest = Manifest.load(fs, self.path) or Manifest()
        numbers = {"log": [], "sst": []}
        for name in fs.listdir(self.path):
            match = _FILE_NAME.match(name)
            if match:
                numbers[match.group(2)].append(int(match.group(1)))
        highest = max(numbers["log"] + numbers["sst"], default=0)
        # A log created after the last manifest save has a number the saved
        # next_file_number does not cover; never hand that number out again.
        manifest.next_file_number = max(manifest.next_file_number, highest + 1)
        self._manifest = manifest

        recovered = Memtable(0)
        replayed = sorted(n for n in numbers["log"] if n >= manifest.log_number)
        for number in replayed:
            result = read_log(fs, os.path.join(self.path, _log_name(number)))
            self._stats["recovery_dropped_bytes"] += result.dropped_bytes
            for batch in result.batches:
                for entry in batch:
                    recovered.add(*entry)
        self._stats["recovered_entries"] = len(recovered)

        self._tables = {}
        for level in manifest.levels:
            for info in level:
                self._tables[info.number] = self._make_table(info)

        if len(recovered):
            info = self._write_table(recovered.entries(), extra_summary=None)
            manifest.levels[0].insert(0, info)
            self._tables[info.number] = self._make_table(info)

        log_number = manifest.allocate_file_number()
        log_path = os.path.join(self.path, _log_name(log_number))
        self._log = LogWriter(fs.create(log_path))
        fs.sync_dir(self.path)
        manifest.log_number = log_number
        manifest.save(fs, self.path)

        live = manifest.live_numbers()
        for number in numbers["log"]:
            fs.remove(os.path.join(self.path, _log_name(number)))
        for number in numbers["sst"]:
            if number not in live:
                log.warning("removing table %s that the manifest does not list", _table_name(number))
                fs.remove(os.path.join(self.path, _table_name(number)))

        self._active = Memtable(log_number)
        self._immutable = None
        self._install_version()
        log.info(
            "opened %s: %d tables, %d log entries replayed from %d logs, "
            "%d damaged bytes dropped, %.1f ms",
            self.path,
            len(self._tables),
            len(recovered),
            len(replayed),
            self._stats["recovery_dropped_bytes"],
            (time.monotonic() - started) * 1000,
        )

    def _make_table(self, info):
        path = os.path.join(self.path, _table_name(info.number))
        table = Table(self._fs, path, info.number, info.size, self._cache)
        # A table dropped by compaction is closed only when the last reader
        # lets go of it; its file is already unlinked by then.
        weakref.finalize(table, Table.close, table)
        return table

    def _install_version(self):
        memtables = (self._active,) if self._immutable is None else (self._active, self._immutable)
        tables = tuple(self._tables[info.number] for level in self._manifest.levels for info in level)
        self._version = _Version(memtables, tables)

    # -- writes ----------------------------------------------------------

    def append(self, timeline_id, payload, *, sync=None):
        """Append payload to timeline_id and return its seq (1, 2, 3, ...).

        The write is in the log before this returns; see tlsm.open for what
        each sync mode keeps after a crash. sync=True fsyncs the log before
        returning whatever the database's mode; sync=False skips the fsync
        of sync="always" mode, for callers that group several writes and
        then call sync() once before acknowledging them. Raises
        InvalidArgumentError for a bad timeline_id or payload,
        StorageIOError when the log write fails (nothing is then written),
        ClosedError after close().
        """
        return self.append_batch(((timeline_id, payload),), sync=sync)[0]

    def append_batch(self, entries, *, sync=None):
        """Append several (timeline_id, payload) pairs atomically; return their seqs.

        All entries become durable and visible together, or none do. Entries
        for the same timeline get consecutive seqs in the order given. Every
        entry is validated before anything is written. sync is as for
        append().
        """
        items = []
        total = 0
        for timeline_id, payload in entries:
            encoded = keys.encode_timeline_id(timeline_id)
            data = keys.check_payload(payload, self._max_payload)
            total += len(encoded) + len(data)
            items.append((encoded, data))
        if total > self._options["max_batch_bytes"]:
            raise InvalidArgumentError(
                f"write batch is {total} bytes, above the limit of "
                f"{self._options['max_batch_bytes']} bytes (option max_batch_bytes)"
            )
        if not items:
            return []
        with self._write_lock:
            self._check_writable()
            self._make_room()
            assigned = {}
            seqs = []
            records = []
            for timeline_id, data in items:
                last = assigned.get(timeline_id)
                if last is None:
                    last = self._last_seq_locked(timeline_id)
                seq = last + 1
                if seq > keys.MAX_SEQ:
                    raise InvalidArgumentError(f"timeline {timeline_id!r} has no seq left")
                assigned[timeline_id] = seq
                seqs.append(seq)
                records.append((timeline_id, seq, keys.KIND_PUT, 0, data))
            record = encode_batch(records)
            self._log.add_record(record, self._sync if sync is None else sync)
            active = self._active
            with self._visible_lock:
                for entry in records:
                    active.add(*entry)
                self._last_seqs.update(assigned)
            self._stats["wal_bytes"] += len(record)
            self._stats["user_bytes"] += total
        return seqs

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
                f"background flush failed ({self._background_error}); writes are "
                "disabled, acknowledged data is safe in the log; reopen the database"
            )

    def _make_room(self):
        if self._active.approximate_bytes < self._options["memtable_bytes"]:
            return
        started = None
        with self._work:
            while self._immutable is not None:
                if started is None:
                    started = time.monotonic()
                if self._background_error is not None:
                    self._check_writable()
                self._work.wait(0.1)
        if started is not None:
            self._stats["stall_seconds"] += time.monotonic() - started
        self._rotate()

    def _rotate(self):
        """Turn the active memtable into the immutable one and start a new log."""
        number = self._manifest.allocate_file_number()
        new_log = LogWriter(self._fs.create(os.path.join(self.path, _log_name(number))))
        if self._options["sync"] != "none":
            self._fs.sync_dir(self.path)
        old_log = self._log
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

    def sync(self):
        """Make every write acknowledged so far durable against power loss.

        Costs one fdatasync of the log when it has unsynced records, and
        nothing otherwise. Safe to call from any thread.
        """
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        self._log.sync()

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

    def _last_seq_locked(self, timeline_id):
        seq = self._last_seqs.get(timeline_id)
        if seq is None:
            seq = self._max_seq_in(self._version, timeline_id)
            self._last_seqs[timeline_id] = seq
        return seq

    @staticmethod
    def _max_seq_in(version, timeline_id):
        seq = 0
        for memtable in version.memtables:
            seq = max(seq, memtable.last_seq(timeline_id))
        for table in version.tables:
            seq = max(seq, table.max_seq(timeline_id))
        return seq

    # -- reads -----------------------------------------------------------

    def _current_version(self):
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        return self._version

    def last_seq(self, timeline_id):
        """Return the highest seq appended to timeline_id, or 0 if none ever was."""
        encoded = keys.encode_timeline_id(timeline_id)
        with self._visible_lock:
            version = self._current_version()
            seq = self._last_seqs.get(encoded)
        if seq is None:
            seq = self._max_seq_in(version, encoded)
        return seq

    def get(self, timeline_id, seq):
        """Return the payload at (timeline_id, seq), or None when there is none."""
        encoded = keys.encode_timeline_id(timeline_id)
        keys.check_seq(seq)
        with self._visible_lock:
            version = self._current_version()
            for memtable in version.memtables:
                entry = memtable.get(encoded, seq)
                if entry is not None:
                    return self._visible_value(entry)
        for table in version.tables:
            entry = table.get(encoded, seq)
            if entry is not None:
                return self._visible_value(entry)
        return None

    @staticmethod
    def _visible_value(entry):
        if entry[2] != keys.KIND_PUT:
            return None
        expires_at = entry[3]
        if expires_at and expires_at <= time.time() * 1000:
            return None
        return entry[4]

    def scan(self, timeline_id, start=None, end=None, limit=None, reverse=False):
        """Iterate (seq, payload) of timeline_id with start <= seq < end.

        Ascending by default, descending with reverse=True (from the highest
        seq below end). None bounds are open; at most limit pairs are
        returned. The iterator reads one consistent snapshot, taken when
        scan() is called, and loads table blocks lazily, so a scan over a
        huge timeline holds only the blocks it is on.
        """
        encoded = keys.encode_timeline_id(timeline_id)
        start = 0 if start is None else keys.check_seq(start, "start")
        end = _END if end is None else keys.check_seq(end, "end") if end <= keys.MAX_SEQ else _END
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidArgumentError(f"limit must be a non-negative int, not {limit!r}")
        if start >= end or limit == 0:
            return iter(())
        with self._visible_lock:
            version = self._current_version()
            sources = [m.scan(encoded, start, end, reverse) for m in version.memtables]
        sources.extend(t.scan(encoded, start, end, reverse) for t in version.tables)
        return self._visible_pairs(merge_module.merge_entries(sources, reverse), limit)

    @staticmethod
    def _visible_pairs(entries, limit):
        now_ms = time.time() * 1000
        remaining = -1 if limit is None else limit
        for _timeline_id, seq, kind, expires_at, value in entries:
            if kind != keys.KIND_PUT or (expires_at and expires_at <= now_ms):
                continue
            yield seq, value
            remaining -= 1
            if remaining == 0:
                return

    # -- flush and compaction ------------------------------------------

    def flush(self):
        """Write the active memtable to a table and wait until it is in the manifest."""
        with self._write_lock:
            self._check_writable()
            if not len(self._active):
                return
            with self._work:
                while self._immutable is not None:
                    self._work.wait(0.1)
                    if self._background_error is not None:
                        self._check_writable()
            self._rotate()
        with self._work:
            while self._immutable is not None and self._background_error is None:
                self._work.wait(0.1)
        if self._background_error is not None:
            self._check_writable()

    def _write_table(self, entries, extra_summary, cancellable=False):
        number = self._manifest.allocate_file_number()
        path = os.path.join(self.path, _table_name(number))
        writer = TableWriter(
            self._fs, path, self._options["block_bytes"], self._options["compression"]
        )
        try:
            for i, entry in enumerate(entries):
                writer.add(entry)
                if cancellable and not i & 4095 and self._closing:
                    raise _Cancelled()
            if extra_summary:
                for timeline_id, max_seq in extra_summary.items():
                    writer.add_summary(timeline_id, max_seq)
            size = writer.finish(sync=True)
        except BaseException:
            writer.abandon()
            self._fs.remove(path)
            raise
        return TableInfo(number, size, writer.entry_count)

    def _background_loop(self):
        while True:
            with self._work:
                while self._immutable is None and not self._closing and not self._needs_compaction():
                    self._work.wait()
                if self._immutable is None and self._closing:
                    return
            try:
                if self._immutable is not None:
                    self._flush_immutable()
                elif self._needs_compaction():
                    self._compact_one_level()
            except _Cancelled:
                log.info("compaction of %s cancelled by close", self.path)
                return
            except Exception as exc:
                log.error("background work on %s failed: %s", self.path, exc, exc_info=True)
                with self._work:
                    self._background_error = exc
                    self._work.notify_all()
                return

    def _flush_immutable(self):
        memtable = self._immutable
        started = time.monotonic()
        info = self._write_table(memtable.entries(), extra_summary=None)
        table = self._make_table(info)
        with self._work:
            self._manifest.levels[0].insert(0, info)
            self._manifest.log_number = self._active.log_number
            self._manifest.save(self._fs, self.path)
            with self._visible_lock:
                self._tables[info.number] = table
                self._immutable = None
                self._install_version()
            self._stats["flushes"] += 1
            self._stats["flush_bytes"] += info.size
            self._work.notify_all()
        self._fs.remove(os.path.join(self.path, _log_name(memtable.log_number)))
        log.info(
            "flushed %d entries to %s (%d bytes) in %.0f ms",
            info.entries,
            _table_name(info.number),
            info.size,
            (time.monotonic() - started) * 1000,
        )

    def _needs_compaction(self):
        fanout = self._options["level_fanout"]
        return any(len(level) >= fanout for level in self._manifest.levels)

    def _compact_one_level(self):
        """Merge every table of the first full level into one table of the next level."""
        fanout = self._options["level_fanout"]
        levels = self._manifest.levels
        level = next(i for i, tables in enumerate(levels) if len(tables) >= fanout)
        inputs = list(levels[level])
        tables = [self._tables[info.number] for info in inputs]
        started = time.monotonic()
        extra_summary = {}
        for table in tables:
            table.load()
            for timeline_id, (_, max_seq, _) in table.summary.items():
                if max_seq > extra_summary.get(timeline_id, 0):
                    extra_summary[timeline_id] = max_seq
        merged = merge_module.merge_entries([t.entries() for t in tables])
        info = self._write_table(merged, extra_summary, cancellable=True)
        output = self._make_table(info)
        with self._work:
            if len(levels) == level + 1:
                levels.append([])
            done = {i.number for i in inputs}
            levels[level] = [i for i in levels[level] if i.number not in done]
            levels[level + 1].insert(0, info)
            self._manifest.save(self._fs, self.path)
            with self._visible_lock:
                for number in done:
                    del self._tables[number]
                self._tables[info.number] = output
                self._install_version()
        for number in done:
            self._fs.remove(os.path.join(self.path, _table_name(number)))
        read_bytes = sum(i.size for i in inputs)
        self._stats["compactions"] += 1
        self._stats["compaction_bytes_read"] += read_bytes
        self._stats["compaction_bytes_written"] += info.size
        log.info(
            "compacted %d tables of level %d (%d bytes) into %s at level %d (%d bytes) in %.0f ms",
            len(inputs),
            level,
            read_bytes,
            _table_name(info.number),
            level + 1,
            info.size,
            (time.monotonic() - started) * 1000,
        )

    # -- lifecycle -------------------------------------------------------

    def stats(self):
        """Return a dict of counters: levels, bytes written, cache hits, stalls."""
        with self._visible_lock:
            levels = [
                {"files": len(level), "bytes": sum(i.size for i in level)}
                for level in self._manifest.levels
            ]
            memtable_bytes = self._active.approximate_bytes
            memtable_entries = len(self._active)
        stats = dict(self._stats)
        user = stats["user_bytes"]
        written = stats["wal_bytes"] + stats["flush_bytes"] + stats["compaction_bytes_written"]
        stats.update(
            levels=levels,
            memtable_bytes=memtable_bytes,
            memtable_entries=memtable_entries,
            block_cache_hits=self._cache.hits,
            block_cache_misses=self._cache.misses,
            block_cache_bytes=self._cache.used_bytes,
            write_amplification=(written / user) if user else 0.0,
            sync=self._options["sync"],
        )
        return stats

    def close(self):
        """Flush the memtable, stop background work and release the directory.

        A compaction in progress is abandoned (its inputs stay live), so
        close does not wait for it. Calling close() again does nothing.
        """
        if self._closed:
            return
        error = None
        try:
            if self._background_error is None and len(self._active):
                self.flush()
        except Exception as exc:
            error = exc
        with self._write_lock:
            with self._work:
                self._closing = True
                self._work.notify_all()
            self._thread.join()
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
