"""A bounded LRU cache of the open files of a database's table files.

Every table of a DB reads its file through one OpenFileCache, so the
number of open descriptors stays near max_open_files however many table
files exist. A table keeps its footer, bloom filter,
tombstones, index and summary in memory after the first read, so an evicted
file is only reopened to read a data block that the block cache misses.

A reader pins the file while it reads (acquire, then release), and only
unpinned files are closed, so no thread ever reads from a closed descriptor.
When every cached file is pinned, the cache holds more than its capacity
until the pins are released. A table that compaction replaced keeps its
file on disk for as long as the table object lives (see
SSTable.delete_when_unused), so its file can always be reopened.
"""

import threading
from collections import OrderedDict


class _OpenFile:
    __slots__ = ("file", "pins", "dropped")

    def __init__(self, file):
        self.file = file
        self.pins = 0
        # Set when drop() removed the entry while it was pinned: the last
        # release() closes the file.
        self.dropped = False


class OpenFileCache:
    """An LRU cache of open files keyed by table file number.

    capacity is the number of files kept open while none is pinned. hits
    and misses count acquire() calls that found the file open or had to
    open it; open_files counts the files open now, pinned ones included.
    Safe to share between threads. Each method costs O(1), except that an
    eviction walks past pinned files.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.open_files = 0
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, file_number, opener):
        """Pin and return the open file of file_number as an _OpenFile.

        opener() opens the file when it is not cached. When it raises, the
        exception propagates and nothing is pinned, unless another thread
        cached the file meanwhile, which is then returned. Pass the result
        to release() once the read is done.
        """
        with self._lock:
            entry = self._items.get(file_number)
            if entry is not None:
                self._items.move_to_end(file_number)
                entry.pins += 1
                self.hits += 1
                return entry
            self.misses += 1
        # Open without the lock, so a slow open does not stall other
        # tables' reads. Two threads may open the same file at once, and
        # the second to return closes its copy.
        try:
            file = opener()
        except BaseException:
            # Another thread may have opened the file meanwhile.
            with self._lock:
                entry = self._items.get(file_number)
                if entry is None:
                    raise
                self._items.move_to_end(file_number)
                entry.pins += 1
                return entry
        with self._lock:
            self.open_files += 1
            entry = self._items.get(file_number)
            if entry is None:
                entry = self._items[file_number] = _OpenFile(file)
                spare = None
            else:
                self._items.move_to_end(file_number)
                spare = file
            entry.pins += 1
            evicted = self._evict_locked()
        if spare is not None:
            evicted.append(spare)
        self._close(evicted)
        return entry

    def read(self, file_number, opener, offset, length):
        """Return length bytes at offset of file_number's file, opening it if needed.

        Same as acquire(), file.read_at() and release(), in one call. A
        cached file that is memory-mapped (its ``mapping`` attribute is
        set) is read under the cache's lock: the copy makes no system call,
        though it waits for the disk when its pages are not in the page
        cache. Any other read happens outside the lock.
        """
        with self._lock:
            entry = self._items.get(file_number)
            if entry is not None and getattr(entry.file, "mapping", None) is not None:
                self._items.move_to_end(file_number)
                self.hits += 1
                return entry.file.read_at(offset, length)
        entry = self.acquire(file_number, opener)
        try:
            return entry.file.read_at(offset, length)
        finally:
            self.release(entry)

    def release(self, entry):
        """Unpin an _OpenFile that acquire() returned."""
        with self._lock:
            entry.pins -= 1
            if entry.pins:
                return
            if entry.dropped:
                evicted = [entry.file]
            else:
                evicted = self._evict_locked()
        self._close(evicted)

    def drop(self, file_number):
        """Close the file of file_number now, or at its last release if pinned."""
        with self._lock:
            entry = self._items.pop(file_number, None)
            if entry is None:
                return
            if entry.pins:
                entry.dropped = True
                return
        self._close([entry.file])

    def _evict_locked(self):
        """Remove least recently used unpinned files above capacity; return them."""
        evicted = []
        excess = len(self._items) - self.capacity
        if excess <= 0:
            return evicted
        victims = []
        for file_number, entry in self._items.items():
            if not entry.pins:
                victims.append(file_number)
                if len(victims) == excess:
                    break
        for file_number in victims:
            evicted.append(self._items.pop(file_number).file)
        return evicted

    def _close(self, files):
        for file in files:
            file.close()
            with self._lock:
                self.open_files -= 1
