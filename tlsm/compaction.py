"""Compaction: which tables to merge, and what a merge may drop.

The tree is tiered: each level holds up to ``level_fanout`` tables, each a
sorted run. A flush adds the newest table to level 0. When a level fills,
all its tables merge into one table that becomes the newest of the next
level. Every table of a level is newer than every table below it, which is
what lets a merge keep the newest version of a key. Writes are appends of
fresh keys, so a merge rewrites each entry about once per level: write
amplification grows with the number of levels (about log base fanout of
data size over memtable size), not with the fanout.

A merge drops an entry when either holds:
- it has expired (expires_at <= now): no older version of the key exists,
  because seqs are never reused, so nothing can reappear;
- a range tombstone covers it: tombstones only cover seqs written before
  them and apply to every table, so the entry is dead everywhere.
A merge drops a tombstone only when its inputs include every table older
than it, which holds when no level below the output has tables: then every
entry it covered was in the inputs and is gone.

A level also compacts, full or not, once every entry of one of its tables
has expired, so expired data is reclaimed without waiting for writes.

After open, background compaction waits for the first flush, or for one
expiry check interval without one. A database closed in the middle of a
compaction reopens with a full level. Merging it at once would hold the
GIL through the first reads, and the tree needs the merge only once writes
add tables again.
"""

import logging
import os
import time

from . import keys
from . import merge as merge_module
from . import tombstones as tomb
from .manifest import TableInfo, log_file_name, table_file_name
from .sstable import TableWriter

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a compaction when close() stops it."""


def pick_level(levels, tables_by_number, fanout, now_ms):
    """Return the index of the level to compact next, or None."""
    for index, level in enumerate(levels):
        if len(level) >= fanout:
            return index
    for index, level in enumerate(levels):
        for info in level:
            table = tables_by_number[info.number]
            if table.entry_count and table.max_expires_at <= now_ms:
                return index
    return None


def surviving_entries(tables, tombstones, now_ms, stats):
    """Merge tables (newest first) and yield the entries a compaction keeps.

    stats["dropped_expired"] and stats["dropped_deleted"] count the rest.
    """
    kind_put = keys.KIND_PUT
    for entry in merge_module.merge_entries([t.entries() for t in tables]):
        expires_at = entry[3]
        if expires_at and expires_at <= now_ms:
            stats["dropped_expired"] += 1
            continue
        intervals = tombstones.get(entry[0])
        if intervals and tomb.covers(intervals, entry[1]):
            stats["dropped_deleted"] += 1
            continue
        if entry[2] != kind_put:
            continue
        yield entry


def _add_entries(writer, entries, db=None):
    """Add entries one by one; stop with Cancelled once db is closing, if given."""
    for i, entry in enumerate(entries):
        writer.add(entry)
        if db is not None and not i & 4095 and db._closing:
            raise Cancelled()


class MaintenanceMixin:
    """Flush and compaction methods of DB; expects the attributes DB.__init__ sets."""

    def flush(self):
        """Write the active memtable to a table and wait until it is in the manifest."""
        with self._write_lock:
            self._check_writable()
            if not len(self._active) and not self._active.tombstones:
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

    def _write_table(self, entries, tombstones, extra_summary, cancellable=False):
        """Write entries (in key order) and tombstones to a new table; return its info."""
        return self._write_table_with(
            lambda writer: _add_entries(writer, entries, self if cancellable else None),
            tombstones,
            extra_summary,
        )

    def _write_memtable(self, memtable):
        """Write a memtable to a new table, a timeline run at a time."""

        def add_runs(writer):
            for timeline_id, run in memtable.sorted_runs():
                writer.add_run(timeline_id, *run)

        return self._write_table_with(add_runs, memtable.tombstones, None)

    def _write_table_with(self, add_entries, tombstones, extra_summary):
        number = self._manifest.allocate_file_number()
        path = os.path.join(self.path, table_file_name(number))
        writer = TableWriter(
            self._fs, path, self._options["block_bytes"], self._options["compression"]
        )
        try:
            add_entries(writer)
            for key, start, end in tombstones:
                writer.add_tombstone(key, start, end)
            if extra_summary:
                for key, max_seq in extra_summary.items():
                    writer.add_summary(key, max_seq)
            size = writer.finish(sync=True)
        except BaseException:
            writer.abandon()
            self._fs.remove(path)
            raise
        return TableInfo(number, size, writer.entry_count)

    def _background_loop(self):
        interval = self._options["expiry_check_seconds"]
        deferred = True
        while True:
            with self._work:
                if (
                    self._immutable is None
                    and not self._closing
                    and (deferred or self._pick_level() is None)
                ):
                    if not self._work.wait(interval):
                        deferred = False
                if self._immutable is None and self._closing:
                    return
                if self._immutable is not None:
                    deferred = False
            try:
                if self._immutable is not None:
                    self._flush_immutable()
                elif not deferred:
                    with self._compaction_lock:
                        level = self._pick_level()
                        if level is not None:
                            self._compact_levels([level], level + 1, cancellable=True)
            except Cancelled:
                log.info("compaction of %s cancelled by close", self.path)
                return
            except Exception as exc:
                log.error(
                    "background work on %s failed: %s", self.path, exc, exc_info=True
                )
                with self._work:
                    self._background_error = exc
                    self._work.notify_all()
                return

    def _pick_level(self):
        return pick_level(
            self._manifest.levels,
            self._tables,
            self._options["level_fanout"],
            self._now_ms(),
        )

    def _flush_immutable(self):
        memtable = self._immutable
        started = time.monotonic()
        info = self._write_memtable(memtable)
        table = self._make_table(info)
        table.open()
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
        self._fs.remove(os.path.join(self.path, log_file_name(memtable.log_number)))
        log.info(
            "flushed %d entries to %s (%d bytes) in %.0f ms",
            info.entries,
            table_file_name(info.number),
            info.size,
            (time.monotonic() - started) * 1000,
        )

    def compact(self):
        """Flush, then merge every table into one, dropping expired and deleted data.

        Runs in the calling thread. Afterwards no deleted or expired entry
        and no tombstone takes space on disk.
        """
        self.flush()
        with self._compaction_lock:
            levels = self._manifest.levels
            full = [i for i, level in enumerate(levels) if level]
            if full:
                self._compact_levels(full, max(1, len(levels) - 1), cancellable=False)

    def _compact_levels(self, source_levels, target, cancellable):
        """Merge every table of source_levels into one table, the newest of level target."""
        levels = self._manifest.levels
        inputs = [info for index in source_levels for info in levels[index]]
        tables = [self._tables[info.number] for info in inputs]
        started = time.monotonic()
        while len(levels) <= target:
            levels.append([])
        is_bottom = not any(
            levels[i] for i in range(target, len(levels)) if i not in source_levels
        )
        extra_summary = {}
        tombstones = []
        for table in tables:
            table.load()
            for key, (_, max_seq, _) in table.summary.items():
                if max_seq > extra_summary.get(key, 0):
                    extra_summary[key] = max_seq
            if not is_bottom:
                tombstones.extend(table.tombstones)
        with self._visible_lock:
            live_tombstones = self._tombstones
        counts = {"dropped_expired": 0, "dropped_deleted": 0}
        merged = surviving_entries(tables, live_tombstones, self._now_ms(), counts)
        info = self._write_table(merged, tombstones, extra_summary, cancellable)
        output = self._make_table(info)
        output.open()
        done = {i.number for i in inputs}
        with self._work:
            for index in source_levels:
                levels[index] = [i for i in levels[index] if i.number not in done]
            levels[target].insert(0, info)
            while len(levels) > 1 and not levels[-1]:
                levels.pop()
            self._manifest.save(self._fs, self.path)
            with self._visible_lock:
                for number in done:
                    del self._tables[number]
                self._tables[info.number] = output
                self._install_version()
        for number in done:
            self._fs.remove(os.path.join(self.path, table_file_name(number)))
            self._cache.evict_file(number)
        read_bytes = sum(i.size for i in inputs)
        self._stats["compactions"] += 1
        self._stats["compaction_bytes_read"] += read_bytes
        self._stats["compaction_bytes_written"] += info.size
        for name, value in counts.items():
            self._stats[name] += value
        log.info(
            "compacted %d tables of levels %s (%d bytes) into %s at level %d "
            "(%d bytes, %d expired and %d deleted entries dropped) in %.0f ms",
            len(inputs),
            source_levels,
            read_bytes,
            table_file_name(info.number),
            target,
            info.size,
            counts["dropped_expired"],
            counts["dropped_deleted"],
            (time.monotonic() - started) * 1000,
        )
