"""Write-ahead log: every acknowledged write batch is a record here first.

Layout of a log file (``NNNNNN.log``), all integers little-endian; these
constants are on disk and must never change:

    record  := crc: u32 | length: u32 | payload: length bytes
    payload := type: u8 (1 = write batch) | count: u32 | entry * count
    entry   := kind: u8 | timeline_len: u16 | seq: u64 | expires_at: u64
               | value_len: u32 | timeline_id | value

``crc`` is zlib's CRC-32 of the 4 length bytes followed by the payload. A
batch is one record, so recovery applies all of its entries or none.

A log is preallocated in multiples of LOG_ALIGN_BYTES (tlsm.fs) and filled
from the start, so while it is open its file ends in zero bytes; closing
it truncates the file after its last record.

Recovery reads records until the first one that is incomplete or fails its
checksum, keeps everything before it and reports what it dropped. Only the
tail can be torn when the process or machine dies mid-write. A tail of zero
bytes that ends at a multiple of LOG_ALIGN_BYTES is the unused part of a
preallocated log: it is skipped and logged at INFO. Any other zero tail
(never written, or zeroed by a crash) is dropped and logged as damage.
"""

import logging
import struct
import threading
import zlib

from .errors import CorruptionError
from .fs import LOG_ALIGN_BYTES

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_BATCH_HEADER = struct.Struct("<BI")
_ENTRY = struct.Struct("<BHQQI")

RECORD_BATCH = 1

HEADER_SIZE = _HEADER.size


def encode_batch(entries):
    """Return one log record holding entries, a list of 5-tuples (see tlsm.keys)."""
    parts = [_BATCH_HEADER.pack(RECORD_BATCH, len(entries))]
    pack = _ENTRY.pack
    for timeline_id, seq, kind, expires_at, value in entries:
        parts.append(pack(kind, len(timeline_id), seq, expires_at, len(value)))
        parts.append(timeline_id)
        parts.append(value)
    payload = b"".join(parts)
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return struct.pack("<I", crc) + length + payload


def decode_batch(payload, path, offset):
    """Return the entries of a batch payload; raises CorruptionError if malformed."""
    if len(payload) < _BATCH_HEADER.size:
        raise CorruptionError(f"{path}: short batch at offset {offset}", path, offset)
    record_type, count = _BATCH_HEADER.unpack_from(payload, 0)
    if record_type != RECORD_BATCH:
        raise CorruptionError(
            f"{path}: unknown record type {record_type} at offset {offset}",
            path,
            offset,
        )
    entries = []
    pos = _BATCH_HEADER.size
    unpack = _ENTRY.unpack_from
    entry_size = _ENTRY.size
    for _ in range(count):
        if pos + entry_size > len(payload):
            raise CorruptionError(
                f"{path}: truncated entry at offset {offset}", path, offset
            )
        kind, tl_len, seq, expires_at, value_len = unpack(payload, pos)
        pos += entry_size
        end = pos + tl_len + value_len
        if end > len(payload):
            raise CorruptionError(
                f"{path}: entry overruns record at offset {offset}", path, offset
            )
        timeline_id = bytes(payload[pos : pos + tl_len])
        value = bytes(payload[pos + tl_len : end])
        pos = end
        entries.append((timeline_id, seq, kind, expires_at, value))
    if pos != len(payload):
        raise CorruptionError(
            f"{path}: {len(payload) - pos} trailing bytes in record at offset {offset}",
            path,
            offset,
        )
    return entries


class LogWriter:
    """Appends records to one log file (a tlsm.fs.MappedLogFile).

    A failed append is undone by truncating the log back to where the
    record started, so a later record never follows a torn one. If even the
    truncation fails, ``broken`` is set and the caller must stop writing.
    ``sync`` may run in another thread than ``add_record``; after ``close``
    it does nothing, because close syncs first.
    """

    def __init__(self, file):
        self.file = file
        self.broken = None
        self.synced_size = file.size
        # fdatasync calls that succeeded, for DB.stats().
        self.syncs = 0
        self._sync_lock = threading.Lock()
        self._closed = False

    @property
    def path(self):
        return self.file.path

    @property
    def size(self):
        return self.file.size

    def add_record(self, record, sync):
        start = self.file.size
        try:
            self.file.append(record)
            if sync:
                self.sync()
        except Exception as exc:
            try:
                self.file.truncate(start)
            except Exception as undo_exc:
                self.broken = undo_exc
            raise exc

    def sync(self):
        """Make every record appended so far durable; return True if that took an fsync."""
        with self._sync_lock:
            if self._closed:
                return False
            size = self.file.size
            if size <= self.synced_size:
                return False
            self.file.sync()
            self.syncs += 1
            self.synced_size = max(self.synced_size, size)
            return True

    def close(self, sync=True):
        """Close the file, syncing unsynced records first unless sync is False."""
        with self._sync_lock:
            if self._closed:
                return
            try:
                if sync and self.file.size > self.synced_size and self.broken is None:
                    self.file.sync()
                    self.syncs += 1
                    self.synced_size = self.file.size
            finally:
                self._closed = True
                self.file.close()


class RecoveredLog:
    """The result of reading one log: its batches and what was dropped at the end."""

    def __init__(self, path, batches, valid_bytes, dropped_bytes, reason, intact_after):
        self.path = path
        self.batches = batches
        self.valid_bytes = valid_bytes
        self.dropped_bytes = dropped_bytes
        self.reason = reason
        # True when an intact record follows the damaged one: the damage is
        # in the middle of the log, not a torn tail.
        self.intact_after = intact_after


def _intact_record_at(data, pos, stop=None):
    """Return True when a complete, decodable record starts at pos, ending by stop."""
    stop = len(data) if stop is None else stop
    if pos + HEADER_SIZE > stop:
        return False
    crc, length = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if length == 0 or end > stop or zlib.crc32(data[pos + 4 : end]) != crc:
        return False
    try:
        decode_batch(memoryview(data)[pos + HEADER_SIZE : end], "", pos)
    except CorruptionError:
        return False
    return True


def _intact_record_after(data, damaged_at, content_end):
    """Return True when an intact record starts anywhere after damaged_at.

    A damaged length field, or a header overwritten with zeros, hides where
    the next record starts, so every offset up to content_end (the end of
    the non-zero bytes) is tried. An offset whose length field runs past
    content_end is rejected before any checksum is computed, which keeps
    the search to about a microsecond per byte of damaged log.
    """
    unpack_from = _HEADER.unpack_from
    last = content_end - HEADER_SIZE
    for pos in range(damaged_at + 1, last + 1):
        length = unpack_from(data, pos)[1]
        if 0 < length <= content_end - pos - HEADER_SIZE and _intact_record_at(
            data, pos, content_end
        ):
            return True
    return False


def read_log(fs, path):
    """Read every intact record of a log file.

    Never raises for damage: it stops at the first incomplete or corrupt
    record, logs a WARNING naming the file, offset and bytes dropped, and
    returns the batches before it. ``intact_after`` of the result tells the
    caller whether an intact record follows, meaning the damage is not a
    torn tail. tlsm.recovery then fails the open unless wal_recovery is
    "point_in_time". The zero tail of a preallocated log is not damage: it
    is logged at INFO and not counted in dropped_bytes, which counts the
    bytes from the damage to the last non-zero byte.
    """
    data = fs.read_all(path)
    batches = []
    pos = 0
    reason = None
    intact_after = False
    size = len(data)
    while pos < size:
        if pos + HEADER_SIZE > size:
            reason = "truncated record header"
            break
        crc, length = _HEADER.unpack_from(data, pos)
        if crc == 0 and length == 0 and data.count(0, pos) == size - pos:
            reason = "zero-filled tail"
            break
        end = pos + HEADER_SIZE + length
        if end > size:
            reason = f"record of {length} bytes runs past end of file"
            break
        if zlib.crc32(data[pos + 4 : end]) != crc:
            reason = "checksum mismatch"
            break
        try:
            batches.append(
                decode_batch(memoryview(data)[pos + HEADER_SIZE : end], path, pos)
            )
        except CorruptionError as exc:
            reason = str(exc)
            break
        pos = end
    dropped = size - pos
    if reason is not None and reason != "zero-filled tail":
        # Bytes past the last non-zero one are preallocation, not records.
        content_end = len(data.rstrip(b"\0"))
        dropped = max(content_end - pos, 0)
        intact_after = _intact_record_after(data, pos, content_end)
    if dropped and reason == "zero-filled tail" and size % LOG_ALIGN_BYTES == 0:
        log.info(
            "log %s: %d records, then %d preallocated bytes that were never written",
            path,
            len(batches),
            dropped,
        )
        dropped = 0
    elif dropped:
        log.warning(
            "log %s: dropped %d bytes at offset %d (%s); the %d records before it are kept",
            path,
            dropped,
            pos,
            reason,
            len(batches),
        )
    return RecoveredLog(path, batches, pos, dropped, reason, intact_after)
