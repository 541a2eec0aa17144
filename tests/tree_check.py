"""Invariants of a database's table files, checked by reading every file.

check_tree(db) raises AssertionError when:
- a leveled level below 0 has overlapping or unsorted tables;
- a table contains a key outside the range the manifest gives it;
- a table contains an entry that a tombstone in memory covers while no table
  file keeps that tombstone (after a reopen the entry would come back);
- a table's summary gives a timeline a seq high-water mark below an entry.
"""

from tlsm import compaction_pick
from tlsm import tombstones as tomb


def check_tree(db):
    with db._compaction_lock, db._work:
        levels = [list(level) for level in db._manifest.levels]
        tables = dict(db._tables)
        style = db._manifest.compaction_style
        in_memory = dict(db._tombstones)
    if style == "leveled":
        compaction_pick.check_leveled(levels)
    on_disk = {}
    for level in levels:
        for info in level:
            table = tables[info.number]
            table.load()
            for key, start, end in table.tombstones:
                on_disk[key] = tomb.add_interval(on_disk.get(key, ()), start, end)
    for level in levels:
        for info in level:
            _check_table(tables[info.number], info, in_memory, on_disk)


def _check_table(table, info, in_memory, on_disk):
    for key in list(table.summary) + [t[0] for t in table.tombstones]:
        assert info.smallest <= key <= info.largest, (
            f"table {info.number} holds {key!r} outside "
            f"[{info.smallest!r}, {info.largest!r}]"
        )
    for entry in table.entries():
        key, seq = entry[0], entry[1]
        assert table.summary[key][1] >= seq
        covered = in_memory.get(key)
        if covered and tomb.covers(covered, seq):
            assert tomb.covers(on_disk.get(key, ()), seq), (
                f"table {info.number} holds {key!r} seq {seq}, deleted, but no "
                "table file keeps the tombstone that deletes it"
            )
