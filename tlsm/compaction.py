"""Flush and compaction: writing memtables out, and merging table files.

Two background threads do the work. The flush thread writes each immutable
memtable to a new level-0 table. The compaction thread gets the next job
from tlsm.compaction_pick.pick and runs it. A trivial move only edits the
manifest. A merge reads its input tables through the k-way merge and
writes the entries it keeps to new files of the target level. Each job
ends with one manifest save that swaps inputs for outputs, so a crash
leaves either the old tables or the new ones live, never both. The flush
thread does not wait for a merge to finish (only for the short manifest
update), so a long merge delays writers only through the level-0 stall.

A merge drops an entry when either holds:
- it has expired (expires_at <= now): no older version of the key exists,
  because seqs are never reused, so nothing can reappear;
- a range tombstone covers it: tombstones only cover seqs written before
  them and apply to every table, so the entry is dead everywhere.
A merge drops a tombstone [start, end) of a timeline only when no live
table outside its inputs holds an entry of that timeline in [start, end)
(by the tables' summaries): the inputs' covered entries are gone with the
merge, and entries appended after the tombstone have seqs >= end. A merge
carries every input's per-timeline seq high-water mark into its output,
so the next seq of a timeline never goes back even when all its entries
are gone.

After open, compaction waits for the first flush, or for one expiry check
interval without one. A database closed in the middle of a compaction
reopens with a full level. Merging it at once would hold the GIL through
the first reads, and the tree needs the merge only once writes add tables
again.
"""

import bisect
import logging
import os
import time

from . import _impl, compaction_pick, survivors
from . import merge as merge_module
from .errors import ClosedError
from .manifest import TableInfo, log_file_name, table_file_name
from .table_writer import TableWriter

log = logging.getLogger(__name__)

_compact_extension = _impl.load_extension("compact")


class Cancelled(Exception):
    """Raised inside a compaction when close() stops it."""


def tombstones_to_keep(input_tables, other_tables):
    """Return the input tombstones that must outlive a merge of input_tables.

    A tombstone stays while a table outside the merge may hold an entry it
    covers, judged by that table's summary span of the timeline.
    """
    needed = []
    for table in input_tables:
        for key, start, end in table.tombstones:
            for other in other_tables:
                span = other.span(key)
                if span is not None and span[2] and span[0] < end and span[1] >= start:
                    needed.append((key, start, end))
                    break
    return needed


class _SideRecords:
    """Tombstones and seq high-water marks that a merge writes beside entries.

    Each goes into the output file whose key range takes its timeline, so
    the files of a level keep disjoint ranges.
    """

    def __init__(self, tombstones, high_water):
        by_key = {}
        for key, start, end in tombstones:
            by_key.setdefault(key, ([], None))[0].append((start, end))
        for key, max_seq in high_water.items():
            by_key[key] = (by_key.get(key, ([], None))[0], max_seq)
        self._keys = sorted(by_key)
        self._records = by_key
        self._position = 0

    def write_before(self, output, key):
        """Write the records of timelines below key (all with key None)."""
        timelines = self._keys
        stop = len(timelines) if key is None else bisect.bisect_left(timelines, key)
        for timeline_id in timelines[self._position : stop]:
            intervals, max_seq = self._records[timeline_id]
            output.note_key(timeline_id)
            for start, end in intervals:
                output.writer.add_tombstone(timeline_id, start, end)
            if max_seq is not None:
                output.writer.add_summary(timeline_id, max_seq)
        self._position = max(self._position, stop)


class RunMerge:
    """A merge through Python objects, with the interface of tlsm_ext's RawMerge.

    Entries of the input tables, newest table first, go through
    tlsm.merge.merge_entries and tlsm.survivors.surviving_runs. Use it as

        while (key := merge.next_timeline(tombstones)) is not None:
            size = merge.copy_timeline(data_blocks)

    next_timeline() returns the next timeline that keeps an entry (the
    tombstones of the first call count), copy_timeline() adds its surviving
    runs to a tlsm.table_writer.DataBlocks and returns their size.
    RawMerge (tlsm_ext/compact.pyx) reads the blocks' bytes in place and
    writes the same files.
    """

    def __init__(self, tables, now_ms):
        self._entries = merge_module.merge_entries([t.entries() for t in tables])
        self._now_ms = now_ms
        self._counts = {"dropped_expired": 0, "dropped_deleted": 0}
        self._runs = None
        self._next = None

    @property
    def dropped_expired(self):
        return self._counts["dropped_expired"]

    @property
    def dropped_deleted(self):
        return self._counts["dropped_deleted"]

    def next_timeline(self, tombstones):
        if self._runs is None:
            self._runs = survivors.surviving_runs(
                self._entries, tombstones, self._now_ms, self._counts
            )
            self._next = next(self._runs, None)
        return None if self._next is None else self._next[0]

    def close(self):
        """Stop the merge; RawMerge releases its inputs here."""
        self._runs = self._entries = self._next = None

    def copy_timeline(self, blocks):
        key = self._next[0]
        size = 0
        while self._next is not None and self._next[0] == key:
            _, seqs, kinds, expires, values, run_size = self._next
            blocks.add_run(key, seqs, kinds, expires, values)
            size += run_size
            self._next = next(self._runs, None)
        return size


def merge_tables(tables, now_ms, max_pinned):
    """Return the merge of tables (newest first): RawMerge when built, else RunMerge.

    RawMerge pins every input, and reads blocks in place, only when there
    are at most max_pinned inputs: a pinned file keeps a descriptor until
    the merge is closed.
    """
    if _compact_extension is None:
        return RunMerge(tables, now_ms)
    pin = len(tables) <= max_pinned
    frames = []
    try:
        for table in tables:
            frames.append(table.pin_frames(pin))
        return _compact_extension.RawMerge(frames, now_ms)
    except BaseException:
        for pinned in frames:
            pinned.close()
        raise


class _Output:
    """One table file being written, with the key range it covers."""

    def __init__(self, writer, number, path):
        self.writer = writer
        self.number = number
        self.path = path
        self.smallest = None
        self.largest = None
        self.bytes = 0

    def note_key(self, key):
        if self.smallest is None:
            self.smallest = key
        self.largest = key


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
            self._attach_fast_path()
        with self._work:
            while self._immutable is not None and self._background_error is None:
                self._work.wait(0.1)
        if self._background_error is not None:
            self._check_writable()

    # -- writing table files ------------------------------------------------

    def _new_output(self):
        number = self._manifest.allocate_file_number()
        path = os.path.join(self.path, table_file_name(number))
        writer = TableWriter(
            self._fs, path, self._options["block_bytes"], self._options["compression"]
        )
        return _Output(writer, number, path)

    def _finish_output(self, output):
        """Finish output's file; return its TableInfo, or None if it held nothing."""
        writer = output.writer
        if output.smallest is None:
            writer.abandon()
            self._fs.remove(output.path)
            return None
        size = writer.finish(sync=True)
        return TableInfo(
            output.number, size, writer.entry_count, output.smallest, output.largest
        )

    def _abandon_outputs(self, outputs):
        for output in outputs:
            output.writer.abandon()
            self._fs.remove(output.path)

    def _write_memtable(self, memtable):
        """Write a memtable to a new table, a timeline run at a time."""
        output = self._new_output()
        try:
            for timeline_id, run in memtable.sorted_runs():
                if run[0]:
                    output.note_key(timeline_id)
                    output.writer.add_run(timeline_id, *run)
            tombstones = sorted(memtable.tombstones)
            for key, start, end in tombstones:
                output.writer.add_tombstone(key, start, end)
            if tombstones:
                first, last = tombstones[0][0], tombstones[-1][0]
                output.smallest = min(first, output.smallest or first)
                output.largest = max(last, output.largest or last)
            if output.smallest is None:
                # Nothing but empty runs: keep a valid, empty file.
                output.note_key(b"")
            return self._finish_output(output)
        except BaseException:
            self._abandon_outputs([output])
            raise

    def _write_merged(self, merge, tombstones, side, split, cancellable):
        """Write a merge's survivors and the side records to new files.

        merge is a RunMerge or a RawMerge, tombstones the deleted intervals
        it drops. Returns the TableInfos of the files written. With split, a
        new file starts at the first timeline boundary after a file reaches
        target_file_bytes.
        """
        target_bytes = self._options["target_file_bytes"] if split else None
        output = self._new_output()
        # Finished files are closed at once, so a merge with many outputs
        # keeps one descriptor open. They are removed again if the merge fails.
        infos = []
        try:
            while (key := merge.next_timeline(tombstones)) is not None:
                side.write_before(output, key)
                if target_bytes is not None and output.bytes >= target_bytes:
                    infos.append(self._finish_output(output))
                    output = None
                    output = self._new_output()
                output.note_key(key)
                output.bytes += merge.copy_timeline(output.writer.blocks)
                if cancellable and self._closing:
                    raise Cancelled()
            side.write_before(output, None)
            infos.append(self._finish_output(output))
            output = None
        except BaseException:
            if output is not None:
                self._abandon_outputs([output])
            for info in infos:
                if info is not None:
                    self._fs.remove(
                        os.path.join(self.path, table_file_name(info.number))
                    )
            raise
        return [info for info in infos if info is not None]

    # -- background threads -------------------------------------------------

    def _flush_loop(self):
        while True:
            with self._work:
                while self._immutable is None and not self._closing:
                    self._work.wait()
                if self._immutable is None:
                    return
            if not self._background_step(self._flush_immutable):
                return

    def _compaction_loop(self):
        interval = self._options["expiry_check_seconds"]
        flushes_at_open = self._stats["flushes"]
        while True:
            with self._work:
                while not self._closing and self._background_error is None:
                    if self._compaction_deferred:
                        if self._stats[
                            "flushes"
                        ] > flushes_at_open or not self._work.wait(interval):
                            self._compaction_deferred = False
                        continue
                    if self._pick_job(peek=True) is not None:
                        break
                    self._work.wait(interval)
                if self._closing or self._background_error is not None:
                    return
            if not self._background_step(self._compact_once):
                return

    def _background_step(self, work):
        """Run work(); return False when the thread must stop."""
        try:
            work()
            return True
        except Cancelled:
            log.info("compaction of %s cancelled by close", self.path)
            return False
        except Exception as exc:
            log.exception("background work on %s failed", self.path)
            with self._work:
                self._background_error = exc
                self._work.notify_all()
            return False

    def wait_for_compaction(self, timeout=None):
        """Block until no flush or compaction is due; return False on timeout.

        Starts compaction at once if it is still deferred after open. Raises
        StorageIOError if background work failed. Writes from other threads
        may make more work due at any time; this waits for a quiet moment.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._work:
            self._compaction_deferred = False
            self._work.notify_all()
            while self._background_error is None:
                if self._closing or self._closed:
                    break
                if (
                    self._immutable is None
                    and not self._compacting
                    and self._pick_job(peek=True) is None
                ):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._work.wait(0.1 if left is None else min(left, 0.1))
        self._check_writable()
        return True

    def _pick_job(self, peek=False):
        """Return the next compaction Job or None; call with self._work held."""
        pointers = dict(self._pointers) if peek else self._pointers
        return compaction_pick.pick(
            self._manifest.compaction_style,
            self._manifest.levels,
            self._tables,
            self._options,
            self._now_ms(),
            pointers,
        )

    def _compact_once(self):
        with self._compaction_lock:
            with self._work:
                job = self._pick_job()
                self._compacting = job is not None
            try:
                if job is not None:
                    self._run_job(job, cancellable=True)
            finally:
                with self._work:
                    self._compacting = False
                    self._work.notify_all()

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

    # -- compaction ---------------------------------------------------------

    def compact(self):
        """Flush, then merge every table into the last level, dropping dead data.

        Runs in the calling thread. Afterwards no deleted or expired entry
        and no tombstone takes space on disk. A close() from another thread
        stops the merge at its next timeline and waits for it; compact()
        then raises ClosedError, and the tables stay as they were.
        """
        self.flush()
        with self._compaction_lock:
            with self._work:
                if self._closing or self._closed:
                    raise ClosedError(f"database {self.path} is closed")
                levels = self._manifest.levels
                inputs = {i: list(level) for i, level in enumerate(levels) if level}
                tiered = self._manifest.compaction_style == "tiered"
                target = max(1, len(levels) - 1)
            if inputs:
                job = compaction_pick.Job(
                    inputs, target, split=not tiered, reason="compact()"
                )
                try:
                    self._run_job(job, cancellable=True)
                except Cancelled:
                    raise ClosedError(
                        f"database {self.path} was closed during compact(); the "
                        "merge was abandoned and the tables stay as they were"
                    ) from None

    def _run_job(self, job, cancellable):
        """Carry out job: move or merge its inputs into its target level."""
        started = time.monotonic()
        inputs = job.input_infos()
        if job.trivial:
            self._install_job(job, inputs)
            self._stats["trivial_moves"] += 1
            log.info(
                "moved %s to level %d", table_file_name(inputs[0].number), job.target
            )
            return
        tables = [self._tables[info.number] for info in inputs]
        high_water = {}
        for table in tables:
            table.load()
            for key, (_, max_seq, _) in table.summary.items():
                if max_seq > high_water.get(key, 0):
                    high_water[key] = max_seq
        numbers = {info.number for info in inputs}
        with self._work:
            others = [t for n, t in self._tables.items() if n not in numbers]
        kept_tombstones = tombstones_to_keep(tables, others)
        with self._visible_lock:
            live_tombstones = self._tombstones
        # Half the open-file budget may be pinned by a merge's inputs.
        merge = merge_tables(
            tables, self._now_ms(), self._options["max_open_files"] // 2
        )
        try:
            outputs = self._write_merged(
                merge,
                live_tombstones,
                _SideRecords(kept_tombstones, high_water),
                job.split,
                cancellable,
            )
        finally:
            merge.close()
        counts = {
            "dropped_expired": merge.dropped_expired,
            "dropped_deleted": merge.dropped_deleted,
        }
        self._install_job(job, inputs, outputs)
        read_bytes = sum(i.size for i in inputs)
        written = sum(i.size for i in outputs)
        self._stats["compactions"] += 1
        self._stats["compaction_bytes_read"] += read_bytes
        self._stats["compaction_bytes_written"] += written
        for name, value in counts.items():
            self._stats[name] += value
        log.info(
            "compacted %d tables (%d bytes) into %d at level %d (%d bytes, %d "
            "expired and %d deleted entries dropped; %s) in %.0f ms",
            len(inputs),
            read_bytes,
            len(outputs),
            job.target,
            written,
            counts["dropped_expired"],
            counts["dropped_deleted"],
            job.reason,
            (time.monotonic() - started) * 1000,
        )

    def _install_job(self, job, inputs, outputs=None):
        """Swap a job's inputs for its outputs in the manifest and the read view."""
        done = {info.number for info in inputs}
        moved = outputs is None
        if moved:
            outputs = inputs
        new_tables = {}
        for info in outputs if not moved else ():
            new_tables[info.number] = self._make_table(info)
            new_tables[info.number].open()
        with self._work:
            levels = self._manifest.levels
            while len(levels) <= job.target:
                levels.append([])
            for index in job.inputs:
                levels[index] = [i for i in levels[index] if i.number not in done]
            if job.split:
                target = levels[job.target] + list(outputs)
                target.sort(key=_smallest_key)
                levels[job.target] = target
            else:
                levels[job.target][:0] = outputs
            while len(levels) > 1 and not levels[-1]:
                levels.pop()
            self._manifest.save(self._fs, self.path)
            with self._visible_lock:
                if not moved:
                    for number in done:
                        del self._tables[number]
                    self._tables.update(new_tables)
                self._install_version()
            self._work.notify_all()
        if not moved:
            # The files go when the last read holding them ends
            # (SSTable.delete_when_unused); their cached blocks go now.
            for number in done:
                self._cache.evict_file(number)


def _smallest_key(info):
    return info.smallest
