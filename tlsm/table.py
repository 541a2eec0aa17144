"""Public handles: named tables, write batches and snapshots.

A table is a named key space inside one database, like a RocksDB column
family: timelines of different tables never mix, and each table has a
default TTL applied to entries appended without one. ``db.table(name)``
returns a handle; the DB's own read and write methods act on the table
named "default". A write batch can span tables and is atomic.
"""

from . import keys
from .errors import InvalidArgumentError

OP_APPEND = 0
OP_DELETE = 1
_MAX_ID_BYTES = keys.MAX_TIMELINE_ID_BYTES


def check_ttl(ttl):
    """Return ttl (seconds) as a float, or None; raise for anything not positive."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise InvalidArgumentError(
            f"ttl must be a positive number of seconds or None, not {ttl!r}"
        )
    if ttl > 100 * 365 * 86400:
        raise InvalidArgumentError(
            f"ttl {ttl} is above the limit of 100 years in seconds"
        )
    return float(ttl)


def _pairs(entries):
    """Yield (timeline_id, payload) from entries, rejecting anything else."""
    if isinstance(entries, (str, bytes)):
        raise InvalidArgumentError(
            "entries must be a list of (timeline_id, payload) pairs"
        )
    for entry in entries:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise InvalidArgumentError(
                f"each entry must be a (timeline_id, payload) pair, not {entry!r:.60}"
            )
        yield entry


def check_sync_flag(sync):
    """Raise InvalidArgumentError unless sync is None, True or False."""
    if sync is not None and sync is not True and sync is not False:
        raise InvalidArgumentError(
            f"sync must be None, True or False, not {sync!r}; the durability "
            "mode is the sync option of tlsm.open"
        )


class Table:
    """A named key space of timelines with its own default TTL.

    Get one with ``db.table(name, ttl=...)``. Methods mirror the DB's; a
    ``snapshot`` argument reads as of that snapshot instead of now.
    """

    # ttl and _prefix are plain attributes because tlsm.writer reads them
    # from C; they must not become properties.

    def __init__(self, db, name, table_id, ttl):
        self._db = db
        self.name = name
        self.table_id = table_id
        self.ttl = ttl
        self._prefix = bytes([table_id])

    def __repr__(self):
        return f"<tlsm.Table {self.name!r} ttl={self.ttl}>"

    def key(self, timeline_id):
        """Return the stored key of timeline_id in this table (validates the id)."""
        # Plain bytes of a valid length need no conversion.
        if type(timeline_id) is bytes and 0 < len(timeline_id) <= _MAX_ID_BYTES:
            return self._prefix + timeline_id
        return self._prefix + keys.encode_timeline_id(timeline_id)

    def _expires_at(self, ttl):
        ttl = check_ttl(ttl) if ttl is not None else self.ttl
        if ttl is None:
            return 0
        return int(self._db._now_ms() + ttl * 1000)

    def prepare_append(self, timeline_id, payload, ttl=None):
        data = keys.check_payload(payload, self._db._max_payload)
        return (OP_APPEND, self.key(timeline_id), data, self._expires_at(ttl))

    def prepare_delete(self, timeline_id, start, end):
        return (OP_DELETE, self.key(timeline_id), start, end)

    def append(self, timeline_id, payload, *, ttl=None, sync=None):
        """Append payload and return its seq; see DB.append for sync and errors.

        ttl (seconds) overrides the table's default TTL for this entry. The
        entry expires ttl seconds after this call, whatever compaction does.
        """
        seq = self._db._fast.append(self, timeline_id, payload, ttl, sync)
        if seq:
            return seq
        return self._append_general(timeline_id, payload, ttl, sync)

    def append_batch(self, entries, *, ttl=None, sync=None):
        """Append (timeline_id, payload) pairs atomically and return their seqs."""
        seqs = self._db._fast.append_batch(self, entries, ttl, sync)
        if seqs is not None:
            return seqs
        return self._append_batch_general(entries, ttl, sync)

    # The general write path, for what tlsm.writer's fast path declines.

    def _append_general(self, timeline_id, payload, ttl, sync):
        op = self.prepare_append(timeline_id, payload, ttl)
        return self._db._write([op], sync)[0]

    def _append_batch_general(self, entries, ttl, sync):
        ops = [
            self.prepare_append(timeline_id, payload, ttl)
            for timeline_id, payload in _pairs(entries)
        ]
        self._db._check_batch_size(ops)
        return self._db._write(ops, sync)

    def delete(self, timeline_id, seq, *, sync=None):
        """Delete the entry at seq, if any. The seq is not reused."""
        keys.check_seq(seq)
        self._db._write([self.prepare_delete(timeline_id, seq, seq + 1)], sync)

    def trim(self, timeline_id, before_seq, *, sync=None):
        """Delete every entry with seq < before_seq, as one range tombstone."""
        keys.check_seq(before_seq, "before_seq")
        self._db._write([self.prepare_delete(timeline_id, 0, before_seq)], sync)

    def delete_timeline(self, timeline_id, *, sync=None):
        """Delete every entry of the timeline; later appends continue above its last seq."""
        self._db._write([self.prepare_delete(timeline_id, 0, None)], sync)

    def get(self, timeline_id, seq, *, snapshot=None):
        """Return the payload at seq, or None if absent, deleted or expired."""
        keys.check_seq(seq)
        return self._db._get(self.key(timeline_id), seq, snapshot)

    def last_seq(self, timeline_id, *, snapshot=None):
        """Return the highest seq ever appended, or 0; deletes and expiry never lower it."""
        return self._db._last_seq(self.key(timeline_id), snapshot)

    def scan(
        self,
        timeline_id,
        start=None,
        end=None,
        limit=None,
        reverse=False,
        *,
        snapshot=None,
    ):
        """Iterate (seq, payload) with start <= seq < end; see DB.scan."""
        return self._db._scan(
            self.key(timeline_id), start, end, limit, reverse, snapshot
        )


class WriteBatch:
    """Appends and deletes, over any tables, applied atomically by DB.write().

    Each method validates its arguments at once and raises
    InvalidArgumentError, so a batch that was built without error applies
    whole. Used as a context manager (``with db.batch() as batch:``), it is
    written when the block ends without an exception and dropped otherwise.
    """

    def __init__(self, db, sync=None):
        self._db = db
        self._sync = sync
        self.ops = []

    def __len__(self):
        return len(self.ops)

    def _table(self, table):
        return self._db._resolve_table(table)

    def append(self, timeline_id, payload, *, table=None, ttl=None):
        self.ops.append(self._table(table).prepare_append(timeline_id, payload, ttl))

    def delete(self, timeline_id, seq, *, table=None):
        keys.check_seq(seq)
        self.ops.append(self._table(table).prepare_delete(timeline_id, seq, seq + 1))

    def trim(self, timeline_id, before_seq, *, table=None):
        keys.check_seq(before_seq, "before_seq")
        self.ops.append(self._table(table).prepare_delete(timeline_id, 0, before_seq))

    def delete_timeline(self, timeline_id, *, table=None):
        self.ops.append(self._table(table).prepare_delete(timeline_id, 0, None))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.results = self._db.write(self, sync=self._sync)


class Snapshot:
    """A consistent, read-only view of the database as of its creation.

    Reads through a snapshot see every write acknowledged before it and
    none after, across all tables, while the database goes on changing.
    Expiry is still judged against the current clock. Release a snapshot
    (or use it as a context manager) so the table files it pins can go.
    """

    def __init__(self, db, view):
        self._db = db
        self._view = view

    def view(self, db):
        if self._view is None:
            raise InvalidArgumentError("snapshot was released")
        if db is not self._db:
            raise InvalidArgumentError("snapshot belongs to another database")
        return self._view

    def release(self):
        self._view = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def get(self, timeline_id, seq, *, table=None):
        return self._db._resolve_table(table).get(timeline_id, seq, snapshot=self)

    def last_seq(self, timeline_id, *, table=None):
        return self._db._resolve_table(table).last_seq(timeline_id, snapshot=self)

    def scan(
        self,
        timeline_id,
        start=None,
        end=None,
        limit=None,
        reverse=False,
        *,
        table=None,
    ):
        table = self._db._resolve_table(table)
        return table.scan(timeline_id, start, end, limit, reverse, snapshot=self)
