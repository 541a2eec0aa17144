"""Rebuild a lost or damaged MANIFEST from the table files in a data directory.

    python tools/repair_manifest.py DATA_DIR [--dry-run]

Reads every *.sst file and checks its footer and every block. Intact files
go into a new manifest, all in level 0, highest file number first. Their
order within the level does not change what reads return, because each
(timeline, seq) is written once and deletes are range tombstones that apply
to every file; compaction sorts the level out afterwards. Damaged files
move to DATA_DIR/lost/ and are listed. Logs stay in place and are replayed
by the next tlsm.open, because the new manifest marks none as flushed. The
old manifest, if any, is kept as MANIFEST.damaged. Table names come from
the old manifest when it can still be read; otherwise ids other than 0
get the names table-<id>, and their default TTLs are lost (set them again
with db.table(name, ttl=...)). Run it only while no process has the
directory open.
"""

import argparse
import os
import re
import sys

from tlsm.errors import CorruptionError, StorageIOError
from tlsm.fs import OsFileSystem
from tlsm.manifest import FILENAME, Manifest, TableInfo
from tlsm.sstable import BlockCache, SSTable

_TABLE_FILE = re.compile(r"^(\d{6,})\.sst$")


def _check_table(fs, path, number):
    table = SSTable(fs, path, number, os.path.getsize(path), BlockCache(0))
    try:
        table.load()
        count = sum(1 for _ in table.entries())
        if count != table.entry_count:
            raise CorruptionError(
                f"{path}: footer records {table.entry_count} entries but the blocks contain {count}"
            )
        return table
    finally:
        table.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--dry-run", action="store_true", help="report without writing")
    args = parser.parse_args(argv)
    fs = OsFileSystem()
    old_tables = None
    try:
        old = Manifest.load(fs, args.data_dir)
        old_tables = old.tables if old else None
    except CorruptionError as exc:
        print(f"old manifest unreadable: {exc}")
    numbers = sorted(
        (
            int(m.group(1))
            for m in map(_TABLE_FILE.match, os.listdir(args.data_dir))
            if m
        ),
        reverse=True,
    )
    good, bad, prefixes = [], [], set()
    for number in numbers:
        path = os.path.join(args.data_dir, f"{number:06d}.sst")
        try:
            table = _check_table(fs, path, number)
        except (CorruptionError, StorageIOError) as exc:
            bad.append((path, exc))
            continue
        good.append(TableInfo(number, os.path.getsize(path), table.entry_count))
        prefixes.update(key[0] for key in table.summary)
    tables = old_tables or {"default": {"id": 0, "ttl": None}}
    known = {spec["id"] for spec in tables.values()}
    for table_id in sorted(prefixes - known):
        tables[f"table-{table_id}"] = {"id": table_id, "ttl": None}
    highest = max(numbers + [0])
    manifest = Manifest(
        next_file_number=highest + 1, log_number=0, levels=[good], tables=tables
    )
    print(f"{len(good)} intact tables, {len(bad)} damaged")
    for path, exc in bad:
        print(f"  damaged: {exc}")
    if args.dry_run:
        return 1 if bad else 0
    lost = os.path.join(args.data_dir, "lost")
    for path, _ in bad:
        os.makedirs(lost, exist_ok=True)
        os.replace(path, os.path.join(lost, os.path.basename(path)))
    current = os.path.join(args.data_dir, FILENAME)
    if os.path.exists(current):
        os.replace(current, current + ".damaged")
    manifest.save(fs, args.data_dir)
    print(f"wrote {current}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
