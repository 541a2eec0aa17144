"""Exception tree for tlsm.

Every error the engine or the server raises on purpose derives from
TlsmError, so callers can catch one class. Subclasses separate the caller's
mistakes (InvalidArgumentError, ClosedError) from damaged files
(CorruptionError) and failing storage (StorageIOError).
"""


class TlsmError(Exception):
    """Base class of every error tlsm raises on purpose."""


class InvalidArgumentError(TlsmError, ValueError):
    """A value passed by the caller is malformed or exceeds a documented limit."""


class ClosedError(TlsmError):
    """The database or server was used after close()."""


class CorruptionError(TlsmError):
    """A file failed a checksum or structural check.

    ``path`` names the file and ``offset`` the byte where the damage was found
    (None when the whole file is at fault).
    """

    def __init__(self, message, path=None, offset=None):
        super().__init__(message)
        self.path = path
        self.offset = offset


class StorageIOError(TlsmError, OSError):
    """The operating system failed a read, write, fsync or rename."""


class ProtocolError(TlsmError):
    """A client sent bytes that are not valid RESP, or exceed a protocol limit."""
