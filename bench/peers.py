"""Adapters that give tlsm and its peers one timeline interface.

Every adapter offers open(path, mode), append, append_batch, pull (entries
after a checkpoint), newest (newest first), close and versions(). mode is
the durability of each write:

  none     the write reaches the OS (a log record written with write()) but
           is not fsynced: it survives a process crash, not a power loss.
  always   every write, or every batch, is fsynced before the call returns.

DEFAULT_MODES records which of the two each library uses when the
application sets nothing, with the setting behind it.

Key-value peers store an entry under
    key = len(timeline_id) (1 byte) + timeline_id + seq (8 bytes, big-endian)
so one timeline's entries are contiguous and ordered by seq. The length
byte keeps ids of different lengths from interleaving. Like an application
would, these adapters keep the last seq of each timeline in memory to assign
the next one, and after a reopen they find it with one reverse seek on the
first write to a timeline.
"""

import importlib.metadata
import itertools
import os
import sqlite3
from typing import ClassVar

SEQ_END = b"\xff" * 8

# (mode, the library setting that gives it) for each peer left at its defaults.
DEFAULT_MODES = {
    "tlsm": ("none", 'sync="none"'),
    "rocksdict": ("none", "WriteOptions.sync=False (WAL written, not fsynced)"),
    "plyvel": ("none", "sync=False (log written, not fsynced)"),
    "lmdb": ("always", "sync=True (fsync at each commit)"),
    "sqlite": ("always", "journal_mode=WAL, synchronous=FULL (WAL fsynced per commit)"),
    "dict": ("memory", "no persistence"),
}


def _package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _prefix(timeline_id):
    return bytes((len(timeline_id),)) + timeline_id


class _KeyValuePeer:
    """Seq assignment and key layout shared by the ordered key-value stores."""

    def __init__(self):
        self._last = {}
        self._prefixes = {}

    def _next_key(self, timeline_id):
        prefix = self._prefixes.get(timeline_id)
        if prefix is None:
            prefix = self._prefixes[timeline_id] = _prefix(timeline_id)
        last = self._last.get(timeline_id)
        if last is None:
            found = self.newest(timeline_id, 1)
            last = found[0][0] if found else 0
        last += 1
        self._last[timeline_id] = last
        return last, prefix + last.to_bytes(8, "big")

    def _reset_counters(self):
        # A reopened store is read again for the last seqs, as after a restart.
        self._last = {}


class TlsmPeer:
    name = "tlsm"
    modes = ("none", "always")

    def open(self, path, mode):
        import tlsm

        self.db = tlsm.open(path, sync=mode)
        self.append = self.db.append
        self.append_batch = self.db.append_batch

    def pull(self, timeline_id, after, limit):
        return list(self.db.scan(timeline_id, start=after + 1, limit=limit))

    def newest(self, timeline_id, count):
        return list(self.db.scan(timeline_id, limit=count, reverse=True))

    def close(self):
        self.db.close()

    def settings(self, mode):
        return {"sync": mode}

    def versions(self):
        import tlsm
        from tlsm import _impl

        return {"tlsm": tlsm.__version__, "pure_python": _impl.PURE_PYTHON}


class RocksdictPeer(_KeyValuePeer):
    name = "rocksdict"
    modes = ("none", "always")

    def open(self, path, mode):
        from rocksdict import Options, Rdict, WriteOptions

        self.db = Rdict(path, Options(raw_mode=True))
        write_options = WriteOptions()
        write_options.sync = mode == "always"
        self.db.set_write_options(write_options)
        self._reset_counters()

    def append(self, timeline_id, payload):
        seq, key = self._next_key(timeline_id)
        self.db.put(key, payload)
        return seq

    def append_batch(self, entries):
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        seqs = []
        for timeline_id, payload in entries:
            seq, key = self._next_key(timeline_id)
            batch.put(key, payload)
            seqs.append(seq)
        self.db.write(batch)
        return seqs

    def pull(self, timeline_id, after, limit):
        prefix = _prefix(timeline_id)
        start = prefix + (after + 1).to_bytes(8, "big")
        return self._collect(self.db.items(from_key=start), prefix, limit)

    def newest(self, timeline_id, count):
        prefix = _prefix(timeline_id)
        items = self.db.items(backwards=True, from_key=prefix + SEQ_END)
        return self._collect(items, prefix, count)

    @staticmethod
    def _collect(items, prefix, limit):
        out = []
        for key, value in items:
            if not key.startswith(prefix):
                break
            out.append((int.from_bytes(key[-8:], "big"), value))
            if len(out) >= limit:
                break
        return out

    def close(self):
        self.db.close()

    def settings(self, mode):
        return {"WriteOptions.sync": mode == "always", "options": "rocksdict defaults"}

    def versions(self):
        return {"rocksdict": _package_version("rocksdict")}


class PlyvelPeer(_KeyValuePeer):
    name = "plyvel"
    modes = ("none", "always")

    def open(self, path, mode):
        import plyvel

        self.db = plyvel.DB(path, create_if_missing=True)
        self.sync = mode == "always"
        self._reset_counters()

    def append(self, timeline_id, payload):
        seq, key = self._next_key(timeline_id)
        self.db.put(key, payload, sync=self.sync)
        return seq

    def append_batch(self, entries):
        seqs = []
        with self.db.write_batch(sync=self.sync) as batch:
            for timeline_id, payload in entries:
                seq, key = self._next_key(timeline_id)
                batch.put(key, payload)
                seqs.append(seq)
        return seqs

    def pull(self, timeline_id, after, limit):
        prefix = _prefix(timeline_id)
        start = prefix + (after + 1).to_bytes(8, "big")
        it = self.db.iterator(start=start, stop=prefix + SEQ_END)
        return [
            (int.from_bytes(k[-8:], "big"), v) for k, v in itertools.islice(it, limit)
        ]

    def newest(self, timeline_id, count):
        prefix = _prefix(timeline_id)
        it = self.db.iterator(start=prefix, stop=prefix + SEQ_END, reverse=True)
        return [
            (int.from_bytes(k[-8:], "big"), v) for k, v in itertools.islice(it, count)
        ]

    def close(self):
        self.db.close()

    def settings(self, mode):
        return {"sync": mode == "always", "options": "plyvel defaults"}

    def versions(self):
        import plyvel

        return {"plyvel": plyvel.__version__, "leveldb": plyvel.__leveldb_version__}


class LmdbPeer(_KeyValuePeer):
    name = "lmdb"
    modes = ("none", "always")
    MAP_SIZE = 32 << 30  # address space only; the file grows with the data

    def open(self, path, mode):
        import lmdb

        self.env = lmdb.open(path, map_size=self.MAP_SIZE, sync=mode == "always")
        self._reset_counters()

    def append(self, timeline_id, payload):
        seq, key = self._next_key(timeline_id)
        with self.env.begin(write=True) as txn:
            txn.put(key, payload)
        return seq

    def append_batch(self, entries):
        seqs = []
        with self.env.begin(write=True) as txn:
            for timeline_id, payload in entries:
                seq, key = self._next_key(timeline_id)
                txn.put(key, payload)
                seqs.append(seq)
        return seqs

    def pull(self, timeline_id, after, limit):
        prefix = _prefix(timeline_id)
        out = []
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix + (after + 1).to_bytes(8, "big")):
                return out
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                out.append((int.from_bytes(key[-8:], "big"), value))
                if len(out) >= limit:
                    break
        return out

    def newest(self, timeline_id, count):
        prefix = _prefix(timeline_id)
        out = []
        with self.env.begin() as txn:
            cursor = txn.cursor()
            # Step to the last key below the timeline's upper bound.
            if cursor.set_range(prefix + SEQ_END):
                positioned = cursor.prev()
            else:
                positioned = cursor.last()
            if not positioned:
                return out
            for key, value in cursor.iterprev():
                if not key.startswith(prefix):
                    break
                out.append((int.from_bytes(key[-8:], "big"), value))
                if len(out) >= count:
                    break
        return out

    def close(self):
        self.env.close()

    def settings(self, mode):
        return {"sync": mode == "always", "map_size": self.MAP_SIZE}

    def versions(self):
        import lmdb

        return {
            "lmdb (py)": lmdb.__version__,
            "lmdb": ".".join(map(str, lmdb.version())),
        }


class SqlitePeer:
    name = "sqlite"
    modes = ("none", "always")
    _SYNCHRONOUS: ClassVar[dict] = {"none": "NORMAL", "always": "FULL"}

    def open(self, path, mode):
        os.makedirs(path, exist_ok=True)
        self.con = sqlite3.connect(
            os.path.join(path, "timelines.db"), isolation_level=None
        )
        self.con.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL writes the WAL on commit and fsyncs only at
        # checkpoints; FULL also fsyncs the WAL at every commit.
        self.con.execute(f"PRAGMA synchronous={self._SYNCHRONOUS[mode]}")
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS entries (timeline BLOB, seq INTEGER, "
            "payload BLOB, PRIMARY KEY (timeline, seq)) WITHOUT ROWID"
        )
        self._last = {}
        self._execute = self.con.execute

    def _next_seq(self, timeline_id):
        last = self._last.get(timeline_id)
        if last is None:
            row = self._execute(
                "SELECT max(seq) FROM entries WHERE timeline = ?", (timeline_id,)
            ).fetchone()
            last = row[0] or 0
        last += 1
        self._last[timeline_id] = last
        return last

    def append(self, timeline_id, payload):
        seq = self._next_seq(timeline_id)
        self._execute(
            "INSERT INTO entries VALUES (?, ?, ?)", (timeline_id, seq, payload)
        )
        return seq

    def append_batch(self, entries):
        rows = [(t, self._next_seq(t), p) for t, p in entries]
        self._execute("BEGIN")
        self.con.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows)
        self._execute("COMMIT")
        return [row[1] for row in rows]

    def pull(self, timeline_id, after, limit):
        return self._execute(
            "SELECT seq, payload FROM entries WHERE timeline = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (timeline_id, after, limit),
        ).fetchall()

    def newest(self, timeline_id, count):
        return self._execute(
            "SELECT seq, payload FROM entries WHERE timeline = ? ORDER BY seq DESC LIMIT ?",
            (timeline_id, count),
        ).fetchall()

    def close(self):
        self.con.close()

    def settings(self, mode):
        return {"journal_mode": "WAL", "synchronous": self._SYNCHRONOUS[mode]}

    def versions(self):
        con = sqlite3.connect(":memory:")
        default = con.execute("PRAGMA synchronous").fetchone()[0]
        con.close()
        return {"sqlite": sqlite3.sqlite_version, "default synchronous": default}


class DictPeer:
    """Timelines as Python lists in a dict: the cost of Python alone, no storage."""

    name = "dict"
    modes = ("memory",)

    def open(self, path, mode):
        if not hasattr(self, "data"):
            self.data = {}

    def append(self, timeline_id, payload):
        entries = self.data.get(timeline_id)
        if entries is None:
            entries = self.data[timeline_id] = []
        entries.append(payload)
        return len(entries)

    def append_batch(self, entries):
        return [self.append(t, p) for t, p in entries]

    def pull(self, timeline_id, after, limit):
        entries = self.data.get(timeline_id, ())
        return list(
            zip(range(after + 1, after + limit + 1), entries[after : after + limit])
        )

    def newest(self, timeline_id, count):
        entries = self.data.get(timeline_id, ())
        last = len(entries)
        first = max(0, last - count)
        return list(zip(range(last, first, -1), reversed(entries[first:last])))

    def close(self):
        pass

    def settings(self, mode):
        return {}

    def versions(self):
        return {}


PEERS = {
    cls.name: cls
    for cls in (TlsmPeer, RocksdictPeer, PlyvelPeer, LmdbPeer, SqlitePeer, DictPeer)
}
