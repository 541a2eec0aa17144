# cython: language_level=3
"""Cython implementation of tlsm.merge.merge_entries.

The behaviour, the order in which sources are read, and the error messages
match the pure-Python reference in tlsm/merge.py, which holds the public
documentation.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE
from libc.stdint cimport uint64_t

from tlsm_ext.key_order cimport compare_keys

from tlsm.errors import InvalidArgumentError

cdef uint64_t MAX_SEQ = 0xFFFFFFFFFFFFFFFF
cdef object _END = object()


cdef object _check_entry(object entry, Py_ssize_t index):
    """Raise InvalidArgumentError unless entry is a tuple with a valid key."""
    if not PyTuple_Check(entry) or PyTuple_GET_SIZE(entry) < 2:
        raise InvalidArgumentError(
            f"merge source {index} yielded {type(entry).__name__}, "
            "expected an entry tuple (timeline_id, seq, ...)"
        )
    timeline_id = (<tuple>entry)[0]
    seq = (<tuple>entry)[1]
    if not PyBytes_Check(timeline_id):
        raise InvalidArgumentError(
            f"merge source {index} yielded a timeline_id of type "
            f"{type(timeline_id).__name__}, expected bytes"
        )
    if not PyLong_Check(seq) or seq < 0 or seq > MAX_SEQ:
        raise InvalidArgumentError(
            f"merge source {index} yielded seq {seq!r}, expected an int in 0..{MAX_SEQ}"
        )


cdef class _MergeIterator:
    """Iterator returned by merge_entries; see tlsm.merge.merge_entries."""

    def __cinit__(self, list sources, bint reverse):
        self._sources = sources
        self._count = len(sources)
        self._reverse = reverse
        self._timelines = NULL
        self._timeline_lengths = NULL
        self._seqs = NULL
        self._heap = NULL

    def __dealloc__(self):
        PyMem_Free(<void*>self._timelines)
        PyMem_Free(self._timeline_lengths)
        PyMem_Free(self._seqs)
        PyMem_Free(self._heap)

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t top
        if self._finished:
            raise StopIteration
        try:
            if not self._started:
                self._started = True
                self._start()
            elif self._heap_size > 0:
                # Replace the entry returned last, then drop older sources'
                # entries with the same key, which sort right after it.
                self._advance_top()
                while self._heap_size > 0 and self._top_is_last_key():
                    self._advance_top()
        except BaseException:
            self._finished = True
            raise
        if self._heap_size == 0:
            self._finished = True
            self._heads = None
            self._iterators = None
            raise StopIteration
        top = self._heap[0]
        self._last_entry = <tuple>self._heads[top]
        self._last_timeline = self._timelines[top]
        self._last_timeline_length = self._timeline_lengths[top]
        self._last_seq = self._seqs[top]
        return self._last_entry

    cdef int _start(self) except -1:
        cdef Py_ssize_t count = self._count
        cdef Py_ssize_t index
        cdef Py_ssize_t slots = max(count, 1)
        self._iterators = [iter(source) for source in self._sources]
        self._sources = None
        self._heads = [None] * count
        self._timelines = <const char**>PyMem_Malloc(slots * sizeof(const char*))
        self._timeline_lengths = <Py_ssize_t*>PyMem_Malloc(slots * sizeof(Py_ssize_t))
        self._seqs = <uint64_t*>PyMem_Malloc(slots * sizeof(uint64_t))
        self._heap = <Py_ssize_t*>PyMem_Malloc(slots * sizeof(Py_ssize_t))
        if (self._timelines == NULL or self._timeline_lengths == NULL
                or self._seqs == NULL or self._heap == NULL):
            raise MemoryError()
        self._heap_size = 0
        for index in range(count):
            if self._pull(index):
                self._heap[self._heap_size] = index
                self._heap_size += 1
        for index in range(self._heap_size // 2 - 1, -1, -1):
            self._sift_down(index)
        return 0

    cdef int _pull(self, Py_ssize_t index) except -1:
        """Read the next entry of source index into its head; return 0 at its end."""
        cdef tuple entry
        cdef bytes timeline
        cdef uint64_t seq
        cdef int order
        item = next(self._iterators[index], _END)
        if item is _END:
            return 0
        _check_entry(item, index)
        entry = <tuple>item
        timeline = <bytes>entry[0]
        seq = entry[1]
        previous = self._heads[index]
        if previous is not None:
            order = compare_keys(
                PyBytes_AS_STRING(timeline), PyBytes_GET_SIZE(timeline), seq,
                self._timelines[index], self._timeline_lengths[index],
                self._seqs[index],
            )
            if self._reverse:
                order = -order
            if order <= 0:
                direction = "descending" if self._reverse else "ascending"
                raise InvalidArgumentError(
                    f"merge source {index} is not in strictly {direction} order: key "
                    f"{(entry[0], entry[1])!r} follows {(previous[0], previous[1])!r}"
                )
        self._heads[index] = entry
        self._timelines[index] = PyBytes_AS_STRING(timeline)
        self._timeline_lengths[index] = PyBytes_GET_SIZE(timeline)
        self._seqs[index] = seq
        return 1

    cdef int _advance_top(self) except -1:
        """Replace the top head by the next entry of its source, or drop it."""
        cdef Py_ssize_t index = self._heap[0]
        if not self._pull(index):
            self._heads[index] = None
            self._heap_size -= 1
            self._heap[0] = self._heap[self._heap_size]
        self._sift_down(0)
        return 0

    cdef int _compare(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        return compare_keys(
            self._timelines[a], self._timeline_lengths[a], self._seqs[a],
            self._timelines[b], self._timeline_lengths[b], self._seqs[b],
        )

    cdef bint _before(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        """Return whether source a's head is yielded before source b's."""
        cdef int order = self._compare(a, b)
        if order != 0:
            return order > 0 if self._reverse else order < 0
        return a < b

    cdef void _sift_down(self, Py_ssize_t pos) noexcept:
        cdef Py_ssize_t* heap = self._heap
        cdef Py_ssize_t size = self._heap_size
        cdef Py_ssize_t item, child
        if size == 0:
            return
        item = heap[pos]
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and self._before(heap[child + 1], heap[child]):
                child += 1
            if not self._before(heap[child], item):
                break
            heap[pos] = heap[child]
            pos = child
        heap[pos] = item

    cdef bint _top_is_last_key(self) noexcept:
        cdef Py_ssize_t top = self._heap[0]
        return compare_keys(
            self._timelines[top], self._timeline_lengths[top], self._seqs[top],
            self._last_timeline, self._last_timeline_length, self._last_seq,
        ) == 0


def merge_entries(sources, reverse=False):
    """Merge sorted runs of entries lazily; see tlsm.merge.merge_entries."""
    return _MergeIterator(list(sources), bool(reverse))
