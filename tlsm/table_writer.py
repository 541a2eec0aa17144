"""Writing immutable sorted table files (``NNNNNN.sst``).

A table is written front to back in one pass:

    file := data_block* | index_block | summary_block | tombstone_block
            | bloom_block | footer (80 bytes)

Each block is framed as body | compression: u8 | crc: u32. tlsm.sstable,
which reads these files, documents every block body and the footer, and
docs/format.md is the full on-disk contract.

Data blocks are encoded straight from the parallel lists of timeline runs
(tlsm.block.encode_block_runs), so a flush or a merge builds no tuple per
entry. DataBlocks, which fills and frames them, has a Cython twin in
tlsm_ext/table_writer.pyx that writes the same bytes. A block ends at the first entry that brings its ids and values, plus
12 bytes per entry, to block_bytes. Because that rule fixes where blocks
split, the same entries always give the same file.
"""

import struct
import types
import zlib

import lz4.block

from . import _impl, bloom
from .block import encode_block_runs, run_block_end
from .errors import InvalidArgumentError
from .sstable import (
    _FOOTER_HEAD,
    _TOMBSTONE,
    _TRAILER,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    FORMAT_VERSION,
    MAGIC,
    NEVER_EXPIRES,
)

_INDEX_ENTRY = struct.Struct("<HQQI")
_SUMMARY_ENTRY = struct.Struct("<HQQQ")
_FOOTER_TAIL = struct.Struct("<IQ")
# Bytes counted per entry on top of its timeline id and value when sizing a
# block. It only decides where blocks split, but changing it changes files.
ENTRY_OVERHEAD = 12
_WRITE_CHUNK = 1 << 20
# The compression byte as it follows a body into the block crc.
_COMPRESSION_BYTES = {
    COMPRESSION_NONE: bytes([COMPRESSION_NONE]),
    COMPRESSION_LZ4: bytes([COMPRESSION_LZ4]),
}


def _trailer(body, compression):
    crc = zlib.crc32(_COMPRESSION_BYTES[compression], zlib.crc32(body))
    return _TRAILER.pack(compression, crc)


def _frame(body, compression):
    return body + _trailer(body, compression)


class DataBlocks:
    """The data blocks of a table being written, and the file's write buffer.

    TableWriter adds runs here and reads back what finish() needs: index
    lists (timeline_id, last_seq, offset, framed size) per block, summary
    maps each timeline to [first_seq, last_seq, count], offset is the
    number of bytes appended so far. The writer keeps references to the
    lists passed to add_run() until the block with their last entry
    is written, so callers must not change them before finish_blocks().
    """

    def __init__(self, file, block_bytes, compression):
        self.file = file
        self.block_bytes = block_bytes
        self.compression = compression
        # Run slices of the block being filled:
        # (timeline_id, seqs, kinds, expires, values, start, stop).
        self._pending = []
        self._pending_bytes = 0
        self._buffer = bytearray()
        self.offset = 0
        self.index = []
        self.summary = {}
        self.max_expires_at = 0
        self.entry_count = 0
        self.smallest = None
        self.largest = None

    def add_run(self, timeline_id, seqs, kinds, expires, values):
        """Add one timeline's entries, given as parallel lists with seqs ascending.

        timeline_id must sort after every key added before, or continue the
        last timeline with higher seqs. Costs O(len(seqs)) in C loops plus a
        few Python steps per run and per block.
        """
        count = len(seqs)
        if not count:
            return
        span = self.summary.get(timeline_id)
        if span is None:
            self.summary[timeline_id] = [seqs[0], seqs[-1], count]
        else:
            span[1] = seqs[-1]
            span[2] += count
        self.entry_count += count
        if 0 in expires:
            self.max_expires_at = NEVER_EXPIRES
        elif self.max_expires_at != NEVER_EXPIRES:
            self.max_expires_at = max(self.max_expires_at, max(expires))
        overhead = len(timeline_id) + ENTRY_OVERHEAD
        position = 0
        while position < count:
            # The first entry that brings the pending block to block_bytes
            # ends it.
            stop, size = run_block_end(
                values, position, overhead, self.block_bytes - self._pending_bytes
            )
            self._pending.append(
                (timeline_id, seqs, kinds, expires, values, position, stop)
            )
            self._pending_bytes += size
            if self._pending_bytes >= self.block_bytes:
                self._finish_block()
            position = stop

    def finish_blocks(self):
        """Write the block being filled, unless it is empty."""
        if self._pending:
            self._finish_block()

    def _finish_block(self):
        slices = self._pending
        first, last = slices[0], slices[-1]
        if self.smallest is None:
            self.smallest = (first[0], first[1][first[5]])
        last_key = (last[0], last[1][last[6] - 1])
        body = encode_block_runs(slices)
        _check_block_order(self.largest, (first[0], first[1][first[5]]))
        self.largest = last_key
        compression = COMPRESSION_NONE
        if self.compression:
            packed = lz4.block.compress(body)
            if len(packed) < len(body) - (len(body) >> 3):
                body, compression = packed, COMPRESSION_LZ4
        block_offset = self.offset
        # Body and trailer go to the buffer separately, saving a copy.
        self.append(body)
        self.append(_trailer(body, compression))
        self.index.append(
            (last_key[0], last_key[1], block_offset, self.offset - block_offset)
        )
        self._pending = []
        self._pending_bytes = 0

    def append(self, data):
        """Append bytes to the file, through the write buffer."""
        self._buffer += data
        self.offset += len(data)
        if len(self._buffer) >= _WRITE_CHUNK:
            self.file.write(self._buffer)
            self._buffer = bytearray()

    def write_buffer(self):
        """Write the buffered bytes to the file."""
        self.file.write(self._buffer)
        self._buffer = bytearray()


def _check_block_order(previous, first):
    """Raise InvalidArgumentError unless key first sorts after key previous.

    The codec checks order within a block; this checks it across blocks.
    previous is None for a file's first block.
    """
    if previous is not None and first <= previous:
        raise InvalidArgumentError(
            f"key {first!r} does not follow the key {previous!r} that ends the "
            "previous block, in strictly increasing (timeline_id, seq) order"
        )


PurePython = types.SimpleNamespace(DataBlocks=DataBlocks)

_extension = _impl.load_extension("table_writer")
if _extension is not None:
    DataBlocks = _extension.DataBlocks


class TableWriter:
    """Writes entries, given in strictly increasing key order, to a new table file.

    Entries arrive one at a time through add() or as a timeline's run of
    parallel lists through add_run(); both give the same file. The writer
    keeps references to the lists passed to add_run() until the block that
    holds their last entry is written, so callers must not change them
    before finish().
    """

    def __init__(self, fs, path, block_bytes=4096, compression=True):
        self.path = path
        # The data blocks and the write buffer; a merge adds entries to them
        # directly.
        self.blocks = DataBlocks(fs.create(path), block_bytes, compression)
        # add_run(timeline_id, seqs, kinds, expires, values): see
        # DataBlocks.add_run. Bound here so a run costs no extra call.
        self.add_run = self.blocks.add_run
        self._tombstones = []

    @property
    def entry_count(self):
        return self.blocks.entry_count

    @property
    def max_expires_at(self):
        return self.blocks.max_expires_at

    @property
    def smallest(self):
        return self.blocks.smallest

    @property
    def largest(self):
        return self.blocks.largest

    def add(self, entry):
        """Add one entry (timeline_id, seq, kind, expires_at, value).

        Raises InvalidArgumentError when entry does not have five fields.
        Invalid field values raise it later, when their block is written.
        """
        if len(entry) != 5:
            raise InvalidArgumentError(
                f"entry has {len(entry)} fields, expected 5 (timeline_id, seq, "
                "kind, expires_at, value)"
            )
        timeline_id, seq, kind, expires_at, value = entry
        self.blocks.add_run(timeline_id, [seq], [kind], [expires_at], [value])

    def add_summary(self, timeline_id, max_seq):
        """Record that timeline_id reached max_seq even if no entry of it is kept."""
        summary = self.blocks.summary
        span = summary.get(timeline_id)
        if span is None:
            summary[timeline_id] = [max_seq, max_seq, 0]
        elif max_seq > span[1]:
            span[1] = max_seq

    def add_tombstone(self, timeline_id, start, end):
        """Record the deleted range [start, end) of timeline_id in this file."""
        self._tombstones.append((timeline_id, start, end))

    def finish(self, sync=True):
        """Write index, summary and footer; sync and close. Returns the file size."""
        blocks = self.blocks
        blocks.finish_blocks()
        index = self._append_meta(
            part
            for timeline_id, last_seq, offset, size in blocks.index
            for part in (
                _INDEX_ENTRY.pack(len(timeline_id), last_seq, offset, size),
                timeline_id,
            )
        )
        summary = self._append_meta(
            part
            for timeline_id in sorted(blocks.summary)
            for part in (
                _SUMMARY_ENTRY.pack(len(timeline_id), *blocks.summary[timeline_id]),
                timeline_id,
            )
        )
        tombstones = self._append_meta(
            part
            for timeline_id, start, end in sorted(self._tombstones)
            for part in (_TOMBSTONE.pack(len(timeline_id), start, end), timeline_id)
        )
        bloom_filter = self._append_meta([bloom.build(blocks.summary)])
        head = _FOOTER_HEAD.pack(
            *index,
            *summary,
            *tombstones,
            *bloom_filter,
            blocks.entry_count,
            blocks.max_expires_at,
            FORMAT_VERSION,
        )
        footer = head + _FOOTER_TAIL.pack(zlib.crc32(head), MAGIC)
        blocks.append(footer)
        blocks.write_buffer()
        if sync:
            blocks.file.sync()
        blocks.file.close()
        return blocks.offset

    def _append_meta(self, parts):
        """Append one uncompressed block of parts; return (offset, framed size)."""
        offset = self.blocks.offset
        block = _frame(b"".join(parts), COMPRESSION_NONE)
        self.blocks.append(block)
        return offset, len(block)

    def abandon(self):
        """Close the file without finishing it; the caller removes it."""
        self.blocks.file.close()
