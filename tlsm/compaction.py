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
"""

from . import keys
from . import merge as merge_module
from . import tombstones as tomb


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
