# cython: language_level=3
"""Cython implementation of tlsm.writer.

Behaviour and sentinels match the pure-Python reference in tlsm/writer.py,
which holds the description and public documentation.

Atomicity rests on the GIL: append and append_batch hold it from their
checks to their last update and run no Python code in between. Two things
could still hand the GIL to another thread: Python-level code (properties,
__del__) and a cyclic garbage collection, which a container allocation may
start and which runs finalizers. So everything reached after the write
lock check is a C-level attribute, dict or list operation, allocations
there are of ints only, and new runs (tuples and lists) are created with
the collector paused.
"""

from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsUnsignedLongLong
from cpython.ref cimport PyObject, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from tlsm_ext.zlib_crc cimport TLSM_CRC_FROM_ZLIB, tlsm_zlib_crc32

from tlsm import keys, wal
from tlsm.memtable import Memtable

cdef extern from "Python.h":
    # Declared here without an exception clause: a failed conversion (a str
    # with lone surrogates) means "take the general path", not an error.
    const char* _utf8_and_size "PyUnicode_AsUTF8AndSize"(object text, Py_ssize_t* size)
    void PyErr_Clear()
    int PyGC_Disable()
    int PyGC_Enable()


# The library that computes the log checksums: "zlib" when zlib.h was found
# at build time, else "table" (the byte-at-a-time table below).
CRC_IMPLEMENTATION = "zlib" if TLSM_CRC_FROM_ZLIB else "table"

MAX_FAST_BATCH = 64

# Same on-disk constants as tlsm/wal.py and tlsm/keys.py.
cdef uint8_t RECORD_BATCH = wal.RECORD_BATCH
cdef uint8_t KIND_PUT = keys.KIND_PUT
cdef uint64_t MAX_SEQ = keys.MAX_SEQ
cdef Py_ssize_t MAX_TIMELINE_ID_BYTES = keys.MAX_TIMELINE_ID_BYTES
# crc u32 | length u32, then type u8 | count u32.
cdef Py_ssize_t RECORD_HEADER_BYTES = 8
cdef Py_ssize_t FIXED_BYTES = 13
# kind u8 | timeline_len u16 | seq u64 | expires_at u64 | value_len u32.
cdef Py_ssize_t ENTRY_BYTES = 23
cdef Py_ssize_t ENTRY_OVERHEAD = Memtable.ENTRY_OVERHEAD

cdef object _KIND_PUT_OBJECT = keys.KIND_PUT
cdef object _ZERO = 0

# CRC-32 (the polynomial and bit order of zlib) one byte at a time.
cdef uint32_t _CRC_TABLE[256]


cdef void _fill_crc_table() noexcept:
    cdef uint32_t value
    cdef int i, bit
    for i in range(256):
        value = i
        for bit in range(8):
            if value & 1:
                value = (value >> 1) ^ 0xEDB88320u
            else:
                value >>= 1
        _CRC_TABLE[i] = value


_fill_crc_table()


cdef inline uint32_t _table_crc32(uint32_t crc, const unsigned char* data,
                                  Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t i
    crc = ~crc
    for i in range(length):
        crc = _CRC_TABLE[(crc ^ data[i]) & 0xFF] ^ (crc >> 8)
    return ~crc


cdef inline uint32_t _crc32(uint32_t crc, const unsigned char* data,
                            Py_ssize_t length) noexcept nogil:
    if TLSM_CRC_FROM_ZLIB:
        return tlsm_zlib_crc32(crc, data, <size_t>length)
    return _table_crc32(crc, data, length)


cpdef uint32_t table_crc32(const unsigned char[:] data, uint32_t value=0):
    """Return the CRC-32 of data as zlib.crc32 does, from the built-in table.

    Exposed so tests can check the table against zlib even when the build
    uses zlib.
    """
    if data.shape[0] == 0:
        return value
    return _table_crc32(value, &data[0], data.shape[0])


cdef inline void _put_u16(unsigned char* out, uint16_t value) noexcept:
    out[0] = value & 0xFF
    out[1] = value >> 8


cdef inline void _put_u32(unsigned char* out, uint32_t value) noexcept:
    cdef int i
    for i in range(4):
        out[i] = (value >> (8 * i)) & 0xFF


cdef inline void _put_u64(unsigned char* out, uint64_t value) noexcept:
    cdef int i
    for i in range(8):
        out[i] = (value >> (8 * i)) & 0xFF


cdef int _get_cells(object cells, Py_buffer* view, Py_ssize_t count) except -1:
    """Take a writable buffer of count signed 64-bit integers (an array("q"))."""
    PyObject_GetBuffer(cells, view, PyBUF_WRITABLE | PyBUF_FORMAT)
    if view.itemsize != 8 or view.len != 8 * count or view.format[0] != b"q":
        PyBuffer_Release(view)
        raise TypeError(f"expected an array('q') of {count} items, not {cells!r}")
    return 0


cdef class FastWriter:
    """Cython twin of tlsm.writer.FastWriter; see there."""

    def __init__(
        self,
        write_lock,
        visible_lock,
        dict last_seqs,
        Py_ssize_t memtable_bytes,
        Py_ssize_t max_payload_bytes,
        Py_ssize_t max_batch_bytes,
        sync_always,
    ):
        self._write_lock = write_lock
        self._visible_lock = visible_lock
        self._last_seqs = last_seqs
        self._memtable_bytes = memtable_bytes
        self._max_payload = max_payload_bytes
        self._max_batch = max_batch_bytes
        self._sync_always = bool(sync_always)
        self._disabled = False
        self._key_caches = {}
        self._bytes_key_caches = {}
        self._has_view = False
        self._memtable = None
        self._runs = None
        self._log_file = None
        self.wal_bytes = 0
        self.user_bytes = 0

    def __dealloc__(self):
        self._release_views()

    @property
    def attached(self):
        return self._has_view

    def attach(self, memtable, log_file):
        self.detach()
        if self._disabled:
            return
        cdef dict runs = memtable._runs
        _get_cells(memtable.counters, &self._counts_view, 2)
        try:
            _get_cells(log_file.size_cell, &self._size_view, 1)
            try:
                PyObject_GetBuffer(log_file.mapping, &self._view, PyBUF_WRITABLE)
            except BaseException:
                PyBuffer_Release(&self._size_view)
                raise
        except BaseException:
            PyBuffer_Release(&self._counts_view)
            raise
        self._has_view = True
        self._counts = <long long*>self._counts_view.buf
        self._log_size = <long long*>self._size_view.buf
        self._memtable = memtable
        self._runs = runs
        self._log_file = log_file

    def detach(self):
        self._release_views()
        self._memtable = None
        self._runs = None
        self._log_file = None

    cdef void _release_views(self) noexcept:
        if self._has_view:
            self._has_view = False
            PyBuffer_Release(&self._view)
            PyBuffer_Release(&self._size_view)
            PyBuffer_Release(&self._counts_view)
            self._counts = NULL
            self._log_size = NULL

    def disable(self):
        self._disabled = True
        self.detach()

    def append(self, table, timeline_id, payload, ttl, sync):
        if not self._may_start(table, ttl, sync):
            return 0
        key = self._make_key(table._prefix, timeline_id)
        if key is None or type(payload) is not bytes:
            return 0
        cdef Py_ssize_t payload_len = PyBytes_GET_SIZE(payload)
        if payload_len > self._max_payload:
            return 0
        # From here on no other thread can run until this call returns
        # (see the module docstring), so a free lock stays free.
        if self._write_lock.locked() or self._counts[1] >= self._memtable_bytes:
            return 0
        cdef uint64_t seq
        if not self._next_seq(key, &seq):
            return 0
        cdef Py_ssize_t key_len = PyBytes_GET_SIZE(key)
        cdef Py_ssize_t length = FIXED_BYTES + ENTRY_BYTES + key_len + payload_len
        if self._log_size[0] + length > self._view.len:
            return 0
        cdef PyObject* run = self._run_for(key)
        cdef unsigned char* record = <unsigned char*>self._view.buf + self._log_size[0]
        record[8] = RECORD_BATCH
        _put_u32(record + 9, 1)
        self._put_entry(record + FIXED_BYTES, key, seq, payload)
        self._seal_record(record, length)
        cdef object seq_object = seq
        self._add_to_run(run, key, seq_object, payload)
        self._account(1, key_len + payload_len, length)
        return seq_object

    def append_batch(self, table, entries, ttl, sync):
        if not self._may_start(table, ttl, sync):
            return None
        if type(entries) is not list and type(entries) is not tuple:
            return None
        cdef Py_ssize_t count = len(entries)
        if count < 1 or count > MAX_FAST_BATCH:
            return None
        prefix = table._prefix
        # Containers are allocated before the write lock check: allocating
        # one may start a garbage collection (see the module docstring).
        cdef list batch_keys = PyList_New(count)
        cdef list payloads = PyList_New(count)
        cdef list seqs = PyList_New(count)
        cdef Py_ssize_t i, j, user_bytes = 0, length = FIXED_BYTES
        for i in range(count):
            item = entries[i]
            if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
                return None
            key = self._make_key(prefix, <object>PyTuple_GET_ITEM(item, 0))
            payload = <object>PyTuple_GET_ITEM(item, 1)
            if key is None or type(payload) is not bytes:
                return None
            if PyBytes_GET_SIZE(payload) > self._max_payload:
                return None
            Py_INCREF(key)
            PyList_SET_ITEM(batch_keys, i, key)
            Py_INCREF(payload)
            PyList_SET_ITEM(payloads, i, payload)
            user_bytes += PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(payload)
            length += ENTRY_BYTES + PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(payload)
        if user_bytes > self._max_batch:
            return None
        if self._write_lock.locked() or self._counts[1] >= self._memtable_bytes:
            return None
        cdef uint64_t seq_values[64]
        cdef PyObject* runs[64]
        cdef bint found
        for i in range(count):
            key = batch_keys[i]
            # A timeline repeated in the batch continues from its previous
            # entry; MAX_FAST_BATCH keeps this search short.
            found = False
            j = i - 1
            while j >= 0:
                if batch_keys[j] == key:
                    if seq_values[j] >= MAX_SEQ:
                        return None
                    seq_values[i] = seq_values[j] + 1
                    found = True
                    break
                j -= 1
            if not found and not self._next_seq(key, &seq_values[i]):
                return None
        if self._log_size[0] + length > self._view.len:
            return None
        for i in range(count):
            runs[i] = self._run_for(batch_keys[i])
        cdef unsigned char* record = <unsigned char*>self._view.buf + self._log_size[0]
        cdef Py_ssize_t pos = FIXED_BYTES
        record[8] = RECORD_BATCH
        _put_u32(record + 9, <uint32_t>count)
        for i in range(count):
            pos += self._put_entry(record + pos, batch_keys[i], seq_values[i], payloads[i])
        self._seal_record(record, length)
        cdef object seq_object
        for i in range(count):
            seq_object = seq_values[i]
            Py_INCREF(seq_object)
            PyList_SET_ITEM(seqs, i, seq_object)
            self._add_to_run(runs[i], batch_keys[i], seq_object, payloads[i])
        self._account(count, user_bytes, length)
        return seqs

    def uncached_keys(self, table, entries):
        if type(entries) is not list and type(entries) is not tuple:
            return None
        prefix = table._prefix
        cdef list missing = []
        for item in entries:
            if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
                return None
            key = self._make_key(prefix, <object>PyTuple_GET_ITEM(item, 0))
            if key is None:
                return None
            if PyDict_GetItem(self._last_seqs, key) == NULL:
                missing.append(key)
        return missing

    cdef bint _may_start(self, object table, object ttl, object sync) except -1:
        if not self._has_view or ttl is not None:
            return False
        if not (sync is False or (sync is None and not self._sync_always)):
            return False
        return table.ttl is None

    cdef object _make_key(self, object prefix, object timeline_id):
        """Return prefix + the UTF-8 of timeline_id, or None for the general path."""
        cdef const char* data
        cdef Py_ssize_t size
        cdef PyObject* cached
        cdef dict cache = None
        cdef bint text = type(timeline_id) is str
        cdef dict caches = self._key_caches if text else self._bytes_key_caches
        if text or type(timeline_id) is bytes:
            cached = PyDict_GetItem(caches, prefix)
            if cached != NULL:
                cache = <dict>cached
                cached = PyDict_GetItem(cache, timeline_id)
                if cached != NULL:
                    return <object>cached
        if text:
            data = _utf8_and_size(timeline_id, &size)
            if data == NULL:
                PyErr_Clear()
                return None
        elif type(timeline_id) is bytes:
            data = PyBytes_AS_STRING(timeline_id)
            size = PyBytes_GET_SIZE(timeline_id)
        else:
            return None
        if size < 1 or size > MAX_TIMELINE_ID_BYTES or type(prefix) is not bytes:
            return None
        cdef Py_ssize_t prefix_size = PyBytes_GET_SIZE(prefix)
        key = PyBytes_FromStringAndSize(NULL, prefix_size + size)
        cdef char* out = PyBytes_AS_STRING(key)
        memcpy(out, PyBytes_AS_STRING(prefix), prefix_size)
        memcpy(out + prefix_size, data, size)
        if cache is None:
            cache = {}
            caches[prefix] = cache
        cache[timeline_id] = key
        return key

    cdef int _next_seq(self, object key, uint64_t* seq) except -1:
        """Store the seq after key's cached last seq; return 0 if there is none."""
        cdef PyObject* last = PyDict_GetItem(self._last_seqs, key)
        if last == NULL:
            return 0
        cdef uint64_t value = PyLong_AsUnsignedLongLong(<object>last)
        if value >= MAX_SEQ:
            return 0
        seq[0] = value + 1
        return 1

    cdef PyObject* _run_for(self, object key) except NULL:
        """Return key's run in the memtable (borrowed), creating it if needed."""
        cdef PyObject* run = PyDict_GetItem(self._runs, key)
        if run != NULL:
            return run
        cdef int collecting = PyGC_Disable()
        try:
            PyDict_SetItem(self._runs, key, ([], [], [], []))
        finally:
            if collecting:
                PyGC_Enable()
        return PyDict_GetItem(self._runs, key)

    cdef Py_ssize_t _put_entry(self, unsigned char* out, bytes key, uint64_t seq,
                               bytes payload) noexcept:
        """Write one put entry at out and return its length."""
        cdef Py_ssize_t key_len = PyBytes_GET_SIZE(key)
        cdef Py_ssize_t payload_len = PyBytes_GET_SIZE(payload)
        out[0] = KIND_PUT
        _put_u16(out + 1, <uint16_t>key_len)
        _put_u64(out + 3, seq)
        _put_u64(out + 11, 0)
        _put_u32(out + 19, <uint32_t>payload_len)
        memcpy(out + ENTRY_BYTES, PyBytes_AS_STRING(key), key_len)
        memcpy(out + ENTRY_BYTES + key_len, PyBytes_AS_STRING(payload), payload_len)
        return ENTRY_BYTES + key_len + payload_len

    cdef void _seal_record(self, unsigned char* record, Py_ssize_t length) noexcept:
        """Fill in the length and checksum of the record at record[0:length]."""
        _put_u32(record + 4, <uint32_t>(length - RECORD_HEADER_BYTES))
        _put_u32(record, _crc32(0, record + 4, length - 4))

    cdef int _add_to_run(self, PyObject* run, object key, object seq,
                         object payload) except -1:
        cdef tuple lists = <tuple>run
        (<list>lists[1]).append(_KIND_PUT_OBJECT)
        (<list>lists[2]).append(_ZERO)
        (<list>lists[3]).append(payload)
        # Readers bisect seqs without a lock: the seq goes in last.
        (<list>lists[0]).append(seq)
        PyDict_SetItem(self._last_seqs, key, seq)
        return 0

    cdef void _account(self, Py_ssize_t entries, Py_ssize_t user_bytes,
                       Py_ssize_t record_bytes) noexcept:
        self._log_size[0] += record_bytes
        self._counts[0] += entries
        self._counts[1] += user_bytes + ENTRY_OVERHEAD * entries
        self.wal_bytes += record_bytes
        self.user_bytes += user_bytes
