"""The manifest: which table files are live, and where recovery starts.

``MANIFEST`` is replaced as a whole on every change, through a synced
temporary file and an atomic rename, so a crash leaves either the old or
the new version, never a mix. Layout (on disk, frozen):

    line 1: "tlsm-manifest <format_version> <crc32 of the JSON bytes, 8 hex digits>\\n"
    rest:   UTF-8 JSON object:
            {"next_file_number": int,   # next number for a .log or .sst file
             "log_number": int,         # logs numbered below this are flushed
             "compaction_style": "leveled" or "tiered",
             "levels": [[{"number": int, "size": int, "entries": int,
                          "smallest": hex str, "largest": hex str}, ...], ...],
             "tables": {name: {"id": int, "ttl": float or null}, ...}}

``smallest`` and ``largest`` are the first and last stored timeline keys
(table-id byte plus timeline id, as lowercase hex) that the table file holds
entries, seq high-water marks or tombstones of. Version 1 manifests lack
them and ``compaction_style``; they are read as tiered, and the ranges are
taken from the table files on open.

``tables`` names the key spaces; a stored key starts with the table's id
byte. The table "default" (id 0) always exists.

``levels[0]`` lists level-0 tables newest first. Under leveled compaction
every deeper level lists tables with disjoint key ranges in key order.
Under tiered compaction every level lists tables newest first. A key is
written once and never overwritten, so no order decides between versions
of an entry. The order only guides compaction's choice of tables.
"""

import json
import os
import zlib

from .errors import CorruptionError

FILENAME = "MANIFEST"


def log_file_name(number):
    """Return the name of log file number, e.g. 000012.log."""
    return f"{number:06d}.log"


def table_file_name(number):
    """Return the name of table file number, e.g. 000013.sst."""
    return f"{number:06d}.sst"


FORMAT_VERSION = 2
# Versions this code reads; it always writes FORMAT_VERSION.
READABLE_VERSIONS = ("1", "2")
_TAG = "tlsm-manifest"


class TableInfo:
    """What the manifest records of one table file.

    smallest and largest bound the stored timeline keys in the file (None
    until known). Two files overlap when their key ranges intersect.
    """

    __slots__ = ("number", "size", "entries", "smallest", "largest")

    def __init__(self, number, size, entries, smallest=None, largest=None):
        self.number = number
        self.size = size
        self.entries = entries
        self.smallest = smallest
        self.largest = largest

    def overlaps(self, smallest, largest):
        """Return True if this file's key range meets [smallest, largest]."""
        return self.smallest <= largest and smallest <= self.largest

    def to_json(self):
        state = {"number": self.number, "size": self.size, "entries": self.entries}
        if self.smallest is not None:
            state["smallest"] = self.smallest.hex()
            state["largest"] = self.largest.hex()
        return state

    @classmethod
    def from_json(cls, state):
        smallest = state.get("smallest")
        largest = state.get("largest")
        return cls(
            state["number"],
            state["size"],
            state["entries"],
            None if smallest is None else bytes.fromhex(smallest),
            None if largest is None else bytes.fromhex(largest),
        )

    def __repr__(self):
        return f"<TableInfo {self.number} {self.size}B {self.entries} entries>"


class Manifest:
    """In-memory state of the manifest file."""

    def __init__(
        self,
        next_file_number=1,
        log_number=0,
        levels=None,
        tables=None,
        compaction_style="leveled",
    ):
        self.next_file_number = next_file_number
        self.log_number = log_number
        self.compaction_style = compaction_style
        self.levels = levels if levels is not None else [[]]
        self.tables = (
            tables if tables is not None else {"default": {"id": 0, "ttl": None}}
        )

    def allocate_file_number(self):
        number = self.next_file_number
        self.next_file_number += 1
        return number

    def live_numbers(self):
        return {info.number for level in self.levels for info in level}

    def encode(self):
        body = json.dumps(
            {
                "next_file_number": self.next_file_number,
                "log_number": self.log_number,
                "compaction_style": self.compaction_style,
                "levels": [[info.to_json() for info in level] for level in self.levels],
                "tables": self.tables,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        header = f"{_TAG} {FORMAT_VERSION} {zlib.crc32(body):08x}\n".encode("ascii")
        return header + body

    def save(self, fs, directory):
        fs.write_atomic(os.path.join(directory, FILENAME), self.encode())

    @classmethod
    def decode(cls, data, path):
        newline = data.find(b"\n")
        parts = (
            data[:newline].decode("ascii", "replace").split(" ") if newline > 0 else []
        )
        if len(parts) != 3 or parts[0] != _TAG:
            raise CorruptionError(f"{path}: missing manifest header", path, 0)
        if parts[1] not in READABLE_VERSIONS:
            raise CorruptionError(
                f"{path}: unsupported manifest format version {parts[1]}", path, 0
            )
        body = data[newline + 1 :]
        if f"{zlib.crc32(body):08x}" != parts[2]:
            raise CorruptionError(
                f"{path}: manifest checksum mismatch", path, newline + 1
            )
        try:
            state = json.loads(body)
            levels = [
                [TableInfo.from_json(t) for t in level] for level in state["levels"]
            ]
            style = state.get("compaction_style", "tiered")
            if style not in ("leveled", "tiered"):
                raise ValueError(f"unknown compaction_style {style!r}")
            tables = {
                str(name): {"id": int(spec["id"]), "ttl": spec["ttl"]}
                for name, spec in state["tables"].items()
            }
            return cls(
                state["next_file_number"],
                state["log_number"],
                levels or [[]],
                tables,
                style,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(
                f"{path}: malformed manifest ({exc})", path, newline + 1
            ) from None

    @classmethod
    def load(cls, fs, directory):
        """Return the saved manifest, or None when the directory has none."""
        path = os.path.join(directory, FILENAME)
        if not fs.exists(path):
            return None
        return cls.decode(fs.read_all(path), path)
