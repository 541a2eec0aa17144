# cython: language_level=3
"""Cython implementation of tlsm.scan.

Behaviour and exceptions match the pure-Python reference in tlsm/scan.py,
which holds the public documentation.
"""

import array
from collections import OrderedDict

from cpython cimport array
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp

from tlsm_ext.block cimport _scan as _scan_block_bytes
from tlsm_ext.block_lookup cimport (
    BlockRuns,
    BlockSearch,
    Run,
    block_search_of,
    collect_from_run,
    prefix_of_bytes,
)
from tlsm_ext.little_endian cimport read_u32, read_u64
from tlsm_ext.table_index cimport SummaryIndex, summary_id_rises
from tlsm_ext.zlib_crc cimport TLSM_CRC_FROM_ZLIB, tlsm_zlib_crc32

import lz4.block

from tlsm import keys
from tlsm.errors import CorruptionError
from tlsm_ext.block import scan_block

cdef extern from *:
    void __builtin_prefetch(const void* address) nogil

cdef uint64_t MAX_SEQ = keys.MAX_SEQ
# Empty array that parse_index clones for block offsets and sizes.
cdef array.array _U64_ARRAY = array.array("Q")
# Cache line size assumed by _prefetch (64 bytes on x86-64 and most arm64).
cdef Py_ssize_t CACHE_LINE_BYTES = 64

cdef object _KIND_PUT = keys.KIND_PUT
cdef object _lz4_decompress = lz4.block.decompress
cdef object _LZ4BlockError = lz4.block.LZ4BlockError
cdef object _ZERO = 0


cdef inline bint _is_live(object kind, object expires_at, object now_ms) except -1:
    # Memtable entries hold small ints, which CPython shares, so the
    # identity tests settle almost every entry without a comparison.
    if kind is not _KIND_PUT and kind != _KIND_PUT:
        return False
    if expires_at is _ZERO or not expires_at:
        return True
    return expires_at > now_ms


cpdef Py_ssize_t collect_run(tuple run, Py_ssize_t low, Py_ssize_t high,
                             bint reverse, object now_ms, Py_ssize_t limit,
                             list out) except -1:
    """Append live (seq, value) pairs of a run range to out; see tlsm.scan."""
    cdef list seqs = <list>run[0]
    cdef list kinds = <list>run[1]
    cdef list expires = <list>run[2]
    cdef list values = <list>run[3]
    cdef Py_ssize_t index, step, stop, visited = 0, appended = 0
    # Writers append to the kinds, expires and values lists before seqs,
    # so every position below len(seqs) is present in all four.
    if high > PyList_GET_SIZE(seqs):
        raise IndexError(f"run position {high} is past its {len(seqs)} entries")
    if limit <= 0 or low >= high:
        return 0
    if reverse:
        index, stop, step = high - 1, low - 1, -1
    else:
        index, stop, step = low, high, 1
    while index != stop:
        visited += 1
        if _is_live(<object>PyList_GET_ITEM(kinds, index),
                    <object>PyList_GET_ITEM(expires, index), now_ms):
            out.append((<object>PyList_GET_ITEM(seqs, index),
                        <object>PyList_GET_ITEM(values, index)))
            appended += 1
            if appended == limit:
                break
        index += step
    return visited


# Index entry: timeline_len u16 | last_seq u64 | offset u64 | size u32.
cdef Py_ssize_t INDEX_ENTRY_BYTES = 22
# Summary entry: timeline_len u16 | min_seq u64 | max_seq u64 | count u64.
cdef Py_ssize_t SUMMARY_ENTRY_BYTES = 26


def parse_index(body):
    """Parse a table's index body; see tlsm.scan.parse_index."""
    cdef bytes data = bytes(body)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(data), length, count = 0, i
    cdef Py_ssize_t previous_length = -1
    cdef const unsigned char* previous = NULL
    cdef list index_keys
    cdef array.array offsets, sizes
    cdef bytes timeline_id = None
    # A first pass checks the framing and counts the blocks, so that the
    # arrays are allocated once.
    while pos < end:
        if pos + INDEX_ENTRY_BYTES > end:
            raise ValueError("truncated index entry", pos)
        length = buf[pos] | (buf[pos + 1] << 8)
        if pos + INDEX_ENTRY_BYTES + length > end:
            raise ValueError("index overruns its block", 0)
        count += 1
        pos += INDEX_ENTRY_BYTES + length
    index_keys = [None] * count
    offsets = array.clone(_U64_ARRAY, count, False)
    sizes = array.clone(_U64_ARRAY, count, False)
    pos = 0
    for i in range(count):
        length = buf[pos] | (buf[pos + 1] << 8)
        # Consecutive blocks often end in the same timeline (a busy one
        # fills many blocks), and they share one bytes object.
        if (length != previous_length
                or memcmp(previous, buf + pos + INDEX_ENTRY_BYTES, length) != 0):
            timeline_id = PyBytes_FromStringAndSize(
                <const char*>buf + pos + INDEX_ENTRY_BYTES, length)
            previous = buf + pos + INDEX_ENTRY_BYTES
            previous_length = length
        index_keys[i] = (timeline_id, read_u64(buf + pos + 2))
        offsets.data.as_ulonglongs[i] = read_u64(buf + pos + 10)
        sizes.data.as_ulonglongs[i] = read_u32(buf + pos + 18)
        pos += INDEX_ENTRY_BYTES + length
    return index_keys, offsets, sizes


def parse_summary(body):
    """Parse a table's summary body; see tlsm.scan.parse_summary."""
    cdef bytes data = bytes(body)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(data), length
    cdef Py_ssize_t previous = -1
    cdef dict summary = {}
    while pos < end:
        if pos + SUMMARY_ENTRY_BYTES > end:
            raise ValueError("truncated summary entry", pos)
        length = buf[pos] | (buf[pos + 1] << 8)
        if pos + SUMMARY_ENTRY_BYTES + length > end:
            raise ValueError("summary overruns its block", 0)
        if previous >= 0 and not summary_id_rises(buf, previous, pos):
            raise ValueError("summary timeline id not above the previous one", pos)
        previous = pos
        summary[PyBytes_FromStringAndSize(
            <const char*>buf + pos + SUMMARY_ENTRY_BYTES, length)] = (
            read_u64(buf + pos + 2), read_u64(buf + pos + 10), read_u64(buf + pos + 18))
        pos += SUMMARY_ENTRY_BYTES + length
    return summary


cdef class BlockCache:
    """Cython twin of tlsm.scan.BlockCache; see there.

    Needs no lock: every method runs with the GIL held and calls nothing
    that runs Python code, except that freeing an evicted body may start a
    garbage collection. A move_to_end that finds its key evicted meanwhile
    is therefore tolerated.
    """

    def __init__(self, capacity_bytes):
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._items = OrderedDict()

    cdef object lookup(self, object key):
        item = self.lookup_item(key)
        return None if item is None else item[0]

    cdef tuple lookup_item(self, object key):
        # Like lookup, but returns the whole item: (body, charge) or, once
        # attach_runs ran, (body, charge, runs).
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        try:
            self._items.move_to_end(key)
        except KeyError:
            pass
        self.hits += 1
        return <tuple>item

    cdef int attach_runs(self, object key, object body, object runs) except -1:
        # Stores runs with the body still cached under key; replacing the
        # value of a present key keeps its place in the LRU order. The runs
        # are not charged: a few dozen bytes per timeline of a block.
        item = self._items.get(key)
        if item is not None and (<tuple>item)[0] is body:
            self._items[key] = (body, (<tuple>item)[1], runs)
        return 0

    def get(self, key):
        """Return the body cached under key, or None; see tlsm.scan.BlockCache."""
        return self.lookup(key)

    def put(self, key, body, Py_ssize_t charge):
        """Cache body under key; see tlsm.scan.BlockCache."""
        self.store(key, body, charge)

    cdef int store(self, object key, object body, Py_ssize_t charge) except -1:
        if charge > self.capacity_bytes:
            return 0
        if key in self._items:
            return 0
        self._items[key] = (body, charge)
        self.used_bytes += charge
        while self.used_bytes > self.capacity_bytes and self._items:
            _, item = self._items.popitem(last=False)
            self.used_bytes -= <Py_ssize_t>(<tuple>item)[1]
        return 0

    def evict_file(self, file_number):
        """Drop every body of table file file_number."""
        for key in [k for k in self._items if k[0] == file_number]:
            item = self._items.pop(key, None)
            if item is not None:
                self.used_bytes -= <Py_ssize_t>(<tuple>item)[1]


cpdef Py_ssize_t collect_table(object table, bytes timeline_id, uint64_t start,
                               object end, bint reverse, uint64_t now_ms,
                               Py_ssize_t limit, list out) except -1:
    """Append live pairs of a range in a table to out; see tlsm.scan.collect_table."""
    if end <= start:
        return 0
    return _collect_table_span(table, timeline_id, start,
                               MAX_SEQ if end > MAX_SEQ else <uint64_t>(end - 1),
                               reverse, now_ms, limit, out)


cdef inline void _prefetch(const char* data, Py_ssize_t size) noexcept nogil:
    # A block scan walks every entry header from the block start, one
    # dependent load after another. Requesting all lines of a block that
    # is not in the CPU cache at once overlaps their memory latencies.
    cdef Py_ssize_t offset = 0
    while offset < size:
        __builtin_prefetch(data + offset)
        offset += CACHE_LINE_BYTES


# Block frame trailer: compression u8 | crc32 u32 of body and compression.
cdef Py_ssize_t TRAILER_BYTES = 5
# Compression codes, as in tlsm.sstable (which imports this module).
cdef uint8_t _COMPRESSION_NONE = 0
cdef uint8_t _COMPRESSION_LZ4 = 1


cdef object _load_body(object table, Py_ssize_t index, BlockCache cache,
                       object block_key):
    """Read, check and cache data block index of table; return its body.

    The fast version of SSTable.load_body, for a frame read whole whose
    checksum zlib can check here. Anything else, a damaged frame included,
    goes to load_body, which raises the proper CorruptionError.
    """
    cdef tuple parsed = table._index
    cdef array.array offsets = <array.array>parsed[1]
    cdef array.array sizes = <array.array>parsed[2]
    cdef Py_ssize_t size = <Py_ssize_t>sizes.data.as_ulonglongs[index]
    cdef const unsigned char* buf
    cdef uint8_t compression
    if not TLSM_CRC_FROM_ZLIB or size < TRAILER_BYTES:
        return table.load_body(index)
    data = table._read_at(offsets.data.as_ulonglongs[index], size)
    if not PyBytes_CheckExact(data) or PyBytes_GET_SIZE(data) != size:
        return table.load_body(index)
    buf = <const unsigned char*>PyBytes_AS_STRING(data)
    if tlsm_zlib_crc32(0, buf, <size_t>(size - 4)) != read_u32(buf + size - 4):
        return table.load_body(index)
    compression = buf[size - TRAILER_BYTES]
    if compression == _COMPRESSION_NONE:
        body = PyBytes_FromStringAndSize(<const char*>buf, size - TRAILER_BYTES)
    elif compression == _COMPRESSION_LZ4:
        try:
            body = _lz4_decompress(memoryview(data)[:size - TRAILER_BYTES])
        except (_LZ4BlockError, ValueError):
            return table.load_body(index)
    else:
        return table.load_body(index)
    cache.store(block_key, body, PyBytes_GET_SIZE(body))
    return body


cdef Py_ssize_t _collect_table_span(object table, bytes timeline_id, uint64_t first,
                                    uint64_t last, bint reverse, uint64_t now_ms,
                                    Py_ssize_t limit, list out) except -1:
    """Append live pairs of first <= seq <= last; see tlsm.scan._collect_table_span."""
    cdef BlockSearch search = block_search_of(table)
    cdef Py_ssize_t block_count = search.count
    cdef Py_ssize_t before = PyList_GET_SIZE(out)
    cdef Py_ssize_t wanted = before + limit
    cdef Py_ssize_t index, count
    cdef bint unbounded = last == MAX_SEQ
    cdef uint64_t end_seq = MAX_SEQ if unbounded else last + 1
    cdef const char* timeline = PyBytes_AS_STRING(timeline_id)
    cdef Py_ssize_t length = PyBytes_GET_SIZE(timeline_id)
    # The prefix of the index keys skips their common bytes; a block's runs
    # have prefixes of whole timeline ids.
    cdef uint64_t prefix = 0
    cdef uint64_t run_prefix = prefix_of_bytes(timeline, length)
    cdef int outside = search.outside(timeline, length)
    cdef object cache = table._cache
    cdef object file_number = table.file_number
    cdef BlockCache fast_cache = cache if type(cache) is BlockCache else None
    cdef const uint8_t* buf
    cdef Run* run
    cdef tuple item
    # When timeline_id does not start with the bytes common to the index
    # keys, every index key sorts after it (outside < 0) or before it
    # (outside > 0), which settles each comparison below.
    if outside < 0:
        index = 0
    elif outside > 0:
        index = block_count - 1 if reverse else block_count
    else:
        prefix = search.prefix_of(timeline, length)
        if reverse:
            index = min(search.bisect(prefix, timeline, length, last),
                        block_count - 1)
        else:
            index = search.bisect(prefix, timeline, length, first)
    while 0 <= index < block_count and PyList_GET_SIZE(out) < wanted:
        count = PyList_GET_SIZE(out)
        runs = None
        if fast_cache is not None:
            block_key = (file_number, index)
            item = fast_cache.lookup_item(block_key)
            if item is None:
                body = _load_body(table, index, fast_cache, block_key)
            else:
                body = item[0]
                if PyTuple_GET_SIZE(item) > 2:
                    runs = item[2]
        else:
            body = table.read_body(index)
        if runs is not None:
            # A block that scanned cleanly before: read only the timeline's
            # entries. The index keys below decide whether to go on.
            buf = <const uint8_t*>PyBytes_AS_STRING(body)
            run = (<BlockRuns>runs).find(buf, run_prefix, timeline, length)
            if run != NULL:
                collect_from_run(buf, run, first, last, reverse, now_ms,
                                  wanted - PyList_GET_SIZE(out), out)
            more = True
        else:
            try:
                if PyBytes_CheckExact(body):
                    _prefetch(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
                    more = _scan_block_bytes(
                        <const uint8_t*>PyBytes_AS_STRING(body),
                        PyBytes_GET_SIZE(body), timeline_id, first, end_seq,
                        unbounded, reverse, now_ms, wanted - PyList_GET_SIZE(out),
                        out)
                else:
                    more = scan_block(body, timeline_id, first,
                                      MAX_SEQ + 1 if unbounded else end_seq, reverse,
                                      now_ms, wanted - PyList_GET_SIZE(out), out)
            except CorruptionError as exc:
                raise table.block_error(index, exc) from None
            if fast_cache is not None and PyBytes_CheckExact(body):
                runs = BlockRuns()
                (<BlockRuns>runs).build(<const uint8_t*>PyBytes_AS_STRING(body),
                                         PyBytes_GET_SIZE(body))
                fast_cache.attach_runs(block_key, body, runs)
        if before < count < PyList_GET_SIZE(out):
            _check_block_seqs(table, index, out, count, reverse)
        if not more:
            break
        # Index keys are the blocks' last keys: stop before a block that
        # cannot hold a key in [(timeline_id, first), (timeline_id, last)].
        if reverse:
            if index == 0 or outside > 0 or (
                    outside == 0
                    and search.compare(index - 1, prefix, timeline, length,
                                       first) < 0):
                break
            index -= 1
        else:
            if outside < 0 or (
                    outside == 0
                    and search.compare(index, prefix, timeline, length, last) >= 0):
                break
            index += 1
    return PyList_GET_SIZE(out) - before


cdef int _check_block_seqs(object table, Py_ssize_t index, list out,
                           Py_ssize_t count, bint reverse) except -1:
    """Check out[count], the first pair from block index, against out[count - 1]."""
    cdef uint64_t previous = <uint64_t>(<tuple>PyList_GET_ITEM(out, count - 1))[0]
    cdef uint64_t seq = <uint64_t>(<tuple>PyList_GET_ITEM(out, count))[0]
    cdef bint in_order = seq < previous if reverse else seq > previous
    if not in_order:
        raise table.block_error(index, CorruptionError(
            f"seq {seq} read after seq {previous} of the previous block is out "
            "of order"
        ))
    return 0


cdef struct _Source:
    uint64_t first
    uint64_t last
    # A borrowed reference: a memtable run (a tuple) or a table, kept alive
    # by the runs and tables arguments.
    PyObject* holder
    Py_ssize_t low
    Py_ssize_t high


cdef Py_ssize_t _bisect_seqs(list seqs, uint64_t seq, bint above_max,
                             Py_ssize_t low, Py_ssize_t high) except -1:
    """Return the first position in low..high whose seq is >= seq, like bisect."""
    cdef Py_ssize_t middle
    cdef uint64_t value
    if above_max:
        return high
    while low < high:
        middle = (low + high) // 2
        value = <object>PyList_GET_ITEM(seqs, middle)
        if value < seq:
            low = middle + 1
        else:
            high = middle
    return low


cdef int _collect_ordered(_Source* sources, Py_ssize_t count, bytes timeline_id,
                          bint reverse, uint64_t now_ms, Py_ssize_t wanted,
                          list out) except -1:
    cdef Py_ssize_t i, position
    cdef object holder
    for i in range(count):
        position = count - 1 - i if reverse else i
        if PyList_GET_SIZE(out) >= wanted:
            break
        holder = <object>sources[position].holder
        if type(holder) is tuple:
            collect_run(<tuple>holder, sources[position].low, sources[position].high,
                        reverse, now_ms, wanted - PyList_GET_SIZE(out), out)
        else:
            _collect_table_span(holder, timeline_id, sources[position].first,
                                sources[position].last, reverse, now_ms,
                                wanted - PyList_GET_SIZE(out), out)
    return 0


def collect_range(list runs, tuple tables, bytes timeline_id, uint64_t low,
                  object high, object memory_end, bint reverse, uint64_t now_ms,
                  Py_ssize_t limit, list out):
    """Append live pairs of a range from its sources; see tlsm.scan.collect_range."""
    cdef Py_ssize_t capacity = PyList_GET_SIZE(runs) + len(tables)
    cdef _Source stack_sources[16]
    cdef _Source* sources = stack_sources
    cdef Py_ssize_t count = 0, i, j, length, first, last
    cdef _Source moving
    cdef list seqs
    cdef uint64_t span_first, span_last, span_count
    cdef Py_ssize_t entry
    cdef const char* key = PyBytes_AS_STRING(timeline_id)
    cdef Py_ssize_t key_length = PyBytes_GET_SIZE(timeline_id)
    cdef bint high_above_max = high > MAX_SEQ
    # Inclusive upper bounds: high >= 1 because low < high.
    cdef uint64_t last_seq = MAX_SEQ if high_above_max else <uint64_t>(high - 1)
    memory_high = min(high, memory_end)
    cdef bint memory_above_max = memory_high > MAX_SEQ
    cdef uint64_t memory_seq = 0 if memory_above_max else <uint64_t>memory_high
    if capacity > 16:
        sources = <_Source*>PyMem_Malloc(capacity * sizeof(_Source))
        if sources == NULL:
            raise MemoryError()
    try:
        for item in runs:
            run = (<tuple>item)[0]
            length = (<tuple>item)[1]
            seqs = <list>(<tuple>run)[0]
            first = _bisect_seqs(seqs, low, False, 0, length)
            last = _bisect_seqs(seqs, memory_seq, memory_above_max, first, length)
            if first < last:
                sources[count].first = <object>PyList_GET_ITEM(seqs, first)
                sources[count].last = <object>PyList_GET_ITEM(seqs, last - 1)
                sources[count].holder = <PyObject*>run
                sources[count].low = first
                sources[count].high = last
                count += 1
        for table in tables:
            # NOTE: once a table has a summary index, SSTable.span() returns
            # its lookup, and asking the index in C skips a Python frame and
            # a tuple per table. This depends on that private attribute of
            # tlsm.sstable; span() serves tables without one.
            summary_index = getattr(table, "_summary_index", None)
            if type(summary_index) is SummaryIndex:
                entry = (<SummaryIndex>summary_index).find(key, key_length)
                if entry < 0:
                    continue
                (<SummaryIndex>summary_index).span_of(entry, &span_first,
                                                       &span_last, &span_count)
            else:
                span = table.span(timeline_id)
                if span is None:
                    continue
                span_first = (<tuple>span)[0]
                span_last = (<tuple>span)[1]
                span_count = (<tuple>span)[2]
            if not span_count:
                continue
            span_first = max(span_first, low)
            span_last = min(span_last, last_seq)
            if span_first <= span_last:
                sources[count].first = span_first
                sources[count].last = span_last
                sources[count].holder = <PyObject*>table
                sources[count].low = 0
                sources[count].high = 0
                count += 1
        # Insertion sort by first seq: newer sources, listed first, usually
        # hold higher seqs, and there are few of them.
        for i in range(1, count):
            moving = sources[i]
            j = i - 1
            while j >= 0 and sources[j].first > moving.first:
                sources[j + 1] = sources[j]
                j -= 1
            sources[j + 1] = moving
        for i in range(1, count):
            if sources[i - 1].last >= sources[i].first:
                return False
        _collect_ordered(sources, count, timeline_id, reverse, now_ms,
                         PyList_GET_SIZE(out) + limit, out)
        return True
    finally:
        if sources != stack_sources:
            PyMem_Free(sources)
