"""tlsm: a timeline storage engine for instant messaging.

A timeline is an ordered queue of entries keyed by (timeline_id, seq). The
engine assigns seqs on append (1, 2, 3, ... per timeline), never reuses one,
and reads any entry or range by seq in either direction.

    import tlsm
    with tlsm.open("data") as db:
        seq = db.append("room:42", b"hello")
        for seq, payload in db.scan("room:42", start=1, limit=10):
            ...
"""

from .db import DB
from .options import DEFAULT_OPTIONS
from .errors import (
    ClosedError,
    CorruptionError,
    InvalidArgumentError,
    ProtocolError,
    StorageIOError,
    TlsmError,
)
from .keys import DEFAULT_MAX_PAYLOAD_BYTES, MAX_SEQ, MAX_TIMELINE_ID_BYTES

__version__ = "0.1.0"

__all__ = [
    "DB",
    "DEFAULT_OPTIONS",
    "open",
    "TlsmError",
    "InvalidArgumentError",
    "ClosedError",
    "CorruptionError",
    "StorageIOError",
    "ProtocolError",
    "MAX_SEQ",
    "MAX_TIMELINE_ID_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "__version__",
]


def open(path, **options):  # noqa: A001 - mirrors the built-in on purpose
    """Open (creating if needed) the database in directory path and return a DB.

    Options (defaults in tlsm.DEFAULT_OPTIONS):
      sync: durability of each write before append() returns.
        "none": the log record is copied into the memory-mapped log, so it
          is in the OS page cache. A process crash loses nothing
          acknowledged. A power loss or kernel crash may lose the writes the
          OS had not yet written back (on Linux, dirty pages wait up to
          vm.dirty_expire_centisecs, 30 s by default), and seqs of lost
          writes may then be assigned again.
        "periodic": as "none", and a background thread fdatasyncs the log
          every sync_interval_ms. A process crash loses nothing
          acknowledged; a power loss loses at most the writes acknowledged
          in the last sync_interval_ms plus the duration of one fsync.
        "always": the log is fdatasync'ed before append() returns. Neither a
          process crash nor a power loss loses an acknowledged write.
        "group": for servers that batch acknowledgements. Writes are not
          fsynced one by one; the caller calls db.sync() once for a group
          and acknowledges the group only after it returns, which gives
          the group "always" durability for one fsync. Log switches and
          close() still sync, so sync() covers every earlier write.
        append(..., sync=False) followed by db.sync() does the same for
        single writes in the other modes.
      sync_interval_ms: period of the "periodic" mode's fsync (100).
      memtable_bytes: memtable size that triggers a flush (64 MiB; one being
        flushed and one filling can hold twice that).
      block_bytes: target size of a table data block before compression (4 KiB).
      block_cache_bytes: bound of the decoded-block cache (64 MiB).
      max_open_files: table files kept open at once (1000); beyond it the
        least recently used file is closed and reopened on its next read.
      compression: LZ4 per block, kept only when it saves 1/8 or more (True).
      compaction_style: how table files merge (docs/engine.md).
        "leveled" (default): every level below 0 holds files with disjoint
          key ranges, each level level_size_ratio times the one above.
        "tiered": every level holds up to level_fanout sorted runs that
          merge into one run of the next level.
      level_fanout: level-0 tables that trigger a merge into level 1, and
        under tiered compaction the tables of any level that do (4).
      level_size_ratio: leveled: size of level n+1 over level n (10).
      level1_bytes: leveled: size of level 1 that triggers a merge into
        level 2 (None: level_fanout * memtable_bytes).
      target_file_bytes: leveled: size at which a merge starts a new output
        file, at the next timeline boundary (None: memtable_bytes).
      max_levels: leveled: number of levels; the last has no size bound (7).
      l0_stop_files: level-0 tables at which writers wait for compaction (12).
      max_payload_bytes: largest payload accepted (4 MiB).
      max_batch_bytes: largest append_batch, ids and payloads summed (64 MiB).
      create_if_missing: create the directory when absent (True).
      wal_recovery: what open does with a damaged log record.
        "tolerate_tail" (default): a damaged tail (the end of the last log,
          torn by a crash) is cut off and logged; damage followed by intact
          records raises CorruptionError, because cutting there would drop
          acknowledged writes.
        "point_in_time": keep every record before the first damaged one,
          drop the rest, and log what was dropped.

    Raises StorageIOError when another process has the directory open,
    CorruptionError when the manifest or a table is damaged, and
    InvalidArgumentError for unknown or invalid options.
    """
    return DB(path, **options)
