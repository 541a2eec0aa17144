"""Print what a tlsm data directory holds, without changing it.

    python tools/inspect_data.py DATA_DIR [--verify] [--timeline ID [--table NAME]]

Lists the manifest (tables, levels, files), each table file's footer
(entries, timelines, tombstones, latest expiry) and each log's intact
records and damaged tail. --verify also reads every data block and checks
its checksum and encoding. --timeline prints the entries of one timeline
found in the files, newest file first. Opening the directory with
tlsm.open would replay and delete logs; this tool only reads.
Exits 1 when it finds damage.
"""

import argparse
import datetime
import os
import sys

from tlsm import compaction_pick
from tlsm.errors import CorruptionError, StorageIOError
from tlsm.fs import OsFileSystem
from tlsm.manifest import Manifest, table_file_name
from tlsm.sstable import NEVER_EXPIRES, BlockCache, SSTable
from tlsm.wal import read_log


def _show_key(key):
    """Return a stored timeline key as table id and timeline id, e.g. 1:'room:7'."""
    if not key:
        return "(none)"
    return f"{key[0]}:{key[1:].decode('utf-8', 'replace')!r}"


def _describe_table(fs, path, number, verify):
    table = SSTable(fs, path, number, os.path.getsize(path), BlockCache(0))
    table.load()
    if table.max_expires_at == NEVER_EXPIRES:
        expiry = "never"
    else:
        moment = datetime.datetime.fromtimestamp(
            table.max_expires_at / 1000, datetime.timezone.utc
        )
        expiry = moment.isoformat(timespec="seconds")
    print(
        f"  {os.path.basename(path)}: {table.entry_count} entries, "
        f"{len(table.summary)} timelines, {len(table.tombstones)} tombstones, "
        f"{len(table.index_keys)} blocks, latest expiry {expiry}"
    )
    if verify:
        count = sum(1 for _ in table.entries())
        if count != table.entry_count:
            raise CorruptionError(
                f"{path}: footer records {table.entry_count} entries but the blocks contain {count}",
                path,
            )
    return table


def _print_timeline(tables, key):
    for table in tables:
        for entry in table.scan(key, 0, 1 << 64):
            _key, seq, kind, expires_at, value = entry
            print(
                f"    {table_file_name(table.file_number)} seq={seq} kind={kind} "
                f"expires_at={expires_at} value={value[:60]!r}"
            )
        for tombstone_key, start, end in table.tombstones:
            if tombstone_key == key:
                print(
                    f"    {table_file_name(table.file_number)} deleted [{start}, {end})"
                )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument(
        "--verify", action="store_true", help="read and check every block"
    )
    parser.add_argument("--timeline", help="print the entries of this timeline")
    parser.add_argument("--table", default="default", help="table of --timeline")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        print(f"{args.data_dir}: not found or not a directory", file=sys.stderr)
        return 2
    fs = OsFileSystem()
    damaged = False
    try:
        manifest = Manifest.load(fs, args.data_dir)
    except CorruptionError as exc:
        print(f"DAMAGED MANIFEST: {exc}")
        print(f"  rebuild it with: python tools/repair_manifest.py {args.data_dir}")
        manifest = None
        damaged = True
    if manifest is None:
        tables_on_disk = [n for n in os.listdir(args.data_dir) if n.endswith(".sst")]
        if tables_on_disk and not damaged:
            damaged = True
            print(
                f"MISSING MANIFEST: {len(tables_on_disk)} table files exist; tlsm.open "
                "refuses this directory until python tools/repair_manifest.py rebuilds it"
            )
        elif not damaged:
            print(f"{args.data_dir}: no MANIFEST (a new directory)")
        manifest = Manifest()
    print(
        f"manifest: next file {manifest.next_file_number}, first unflushed log "
        f"{manifest.log_number}, {manifest.compaction_style} compaction"
    )
    ranged = all(i.smallest is not None for level in manifest.levels for i in level)
    if manifest.compaction_style == "leveled" and ranged:
        try:
            compaction_pick.check_leveled(manifest.levels)
        except AssertionError as exc:
            damaged = True
            print(f"  OVERLAPPING LEVEL: {exc}")
    for name, spec in sorted(manifest.tables.items()):
        print(f"  table {name!r}: id {spec['id']}, default ttl {spec['ttl']}")
    tables = []
    for level_number, level in enumerate(manifest.levels):
        print(
            f"level {level_number}: {len(level)} files, {sum(i.size for i in level)} bytes"
        )
        for info in level:
            if info.smallest is not None:
                print(
                    f"  {table_file_name(info.number)}: keys "
                    f"{_show_key(info.smallest)} .. {_show_key(info.largest)}"
                )
            path = os.path.join(args.data_dir, table_file_name(info.number))
            try:
                tables.append(_describe_table(fs, path, info.number, args.verify))
            except (CorruptionError, StorageIOError, OSError) as exc:
                damaged = True
                print(f"  DAMAGED {os.path.basename(path)}: {exc}")
    for name in sorted(os.listdir(args.data_dir)):
        if name.endswith(".log"):
            result = read_log(fs, os.path.join(args.data_dir, name))
            entries = sum(len(batch) for batch in result.batches)
            tail = (
                f", {result.dropped_bytes} bytes dropped ({result.reason})"
                if result.dropped_bytes
                else ""
            )
            print(f"log {name}: {len(result.batches)} records, {entries} entries{tail}")
    if args.timeline:
        spec = manifest.tables.get(args.table)
        if spec is None:
            print(f"table {args.table!r} not found in the manifest")
            return 1
        key = bytes([spec["id"]]) + args.timeline.encode("utf-8")
        print(f"timeline {args.timeline!r} in table {args.table!r}:")
        _print_timeline(tables, key)
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
