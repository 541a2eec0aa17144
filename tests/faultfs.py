"""A FileSystem that simulates power loss and injects write failures.

It forwards to the real file system and remembers, per file, how many
bytes were synced and whether the file's directory entry was synced.
power_loss() then does to the real files what a machine crash may do:
cuts every file back to its synced length (or, with zero_unsynced=True,
overwrites the unsynced bytes of logs with zeros, as when the size of a
preallocated file survives but its data does not) and deletes files whose
creation was never made durable by a directory sync. After power_loss()
every call through this instance raises, so threads of the abandoned
database stop touching the files.

Logs are real memory-mapped logs, so the fast path of tlsm.writer copies
into them without passing through here; only growth, appends of the
general write path, syncs and truncation do. log_chunk_bytes is small
by default so that logs grow often.
"""

import errno
import os

from tlsm.errors import StorageIOError
from tlsm.fs import MappedLogFile, OsFileSystem, WritableFile


class _TrackedFile(WritableFile):
    def __init__(self, owner, inner):
        super().__init__(inner.path, inner._fd, inner.size)
        self._owner = owner

    def write(self, data):
        self._owner._check_alive()
        budget = self._owner.fail_writes_after
        if budget is not None:
            if budget <= 0:
                # A full disk often accepts part of a write before failing.
                super().write(bytes(data)[: len(data) // 2])
                raise StorageIOError(
                    f"write to {self.path} failed: no space left on device"
                )
            self._owner.fail_writes_after = budget - 1
        super().write(data)

    def sync(self):
        self._owner._check_alive()
        super().sync()
        self._owner.synced[self.path] = self.size

    def truncate(self, size):
        self._owner._check_alive()
        super().truncate(size)
        if self._owner.synced.get(self.path, 0) > size:
            self._owner.synced[self.path] = size


class _TrackedLog(MappedLogFile):
    def __init__(self, owner, path, fd, chunk_bytes):
        super().__init__(path, fd, chunk_bytes)
        self._owner = owner

    def _grow(self, capacity):
        self._owner._check_alive()
        budget = self._owner.fail_allocations_after
        if budget is not None:
            if budget <= 0:
                raise StorageIOError(
                    f"allocation of {self.path} failed: no space left on device"
                )
            self._owner.fail_allocations_after = budget - 1
        super()._grow(capacity)
        self._owner.growths += 1

    def append(self, data):
        self._owner._check_alive()
        budget = self._owner.fail_writes_after
        if budget is not None:
            if budget <= 0:
                # A write that fails part way leaves some of its bytes behind.
                part = bytes(data)[: len(data) // 2]
                self.reserve(len(part))
                self.mapping[self.size : self.size + len(part)] = part
                self.size += len(part)
                raise StorageIOError(
                    f"write to {self.path} failed: no space left on device"
                )
            self._owner.fail_writes_after = budget - 1
        super().append(data)

    def sync(self):
        self._owner._check_alive()
        budget = self._owner.fail_syncs_after
        if budget is not None:
            if budget <= 0:
                error = StorageIOError(f"fsync of {self.path} failed: I/O error")
                error.errno = errno.EIO
                raise error
            self._owner.fail_syncs_after = budget - 1
        size = self.size
        super().sync()
        self._owner.synced[self.path] = max(self._owner.synced[self.path], size)

    def truncate(self, size):
        self._owner._check_alive()
        super().truncate(size)
        if self._owner.synced.get(self.path, 0) > size:
            self._owner.synced[self.path] = size

    def close(self):
        if self._owner.dead:
            # After power loss the file must stay as power_loss() left it,
            # so it is unmapped and closed without truncating it.
            if self.mapping is not None:
                self.mapping.close()
                self.mapping = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            return
        super().close()
        self._owner.logs.discard(self.path)


class FaultFileSystem(OsFileSystem):
    """See the module docstring.

    Faults, each a countdown that fails the call after that many succeed:
    fail_writes_after (writes, and appends of the general write path to a
    log), fail_allocations_after (log growth) and fail_syncs_after (log
    syncs). growths counts log allocations that succeeded.
    """

    def __init__(self, log_chunk_bytes=4096):
        super().__init__(log_chunk_bytes=log_chunk_bytes)
        self.synced = {}
        self.unnamed = set()
        self.logs = set()
        self.dead = False
        self.fail_writes_after = None
        self.fail_allocations_after = None
        self.fail_syncs_after = None
        self.growths = 0
        self._locks = {}

    def _check_alive(self):
        if self.dead:
            raise StorageIOError("simulated machine is powered off")

    def create(self, path):
        self._check_alive()
        inner = super().create(path)
        self.synced[path] = 0
        self.unnamed.add(path)
        return _TrackedFile(self, inner)

    def create_log(self, path, chunk_bytes):
        self._check_alive()
        log_file = super().create_log(path, chunk_bytes)
        self.synced[path] = 0
        self.unnamed.add(path)
        self.logs.add(path)
        return log_file

    def _new_log_file(self, path, fd, chunk_bytes):
        return _TrackedLog(self, path, fd, chunk_bytes)

    def open_append(self, path):
        self._check_alive()
        inner = super().open_append(path)
        self.synced.setdefault(path, inner.size)
        return _TrackedFile(self, inner)

    def open_read(self, path):
        self._check_alive()
        return super().open_read(path)

    def read_all(self, path):
        self._check_alive()
        return super().read_all(path)

    def rename(self, src, dst):
        self._check_alive()
        super().rename(src, dst)
        self.synced[dst] = self.synced.pop(src, 0)
        self.unnamed.discard(src)
        self.unnamed.add(dst)

    def remove(self, path):
        self._check_alive()
        super().remove(path)
        self.synced.pop(path, None)
        self.unnamed.discard(path)

    def sync_dir(self, path):
        self._check_alive()
        super().sync_dir(path)
        self.unnamed = {p for p in self.unnamed if os.path.dirname(p) != path}

    def lock(self, path):
        return path

    def unlock(self, token):
        pass

    def power_loss(self, zero_unsynced=False):
        """Drop everything not synced, as a machine crash may, and stop this instance.

        With zero_unsynced, an open log keeps its length and its unsynced
        bytes become zeros; otherwise every file is cut to its synced length.
        """
        self.dead = True
        for path, size in self.synced.items():
            if not os.path.exists(path):
                continue
            if path in self.unnamed:
                os.remove(path)
                continue
            length = os.path.getsize(path)
            if length <= size:
                continue
            if zero_unsynced and path in self.logs:
                with open(path, "r+b") as f:
                    f.seek(size)
                    f.write(bytes(length - size))
            else:
                os.truncate(path, size)
