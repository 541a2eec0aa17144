"""The bounded cache of open table files (max_open_files).

A database with thousands of table files is read in full in a child process
whose descriptor limit (RLIMIT_NOFILE) is far below the number of tables,
and the open descriptors are counted in /proc/self/fd. Level 0 keeps every
flushed table because level_fanout and l0_stop_files are set above the
number of flushes, so no compaction merges them.
"""

import gc
import json
import logging
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

import tlsm
from tlsm.fs import OsFileSystem
from tlsm.open_files import OpenFileCache

from conftest import server_env

NO_COMPACTION = {"level_fanout": 100_000, "l0_stop_files": 100_000}
TIMELINES = ["room:%d" % i for i in range(16)]


def payload(timeline_id, seq):
    return b"%s/%d/" % (timeline_id.encode(), seq) + b"p" * 60


def write_tables(path, appends, **options):
    """Append appends entries round-robin over TIMELINES; return the count per timeline.

    appends must be a multiple of len(TIMELINES). A 4 KiB memtable flushes
    a table file about every 50 appends.
    """
    assert appends % len(TIMELINES) == 0
    with tlsm.open(path, memtable_bytes=4096, max_open_files=8, **options) as db:
        for number in range(appends):
            timeline_id = TIMELINES[number % len(TIMELINES)]
            seq = number // len(TIMELINES) + 1
            assert db.append(timeline_id, payload(timeline_id, seq)) == seq
    return appends // len(TIMELINES)


def table_files(path):
    return [name for name in os.listdir(path) if name.endswith(".sst")]


# A child process lowers its descriptor limit, then opens the database,
# reads every entry, closes and reopens it, and reports what it saw.
CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    import tlsm

    path, fd_limit, max_open = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    timelines = json.loads(sys.argv[4])
    options = json.loads(sys.argv[5])

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    report = {"baseline": baseline, "peak": 0, "rounds": []}
    for _ in range(2):
        db = tlsm.open(path, max_open_files=max_open, block_cache_bytes=0, **options)
        counts, bad = {}, 0
        for timeline_id in timelines:
            seqs = []
            for seq, value in db.scan(timeline_id):
                seqs.append(seq)
                expected = b"%s/%d/" % (timeline_id.encode(), seq) + b"p" * 60
                bad += value != expected
                report["peak"] = max(report["peak"], open_fds())
            counts[timeline_id] = seqs
            # Point reads go through the same cache, newest tables first.
            for seq in seqs[:: max(1, len(seqs) // 7)]:
                bad += db.get(timeline_id, seq) is None
        stats = db.stats()
        report["rounds"].append({
            "counts": {t: len(s) for t, s in counts.items()},
            "ordered": all(s == list(range(1, len(s) + 1)) for s in counts.values()),
            "bad": bad,
            "tables": sum(level["files"] for level in stats["levels"]),
            "open_files": stats["open_files"],
            "hits": stats["open_file_hits"],
            "misses": stats["open_file_misses"],
        })
        db.close()
    report["after_close"] = open_fds()
    print(json.dumps(report))
    """
)


def run_child(path, fd_limit, max_open, options):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(fd_limit),
            str(max_open),
            json.dumps(TIMELINES),
            json.dumps(options),
        ],
        capture_output=True,
        env=server_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_thousands_of_tables_under_low_fd_limit(tmp_path):
    per_timeline = write_tables(tmp_path, 40_000, **NO_COMPACTION)
    tables = len(table_files(tmp_path))
    assert tables >= 1000
    fd_limit, max_open = 64, 16
    assert tables > 10 * fd_limit
    report = run_child(tmp_path, fd_limit, max_open, NO_COMPACTION)
    # Beyond the cached table files, the database keeps its LOCK file and
    # its log open, and the one reading thread pins at most one more file.
    assert report["peak"] - report["baseline"] <= max_open + 3
    assert report["after_close"] == report["baseline"]
    for round_report in report["rounds"]:
        assert round_report["tables"] == tables
        assert round_report["counts"] == dict.fromkeys(TIMELINES, per_timeline)
        assert round_report["ordered"]
        assert round_report["bad"] == 0
        assert round_report["open_files"] <= max_open
        assert round_report["misses"] >= tables
        assert round_report["hits"] > 0


def test_open_fails_without_bound_under_low_limit(tmp_path):
    write_tables(tmp_path, 12_000, **NO_COMPACTION)
    tables = len(table_files(tmp_path))
    assert tables > 200
    # With a bound above the descriptor limit, the cache cannot save the open.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path),
            "64",
            str(tables + 100),
            json.dumps(TIMELINES),
            json.dumps(NO_COMPACTION),
        ],
        capture_output=True,
        env=server_env(),
        timeout=600,
    )
    assert result.returncode != 0
    assert b"Too many open files" in result.stderr


def test_threads_read_under_tiny_bound(tmp_path):
    per_timeline = write_tables(tmp_path, 6_000, **NO_COMPACTION)
    tables = len(table_files(tmp_path))
    assert tables > 50
    errors = []
    with tlsm.open(
        tmp_path, max_open_files=2, block_cache_bytes=0, **NO_COMPACTION
    ) as db:

        def read(seed):
            rng = random.Random(seed)
            try:
                for _ in range(150):
                    timeline_id = rng.choice(TIMELINES)
                    seq = rng.randint(1, per_timeline)
                    assert db.get(timeline_id, seq) == payload(timeline_id, seq)
                    got = list(db.scan(timeline_id, start=seq, limit=5))
                    want = list(range(seq, min(seq + 5, per_timeline + 1)))
                    assert [s for s, _ in got] == want
                    assert all(value == payload(timeline_id, s) for s, value in got)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = db.stats()
    assert errors == []
    assert stats["open_files"] <= 2
    assert stats["open_file_misses"] > tables


def test_threads_read_while_flush_and_compaction_run(tmp_path):
    # Default compaction: flushes add tables and merges delete them while
    # reader threads go through a cache of two files.
    stop = threading.Event()
    errors = []
    with tlsm.open(
        tmp_path, memtable_bytes=4096, max_open_files=2, block_cache_bytes=0
    ) as db:
        written = {timeline_id: 0 for timeline_id in TIMELINES}
        for number in range(3_000):
            timeline_id = TIMELINES[number % len(TIMELINES)]
            written[timeline_id] = db.append(
                timeline_id, payload(timeline_id, written[timeline_id] + 1)
            )
        floor = dict(written)

        def read(seed):
            rng = random.Random(seed)
            try:
                while not stop.is_set():
                    timeline_id = rng.choice(TIMELINES)
                    seq = rng.randint(1, floor[timeline_id])
                    assert db.get(timeline_id, seq) == payload(timeline_id, seq)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        try:
            for number in range(6_000):
                timeline_id = TIMELINES[number % len(TIMELINES)]
                seq = written[timeline_id] + 1
                written[timeline_id] = db.append(timeline_id, payload(timeline_id, seq))
            db.compact()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        stats = db.stats()
        assert stats["compactions"] > 0
        for timeline_id, last in written.items():
            seqs = [seq for seq, _ in db.scan(timeline_id)]
            assert seqs == list(range(1, last + 1))
    assert errors == []


def test_scan_survives_compaction_deleting_its_tables(tmp_path):
    per_timeline = write_tables(tmp_path, 4_000, **NO_COMPACTION)
    with tlsm.open(
        tmp_path, max_open_files=1, block_cache_bytes=0, **NO_COMPACTION
    ) as db:
        old_files = set(table_files(tmp_path))
        scan = db.scan(TIMELINES[0])
        first = [next(scan) for _ in range(3)]
        db.compact()
        # The scan still references the replaced tables, so their files stay
        # until it ends. Other reads turn over the one-file cache, and the
        # scan reopens those files as it goes.
        assert old_files <= set(table_files(tmp_path))
        assert db.get(TIMELINES[1], 1) == payload(TIMELINES[1], 1)
        rest = list(scan)
        seqs = [seq for seq, _ in first + rest]
        assert seqs == list(range(1, per_timeline + 1))
        del scan, first, rest
        gc.collect()
        assert not old_files & set(table_files(tmp_path))
        assert db.stats()["open_files"] <= 1


def test_reopen_reads_every_entry(tmp_path):
    per_timeline = write_tables(tmp_path, 3_200, **NO_COMPACTION)
    for max_open in (1, 3, 1000):
        with tlsm.open(tmp_path, max_open_files=max_open, **NO_COMPACTION) as db:
            for timeline_id in TIMELINES:
                got = list(db.scan(timeline_id))
                assert [seq for seq, _ in got] == list(range(1, per_timeline + 1))
                assert all(value == payload(timeline_id, s) for s, value in got)
            assert db.stats()["open_files"] <= max_open


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10", None])
def test_max_open_files_rejects_invalid(tmp_path, value):
    with pytest.raises(tlsm.InvalidArgumentError, match=f"max_open_files={value!r}"):
        tlsm.open(tmp_path, max_open_files=value)


def make_files(tmp_path, count):
    paths = []
    for number in range(count):
        path = tmp_path / ("%06d.dat" % number)
        path.write_bytes(b"file %d" % number)
        paths.append(str(path))
    return paths


def test_cache_evicts_least_recently_used(tmp_path):
    fs = OsFileSystem()
    paths = make_files(tmp_path, 4)
    cache = OpenFileCache(2)
    files = {}
    for number in (0, 1, 0, 2):
        pinned = cache.acquire(number, lambda n=number: fs.open_read(paths[n]))
        files[number] = pinned.file
        cache.release(pinned)
    # File 1 was least recently used when file 2 came in.
    assert cache.open_files == 2
    assert files[1].closed
    assert not files[0].closed
    assert (cache.hits, cache.misses) == (1, 3)
    pinned = cache.acquire(1, lambda: fs.open_read(paths[1]))
    assert pinned.file.read_at(0, 6) == b"file 1"
    cache.release(pinned)
    assert cache.open_files == 2


def test_cache_keeps_pinned_files_open(tmp_path):
    fs = OsFileSystem()
    paths = make_files(tmp_path, 3)
    cache = OpenFileCache(1)
    pins = [
        cache.acquire(number, lambda n=number: fs.open_read(paths[n]))
        for number in range(3)
    ]
    # Every file is pinned, so the cache goes over its capacity.
    assert cache.open_files == 3
    assert [pin.file.read_at(0, 6) for pin in pins] == [b"file 0", b"file 1", b"file 2"]
    for pin in pins:
        cache.release(pin)
    assert cache.open_files == 1
    assert not pins[2].file.closed


def test_cache_drop_waits_for_last_release(tmp_path):
    fs = OsFileSystem()
    paths = make_files(tmp_path, 1)
    cache = OpenFileCache(4)
    pinned = cache.acquire(0, lambda: fs.open_read(paths[0]))
    cache.drop(0)
    assert cache.open_files == 1
    assert pinned.file.read_at(0, 6) == b"file 0"
    cache.release(pinned)
    assert cache.open_files == 0
    assert pinned.file.closed


def test_cache_open_error_pins_nothing(tmp_path):
    fs = OsFileSystem()
    cache = OpenFileCache(2)
    with pytest.raises(tlsm.TlsmError):
        cache.acquire(0, lambda: fs.open_read(str(tmp_path / "missing.sst")))
    assert cache.open_files == 0
    assert cache.misses == 1


COMPACT_CHILD = """
import json, logging, resource, sys
import tlsm
path, fd_limit = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
with tlsm.open(path, memtable_bytes=4096, max_open_files=8) as db:
    for number in range(20_000):
        db.append("tl%05d" % (number % 2000), b"y" * 48)
    db.wait_for_compaction()
    before = sum(level["files"] for level in db.stats()["levels"])
    db.compact()
    after = [level["files"] for level in db.stats()["levels"]]
    rows = sum(1 for i in range(2000) for _ in db.scan("tl%05d" % i))
print(json.dumps({"before": before, "after": after, "rows": rows}))
"""


def test_compaction_under_low_fd_limit(tmp_path):
    # Hundreds of inputs and outputs in one merge must not need a
    # descriptor each: outputs close when full, and replaced inputs are
    # deleted, not held open.
    result = subprocess.run(
        [sys.executable, "-c", COMPACT_CHILD, str(tmp_path / "db"), "64"],
        capture_output=True,
        env=server_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    assert report["before"] > 100
    assert sum(report["after"]) > 64
    assert report["rows"] == 20_000
    assert b"WARNING" not in result.stderr, result.stderr.decode()[-2000:]


def test_close_deletes_tables_a_snapshot_still_holds(tmp_path, caplog):
    write_tables(tmp_path, 2_000, **NO_COMPACTION)
    db = tlsm.open(tmp_path, **NO_COMPACTION)
    old_files = set(table_files(tmp_path))
    snapshot = db.snapshot()
    db.compact()
    # The open snapshot keeps the replaced files until close().
    assert old_files <= set(table_files(tmp_path))
    db.close()
    assert not old_files & set(table_files(tmp_path))
    caplog.set_level(logging.WARNING)
    with tlsm.open(tmp_path, **NO_COMPACTION) as db:
        assert db.last_seq(TIMELINES[0]) > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    del snapshot
    gc.collect()
