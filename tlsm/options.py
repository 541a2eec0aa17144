"""Options of tlsm.open: their defaults and validation.

tlsm.open's docstring describes what each option sets.
"""

from . import keys
from .errors import InvalidArgumentError

SYNC_MODES = ("none", "periodic", "always", "group")
# tolerate_tail: cut a damaged log tail, but refuse to open when intact
# records follow damage, since dropping them would lose acknowledged writes.
# point_in_time: keep everything before the first damaged record, drop the rest.
WAL_RECOVERY_MODES = ("tolerate_tail", "point_in_time")
COMPACTION_STYLES = ("leveled", "tiered")

DEFAULT_OPTIONS = {
    "sync": "none",
    "sync_interval_ms": 100,
    "memtable_bytes": 64 * 1024 * 1024,
    "block_bytes": 4096,
    "block_cache_bytes": 64 * 1024 * 1024,
    # Table files kept open at once; more are closed least recently used
    # first and reopened on their next read.
    "max_open_files": 1000,
    "compression": True,
    "compaction_style": "leveled",
    "level_fanout": 4,
    "level_size_ratio": 10,
    "level1_bytes": None,
    "target_file_bytes": None,
    "max_levels": 7,
    "l0_stop_files": 12,
    "expiry_check_seconds": 60.0,
    "max_payload_bytes": keys.DEFAULT_MAX_PAYLOAD_BYTES,
    "max_batch_bytes": 64 * 1024 * 1024,
    "create_if_missing": True,
    "wal_recovery": "tolerate_tail",
    "clock": None,
    "fs": None,
}


# (name, smallest, largest) of each integer option. The largest values keep
# lengths within the 32-bit fields of the log and block formats and keep
# the rest within what a process can use.
_INT_OPTIONS = (
    ("memtable_bytes", 4096, 1 << 32),
    ("block_bytes", 256, 16 << 20),
    ("block_cache_bytes", 0, 1 << 40),
    ("level_fanout", 2, 100_000),
    ("level_size_ratio", 2, 1000),
    ("level1_bytes", 1024, 1 << 50),
    ("target_file_bytes", 1024, 1 << 36),
    ("max_levels", 2, 20),
    ("max_payload_bytes", 1, keys.MAX_PAYLOAD_BYTES_LIMIT),
    ("max_batch_bytes", 1, 1 << 31),
    ("sync_interval_ms", 1, 3_600_000),
    ("l0_stop_files", 2, 100_000),
    ("max_open_files", 1, 1 << 20),
)
# Options whose None means "derived from other options".
_DERIVED = ("level1_bytes", "target_file_bytes")


def check_options(options):
    """Return options merged over DEFAULT_OPTIONS; raise InvalidArgumentError for bad ones."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid options: {', '.join(sorted(DEFAULT_OPTIONS))}"
        )
    merged = dict(DEFAULT_OPTIONS, **options)
    if merged["wal_recovery"] not in WAL_RECOVERY_MODES:
        raise InvalidArgumentError(
            f"wal_recovery={merged['wal_recovery']!r} is invalid; use one of "
            f"{', '.join(WAL_RECOVERY_MODES)}"
        )
    if merged["sync"] not in SYNC_MODES:
        raise InvalidArgumentError(
            f"sync={merged['sync']!r} is invalid; use one of {', '.join(SYNC_MODES)}"
        )
    if merged["compaction_style"] not in COMPACTION_STYLES:
        raise InvalidArgumentError(
            f"compaction_style={merged['compaction_style']!r} is invalid; use one of "
            f"{', '.join(COMPACTION_STYLES)}"
        )
    for name in ("create_if_missing", "compression"):
        if not isinstance(merged[name], bool):
            raise InvalidArgumentError(
                f"option {name}={merged[name]!r} must be True or False"
            )
    for name, low, high in _INT_OPTIONS:
        value = merged[name]
        if value is None and name in _DERIVED:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(
                f"option {name}={value!r} must be an int >= {low}"
            )
        if value > high:
            raise InvalidArgumentError(
                f"option {name}={value} is above the limit of {high}"
            )
    # Sizes left at None follow memtable_bytes: level 1 is about the size of
    # level 0 when it triggers a merge, and a file about one memtable.
    if merged["level1_bytes"] is None:
        merged["level1_bytes"] = merged["level_fanout"] * merged["memtable_bytes"]
    if merged["target_file_bytes"] is None:
        merged["target_file_bytes"] = merged["memtable_bytes"]
    if merged["max_payload_bytes"] > merged["max_batch_bytes"]:
        # A single append is logged as a batch of one.
        raise InvalidArgumentError(
            f"option max_payload_bytes={merged['max_payload_bytes']} is above "
            f"max_batch_bytes={merged['max_batch_bytes']}"
        )
    if merged["l0_stop_files"] < merged["level_fanout"]:
        # Level 0 compacts at level_fanout tables; a lower stop would wait forever.
        raise InvalidArgumentError(
            f"option l0_stop_files={merged['l0_stop_files']} must be >= "
            f"level_fanout={merged['level_fanout']}"
        )
    check = merged["expiry_check_seconds"]
    if isinstance(check, bool) or not isinstance(check, (int, float)) or check <= 0:
        raise InvalidArgumentError(f"option expiry_check_seconds={check!r} must be > 0")
    if merged["clock"] is not None and not callable(merged["clock"]):
        raise InvalidArgumentError(
            "option clock must be a callable returning Unix seconds"
        )
    return merged
