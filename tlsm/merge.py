"""K-way merge of sorted runs of entries, newest run first.

Reads, flushes and compactions all combine several sorted runs (memtables
and tables) into one ordered stream. Each run yields entry tuples
``(timeline_id, seq, kind, expires_at, value)`` ordered by
``(timeline_id, seq)``. When runs share a key, the entry of the run listed
first wins, because runs are listed newest first.

The pure-Python implementation below is the reference. tlsm_ext/merge.pyx
implements the same function in Cython. When the extension is built, this
module rebinds merge_entries to it, and the pure function stays reachable as
``PurePython.merge_entries``.
"""

import heapq
import types

from . import _impl
from .errors import InvalidArgumentError
from .keys import MAX_SEQ


class _DescendingKey:
    """Heap item that sorts keys in descending order and source indices ascending."""

    __slots__ = ("index", "key")

    def __init__(self, key, index):
        self.key = key
        self.index = index

    def __lt__(self, other):
        if self.key != other.key:
            return self.key > other.key
        return self.index < other.index


def _check_entry(entry, index):
    """Return the key (timeline_id, seq) of an entry pulled from source index."""
    if not isinstance(entry, tuple) or len(entry) < 2:
        raise InvalidArgumentError(
            f"merge source {index} yielded {type(entry).__name__}, "
            "expected an entry tuple (timeline_id, seq, ...)"
        )
    timeline_id = entry[0]
    seq = entry[1]
    if not isinstance(timeline_id, bytes):
        raise InvalidArgumentError(
            f"merge source {index} yielded a timeline_id of type "
            f"{type(timeline_id).__name__}, expected bytes"
        )
    if not isinstance(seq, int) or seq < 0 or seq > MAX_SEQ:
        raise InvalidArgumentError(
            f"merge source {index} yielded seq {seq!r}, expected an int in 0..{MAX_SEQ}"
        )
    return (timeline_id, seq)


def _out_of_order(index, key, previous, reverse):
    order = "descending" if reverse else "ascending"
    return InvalidArgumentError(
        f"merge source {index} is not in strictly {order} order: key {key!r} "
        f"follows {previous!r}"
    )


def merge_entries(sources, reverse=False):
    """Merge sorted runs of entries into one strictly ordered iterator.

    sources is a list of iterables listed newest first. Each yields entry
    tuples strictly ascending by (timeline_id, seq), or strictly descending
    when reverse is true. The result yields the entries of all sources in the
    same direction. When several sources contain one key, only the entry of
    the lowest-index source is yielded, and the others are consumed and
    dropped. Entries are yielded as the same tuple objects the sources gave.

    The merge is lazy. It calls iter() on the sources and pulls their first
    entries at the first next(). After that, each next() pulls one more entry
    from the source of the entry yielded before, plus one from each source
    whose entry was dropped as a duplicate. Each next() costs O(log k) key
    comparisons for k sources.

    Raises InvalidArgumentError when a source yields something other than a
    tuple whose first two fields are a bytes timeline_id and an int seq in
    0..MAX_SEQ, or breaks the strict order. Exceptions raised by a source
    propagate unchanged.
    """
    return _merge(list(sources), bool(reverse))


def _merge(sources, reverse):
    iterators = [iter(source) for source in sources]
    heap = []
    for index, iterator in enumerate(iterators):
        for entry in iterator:
            key = _check_entry(entry, index)
            heap.append(_heap_item(key, index, entry, reverse))
            break
    heapq.heapify(heap)
    while heap:
        item = heap[0]
        yield item[-1]
        top_key = _item_key(item, reverse)
        _advance(heap, iterators, reverse)
        # Older sources with the same key sort right after the winner.
        while heap and _item_key(heap[0], reverse) == top_key:
            _advance(heap, iterators, reverse)


def _heap_item(key, index, entry, reverse):
    """Return a heap item ordered by key, then by source index."""
    if reverse:
        return [_DescendingKey(key, index), index, entry]
    return [key[0], key[1], index, entry]


def _item_key(item, reverse):
    return item[0].key if reverse else (item[0], item[1])


def _advance(heap, iterators, reverse):
    """Replace the top item by the next entry of its source, or drop it."""
    item = heap[0]
    index = item[-2]
    previous = _item_key(item, reverse)
    for entry in iterators[index]:
        key = _check_entry(entry, index)
        if (key <= previous) if not reverse else (key >= previous):
            raise _out_of_order(index, key, previous, reverse)
        heapq.heapreplace(heap, _heap_item(key, index, entry, reverse))
        return
    heapq.heappop(heap)


PurePython = types.SimpleNamespace(merge_entries=merge_entries)

_extension = _impl.load_extension("merge")
if _extension is not None:
    merge_entries = _extension.merge_entries
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
