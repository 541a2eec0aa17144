# cython: language_level=3
"""The k-way merge of a compaction, over the raw bytes of data blocks.

The pure-Python merge (tlsm.merge.merge_entries over each table's
entries(), then tlsm.survivors.surviving_runs, then TableWriter.add_run)
decodes every entry into a tuple of Python objects and encodes it again.
RawMerge reads each input's decompressed block bodies in place, merges the
entries by key with a binary heap of C structs, drops what the Python path
drops, and hands the survivors to tlsm_ext.table_writer.DataBlocks as
pointers. Its output files are byte for byte those of the Python path.

The rules it shares with the Python path:
- inputs are given newest first, and of equal keys only the newest input's
  entry counts: the others are skipped, whatever becomes of that entry;
- an entry is dropped when it has expired (expires_at <= now_ms), when a
  tombstone interval covers its seq, or when its kind is not KIND_PUT.
Blocks are checked as tlsm.block.decode_block checks them, and each input
must be in strictly increasing key order across its blocks; a failed check
raises CorruptionError naming the table and the block's offset.
"""

from cpython cimport array
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from tlsm_ext.block cimport _read_varint
from tlsm_ext.key_order cimport compare_keys
from tlsm_ext.little_endian cimport read_u32
from tlsm_ext.table_writer cimport MAX_RAW_TIMELINE, DataBlocks
from tlsm_ext.zlib_crc cimport TLSM_CRC_FROM_ZLIB, tlsm_zlib_crc32

import array

import lz4.block

from tlsm import keys
from tlsm.errors import CorruptionError

cdef object _lz4_decompress = lz4.block.decompress
cdef object _LZ4BlockError = lz4.block.LZ4BlockError
# Block frame: body | compression u8 | crc32 u32 of body and compression.
cdef Py_ssize_t TRAILER_BYTES = 5
cdef uint8_t COMPRESSION_NONE = 0
cdef uint8_t COMPRESSION_LZ4 = 1

cdef uint64_t KIND_PUT = keys.KIND_PUT
cdef uint64_t MAX_SEQ = keys.MAX_SEQ
cdef uint64_t MAX_KEY_BYTES = keys.MAX_KEY_BYTES
# Blocks are parsed with ids of at most MAX_KEY_BYTES, so every id fits the
# key buffers below.
if MAX_KEY_BYTES > MAX_RAW_TIMELINE:
    raise ImportError(
        f"tlsm.keys.MAX_KEY_BYTES {MAX_KEY_BYTES} is above the key buffers' "
        f"{MAX_RAW_TIMELINE} bytes; rebuild tlsm_ext with a larger MAX_RAW_TIMELINE"
    )
# Kept equal to tlsm.survivors.ENTRY_OVERHEAD: bytes counted per entry
# besides its timeline id and value when output is sized.
cdef Py_ssize_t ENTRY_OVERHEAD = 12
cdef uint64_t TAG_NEW_TIMELINE = 0x01
cdef uint64_t TAG_HAS_EXPIRY = 0x02
cdef int TAG_KIND_SHIFT = 2
cdef uint64_t MAX_KIND = 255
cdef Py_ssize_t COUNT_BYTES = 4
cdef Py_ssize_t MIN_ENTRY_BYTES = 3

# What becomes of the entry at the top of the heap.
cdef enum:
    KEEP = 0
    EXPIRED = 1
    DELETED = 2
    OTHER_KIND = 3


cdef struct Source:
    # The next data block to read, of block_count, and the table's mapping.
    Py_ssize_t next_block
    Py_ssize_t block_count
    bint mapped
    Py_buffer mapping
    # The block being read: its entries end at end, where the count starts.
    const uint8_t* buf
    Py_ssize_t end
    Py_ssize_t pos
    uint64_t count
    uint64_t found
    Py_ssize_t block_offset
    bint live
    # The current entry; timeline and value point into buf.
    const uint8_t* timeline
    Py_ssize_t timeline_length
    uint64_t seq
    uint64_t kind
    uint64_t expires_at
    const uint8_t* value
    Py_ssize_t value_length
    # The last key of the previous block, to check order across blocks.
    bint has_previous
    uint8_t previous_timeline[MAX_RAW_TIMELINE]
    Py_ssize_t previous_length
    uint64_t previous_seq


cdef inline void _copy_key(const Source* source, uint8_t* timeline,
                           Py_ssize_t* length, uint64_t* seq) noexcept:
    """Copy the key of source's current entry into a MAX_RAW_TIMELINE buffer."""
    memcpy(timeline, source.timeline, source.timeline_length)
    length[0] = source.timeline_length
    seq[0] = source.seq


cdef class RawMerge:
    """Merge tables' data blocks by key; see the module docstring.

    frames lists one tlsm.sstable.PinnedFrames per input, newest input
    first. Uncompressed blocks of a memory-mapped table are read where they
    lie in the mapping; any other block is copied (and decompressed) first.
    Use it as

        while (key := merge.next_timeline(tombstones)) is not None:
            size = merge.copy_timeline(data_blocks)
        merge.close()

    tombstones maps a timeline id to its sorted deleted intervals.
    next_timeline() returns the next timeline that keeps an entry, and
    copy_timeline() adds that timeline's survivors to a DataBlocks and
    returns their size as surviving_runs() counts it. dropped_expired and
    dropped_deleted count the entries dropped so far. close() releases the
    mappings and unpins the files; the merge cannot go on after it.
    """

    cdef list _frames
    cdef list _offsets
    cdef list _sizes
    cdef list _bodies
    cdef bint _closed
    cdef Source* _sources
    cdef Py_ssize_t* _heap
    cdef Py_ssize_t _count
    cdef Py_ssize_t _heap_size
    cdef uint64_t _now_ms
    cdef bint _started
    cdef public Py_ssize_t dropped_expired
    cdef public Py_ssize_t dropped_deleted
    # The last key taken from the heap: later equal keys are older copies.
    cdef bint _has_last
    cdef uint8_t _last_timeline[MAX_RAW_TIMELINE]
    cdef Py_ssize_t _last_length
    cdef uint64_t _last_seq
    # The timeline being copied, and its deleted intervals as pairs of the
    # first and the last seq they cover.
    cdef bytes _timeline
    cdef uint64_t* _bounds
    cdef Py_ssize_t _bound_count
    cdef Py_ssize_t _bound_capacity

    def __cinit__(self, frames, uint64_t now_ms):
        cdef Py_ssize_t index
        cdef Source* source
        self._frames = list(frames)
        self._count = len(self._frames)
        self._offsets = [f.offsets for f in self._frames]
        self._sizes = [f.sizes for f in self._frames]
        self._bodies = [None] * self._count
        self._now_ms = now_ms
        self._bounds = NULL
        self._bound_count = 0
        self._bound_capacity = 0
        self._sources = <Source*>PyMem_Malloc(max(self._count, 1) * sizeof(Source))
        self._heap = <Py_ssize_t*>PyMem_Malloc(max(self._count, 1) * sizeof(Py_ssize_t))
        if self._sources == NULL or self._heap == NULL:
            raise MemoryError()
        memset(self._sources, 0, max(self._count, 1) * sizeof(Source))
        self._heap_size = 0
        for index in range(self._count):
            source = &self._sources[index]
            offsets = self._offsets[index]
            sizes = self._sizes[index]
            if not (type(offsets) is array.array and type(sizes) is array.array
                    and offsets.typecode == "Q" and sizes.typecode == "Q"
                    and len(offsets) == len(sizes)):
                raise TypeError("block offsets and sizes must be array('Q') of one length")
            source.block_count = len(offsets)
            mapping = self._frames[index].mapping
            if mapping is not None and TLSM_CRC_FROM_ZLIB:
                PyObject_GetBuffer(mapping, &source.mapping, PyBUF_SIMPLE)
                source.mapped = True

    def __dealloc__(self):
        self._release()
        PyMem_Free(self._sources)
        PyMem_Free(self._heap)
        PyMem_Free(self._bounds)

    cdef void _release(self) noexcept:
        cdef Py_ssize_t index
        if self._sources == NULL:
            return
        for index in range(self._count):
            if self._sources[index].mapped:
                self._sources[index].mapped = False
                self._sources[index].live = False
                PyBuffer_Release(&self._sources[index].mapping)

    def close(self):
        """Release the mappings and unpin the input files."""
        self._release()
        self._closed = True
        self._heap_size = 0
        self._bodies = [None] * self._count
        for frames in self._frames:
            frames.close()

    # -- reading the inputs -------------------------------------------------

    cdef object _corrupt(self, Py_ssize_t index, str problem, Py_ssize_t position):
        cdef Source* source = &self._sources[index]
        name = self._frames[index].path
        return CorruptionError(
            f"sstable {name}: damaged data block ({problem} at byte {position} "
            f"of its body) at offset {source.block_offset}",
            name,
            source.block_offset,
        )

    cdef int _read(self, Py_ssize_t index, uint64_t* out) except -1:
        cdef Source* source = &self._sources[index]
        cdef Py_ssize_t start = source.pos
        cdef int result = _read_varint(source.buf, &source.pos, source.end, out)
        if result == 1:
            raise self._corrupt(index, "truncated varint", start)
        if result != 0:
            raise self._corrupt(index, "varint longer than 64 bits", start)
        return 0

    cdef int _load_block(self, Py_ssize_t index) except -1:
        """Point source index at its next block; return 0 when there is none."""
        cdef Source* source = &self._sources[index]
        cdef array.array offsets = <array.array>self._offsets[index]
        cdef array.array sizes = <array.array>self._sizes[index]
        cdef Py_ssize_t size
        cdef unsigned long long offset, frame_size
        cdef const uint8_t* frame
        cdef const uint8_t* buf
        if self._closed:
            raise ValueError("the merge is closed")
        while source.next_block < source.block_count:
            offset = offsets.data.as_ulonglongs[source.next_block]
            frame_size = sizes.data.as_ulonglongs[source.next_block]
            source.next_block += 1
            source.block_offset = <Py_ssize_t>offset
            buf = NULL
            if (source.mapped and frame_size >= <unsigned long long>TRAILER_BYTES
                    and offset <= <unsigned long long>source.mapping.len
                    and frame_size <= <unsigned long long>source.mapping.len - offset):
                frame = <const uint8_t*>source.mapping.buf + offset
                size = <Py_ssize_t>frame_size - TRAILER_BYTES
                if (tlsm_zlib_crc32(0, frame, <size_t>(size + 1))
                        == read_u32(frame + size + 1)):
                    if frame[size] == COMPRESSION_NONE:
                        # Read in place: the mapping outlives the merge.
                        self._bodies[index] = None
                        buf = frame
                    elif frame[size] == COMPRESSION_LZ4:
                        try:
                            body = _lz4_decompress(
                                memoryview(self._frames[index].mapping)[
                                    offset:offset + <unsigned long long>size
                                ]
                            )
                        except (_LZ4BlockError, ValueError):
                            body = None
                        if body is not None:
                            self._bodies[index] = body
                            buf = <const uint8_t*>PyBytes_AS_STRING(body)
                            size = PyBytes_GET_SIZE(body)
            if buf == NULL:
                # Not mapped, or damaged: the checked read raises
                # CorruptionError for a damaged frame.
                body = self._frames[index].read_body(offset, frame_size)
                if not PyBytes_CheckExact(body):
                    body = bytes(body)
                self._bodies[index] = body
                buf = <const uint8_t*>PyBytes_AS_STRING(body)
                size = PyBytes_GET_SIZE(body)
            if size < COUNT_BYTES:
                raise self._corrupt(
                    index, f"{size} bytes is too short for the entry count", 0
                )
            source.buf = buf
            source.end = size - COUNT_BYTES
            source.pos = 0
            source.found = 0
            source.count = read_u32(buf + source.end)
            if source.count > <uint64_t>(source.end // MIN_ENTRY_BYTES):
                raise self._corrupt(
                    index,
                    f"entry count {source.count} is too large for {source.end} "
                    "bytes of entries",
                    source.end,
                )
            source.timeline = NULL
            if source.count:
                return 1
            if source.end:
                raise self._corrupt(index, "entry beyond the entry count 0", 0)
        self._bodies[index] = None
        return 0

    cdef int _advance(self, Py_ssize_t index) except -1:
        """Read the next entry of source index; return 0 at the input's end."""
        cdef Source* source = &self._sources[index]
        cdef uint64_t tag, length, delta
        cdef Py_ssize_t entry_start, at
        cdef int order
        if source.live and source.pos >= source.end:
            if source.found != source.count:
                raise self._corrupt(
                    index,
                    f"entry count {source.count} does not match the "
                    f"{source.found} entries found",
                    source.end,
                )
            # Remember the block's last key before its body goes.
            _copy_key(source, source.previous_timeline, &source.previous_length,
                      &source.previous_seq)
            source.has_previous = True
        if not source.live or source.pos >= source.end:
            if not self._load_block(index):
                source.live = False
                return 0
            source.live = True
        if source.found == source.count:
            raise self._corrupt(
                index, f"entry beyond the entry count {source.count}", source.pos
            )
        entry_start = source.pos
        self._read(index, &tag)
        source.kind = tag >> TAG_KIND_SHIFT
        if source.kind > MAX_KIND:
            raise self._corrupt(index, f"invalid kind {source.kind}", entry_start)
        if tag & TAG_NEW_TIMELINE:
            at = source.pos
            self._read(index, &length)
            if length == 0 or length > MAX_KEY_BYTES:
                raise self._corrupt(index, f"invalid timeline id length {length}", at)
            if length > <uint64_t>(source.end - source.pos):
                raise self._corrupt(
                    index, f"timeline id length {length} past the end", at
                )
            if source.timeline != NULL:
                order = memcmp(source.buf + source.pos, source.timeline,
                               min(<Py_ssize_t>length, source.timeline_length))
                if order < 0 or (order == 0 and <Py_ssize_t>length <= source.timeline_length):
                    raise self._corrupt(
                        index, "timeline id not above the previous one", at
                    )
            source.timeline = source.buf + source.pos
            source.timeline_length = <Py_ssize_t>length
            source.pos += <Py_ssize_t>length
            self._read(index, &source.seq)
        else:
            if source.timeline == NULL:
                raise self._corrupt(index, "first entry without a timeline id", entry_start)
            at = source.pos
            self._read(index, &delta)
            if delta == 0:
                raise self._corrupt(index, "seq delta 0 (seqs must increase)", at)
            if delta > MAX_SEQ - source.seq:
                raise self._corrupt(index, "seq above 2**64-1", at)
            source.seq += delta
        source.expires_at = 0
        if tag & TAG_HAS_EXPIRY:
            at = source.pos
            self._read(index, &source.expires_at)
            if source.expires_at == 0:
                raise self._corrupt(index, "expires_at 0 with the expiry flag set", at)
        at = source.pos
        self._read(index, &length)
        if length > <uint64_t>(source.end - source.pos):
            raise self._corrupt(index, f"value length {length} past the end", at)
        source.value = source.buf + source.pos
        source.value_length = <Py_ssize_t>length
        source.pos += <Py_ssize_t>length
        source.found += 1
        if source.found == 1 and source.has_previous and compare_keys(
            source.timeline, source.timeline_length, source.seq,
            source.previous_timeline, source.previous_length, source.previous_seq,
        ) <= 0:
            raise self._corrupt(
                index, "first key not above the previous block's last key", entry_start
            )
        return 1

    # -- the heap -----------------------------------------------------------

    cdef bint _before(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        """Return whether source a's entry is taken before source b's."""
        cdef Source* x = &self._sources[a]
        cdef Source* y = &self._sources[b]
        cdef int order = compare_keys(x.timeline, x.timeline_length, x.seq,
                                  y.timeline, y.timeline_length, y.seq)
        if order != 0:
            return order < 0
        return a < b

    cdef void _sift_down(self, Py_ssize_t position) noexcept:
        cdef Py_ssize_t* heap = self._heap
        cdef Py_ssize_t size = self._heap_size
        cdef Py_ssize_t item, child
        if size == 0:
            return
        item = heap[position]
        while True:
            child = 2 * position + 1
            if child >= size:
                break
            if child + 1 < size and self._before(heap[child + 1], heap[child]):
                child += 1
            if not self._before(heap[child], item):
                break
            heap[position] = heap[child]
            position = child
        heap[position] = item

    cdef int _start(self) except -1:
        cdef Py_ssize_t index
        self._started = True
        for index in range(self._count):
            if self._advance(index):
                self._heap[self._heap_size] = index
                self._heap_size += 1
        for index in range(self._heap_size // 2 - 1, -1, -1):
            self._sift_down(index)
        return 0

    cdef int _take(self, Py_ssize_t index) except -1:
        """Consume the entry at the top of the heap, from source index."""
        _copy_key(&self._sources[index], self._last_timeline, &self._last_length,
                  &self._last_seq)
        self._has_last = True
        return self._advance_top(index)

    cdef int _advance_top(self, Py_ssize_t index) except -1:
        """Move source index, at the top of the heap, to its next entry or drop it."""
        if not self._advance(index):
            self._heap_size -= 1
            self._heap[0] = self._heap[self._heap_size]
        self._sift_down(0)
        return 0

    cdef Py_ssize_t _peek(self) except -2:
        """Return the source of the next key, skipping older copies of the last one.

        Returns -1 when every input is exhausted.
        """
        cdef Py_ssize_t index
        cdef Source* source
        if not self._started:
            self._start()
        while self._heap_size > 0:
            index = self._heap[0]
            source = &self._sources[index]
            if not (self._has_last and compare_keys(
                source.timeline, source.timeline_length, source.seq,
                self._last_timeline, self._last_length, self._last_seq,
            ) == 0):
                return index
            self._advance_top(index)
        return -1

    # -- survivors ------------------------------------------------------------

    cdef bint _in_timeline(self, Py_ssize_t index) noexcept:
        cdef Source* source = &self._sources[index]
        return (
            self._timeline is not None
            and source.timeline_length == PyBytes_GET_SIZE(self._timeline)
            and memcmp(source.timeline, PyBytes_AS_STRING(self._timeline),
                       source.timeline_length) == 0
        )

    cdef int _enter_timeline(self, Py_ssize_t index, dict tombstones) except -1:
        """Make source index's timeline the current one and load its intervals."""
        cdef Source* source = &self._sources[index]
        cdef Py_ssize_t count, position
        cdef uint64_t* grown
        self._timeline = PyBytes_FromStringAndSize(
            <const char*>source.timeline, source.timeline_length
        )
        intervals = tombstones.get(self._timeline)
        self._bound_count = 0
        if not intervals:
            return 0
        count = len(intervals)
        if 2 * count > self._bound_capacity:
            grown = <uint64_t*>PyMem_Realloc(self._bounds, 2 * count * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self._bounds = grown
            self._bound_capacity = 2 * count
        for position in range(count):
            start, end = intervals[position]
            # The last seq covered: end itself may be 2**64.
            self._bounds[2 * position] = start
            self._bounds[2 * position + 1] = end - 1
        self._bound_count = count
        return 0

    cdef int _fate(self, Py_ssize_t index) noexcept:
        """Return KEEP, EXPIRED, DELETED or OTHER_KIND for source index's entry."""
        cdef Source* source = &self._sources[index]
        cdef Py_ssize_t low = 0, high = self._bound_count, middle
        if source.expires_at and source.expires_at <= self._now_ms:
            return EXPIRED
        # The last interval that starts at or below seq is the only candidate.
        while low < high:
            middle = (low + high) >> 1
            if self._bounds[2 * middle] <= source.seq:
                low = middle + 1
            else:
                high = middle
        if low and source.seq <= self._bounds[2 * (low - 1) + 1]:
            return DELETED
        if source.kind != KIND_PUT:
            return OTHER_KIND
        return KEEP

    cdef int _drop(self, Py_ssize_t index, int fate) except -1:
        if fate == EXPIRED:
            self.dropped_expired += 1
        elif fate == DELETED:
            self.dropped_deleted += 1
        return self._take(index)

    def next_timeline(self, dict tombstones):
        """Return the next timeline id that keeps an entry, or None at the end."""
        cdef Py_ssize_t index
        cdef int fate
        while True:
            index = self._peek()
            if index < 0:
                self._timeline = None
                return None
            if not self._in_timeline(index):
                self._enter_timeline(index, tombstones)
            fate = self._fate(index)
            if fate == KEEP:
                return self._timeline
            self._drop(index, fate)

    def copy_timeline(self, DataBlocks blocks):
        """Add the current timeline's survivors to blocks; return their size."""
        cdef Py_ssize_t index
        cdef Source* source
        cdef int fate
        cdef Py_ssize_t count = 0, size = 0
        cdef uint64_t first_seq = 0, last_seq = 0, max_expires_at = 0
        cdef bint never_expires = False
        if self._timeline is None:
            raise ValueError("copy_timeline() needs a timeline from next_timeline()")
        while True:
            index = self._peek()
            if index < 0 or not self._in_timeline(index):
                break
            fate = self._fate(index)
            if fate != KEEP:
                self._drop(index, fate)
                continue
            source = &self._sources[index]
            blocks.add_raw(source.timeline, source.timeline_length, source.seq,
                           source.kind, source.expires_at, source.value,
                           source.value_length)
            if count == 0:
                first_seq = source.seq
            last_seq = source.seq
            count += 1
            size += source.timeline_length + source.value_length + ENTRY_OVERHEAD
            if source.expires_at == 0:
                never_expires = True
            elif source.expires_at > max_expires_at:
                max_expires_at = source.expires_at
            self._take(index)
        if count:
            blocks.note_run(self._timeline, first_seq, last_seq, count,
                            never_expires, max_expires_at)
        return size
