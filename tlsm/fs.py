"""The file-system interface that every storage module goes through.

Storage code never calls ``open`` or ``os`` directly: it asks a FileSystem,
so tests can substitute one that injects faults (failed writes, a full disk)
and check that no acknowledged write is lost. OsFileSystem is the real one.
Writes go straight to the file descriptor with ``os.write``: nothing is
buffered inside the process, so a process crash loses nothing that a write
call returned from, and only ``sync`` protects against power loss.
"""

import errno
import fcntl
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


class RandomAccessFile:
    """A read-only file read with pread, safe to share between threads."""

    def __init__(self, path, fd, size):
        self.path = path
        self._fd = fd
        self.size = size

    def read_at(self, offset, length):
        """Return exactly length bytes at offset, or fewer only at end of file."""
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _io_error("read of", self.path, exc) from exc

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem:
    """FileSystem backed by the operating system."""

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
                f"{path} is locked: another process has this data directory open"
            ) from exc
        return fd

    def unlock(self, token):
        fcntl.flock(token, fcntl.LOCK_UN)
        os.close(token)
