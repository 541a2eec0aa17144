# cython: language_level=3
"""Lookups inside one table file for tlsm_ext/scan.pyx.

BlockSearch packs a table's index keys into one C array for binary search;
BlockRuns records where each timeline's entries start in a checked data
block, and collect_from_run decodes just those entries. Both are caches of
immutable file contents with no pure-Python twin: tlsm/scan.py finds the
same blocks and entries with bisect over index_keys and a block decode.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp

from tlsm import keys


cdef class BlockSearch:
    """The index keys of one table packed into one array, for binary search.

    A list of (timeline_id, last_seq) tuples costs two pointer hops per
    probe, which miss the CPU cache when many tables are read; here a probe
    reads one 32-byte slot, and the packed timeline ids only when two
    prefixes are equal. The bytes that every timeline id of the table
    starts with (such as a table-id byte and a naming scheme) are left out
    of the prefixes. Built once per table object from its index_keys,
    which never change because table files are immutable.
    """


    def __cinit__(self):
        self.keys = NULL
        self.count = 0

    def __dealloc__(self):
        PyMem_Free(self.keys)

    cdef int build(self, list index_keys) except -1:
        cdef Py_ssize_t count = PyList_GET_SIZE(index_keys), i, at = 0
        cdef Py_ssize_t common_length = 0
        cdef bytes timeline, first, last
        cdef tuple item
        self.keys = <IndexKey*>PyMem_Malloc(max(count, 1) * sizeof(IndexKey))
        if self.keys == NULL:
            raise MemoryError()
        if count:
            # Keys are sorted, so the first and last share the prefix of all.
            first = <bytes>(<tuple>PyList_GET_ITEM(index_keys, 0))[0]
            last = <bytes>(<tuple>PyList_GET_ITEM(index_keys, count - 1))[0]
            while (common_length < min(len(first), len(last))
                   and first[common_length] == last[common_length]):
                common_length += 1
            self.common = first[:common_length]
        else:
            self.common = b""
        self.common_length = common_length
        parts = []
        for i in range(count):
            item = <tuple>PyList_GET_ITEM(index_keys, i)
            timeline = <bytes>item[0]
            self.keys[i].prefix = prefix_of_bytes(
                PyBytes_AS_STRING(timeline) + common_length,
                PyBytes_GET_SIZE(timeline) - common_length)
            self.keys[i].seq = <uint64_t>item[1]
            self.keys[i].timeline_at = at
            self.keys[i].timeline_length = PyBytes_GET_SIZE(timeline)
            at += PyBytes_GET_SIZE(timeline)
            parts.append(timeline)
        self.timelines = b"".join(parts)
        self.count = count
        return 0

    cdef uint64_t prefix_of(self, const char* timeline,
                                   Py_ssize_t length) noexcept:
        """Return the prefix of a timeline id that starts with common."""
        return prefix_of_bytes(timeline + self.common_length, length - self.common_length)

    cdef int compare(self, Py_ssize_t position, uint64_t prefix,
                            const char* timeline, Py_ssize_t length,
                            uint64_t seq) noexcept:
        """Return <0, 0 or >0 as key number position sorts before, at or after
        (timeline, seq). The timeline id must start with common."""
        cdef IndexKey* key = &self.keys[position]
        cdef int order
        if key.prefix != prefix:
            return -1 if key.prefix < prefix else 1
        order = memcmp(PyBytes_AS_STRING(self.timelines) + key.timeline_at, timeline,
                       min(key.timeline_length, length))
        if order != 0:
            return order
        if key.timeline_length != length:
            return -1 if key.timeline_length < length else 1
        if key.seq != seq:
            return -1 if key.seq < seq else 1
        return 0

    cdef Py_ssize_t bisect(self, uint64_t prefix, const char* timeline,
                                  Py_ssize_t length, uint64_t seq) noexcept:
        """Return the first position whose key is >= (timeline, seq), like bisect."""
        cdef Py_ssize_t low = 0, high = self.count, middle
        while low < high:
            middle = (low + high) // 2
            if self.compare(middle, prefix, timeline, length, seq) < 0:
                low = middle + 1
            else:
                high = middle
        return low

    cdef int outside(self, const char* timeline, Py_ssize_t length) noexcept:
        """Return <0 or >0 when timeline sorts before or after every id that
        starts with common, or 0 when it starts with common too."""
        cdef int order = memcmp(timeline, PyBytes_AS_STRING(self.common),
                                min(length, self.common_length))
        if order != 0:
            return order
        return -1 if length < self.common_length else 0


cdef BlockSearch block_search_of(object table):
    # Kept on the table object: a table's index keys never change.
    cdef BlockSearch search = getattr(table, "_block_search", None)
    if search is None:
        search = BlockSearch()
        search.build(table.index_keys)
        table._block_search = search
    return search


cdef uint64_t _TAG_NEW_TIMELINE = 0x01
cdef uint64_t _TAG_HAS_EXPIRY = 0x02
cdef int _TAG_KIND_SHIFT = 2
cdef uint64_t _KIND_PUT_CODE = keys.KIND_PUT


cdef inline uint64_t _varint(const uint8_t* buf, Py_ssize_t* pos) noexcept nogil:
    # Only for blocks that already passed the decoder's checks.
    cdef uint64_t value = 0
    cdef unsigned int shift = 0
    cdef uint8_t byte
    while True:
        byte = buf[pos[0]]
        pos[0] += 1
        value |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            return value
        shift += 7


cdef class BlockRuns:
    """Where each timeline's entries start in one checked data block.

    A block has no restart points, so finding a timeline otherwise means
    decoding every entry header from the block start and pulling the whole
    block into the CPU cache. With its runs known, a scan decodes only the
    entries of the wanted timeline. Built by one walk over a block that
    tlsm_ext.block already scanned without error, and cached with it.
    """


    def __cinit__(self):
        self.runs = NULL
        self.count = 0

    def __dealloc__(self):
        PyMem_Free(self.runs)

    cdef int build(self, const uint8_t* buf, Py_ssize_t size) except -1:
        cdef Py_ssize_t body_end = size - 4, pos = 0, entry_at, length
        cdef uint64_t tag, entries
        cdef Run* run = NULL
        cdef Run* shrunk
        entries = (<uint64_t>buf[body_end] | (<uint64_t>buf[body_end + 1] << 8)
                   | (<uint64_t>buf[body_end + 2] << 16)
                   | (<uint64_t>buf[body_end + 3] << 24))
        self.runs = <Run*>PyMem_Malloc(max(entries, 1) * sizeof(Run))
        if self.runs == NULL:
            raise MemoryError()
        while pos < body_end:
            entry_at = pos
            tag = _varint(buf, &pos)
            if tag & _TAG_NEW_TIMELINE:
                length = <Py_ssize_t>_varint(buf, &pos)
                run = &self.runs[self.count]
                self.count += 1
                run.prefix = prefix_of_bytes(<const char*>buf + pos, length)
                run.timeline_at = pos
                run.timeline_length = length
                run.entry_at = entry_at
                run.entry_count = 0
                pos += length
            _varint(buf, &pos)  # seq or delta
            if tag & _TAG_HAS_EXPIRY:
                _varint(buf, &pos)
            length = <Py_ssize_t>_varint(buf, &pos)
            pos += length
            run.entry_count += 1
        # A block holds a few timelines among many entries: keep the runs only.
        shrunk = <Run*>PyMem_Realloc(self.runs, max(self.count, 1) * sizeof(Run))
        if shrunk != NULL:
            self.runs = shrunk
        return 0

    cdef Run* find(self, const uint8_t* buf, uint64_t prefix, const char* timeline,
                    Py_ssize_t length) noexcept:
        """Return the run of timeline, or NULL when the block has none."""
        cdef Py_ssize_t i
        cdef Run* run
        for i in range(self.count):
            run = &self.runs[i]
            if (run.prefix == prefix and run.timeline_length == length
                    and memcmp(buf + run.timeline_at, timeline, length) == 0):
                return run
        return NULL


cdef int collect_from_run(const uint8_t* buf, Run* run, uint64_t first,
                           uint64_t last, bint reverse, uint64_t now_ms,
                           Py_ssize_t limit, list out) except -1:
    """Append up to limit live (seq, value) pairs of run with first <= seq <= last."""
    cdef Py_ssize_t pos = run.entry_at, i, emitted, j, value_length
    cdef uint64_t tag, seq = 0, expires_at
    cdef Py_ssize_t stack_positions[64]
    cdef uint64_t stack_seqs[64]
    cdef Py_ssize_t* positions = stack_positions
    cdef uint64_t* seqs = stack_seqs
    cdef Py_ssize_t matched = 0
    if limit <= 0:
        return 0
    if run.entry_count > 64:
        positions = <Py_ssize_t*>PyMem_Malloc(run.entry_count * sizeof(Py_ssize_t))
        seqs = <uint64_t*>PyMem_Malloc(run.entry_count * sizeof(uint64_t))
        if positions == NULL or seqs == NULL:
            PyMem_Free(positions)
            PyMem_Free(seqs)
            raise MemoryError()
    try:
        for i in range(run.entry_count):
            tag = _varint(buf, &pos)
            if i == 0:
                _varint(buf, &pos)  # timeline length, known from the run
                pos += run.timeline_length
                seq = _varint(buf, &pos)
            else:
                seq += _varint(buf, &pos)
            expires_at = 0
            if tag & _TAG_HAS_EXPIRY:
                expires_at = _varint(buf, &pos)
            # The value length varint is followed by the value itself.
            positions[matched] = pos
            value_length = <Py_ssize_t>_varint(buf, &pos)
            pos += value_length
            if seq > last:
                break
            if (seq >= first and (tag >> _TAG_KIND_SHIFT) == _KIND_PUT_CODE
                    and (expires_at == 0 or expires_at > now_ms)):
                seqs[matched] = seq
                matched += 1
                if not reverse and matched == limit:
                    break
        emitted = min(matched, limit)
        for i in range(emitted):
            j = matched - 1 - i if reverse else i
            pos = positions[j]
            value_length = <Py_ssize_t>_varint(buf, &pos)
            out.append((seqs[j], PyBytes_FromStringAndSize(<const char*>buf + pos,
                                                           value_length)))
        return emitted
    finally:
        if positions != stack_positions:
            PyMem_Free(positions)
            PyMem_Free(seqs)
