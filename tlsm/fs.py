"""The file-system interface that every storage module goes through.

Storage code never calls ``open`` or ``os`` directly: it asks a FileSystem,
so tests can substitute one that injects faults (failed writes, a full disk)
and check that no acknowledged write is lost. OsFileSystem is the real one.
Writes go straight to the file descriptor with ``os.write``: nothing is
buffered inside the process, so a process crash loses nothing that a write
call returned from, and only ``sync`` protects against power loss.

Logs are the exception: ``create_log`` returns a MappedLogFile, which
preallocates the file with posix_fallocate and copies records into a shared
memory mapping of it. Bytes copied into a shared file mapping are in the
page cache at once, so they too survive a process crash.
"""

import array
import errno
import fcntl
import mmap
import os

from .errors import StorageIOError


def _io_error(action, path, exc):
    detail = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        detail = "no space left on device"
    err = StorageIOError(f"{action} {path} failed: {detail}")
    err.errno = exc.errno
    return err


class WritableFile:
    """A file opened for appending, with an explicit sync."""

    def __init__(self, path, fd, size):
        self.path = path
        self._fd = fd
        self.size = size

    def write(self, data):
        """Append all of data; raises StorageIOError (the file may then hold part of it)."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
        except OSError as exc:
            raise _io_error("write to", self.path, exc) from exc

    def sync(self):
        """Make the written bytes durable against power loss (fdatasync)."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_error("fsync of", self.path, exc) from exc

    def truncate(self, size):
        """Cut the file back to size bytes, undoing a partial write."""
        try:
            os.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
        except OSError as exc:
            raise _io_error("truncate of", self.path, exc) from exc
        self.size = size

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# Log files are preallocated in whole multiples of this many bytes, so a log
# whose zero-filled tail ends at such a multiple was preallocated, not
# damaged (see tlsm.wal.read_log). On disk: recovery relies on it.
LOG_ALIGN_BYTES = 4096
# The first allocation of a log file, unless chunk_bytes is smaller.
FIRST_LOG_BYTES = 1 << 20


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


class MappedLogFile:
    """A log file written through a shared memory mapping of a preallocated file.

    The file is allocated with posix_fallocate before it is mapped, so a
    full disk raises StorageIOError (ENOSPC) at allocation and a later copy
    into the mapping can never hit an unallocated page (SIGBUS). ``size`` is
    the number of bytes appended, ``capacity`` the allocated and mapped
    length; the bytes in between are zero. When an append does not fit,
    the file grows to double its capacity, by at most ``chunk_bytes`` (and
    at least what the append needs); the first allocation is 1 MiB, or
    ``chunk_bytes`` if smaller. ``close`` truncates the file to ``size``.

    ``mapping`` is the mmap object and ``size_cell`` an array of one signed
    64-bit integer that holds ``size``. tlsm.writer copies records into the
    mapping directly and then advances size_cell in place, through buffers
    of both; every other change goes through the methods here. Growing or
    closing the file fails with BufferError while a buffer of the mapping
    is held.
    """

    def __init__(self, path, fd, chunk_bytes):
        self.path = path
        self._fd = fd
        self.chunk_bytes = _round_up(max(chunk_bytes, 1), LOG_ALIGN_BYTES)
        self.size_cell = array.array("q", [0])
        self.capacity = 0
        self.mapping = None

    @property
    def size(self):
        return self.size_cell[0]

    @size.setter
    def size(self, value):
        self.size_cell[0] = value

    def reserve(self, length):
        """Make room for length more bytes, growing the file if needed.

        Raises StorageIOError when the file cannot grow (a full disk gives
        "no space left on device"); the file is then unchanged.
        """
        needed = self.size + length
        if needed > self.capacity:
            # The capacity doubles from a small first allocation, by at most
            # chunk_bytes at a time. Creating a log, at open and at each
            # memtable switch, then prepares 1 MiB instead of a whole chunk.
            # Preparing a 32 MiB chunk took 3 ms on ext4 here.
            step = min(self.chunk_bytes, max(self.capacity, FIRST_LOG_BYTES))
            step = max(needed - self.capacity, step)
            self._grow(self.capacity + _round_up(step, LOG_ALIGN_BYTES))

    def _grow(self, capacity):
        try:
            os.posix_fallocate(self._fd, self.capacity, capacity - self.capacity)
            mapping = mmap.mmap(self._fd, capacity, flags=mmap.MAP_SHARED)
        except OSError as exc:
            raise _io_error("allocation of", self.path, exc) from exc
        # Read the new range into the page cache now: the first write to
        # each page of the mapping then costs a minor fault instead of
        # allocating the page on the spot (several times faster on ext4).
        if hasattr(mmap, "MADV_WILLNEED"):
            mapping.madvise(mmap.MADV_WILLNEED, self.capacity, capacity - self.capacity)
        if self.mapping is not None:
            self.mapping.close()
        self.mapping = mapping
        self.capacity = capacity

    def append(self, data):
        """Append all of data; raises StorageIOError, leaving the file unchanged."""
        length = len(data)
        self.reserve(length)
        self.mapping[self.size : self.size + length] = data
        self.size += length

    def sync(self):
        """Make the appended bytes durable against power loss.

        On Linux, fdatasync writes back pages dirtied through a shared
        mapping as well as those written with write().
        """
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_error("fsync of", self.path, exc) from exc

    def truncate(self, size):
        """Cut the log back to size bytes, zeroing what was appended after it.

        Zeroing keeps a failed record out of the page cache, so recovery
        after a process crash cannot find it. The allocation is kept.
        """
        if size < self.size:
            self.mapping[size : self.size] = bytes(self.size - size)
        self.size = size

    def close(self):
        """Unmap the file and truncate it to the appended bytes."""
        if self._fd < 0:
            return
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
        try:
            os.ftruncate(self._fd, self.size)
        except OSError as exc:
            raise _io_error("truncate of", self.path, exc) from exc
        finally:
            os.close(self._fd)
            self._fd = -1


class RandomAccessFile:
    """A read-only file, safe to share between threads.

    A non-empty file is read through a shared read-only memory mapping: a
    read is a copy out of the page cache, without a system call. Table
    files never change once written, so the mapping stays valid until
    close(). The mapping keeps its own descriptor, and the one passed in is
    closed at once, so an open file costs one descriptor either way.
    """

    def __init__(self, path, fd, size):
        self.path = path
        self.size = size
        # The mmap object, or None when the file is read with pread.
        self.mapping = None
        self._fd = fd
        if size:
            try:
                self.mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                # A file that cannot be mapped is read with pread.
                return
            os.close(fd)
            self._fd = -1

    def read_at(self, offset, length):
        """Return exactly length bytes at offset, or fewer only at end of file."""
        mapped = self.mapping
        if mapped is not None:
            return mapped[offset : offset + length]
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _io_error("read of", self.path, exc) from exc

    @property
    def closed(self):
        return self.mapping is None and self._fd < 0

    def close(self):
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem:
    """FileSystem backed by the operating system.

    log_chunk_bytes, when set, replaces the growth step that create_log's
    caller asks for; tests set it small so logs grow often.
    """

    def __init__(self, log_chunk_bytes=None):
        self.log_chunk_bytes = log_chunk_bytes

    def create_log(self, path, chunk_bytes):
        """Create (or truncate) path and return a MappedLogFile.

        chunk_bytes (rounded up to LOG_ALIGN_BYTES) bounds the first
        allocation and each growth step (see MappedLogFile). Raises
        StorageIOError when the file cannot be created or allocated.
        """
        if self.log_chunk_bytes is not None:
            chunk_bytes = self.log_chunk_bytes
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise _io_error("create of", path, exc) from exc
        log_file = self._new_log_file(path, fd, chunk_bytes)
        try:
            log_file.reserve(1)
        except BaseException:
            log_file.close()
            raise
        return log_file

    def _new_log_file(self, path, fd, chunk_bytes):
        return MappedLogFile(path, fd, chunk_bytes)

    def create(self, path):
        """Create (or truncate) path and return a WritableFile."""
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise _io_error("create of", path, exc) from exc
        return WritableFile(path, fd, 0)

    def open_append(self, path):
        """Open an existing file for appending at its end."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:
            raise _io_error("open of", path, exc) from exc
        return WritableFile(path, fd, size)

    def open_read(self, path):
        """Open path for reading and return a RandomAccessFile."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise _io_error("open of", path, exc) from exc
        return RandomAccessFile(path, fd, size)

    def read_all(self, path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise _io_error("read of", path, exc) from exc

    def write_atomic(self, path, data):
        """Replace path with data so that a crash leaves the old or the new file whole.

        Writes a temporary file, syncs it, renames it over path and syncs the
        directory so the rename itself survives power loss.
        """
        tmp = path + ".tmp"
        out = self.create(tmp)
        try:
            out.write(data)
            out.sync()
        finally:
            out.close()
        self.rename(tmp, path)
        self.sync_dir(os.path.dirname(path) or ".")

    def rename(self, src, dst):
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise _io_error("rename to", dst, exc) from exc

    def remove(self, path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error("remove of", path, exc) from exc

    def exists(self, path):
        return os.path.exists(path)

    def listdir(self, path):
        try:
            return os.listdir(path)
        except OSError as exc:
            raise _io_error("listing of", path, exc) from exc

    def makedirs(self, path):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise _io_error("creation of", path, exc) from exc

    def sync_dir(self, path):
        """Sync a directory so that files created or renamed in it survive power loss."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _io_error("open of", path, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _io_error("fsync of", path, exc) from exc
        finally:
            os.close(fd)

    def lock(self, path):
        """Take an exclusive lock on path; returns a token for unlock.

        Raises StorageIOError naming the path when another process holds it.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io_error("open of", path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageIOError(
                f"{path} is locked: another open database, in this process or "
                "another, uses this data directory"
            ) from exc
        return fd

    def unlock(self, token):
        fcntl.flock(token, fcntl.LOCK_UN)
        os.close(token)
