"""Rebuild a lost or damaged MANIFEST from the table files in a data directory.

    python tools/repair_manifest.py DATA_DIR [--dry-run] [--force]

Takes the directory's lock, so it refuses to run while a database or
server has the directory open. When the MANIFEST is readable it changes
nothing unless --force is given.

Every *.sst file is read block by block. A file whose blocks all pass
their checksums is kept as it is. From a damaged file the intact blocks
are copied into a new table file, and the original moves to DATA_DIR/lost/;
the output names how many entries were lost. All tables go into level 0,
highest file number first. Their order within the level does not change
what reads return, because each (timeline, seq) is written once and
deletes are range tombstones that apply to every file. Compaction sorts
the level out afterwards.

Logs stay in place and are replayed by the next tlsm.open, because the new
manifest marks none as flushed. The old manifest, if any, is kept as
MANIFEST.damaged. Table names come from the old manifest when it can still
be read; otherwise each table id other than 0 gets the name table-<id> and
no default TTL, and the output lists them so they can be renamed in the
manifest or given their TTL again with db.table(name, ttl=...).
"""

import argparse
import os
import re
import sys

from tlsm.errors import CorruptionError, StorageIOError
from tlsm.fs import OsFileSystem
from tlsm.manifest import FILENAME, Manifest, TableInfo
from tlsm.sstable import BlockCache, SSTable
from tlsm.table_writer import TableWriter

_TABLE_FILE = re.compile(r"^(\d{6,})\.sst$")


def _open_table(fs, path, number):
    return SSTable(fs, path, number, os.path.getsize(path), BlockCache(0))


def _check_table(fs, path, number):
    """Return (table, None) when every block is intact, else (None, error)."""
    table = _open_table(fs, path, number)
    try:
        table.load()
        count = sum(1 for _ in table.entries())
        if count != table.entry_count:
            raise CorruptionError(
                f"{path}: footer records {table.entry_count} entries "
                f"but the blocks contain {count}"
            )
        return table, None
    except (CorruptionError, StorageIOError) as exc:
        return None, exc
    finally:
        table.close()


def _salvage(fs, path, number, new_path):
    """Copy the intact blocks of a damaged table into new_path.

    With new_path None, only counts what a copy would keep. Returns
    (entries kept, entries lost, timeline keys seen). Raises
    CorruptionError when not even the index can be read.
    """
    table = _open_table(fs, path, number)
    try:
        table.load()
        writer = None if new_path is None else TableWriter(fs, new_path)
        kept = 0
        for index in range(len(table.index_keys)):
            try:
                entries = table.read_block(index)
            except CorruptionError:
                continue
            for entry in entries:
                if writer is not None:
                    writer.add(entry)
                kept += 1
        if writer is not None:
            for key, (_, max_seq, _) in table.summary.items():
                writer.add_summary(key, max_seq)
            for key, start, end in table.tombstones:
                writer.add_tombstone(key, start, end)
            writer.finish()
        return kept, table.entry_count - kept, set(table.summary)
    finally:
        table.close()


def _table_names(old_tables, prefixes):
    tables = dict(old_tables or {"default": {"id": 0, "ttl": None}})
    known = {spec["id"] for spec in tables.values()}
    invented = []
    for table_id in sorted(prefixes - known):
        name = f"table-{table_id}"
        tables[name] = {"id": table_id, "ttl": None}
        invented.append(name)
    return tables, invented


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--dry-run", action="store_true", help="report without writing")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even when the MANIFEST is readable",
    )
    args = parser.parse_args(argv)
    fs = OsFileSystem()
    try:
        lock = fs.lock(os.path.join(args.data_dir, "LOCK"))
    except StorageIOError as exc:
        print(f"cannot repair: {exc}")
        return 2
    try:
        return _repair(fs, args)
    finally:
        fs.unlock(lock)


def _repair(fs, args):
    old = None
    try:
        old = Manifest.load(fs, args.data_dir)
    except CorruptionError as exc:
        print(f"old manifest unreadable: {exc}")
    if old is not None and not args.force:
        print(
            f"{FILENAME} is readable; nothing to repair (use --force to rebuild it anyway)"
        )
        return 0
    names = sorted(n for n in os.listdir(args.data_dir) if _TABLE_FILE.match(n))
    numbers = sorted((int(_TABLE_FILE.match(n).group(1)) for n in names), reverse=True)
    next_number = max(numbers, default=0) + 1
    good, damaged, prefixes = [], [], set()
    for number in numbers:
        path = os.path.join(args.data_dir, f"{number:06d}.sst")
        table, error = _check_table(fs, path, number)
        if table is not None:
            good.append(TableInfo(number, os.path.getsize(path), table.entry_count))
            prefixes.update(key[0] for key in table.summary)
        else:
            damaged.append((number, path, error))
    lost_entries = 0
    to_move = []
    for number, path, error in damaged:
        print(f"damaged: {error}")
        new_path = os.path.join(args.data_dir, f"{next_number:06d}.sst")
        try:
            kept, lost, keys = _salvage(
                fs, path, number, None if args.dry_run else new_path
            )
        except (CorruptionError, StorageIOError) as exc:
            print(f"  nothing salvageable: {exc}")
            to_move.append(path)
            continue
        lost_entries += lost
        if args.dry_run:
            print(f"  would salvage {kept} entries, losing {lost}")
            size = 0
        else:
            print(
                f"  salvaged {kept} entries into {os.path.basename(new_path)}, "
                f"lost {lost}"
            )
            size = os.path.getsize(new_path)
        good.insert(0, TableInfo(next_number, size, kept))
        prefixes.update(key[0] for key in keys)
        next_number += 1
        to_move.append(path)
    tables, invented = _table_names(old.tables if old else None, prefixes)
    print(
        f"{len(good)} tables kept, {len(damaged)} damaged, {lost_entries} entries lost"
    )
    for name in invented:
        print(
            f"  table id {tables[name]['id']} had no name: named it {name!r}, no default TTL"
        )
    if args.dry_run:
        return 1 if damaged else 0
    for path in to_move:
        lost_dir = os.path.join(args.data_dir, "lost")
        os.makedirs(lost_dir, exist_ok=True)
        os.replace(path, os.path.join(lost_dir, os.path.basename(path)))
    current = os.path.join(args.data_dir, FILENAME)
    if os.path.exists(current):
        os.replace(current, current + ".damaged")
    Manifest(
        next_file_number=next_number, log_number=0, levels=[good], tables=tables
    ).save(fs, args.data_dir)
    print(f"wrote {current}")
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
