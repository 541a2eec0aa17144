"""The append fast path: a single append or a small batch in one call.

DB.append and DB.append_batch first offer their arguments to a FastWriter.
It handles the common case completely: it assigns the seqs, copies one log
record (the layout of tlsm.wal.encode_batch) into the log's memory mapping,
appends the entries to the active memtable's runs and updates the last-seq
cache. In every other case it changes nothing and returns a sentinel (0 for
append, None for append_batch), and the caller takes the general write path
(DB._write), which validates, raises and handles every option. The fast
path does not raise for bad input (only for a wrong number of arguments or
when memory runs out): the general path raises the error it always did.

The fast path applies only when all of these hold:
- the writer is attached to a memtable and a log, and not disabled (the DB
  disables it for good on close and after a background failure);
- the DB's write lock is free, so no general-path write is running;
- ttl is None, the table has no default TTL, and sync is False, or None
  while the DB's sync mode is not "always";
- each timeline_id is non-empty str or bytes of at most
  MAX_TIMELINE_ID_BYTES (UTF-8), each payload is bytes of at most
  max_payload_bytes, and a batch is a non-empty list or tuple of at most
  MAX_FAST_BATCH (timeline_id, payload) tuples within max_batch_bytes;
- every timeline is in the last-seq cache and has a seq left;
- the memtable is below memtable_bytes and the record fits in the log's
  allocated space.

Everything the general path does beyond this (first use of a timeline,
flush and log rotation, log growth, fsync, TTL, deletes) stays there.

Atomicity. The Cython version (tlsm_ext/writer.pyx) runs with the GIL held
from its checks to its last update, and calls no Python code in between,
so no other thread observes a half-done append: it checks that the write
lock is free instead of taking it. This pure-Python twin can be
interrupted between bytecodes, so it takes the write lock without blocking
(or returns the sentinel) and applies the entries under the visibility
lock, as the general path does. Both append each entry's seq to its run
last, because readers bisect seqs without a lock.

The pure-Python implementation below is the reference. When the extension
is built, this module rebinds FastWriter to it, and the pure class stays
reachable as ``PurePython.FastWriter``.
"""

import types

from . import _impl
from .keys import KIND_PUT, MAX_SEQ, MAX_TIMELINE_ID_BYTES
from .memtable import new_run
from .wal import encode_batch

# Batches with more entries go to the general path, which assigns seqs with
# a dict instead of the fast path's linear search for repeated timelines.
MAX_FAST_BATCH = 64


class FastWriter:
    """Single appends and small batches without the general write path.

    write_lock and visible_lock are the DB's locks; last_seqs is the DB's
    last-seq cache (stored key -> last assigned seq), updated in place.
    wal_bytes and user_bytes count what this writer appended, for
    DB.stats(). Call attach() with the active memtable and its log before
    use, detach() before the log grows or closes, and disable() to refuse
    every later call.
    """

    def __init__(
        self,
        write_lock,
        visible_lock,
        last_seqs,
        memtable_bytes,
        max_payload_bytes,
        max_batch_bytes,
        sync_always,
    ):
        self._write_lock = write_lock
        self._visible_lock = visible_lock
        self._last_seqs = last_seqs
        self._memtable_bytes = memtable_bytes
        self._max_payload = max_payload_bytes
        self._max_batch = max_batch_bytes
        self._sync_always = bool(sync_always)
        self._memtable = None
        self._log_file = None
        self._disabled = False
        self.wal_bytes = 0
        self.user_bytes = 0

    @property
    def attached(self):
        """True when appends may take the fast path."""
        return self._log_file is not None

    def attach(self, memtable, log_file):
        """Direct later appends to memtable and log_file (a MappedLogFile).

        Does nothing once disabled.
        """
        self.detach()
        if self._disabled:
            return
        self._memtable = memtable
        self._log_file = log_file

    def detach(self):
        """Stop using the current memtable and log until the next attach()."""
        self._memtable = None
        self._log_file = None

    def disable(self):
        """Detach for good: every later call returns the sentinel."""
        self._disabled = True
        self.detach()

    def append(self, table, timeline_id, payload, ttl, sync):
        """Append payload to timeline_id in table and return its seq.

        Returns 0, having changed nothing, when the call needs the general
        path (see the module docstring).
        """
        if self._log_file is None or ttl is not None or not self._sync_ok(sync):
            return 0
        if table.ttl is not None:
            return 0
        key = self._key(table._prefix, timeline_id)
        if key is None or type(payload) is not bytes:
            return 0
        if len(payload) > self._max_payload:
            return 0
        if not self._write_lock.acquire(False):
            return 0
        try:
            seqs = self._assign([key])
            if seqs is None:
                return 0
            if not self._write(((key, seqs[0], payload),)):
                return 0
            return seqs[0]
        finally:
            self._write_lock.release()

    def append_batch(self, table, entries, ttl, sync):
        """Append (timeline_id, payload) pairs atomically and return their seqs.

        Returns None, having changed nothing, when the call needs the
        general path (see the module docstring).
        """
        if self._log_file is None or ttl is not None or not self._sync_ok(sync):
            return None
        if table.ttl is not None or type(entries) not in (list, tuple):
            return None
        if not 0 < len(entries) <= MAX_FAST_BATCH:
            return None
        prefix = table._prefix
        keys = []
        payloads = []
        total = 0
        for item in entries:
            if type(item) is not tuple or len(item) != 2:
                return None
            key = self._key(prefix, item[0])
            payload = item[1]
            if key is None or type(payload) is not bytes:
                return None
            if len(payload) > self._max_payload:
                return None
            keys.append(key)
            payloads.append(payload)
            total += len(key) + len(payload)
        if total > self._max_batch:
            return None
        if not self._write_lock.acquire(False):
            return None
        try:
            seqs = self._assign(keys)
            if seqs is None:
                return None
            if not self._write(tuple(zip(keys, seqs, payloads))):
                return None
            return seqs
        finally:
            self._write_lock.release()

    def uncached_keys(self, table, entries):
        """Return the stored keys of entries that the last-seq cache lacks.

        entries is as for append_batch. Returns None when an entry is not a
        (timeline_id, payload) tuple or its timeline_id is one the fast path
        rejects, so the general path raises the proper error. A key may
        appear more than once. Changes nothing.
        """
        if type(entries) not in (list, tuple):
            return None
        prefix = table._prefix
        missing = []
        for item in entries:
            if type(item) is not tuple or len(item) != 2:
                return None
            key = self._key(prefix, item[0])
            if key is None:
                return None
            if key not in self._last_seqs:
                missing.append(key)
        return missing

    def _sync_ok(self, sync):
        return sync is False or (sync is None and not self._sync_always)

    @staticmethod
    def _key(prefix, timeline_id):
        if type(timeline_id) is str:
            try:
                encoded = timeline_id.encode("utf-8")
            except UnicodeEncodeError:
                return None
        elif type(timeline_id) is bytes:
            encoded = timeline_id
        else:
            return None
        if not 0 < len(encoded) <= MAX_TIMELINE_ID_BYTES:
            return None
        return prefix + encoded

    def _assign(self, keys):
        """Return the next seq of each key in order, or None if one is not cached."""
        seqs = []
        for index, key in enumerate(keys):
            last = None
            for earlier in range(index - 1, -1, -1):
                if keys[earlier] == key:
                    last = seqs[earlier]
                    break
            if last is None:
                last = self._last_seqs.get(key)
                if last is None:
                    return None
            if last >= MAX_SEQ:
                return None
            seqs.append(last + 1)
        return seqs

    def _write(self, entries):
        """Copy one record of entries into the log and apply them; False if no room."""
        memtable = self._memtable
        log_file = self._log_file
        if memtable.approximate_bytes >= self._memtable_bytes:
            return False
        record = encode_batch(
            [(key, seq, KIND_PUT, 0, payload) for key, seq, payload in entries]
        )
        start = log_file.size
        end = start + len(record)
        if end > log_file.capacity:
            return False
        log_file.mapping[start:end] = record
        log_file.size_cell[0] = end
        user_bytes = 0
        with self._visible_lock:
            runs = memtable._runs
            for key, seq, payload in entries:
                run = runs.get(key)
                if run is None:
                    run = runs[key] = new_run()
                seqs, kinds, expires, values = run
                kinds.append(KIND_PUT)
                expires.append(0)
                values.append(payload)
                seqs.append(seq)
                self._last_seqs[key] = seq
                user_bytes += len(key) + len(payload)
            counters = memtable.counters
            counters[0] += len(entries)
            counters[1] += user_bytes + memtable.ENTRY_OVERHEAD * len(entries)
        self.wal_bytes += len(record)
        self.user_bytes += user_bytes
        return True


PurePython = types.SimpleNamespace(FastWriter=FastWriter)

_extension = _impl.load_extension("writer")
if _extension is not None:
    FastWriter = _extension.FastWriter
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
