"""A FileSystem that simulates power loss and injects write failures.

It forwards to the real file system and remembers, per file, how many
bytes were synced and whether the file's directory entry was synced.
power_loss() then does to the real files what a machine crash may do:
cuts every file back to its synced length and deletes files whose creation
was never made durable by a directory sync. After power_loss() every call
through this instance raises, so threads of the abandoned database stop
touching the files.
"""

import os

from tlsm.errors import StorageIOError
from tlsm.fs import OsFileSystem, WritableFile


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


class FaultFileSystem(OsFileSystem):
    def __init__(self):
        self.synced = {}
        self.unnamed = set()
        self.dead = False
        self.fail_writes_after = None
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

    def power_loss(self):
        """Drop everything not synced, as a machine crash may, and stop this instance."""
        self.dead = True
        for path, size in self.synced.items():
            if not os.path.exists(path):
                continue
            if path in self.unnamed:
                os.remove(path)
            elif os.path.getsize(path) > size:
                os.truncate(path, size)
