"""Opening a data directory and recovering it, as a mixin of DB.

Recovery reads the manifest and replays every log it does not mark as
flushed into a memtable. It writes that memtable to a level-0 table, starts
a new log and saves the manifest. Then it deletes the flushed logs and any
table file the manifest does not name, which is the output of an
interrupted flush or compaction.
It refuses, with CorruptionError, a directory whose MANIFEST is missing
beside table files and a log damaged before intact records (unless
wal_recovery="point_in_time"), because going on would lose data.
"""

import logging
import os
import re
import time

from . import keys
from .errors import CorruptionError, InvalidArgumentError
from .manifest import Manifest, log_file_name, table_file_name
from .memtable import Memtable
from .sstable import LiveTables
from .table import Table
from .wal import read_log

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{6,})\.(log|sst)$")


class RecoveryMixin:
    """Open and recovery methods of DB; expects the attributes DB.__init__ sets."""

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
        manifest = Manifest.load(fs, self.path)
        numbers = {"log": [], "sst": []}
        for name in fs.listdir(self.path):
            match = _FILE_NAME.match(name)
            if match:
                numbers[match.group(2)].append(int(match.group(1)))
        if manifest is None and numbers["sst"]:
            # Opening as a new database would delete every table as unlisted.
            raise CorruptionError(
                f"{self.path}: MANIFEST is missing but {len(numbers['sst'])} table "
                "files exist; rebuild it with python tools/repair_manifest.py "
                f"{self.path}",
                os.path.join(self.path, "MANIFEST"),
            )
        if manifest is None:
            manifest = Manifest()
        elif manifest.log_number and manifest.log_number not in numbers["log"]:
            log.warning(
                "%s: log %s, which the manifest lists as not yet flushed, is "
                "missing; writes acknowledged since the last flush are lost",
                self.path,
                log_file_name(manifest.log_number),
            )
        highest = max(numbers["log"] + numbers["sst"], default=0)
        # A log created after the last manifest save has a number the saved
        # next_file_number does not cover; never hand that number out again.
        manifest.next_file_number = max(manifest.next_file_number, highest + 1)
        self._manifest = manifest
        self._table_handles = {}
        for name, spec in manifest.tables.items():
            self._table_handles[name] = Table(self, name, spec["id"], spec["ttl"])
        self._default = self._table_handles["default"]

        self._tables = LiveTables()
        for level in manifest.levels:
            for info in level:
                table = self._tables[info.number] = self._make_table(info)
                table.open()
                for key, start, end in table.tombstones:
                    self._add_tombstone(key, start, end)

        self._adopt_compaction_style(manifest)

        recovered = self._replay_logs(
            sorted(n for n in numbers["log"] if n >= manifest.log_number)
        )
        if len(recovered) or recovered.tombstones:
            info = self._write_memtable(recovered)
            manifest.levels[0].insert(0, info)
            self._tables[info.number] = self._make_table(info)
            self._tables[info.number].open()

        log_number = manifest.allocate_file_number()
        self._log = self._create_log(log_number)
        fs.sync_dir(self.path)
        manifest.log_number = log_number
        manifest.save(fs, self.path)

        live = manifest.live_numbers()
        for number in numbers["log"]:
            fs.remove(os.path.join(self.path, log_file_name(number)))
        unlisted = [n for n in numbers["sst"] if n not in live]
        if unlisted:
            # Outputs of a merge or flush cut short by a crash, or inputs
            # that a merge replaced while a read still held them.
            names = [table_file_name(n) for n in unlisted]
            log.warning(
                "%s: removing %d table files that the manifest does not list: %s",
                self.path,
                len(names),
                ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""),
            )
            for name in names:
                fs.remove(os.path.join(self.path, name))

        self._active = Memtable(log_number)
        self._immutable = None
        self._install_version()
        log.info(
            "opened %s: %d tables, %d log entries replayed, %d damaged bytes dropped, %.1f ms",
            self.path,
            len(self._tables),
            self._stats["recovered_entries"],
            self._stats["recovery_dropped_bytes"],
            (time.monotonic() - started) * 1000,
        )

    def _replay_logs(self, log_numbers):
        recovered = Memtable(0)
        tolerate_tail = self._options["wal_recovery"] == "tolerate_tail"
        for index, number in enumerate(log_numbers):
            result = read_log(self._fs, os.path.join(self.path, log_file_name(number)))
            is_last = index == len(log_numbers) - 1
            if (
                tolerate_tail
                and result.dropped_bytes
                and (result.intact_after or not is_last)
            ):
                raise CorruptionError(
                    f"{result.path}: damaged record at offset {result.valid_bytes} "
                    f"({result.reason}) is followed by intact records, so it is not a "
                    "torn tail; opening would drop acknowledged writes. Open with "
                    "wal_recovery='point_in_time' (tlsm serve --wal-recovery "
                    "point_in_time) to keep the records before it and drop the rest",
                    result.path,
                    result.valid_bytes,
                )
            self._stats["recovery_dropped_bytes"] += result.dropped_bytes
            for batch in result.batches:
                for key, seq, kind, expires_at, value in batch:
                    if kind == keys.KIND_RANGE_DELETE:
                        end = int.from_bytes(value, "little")
                        recovered.add_tombstone(key, seq, end)
                        self._add_tombstone(key, seq, end)
                    else:
                        recovered.add(key, seq, kind, expires_at, value)
        self._stats["recovered_entries"] = len(recovered)
        return recovered

    def _adopt_compaction_style(self, manifest):
        """Give every table a key range and make the levels fit the chosen style.

        Manifests of format 1 lack key ranges, which come from the tables'
        summaries and tombstones here. A leveled level whose tables overlap
        (a database that was tiered) moves to level 0, where tables may
        overlap. The next level-0 merge then rewrites it as leveled.
        """
        for level in manifest.levels:
            for info in level:
                if info.smallest is None:
                    info.smallest, info.largest = _key_range(self._tables[info.number])
        style = self._options["compaction_style"]
        if manifest.compaction_style != style:
            log.info(
                "%s: switching compaction from %s to %s",
                self.path,
                manifest.compaction_style,
                style,
            )
            manifest.compaction_style = style
        if style != "leveled":
            return
        for index in range(1, len(manifest.levels)):
            level = sorted(manifest.levels[index], key=lambda info: info.smallest)
            disjoint = all(a.largest < b.smallest for a, b in zip(level, level[1:]))
            if disjoint:
                manifest.levels[index] = level
            else:
                manifest.levels[0].extend(manifest.levels[index])
                manifest.levels[index] = []
        while len(manifest.levels) > 1 and not manifest.levels[-1]:
            manifest.levels.pop()


def _key_range(table):
    """Return the (smallest, largest) stored timeline keys that table has data of."""
    table.load()
    present = list(table.summary)
    present.extend(key for key, _, _ in table.tombstones)
    if not present:
        return b"", b""
    return min(present), max(present)
