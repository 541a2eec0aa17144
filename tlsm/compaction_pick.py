"""Compaction picking: which tables merge next, and into which level.

Both styles keep level 0 as the flushed tables, newest first, which may
overlap each other.

Leveled (the default). Every level n >= 1 is a list of tables with disjoint
key ranges, in key order, bounded in bytes: level 1 by ``level1_bytes`` and
each level after it by ``level_size_ratio`` times the one above; the last
level (``max_levels - 1``) has no bound. Each level gets a score, its size
over its bound (for level 0, its table count over ``level_fanout``), and
the level with the highest score of at least 1 compacts:
- level 0: every level-0 table merges with the level-1 tables that overlap
  any of them;
- level n: one table, the first after the level's compaction pointer in key
  order (round robin, so the whole key range takes turns), merges with the
  level n+1 tables that overlap it. When none overlaps, the table moves
  down without being rewritten (a trivial move).

Tiered. Each level holds up to ``level_fanout`` tables, each a sorted run.
When a level fills, all of its tables merge into one table that becomes the
newest of the next level.

With no level over its bound, a table whose entries have all expired is
rewritten (into the next level, or in place in the last one), so expired
data is reclaimed without waiting for writes.

Ranges are compared as stored timeline keys, whole timelines at a time: a
merge starts a new output file only between two timelines, so a timeline
lies within one file of each level.
"""

import itertools


class Job:
    """One compaction: inputs per level, the output level and how to write it.

    inputs maps a level index to the TableInfos taken from it. trivial means
    the single input moves to target unchanged. split means the output is
    cut into files of about target_file_bytes, in key order (leveled).
    Without split it is one file that becomes the newest of target (tiered).
    """

    __slots__ = ("inputs", "reason", "split", "target", "trivial")

    def __init__(self, inputs, target, *, trivial=False, split=True, reason=""):
        self.inputs = inputs
        self.target = target
        self.trivial = trivial
        self.split = split
        self.reason = reason

    def input_infos(self):
        """Return every input TableInfo, the levels in ascending order."""
        return [info for index in sorted(self.inputs) for info in self.inputs[index]]

    def __repr__(self):
        levels = {index: len(infos) for index, infos in self.inputs.items()}
        kind = "move" if self.trivial else "merge"
        return f"<Job {kind} {levels} -> level {self.target} ({self.reason})>"


def pick(style, levels, tables, options, now_ms, pointers):
    """Return the next Job for levels, or None when nothing needs compacting.

    tables maps file numbers to open Table objects (for expiry times).
    pointers maps a level to the largest key its last compaction took, and
    pick() updates it for the job it returns.
    """
    if style == "tiered":
        return _pick_tiered(levels, tables, options["level_fanout"], now_ms)
    return _pick_leveled(levels, tables, options, now_ms, pointers)


def level_bound(options, index):
    """Return the byte bound of leveled level index >= 1 (None for the last)."""
    if index >= options["max_levels"] - 1:
        return None
    return options["level1_bytes"] * options["level_size_ratio"] ** (index - 1)


def level_scores(levels, options):
    """Return [(score, level index)] for the leveled levels that have a bound."""
    scores = [(len(levels[0]) / options["level_fanout"], 0)]
    for index in range(1, len(levels)):
        bound = level_bound(options, index)
        if bound is not None:
            scores.append((sum(info.size for info in levels[index]) / bound, index))
    return scores


def overlapping(level, smallest, largest):
    """Return the tables of a leveled level whose ranges meet [smallest, largest]."""
    return [info for info in level if info.overlaps(smallest, largest)]


def key_range(infos):
    """Return (smallest, largest) over the ranges of infos."""
    return min(info.smallest for info in infos), max(info.largest for info in infos)


def _pick_leveled(levels, tables, options, now_ms, pointers):
    score, index = max(level_scores(levels, options))
    if score >= 1:
        if index == 0:
            return _level0_job(levels, "level 0 full")
        info = _next_in_turn(levels[index], pointers.get(index))
        pointers[index] = info.largest
        return _push_down_job(levels, index, info, f"level {index} over its bound")
    for index, level in enumerate(levels):
        for info in level:
            table = tables[info.number]
            if table.entry_count and table.max_expires_at <= now_ms:
                if index == 0:
                    return _level0_job(levels, "expired level-0 table")
                if index == len(levels) - 1 or index == options["max_levels"] - 1:
                    return Job({index: [info]}, index, reason="expired table")
                job = _push_down_job(levels, index, info, "expired table")
                job.trivial = False
                return job
    return None


def _level0_job(levels, reason):
    inputs = list(levels[0])
    smallest, largest = key_range(inputs)
    below = overlapping(levels[1], smallest, largest) if len(levels) > 1 else []
    job = {0: inputs}
    if below:
        job[1] = below
    return Job(job, 1, reason=reason)


def _next_in_turn(level, pointer):
    """Return the first table of level that starts after pointer, wrapping around."""
    if pointer is not None:
        for info in level:
            if info.smallest > pointer:
                return info
    return level[0]


def _push_down_job(levels, index, info, reason):
    below = levels[index + 1] if index + 1 < len(levels) else []
    overlaps = overlapping(below, info.smallest, info.largest)
    if not overlaps:
        return Job({index: [info]}, index + 1, trivial=True, reason=reason)
    return Job({index: [info], index + 1: overlaps}, index + 1, reason=reason)


def _pick_tiered(levels, tables, fanout, now_ms):
    for index, level in enumerate(levels):
        if len(level) >= fanout:
            return Job({index: list(level)}, index + 1, split=False, reason="full")
    for index, level in enumerate(levels):
        for info in level:
            table = tables[info.number]
            if table.entry_count and table.max_expires_at <= now_ms:
                return Job(
                    {index: list(level)}, index + 1, split=False, reason="expired"
                )
    return None


def check_leveled(levels):
    """Raise AssertionError unless every level >= 1 is disjoint and in key order.

    Used by tests and tools/inspect_data.py to check the invariant.
    """
    for index, level in enumerate(levels[1:], start=1):
        for earlier, later in itertools.pairwise(level):
            if not earlier.largest < later.smallest:
                raise AssertionError(
                    f"level {index}: table {earlier.number} "
                    f"[{earlier.smallest!r}, {earlier.largest!r}] and table "
                    f"{later.number} [{later.smallest!r}, {later.largest!r}] "
                    "overlap or are out of order"
                )
