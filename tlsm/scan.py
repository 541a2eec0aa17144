"""Collecting a scan's results from memtable runs, and parsing table metadata.

A read copies the live entries of a timeline range into a list of
``(seq, value)`` pairs, one source at a time, so most scans never build the
5-tuples that merge_entries works on. Table blocks are read by
tlsm.block.scan_block; this module does the same for memtable runs (see
tlsm.memtable for their layout of four parallel lists). It also parses the
index and summary of a table (see tlsm.sstable for their layout), which the
first read of a table after open waits for.

The pure-Python implementation below is the reference. tlsm_ext/scan.pyx
implements the same function in Cython. The extension also keeps two caches
that change only speed: the index keys of each table packed into one array,
stored on the table object, and where each timeline's entries start in a
block, stored with the block in BlockCache. When the extension is built, this
module rebinds its functions to the extension's, and the pure functions stay
reachable through ``PurePython``.
"""

import array
import bisect
import struct
import threading
import types
from collections import OrderedDict

from . import _impl, block
from .errors import CorruptionError
from .keys import KIND_PUT, MAX_SEQ

# On disk: the entry headers of a table's index and summary (tlsm.sstable).
_INDEX_ENTRY = struct.Struct("<HQQI")
_SUMMARY_ENTRY = struct.Struct("<HQQQ")


def collect_run(run, low, high, reverse, now_ms, limit, out):
    """Append the live entries among positions low..high-1 of run to out.

    run is a memtable run (seqs, kinds, expires, values). Visits positions
    upwards from low, or downwards from high - 1 when reverse is true, and
    appends ``(seq, value)`` for each entry of kind KIND_PUT whose
    expires_at is 0 or above now_ms (an int, Unix milliseconds), stopping
    once limit pairs are appended. Returns the number of positions visited,
    so a caller can resume after them. Raises IndexError when high is past
    the end of the run's lists. Costs O(positions visited).
    """
    seqs, kinds, expires, values = run
    if high > len(seqs):
        raise IndexError(f"run position {high} is past its {len(seqs)} entries")
    if limit <= 0 or low >= high:
        return 0
    positions = range(high - 1, low - 1, -1) if reverse else range(low, high)
    appended = 0
    visited = 0
    for index in positions:
        visited += 1
        expires_at = expires[index]
        if kinds[index] == KIND_PUT and (not expires_at or expires_at > now_ms):
            out.append((seqs[index], values[index]))
            appended += 1
            if appended == limit:
                break
    return visited


def parse_index(body):
    """Parse a table's index body into (keys, offsets, sizes).

    keys lists (timeline_id, last_seq) per data block, and offsets and
    sizes, arrays of unsigned 64-bit ints ("Q"), the block's place in the
    file (layout in tlsm.sstable). Raises ValueError(problem, position) for
    a truncated or overrunning body.
    """
    data = bytes(body)
    pos, end = 0, len(data)
    keys, offsets, sizes = [], array.array("Q"), array.array("Q")
    unpack = _INDEX_ENTRY.unpack_from
    entry_size = _INDEX_ENTRY.size
    while pos < end:
        if pos + entry_size > end:
            raise ValueError("truncated index entry", pos)
        timeline_length, last_seq, block_offset, block_size = unpack(data, pos)
        pos += entry_size
        if pos + timeline_length > end:
            raise ValueError("index overruns its block", 0)
        keys.append((data[pos : pos + timeline_length], last_seq))
        offsets.append(block_offset)
        sizes.append(block_size)
        pos += timeline_length
    return keys, offsets, sizes


def parse_summary(body):
    """Parse a table's summary body into {timeline_id: (min_seq, max_seq, count)}.

    Raises ValueError(problem, position) for a truncated or overrunning body,
    and for timeline ids not in strictly increasing order.
    """
    data = bytes(body)
    pos, end = 0, len(data)
    summary = {}
    unpack = _SUMMARY_ENTRY.unpack_from
    entry_size = _SUMMARY_ENTRY.size
    previous = None
    while pos < end:
        if pos + entry_size > end:
            raise ValueError("truncated summary entry", pos)
        timeline_length, min_seq, max_seq, count = unpack(data, pos)
        if pos + entry_size + timeline_length > end:
            raise ValueError("summary overruns its block", 0)
        timeline_id = data[pos + entry_size : pos + entry_size + timeline_length]
        if previous is not None and timeline_id <= previous:
            raise ValueError("summary timeline id not above the previous one", pos)
        summary[timeline_id] = (min_seq, max_seq, count)
        previous = timeline_id
        pos += entry_size + timeline_length
    return summary


class BlockCache:
    """LRU cache of checked data block bodies, bounded by their size in bytes.

    Keys are (file_number, block_index). hits and misses count get() calls.
    Safe to share between threads.
    """

    def __init__(self, capacity_bytes):
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        """Return the body cached under key, or None; a hit becomes the newest."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, body, charge):
        """Cache body under key, evicting the oldest bodies above capacity.

        A body whose charge alone is above capacity is not cached.
        """
        if charge > self.capacity_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (body, charge)
            self.used_bytes += charge
            while self.used_bytes > self.capacity_bytes:
                _, (_, old_charge) = self._items.popitem(last=False)
                self.used_bytes -= old_charge

    def evict_file(self, file_number):
        """Drop every body of table file file_number."""
        with self._lock:
            for key in [k for k in self._items if k[0] == file_number]:
                self.used_bytes -= self._items.pop(key)[1]


def collect_table(table, timeline_id, start, end, reverse, now_ms, limit, out):
    """Append up to limit live (seq, value) pairs of a range in a table to out.

    table is a loaded tlsm.sstable.SSTable. Reads the blocks that may hold
    timeline_id's entries with start <= seq < end, in key order or in
    reverse, through table.read_body, and filters each with
    tlsm.block.scan_block. Returns the number of pairs appended. Raises the
    table's CorruptionError, naming its path and the block offset, for an
    undecodable block.
    """
    if end <= start:
        return 0
    last = min(end - 1, MAX_SEQ)
    return _collect_table_span(
        table, timeline_id, start, last, reverse, now_ms, limit, out
    )


def _collect_table_span(table, timeline_id, first, last, reverse, now_ms, limit, out):
    """Append up to limit live pairs of timeline_id with first <= seq <= last.

    Reads only blocks whose key range, bounded by the index keys (the last
    key of each block), meets [(timeline_id, first), (timeline_id, last)].
    Callers clip the range to the table's summary span, so a timeline that
    ends on a block boundary costs no read of the next block.
    """
    index_keys = table.index_keys
    block_count = len(index_keys)
    target = len(out) + limit
    before = len(out)
    if reverse:
        index = min(
            bisect.bisect_left(index_keys, (timeline_id, last)), block_count - 1
        )
    else:
        index = bisect.bisect_left(index_keys, (timeline_id, first))
    while 0 <= index < block_count and len(out) < target:
        body = table.read_body(index)
        count = len(out)
        try:
            more = block.scan_block(
                body,
                timeline_id,
                first,
                last + 1,
                reverse,
                now_ms,
                target - len(out),
                out,
            )
            if before < count < len(out):
                check_seq_order(out[count - 1][0], out[count][0], reverse)
        except CorruptionError as exc:
            raise table.block_error(index, exc) from None
        if not more:
            break
        if reverse:
            if index == 0 or index_keys[index - 1] < (timeline_id, first):
                break
            index -= 1
        else:
            if index_keys[index] >= (timeline_id, last):
                break
            index += 1
    return len(out) - before


def check_seq_order(previous, seq, reverse):
    """Raise CorruptionError unless seq, read from a new block, goes on from previous.

    A table's blocks cover disjoint, ordered key ranges, so the first seq a
    read takes from a block must be above (below, in reverse) the last one
    it took from the block before.
    """
    in_order = seq < previous if reverse else seq > previous
    if not in_order:
        raise CorruptionError(
            f"seq {seq} read after seq {previous} of the previous block is out of order"
        )


def find_sources(runs, tables, timeline_id, low, high, memory_end):
    """Return the sources that may hold timeline_id's entries in [low, high).

    runs lists (run, length) for the memtables that hold the timeline, newest
    first: only the first length positions of each are read, and only seqs
    below memory_end. tables lists the tables, newest first. Each source is
    (first_seq, last_seq, holder, low_position, high_position): a memtable
    run with the positions of the range, or a table with its summary's
    range clipped to [low, high) and positions 0, so the seq range of a
    source contains every entry it can return. Loads the summary of a table
    whose bloom filter passes timeline_id.
    """
    sources = []
    memory_high = min(high, memory_end)
    for run, length in runs:
        seqs = run[0]
        first = bisect.bisect_left(seqs, low, 0, length)
        last = bisect.bisect_left(seqs, memory_high, first, length)
        if first < last:
            sources.append((seqs[first], seqs[last - 1], run, first, last))
    for table in tables:
        span = table.span(timeline_id)
        if span is None or not span[2]:
            continue
        first = max(span[0], low)
        last = min(span[1], high - 1)
        if first <= last:
            sources.append((first, last, table, 0, 0))
    return sources


def order_sources(sources, reverse):
    """Return sources sorted by seq range in scan order, or None if ranges overlap."""
    ordered = sorted(sources, key=_first_seq)
    for earlier, later in zip(ordered, ordered[1:]):
        if earlier[1] >= later[0]:
            return None
    if reverse:
        ordered.reverse()
    return ordered


def _first_seq(source):
    return source[0]


def collect_range(
    runs, tables, timeline_id, low, high, memory_end, reverse, now_ms, limit, out
):
    """Append up to limit live pairs of timeline_id in [low, high) to out.

    Takes the sources of find_sources. When their seq ranges are disjoint,
    which is how the engine writes them, reads them one after the other
    in scan order (see collect_run and collect_table), each table only
    within its summary's seq range, and returns True.
    Otherwise appends nothing and returns False, and the caller merges.
    """
    sources = find_sources(runs, tables, timeline_id, low, high, memory_end)
    ordered = order_sources(sources, reverse)
    if ordered is None:
        return False
    target = len(out) + limit
    for first_seq, last_seq, holder, first, last in ordered:
        if len(out) >= target:
            break
        if type(holder) is tuple:
            collect_run(holder, first, last, reverse, now_ms, target - len(out), out)
        else:
            _collect_table_span(
                holder,
                timeline_id,
                first_seq,
                last_seq,
                reverse,
                now_ms,
                target - len(out),
                out,
            )
    return True


PurePython = types.SimpleNamespace(
    BlockCache=BlockCache,
    collect_run=collect_run,
    collect_table=collect_table,
    collect_range=collect_range,
    parse_index=parse_index,
    parse_summary=parse_summary,
)

_extension = _impl.load_extension("scan")
if _extension is not None:
    BlockCache = _extension.BlockCache
    collect_run = _extension.collect_run
    collect_table = _extension.collect_table
    collect_range = _extension.collect_range
    parse_index = _extension.parse_index
    parse_summary = _extension.parse_summary
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
