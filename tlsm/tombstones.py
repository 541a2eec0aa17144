"""Deleted seq ranges per timeline, kept as sorted disjoint intervals.

Every delete (of one seq, of a prefix by trim, or of a whole timeline) is a
range tombstone ``[start, end)``. The engine clamps ``end`` to one above
the timeline's last seq when the tombstone is written, and seqs are never
reused, so a tombstone only ever covers entries written before it. That is
why a tombstone applies to every source at once, newer or older, and why
reads can subtract the deleted intervals from the requested range instead
of comparing write times.

An interval list is a tuple of ``(start, end)`` pairs, sorted, disjoint and
not adjacent. Tuples are never changed in place: an update builds a new
tuple, so a reader holding the old one sees a stable snapshot.
"""

import bisect


def add_interval(intervals, start, end):
    """Return intervals with [start, end) added, merging overlaps and neighbours."""
    if start >= end:
        return intervals
    merged = []
    for low, high in intervals:
        if high < start or low > end:
            merged.append((low, high))
        else:
            start = min(start, low)
            end = max(end, high)
    merged.append((start, end))
    merged.sort()
    return tuple(merged)


def covers(intervals, seq):
    """Return True when seq lies in one of the intervals."""
    if not intervals:
        return False
    index = bisect.bisect_right(intervals, (seq, float("inf"))) - 1
    return index >= 0 and intervals[index][0] <= seq < intervals[index][1]


def visible_segments(intervals, start, end):
    """Return [start, end) minus the intervals, as a list of (start, end) pairs."""
    segments = []
    position = start
    for low, high in intervals:
        if high <= position:
            continue
        if low >= end:
            break
        if low > position:
            segments.append((position, low))
        position = max(position, high)
        if position >= end:
            break
    if position < end:
        segments.append((position, end))
    return segments
