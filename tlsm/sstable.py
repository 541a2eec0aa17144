"""Immutable sorted table files (``NNNNNN.sst``).

Layout, all integers little-endian; these constants are on disk and must
never change:

    file     := data_block* | index_block | summary_block | tombstone_block
                | bloom_block | footer
    block    := body | compression: u8 | crc: u32
                (compression 0 = none, 1 = LZ4 block with stored size;
                 crc is zlib's CRC-32 of body followed by the compression byte)
    data body    := tlsm.block encoding of entries in (timeline_id, seq) order
    index body   := (timeline_len: u16 | last_seq: u64 | offset: u64 |
                     size: u32 | timeline_id) per data block, in file order
    summary body := (timeline_len: u16 | min_seq: u64 | max_seq: u64 |
                     count: u64 | timeline_id) per timeline, sorted by id
    tombstone body := (timeline_len: u16 | start: u64 | end: u64 |
                       timeline_id) per deleted range [start, end)
    footer   := index_offset: u64 | index_size: u32 | summary_offset: u64 |
                summary_size: u32 | tombstone_offset: u64 |
                tombstone_size: u32 | bloom_offset: u64 | bloom_size: u32 |
                entry_count: u64 | max_expires_at: u64 |
                format_version: u32 | crc: u32 | magic: u64    (80 bytes)
    bloom body := see tlsm.bloom; its keys are the summary's timelines

The footer crc covers the 68 bytes before it. max_expires_at is the latest
expiry time of any entry in the file, or 2**64-1 when some entry never
expires, so a file whose entries have all expired is known from its footer. An index entry names the
last key of its block, so the block holding the first key >= K is the
first whose last key is >= K. The summary lists every timeline in the file
with its seq range: it is an exact filter (a scan skips files without the
timeline or whose range misses the requested one) and records the highest
seq each timeline ever reached.

tlsm.table_writer writes these files, and this module reads them.
"""

import bisect
import logging
import struct
import threading
import weakref
import zlib

import lz4.block

from . import block as block_codec
from . import bloom, scan, table_index
from .errors import CorruptionError, TlsmError
from .open_files import OpenFileCache
from .scan import BlockCache  # noqa: F401 (re-exported: DB and tests build it from here)

log = logging.getLogger(__name__)

MAGIC = 0x315453534D534C54  # b"TLSMSST1" read as a little-endian u64
FORMAT_VERSION = 1
COMPRESSION_NONE = 0
COMPRESSION_LZ4 = 1

_TRAILER = struct.Struct("<BI")
_TOMBSTONE = struct.Struct("<HQQ")
_FOOTER = struct.Struct("<QIQIQIQIQQIIQ")
_FOOTER_HEAD = struct.Struct("<QIQIQIQIQQI")
NEVER_EXPIRES = (1 << 64) - 1
FOOTER_SIZE = _FOOTER.size
# A limit that no block's entry count reaches.
_NO_LIMIT = 1 << 62


def _release_file(open_files, file_number, obsolete):
    """Drop the file of a dead SSTable, and delete it once compaction replaced it.

    The finalizer of an SSTable, so it takes no table.
    """
    open_files.drop(file_number)
    for fs, path in obsolete:
        try:
            fs.remove(path)
        except (OSError, TlsmError) as exc:
            # The next open deletes table files the manifest does not list.
            log.warning("cannot delete replaced table %s: %s", path, exc)


class SSTable:
    """A reader of one table file.

    open() reads only the footer, tombstones and bloom filter, so opening a
    database with many tables stays fast. The summary is binary-searched in
    its raw form (tlsm.table_index) from the first lookup of a timeline that
    the bloom filter admits, and the index is parsed on the first block
    read. The file is read through open_files, an OpenFileCache shared by
    the tables of a DB. Without one, the table gets a cache of its own that
    keeps one file open.
    """

    def __init__(self, fs, path, file_number, size, cache, open_files=None):
        self.fs = fs
        self.path = path
        self.file_number = file_number
        self.size = size
        self._cache = cache
        if open_files is None:
            open_files = OpenFileCache(1)
        self._open_files = open_files
        self._lock = threading.Lock()
        # True once the whole summary is parsed into _summary.
        self._loaded = False
        self._opened = False
        # Set by delete_when_unused(): the file is deleted when the table
        # dies, so reads, snapshots and scans that still hold a table that
        # compaction replaced read on from its file. The finalizer must not
        # reference the table itself, or the table never dies.
        self._obsolete = []
        weakref.finalize(self, _release_file, open_files, file_number, self._obsolete)
        self.entry_count = 0
        self.max_expires_at = NEVER_EXPIRES
        self.tombstones = []
        self._footer = None
        self._bloom = None
        self._summary_index = None
        self._summary = None
        # (index_keys, block_offsets, block_sizes), parsed on first use.
        self._index = None

    def _corrupt(self, what, offset):
        return CorruptionError(
            f"sstable {self.path}: {what} at offset {offset}", self.path, offset
        )

    def _open_file(self):
        return self.fs.open_read(self.path)

    def _read_at(self, offset, size):
        return self._open_files.read(self.file_number, self._open_file, offset, size)

    def _read_framed(self, offset, size):
        """Return the checked, decompressed body of the block frame at offset, as bytes."""
        data = self._read_at(offset, size)
        if len(data) != size or size < _TRAILER.size:
            raise self._corrupt(f"short read of {size}-byte block", offset)
        # The checksum covers the body and the compression byte after it.
        checked = size - 4
        if zlib.crc32(memoryview(data)[:checked]) != int.from_bytes(
            data[checked:], "little"
        ):
            raise self._corrupt("block checksum mismatch", offset)
        compression = data[checked - 1]
        if compression == COMPRESSION_NONE:
            return data[: checked - 1]
        if compression == COMPRESSION_LZ4:
            try:
                return lz4.block.decompress(memoryview(data)[: checked - 1])
            # A size header that is negative or too large raises ValueError.
            except (lz4.block.LZ4BlockError, ValueError) as exc:
                raise self._corrupt(
                    f"LZ4 decompression failed ({exc})", offset
                ) from None
        raise self._corrupt(f"unknown compression type {compression}", offset)

    def open(self):
        """Read the footer, tombstones and bloom filter (idempotent)."""
        if self._opened:
            return
        with self._lock:
            if self._opened:
                return
            pinned = self._open_files.acquire(self.file_number, self._open_file)
            try:
                self._read_footer(pinned.file)
            finally:
                self._open_files.release(pinned)
            self._opened = True

    def load(self):
        """Parse the index and the whole summary too (idempotent)."""
        self._load_index()
        self._load_summary()

    def delete_when_unused(self):
        """Delete the file once no read, snapshot or scan references this table.

        Compaction calls it (through LiveTables) for each table it
        replaced. Until the table object dies the file stays on disk, so
        it can be reopened through the open-file cache like any other. A
        crash before that leaves a file the next open deletes, because the
        manifest no longer lists it.
        """
        self._obsolete.append((self.fs, self.path))

    def delete_now(self):
        """Delete the file of a table marked by delete_when_unused(), if not yet."""
        obsolete = self._obsolete[:]
        del self._obsolete[:]
        self.close()
        for fs, path in obsolete:
            try:
                fs.remove(path)
            except (OSError, TlsmError) as exc:
                log.warning("cannot delete replaced table %s: %s", path, exc)

    def _load_index(self):
        if self._index is not None:
            return
        self.open()
        with self._lock:
            if self._index is not None:
                return
            index_offset, index_size, _, _ = self._footer
            self._index = self._parse(scan.parse_index, index_offset, index_size)

    def _load_summary(self):
        if self._loaded:
            return
        self.open()
        with self._lock:
            if self._loaded:
                return
            self._summary = self._parse_summary(scan.parse_summary)
            self._loaded = True

    def _load_summary_index(self):
        self.open()
        with self._lock:
            if self._summary_index is None:
                self._summary_index = self._parse_summary(table_index.SummaryIndex)
            return self._summary_index

    def _parse_summary(self, parse):
        _, _, summary_offset, summary_size = self._footer
        return self._parse(parse, summary_offset, summary_size)

    def _parse(self, parse, offset, size):
        """Return parse(body) of the metadata block at offset.

        parse raises ValueError(problem, position) for a malformed body,
        which becomes a CorruptionError at offset + position.
        """
        body = self._read_framed(offset, size)
        try:
            return parse(body)
        except ValueError as exc:
            problem, position = exc.args
            raise self._corrupt(problem, offset + position) from None

    @property
    def summary(self):
        """{timeline_id: (min_seq, max_seq, count)} for every timeline in the file.

        Parsed whole on first use, which takes about 2 ms for 10,000
        timelines. Reads look up single timelines through span() instead.
        """
        self._load_summary()
        return self._summary

    @property
    def index_keys(self):
        """(timeline_id, last_seq) of each data block, in file order."""
        self._load_index()
        return self._index[0]

    @property
    def _block_offsets(self):
        self._load_index()
        return self._index[1]

    @property
    def _block_sizes(self):
        self._load_index()
        return self._index[2]

    def _read_footer(self, file):
        size = file.size
        if size < FOOTER_SIZE:
            raise self._corrupt(f"file of {size} bytes is shorter than the footer", 0)
        footer = file.read_at(size - FOOTER_SIZE, FOOTER_SIZE)
        (
            index_offset,
            index_size,
            summary_offset,
            summary_size,
            tombstone_offset,
            tombstone_size,
            bloom_offset,
            bloom_size,
            count,
            max_expires_at,
            version,
            crc,
            magic,
        ) = _FOOTER.unpack(footer)
        if magic != MAGIC:
            raise self._corrupt(f"bad magic number {magic:#x}", size - 8)
        if zlib.crc32(footer[: _FOOTER_HEAD.size]) != crc:
            raise self._corrupt("footer checksum mismatch", size - FOOTER_SIZE)
        if version != FORMAT_VERSION:
            raise self._corrupt(f"unsupported format version {version}", size - 16)
        self.entry_count = count
        self.max_expires_at = max_expires_at
        self._footer = (index_offset, index_size, summary_offset, summary_size)
        body = self._read_framed(tombstone_offset, tombstone_size)
        self.tombstones = self._parse_tombstones(body, tombstone_offset)
        try:
            self._bloom = bloom.BloomFilter(self._read_framed(bloom_offset, bloom_size))
        except ValueError as exc:
            raise self._corrupt(str(exc), bloom_offset) from None

    def _parse_tombstones(self, body, offset):
        pos, end = 0, len(body)
        tombstones = []
        while pos < end:
            if pos + _TOMBSTONE.size > end:
                raise self._corrupt("truncated tombstone", offset + pos)
            tl_len, start, stop = _TOMBSTONE.unpack_from(body, pos)
            pos += _TOMBSTONE.size
            tombstones.append((bytes(body[pos : pos + tl_len]), start, stop))
            pos += tl_len
        if pos != end:
            raise self._corrupt("tombstones overrun their block", offset)
        return tombstones

    def read_body(self, index):
        """Return the checked, decompressed body of data block number index.

        Bodies are kept in the block cache, so a hit costs no read and no
        checksum. Raises CorruptionError for a damaged block frame.
        """
        body = self._cache.get((self.file_number, index))
        if body is None:
            body = self.load_body(index)
        return body

    def load_body(self, index):
        """Read block number index from the file and add it to the cache."""
        body = self._read_framed(self._block_offsets[index], self._block_sizes[index])
        self._cache.put((self.file_number, index), body, len(body))
        return body

    def block_error(self, index, exc):
        """Return the CorruptionError for data block index; exc gives the damage."""
        offset = self._block_offsets[index]
        return self._corrupt(f"damaged data block ({exc})", offset)

    def read_block(self, index):
        """Return the decoded entries of data block number index."""
        # read_body() raises this table's CorruptionError for a damaged frame.
        body = self.read_body(index)
        try:
            entries = block_codec.decode_block(body)
            # The index holds each block's last key, so a block's keys lie
            # above the previous block's index key and end at its own.
            index_keys = self.index_keys
            if entries and (
                entries[-1][:2] != index_keys[index]
                or (index and entries[0][:2] <= index_keys[index - 1])
            ):
                raise CorruptionError("keys outside the block's range in the index")
            return entries
        except CorruptionError as exc:
            raise self.block_error(index, exc) from None

    def span(self, timeline_id):
        """Return (min_seq, max_seq, count) of timeline_id in this file, or None.

        Before the first lookup that the bloom filter admits, a timeline the
        filter rules out costs no read. Later lookups binary-search the raw
        summary, or use the parsed one once load() or summary parsed it.
        """
        if self._loaded:
            return self._summary.get(timeline_id)
        summary_index = self._summary_index
        if summary_index is None:
            self.open()
            if not self._bloom.may_contain(timeline_id):
                return None
            summary_index = self._load_summary_index()
        return summary_index.get(timeline_id)

    def max_seq(self, timeline_id):
        """Return the highest seq timeline_id reached in this file, or 0."""
        span = self.span(timeline_id)
        return span[1] if span else 0

    def get(self, timeline_id, seq):
        """Return the entry (timeline_id, seq, kind, expires_at, value), or None."""
        span = self.span(timeline_id)
        if span is None or not span[0] <= seq <= span[1] or not span[2]:
            return None
        key = (timeline_id, seq)
        index_keys = self.index_keys
        index = bisect.bisect_left(index_keys, key)
        if index == len(index_keys):
            return None
        entries = self.read_block(index)
        position = bisect.bisect_left(entries, key)
        if (
            position < len(entries)
            and entries[position][1] == seq
            and entries[position][0] == timeline_id
        ):
            return entries[position]
        return None

    def may_contain(self, timeline_id, start, end):
        """Return False when no entry of timeline_id with start <= seq < end is in this file."""
        span = self.span(timeline_id)
        return span is not None and span[2] > 0 and span[0] < end and span[1] >= start

    def collect(self, timeline_id, start, end, reverse, now_ms, limit, out):
        """Append up to limit live (seq, value) pairs of a range to out.

        See tlsm.scan.collect_table; returns the number of pairs appended.
        """
        self._load_index()
        return scan.collect_table(
            self, timeline_id, start, end, reverse, now_ms, limit, out
        )

    def chunks(self, timeline_id, start, end, reverse, now_ms):
        """Yield, block by block, lists of the live pairs collect() would append."""
        index_keys = self.index_keys
        block_count = len(index_keys)
        if reverse:
            index = min(
                bisect.bisect_left(index_keys, (timeline_id, end)), block_count - 1
            )
            step = -1
        else:
            index = bisect.bisect_left(index_keys, (timeline_id, start))
            step = 1
        previous = None
        while 0 <= index < block_count:
            chunk = []
            more = self._scan_block(
                index, timeline_id, start, end, reverse, now_ms, _NO_LIMIT, chunk
            )
            if chunk:
                if previous is not None:
                    try:
                        scan.check_seq_order(previous, chunk[0][0], reverse)
                    except CorruptionError as exc:
                        raise self.block_error(index, exc) from None
                previous = chunk[-1][0]
                yield chunk
            if not more:
                return
            index += step

    def _scan_block(self, index, timeline_id, start, end, reverse, now_ms, limit, out):
        body = self.read_body(index)
        try:
            return block_codec.scan_block(
                body, timeline_id, start, end, reverse, now_ms, limit, out
            )
        except CorruptionError as exc:
            raise self.block_error(index, exc) from None

    def scan(self, timeline_id, start, end, reverse=False):
        """Iterate entries of timeline_id with start <= seq < end, lazily, block by block."""
        if not self.may_contain(timeline_id, start, end):
            return iter(())
        if reverse:
            return self._scan_backward(timeline_id, start, end)
        return self._scan_forward(timeline_id, start, end)

    def _scan_forward(self, timeline_id, start, end):
        key = (timeline_id, start)
        index = bisect.bisect_left(self.index_keys, key)
        block_count = len(self.index_keys)
        while index < block_count:
            entries = self.read_block(index)
            position = bisect.bisect_left(entries, key)
            for i in range(position, len(entries)):
                entry = entries[i]
                if entry[0] != timeline_id or entry[1] >= end:
                    return
                yield entry
            index += 1

    def _scan_backward(self, timeline_id, start, end):
        key = (timeline_id, end)
        index = bisect.bisect_left(self.index_keys, key)
        if index == len(self.index_keys):
            index -= 1
        while index >= 0:
            entries = self.read_block(index)
            position = bisect.bisect_left(entries, key) - 1
            for i in range(position, -1, -1):
                entry = entries[i]
                if entry[0] != timeline_id or entry[1] < start:
                    return
                yield entry
            index -= 1

    def entries(self):
        """Iterate every entry of the file in key order; used by compaction.

        Raises CorruptionError for a block that does not decode or whose
        first key does not sort above the previous block's last key.
        """
        self._load_index()
        index_keys, offsets, sizes = self._index
        last_key = None
        for index in range(len(index_keys)):
            body = self._read_framed(offsets[index], sizes[index])
            try:
                entries = block_codec.decode_block(body)
                if entries and last_key is not None and entries[0][:2] <= last_key:
                    raise CorruptionError(
                        "first key not above the previous block's last key"
                    )
            except CorruptionError as exc:
                raise self.block_error(index, exc) from None
            if entries:
                last_key = entries[-1][:2]
            yield from entries

    def pin_frames(self, pin=True):
        """Return a PinnedFrames over this table's data blocks (for a merge)."""
        return PinnedFrames(self, pin)

    def close(self):
        """Close the file and forget what was read; a later read opens it again."""
        with self._lock:
            self._open_files.drop(self.file_number)
            self._opened = False
            self._loaded = False
            self._summary = None
            self._summary_index = None
            self._index = None
        self._cache.evict_file(self.file_number)


class PinnedFrames:
    """A table's data block frames, for one sequential reader (a merge).

    offsets and sizes are array('Q') of each frame's place in the file.
    read_body() returns a frame's checked, decompressed body, raising
    CorruptionError for a damaged one.

    With pin, the file stays pinned in the open-file cache until close(),
    and keeps a descriptor until then. mapping is the file's read-only
    memory mapping (None for a file read with pread), valid until close().
    Without pin, mapping is None and every read goes through the cache.
    tlsm_ext/compact.pyx reads frames straight from the mapping and calls
    read_body() for the rest.
    """

    def __init__(self, table, pin=True):
        table._load_index()
        _, self.offsets, self.sizes = table._index
        self.path = table.path
        self._table = table
        self._entry = None
        self.mapping = None
        if pin:
            self._entry = table._open_files.acquire(table.file_number, table._open_file)
            self.mapping = getattr(self._entry.file, "mapping", None)

    def read_body(self, offset, size):
        return self._table._read_framed(offset, size)

    def close(self):
        if self._entry is not None:
            self.mapping = None
            self._table._open_files.release(self._entry)
            self._entry = None


class LiveTables(dict):
    """The SSTables of a DB by file number; deleting one deletes its file later.

    A table deleted from this dict has been replaced by compaction. Its
    file goes when the last read holding the table lets go of it (see
    SSTable.delete_when_unused).
    """

    def __init__(self):
        super().__init__()
        # Replaced tables that some read, snapshot or scan still holds.
        self.replaced = weakref.WeakSet()

    def __delitem__(self, file_number):
        self._replace(self[file_number])
        super().__delitem__(file_number)

    def pop(self, file_number, *default):
        table = self.get(file_number)
        if table is not None:
            self._replace(table)
        return super().pop(file_number, *default)

    def _replace(self, table):
        table.delete_when_unused()
        self.replaced.add(table)

    def delete_replaced(self):
        """Delete the files of replaced tables now; DB.close() calls it.

        A snapshot or scan left open past close() can read no more, so its
        tables' files need not wait for it.
        """
        for table in list(self.replaced):
            table.delete_now()
