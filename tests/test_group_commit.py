"""Group commit: concurrent writers share one log record and one fsync.

GatedFileSystem counts log fsyncs and can hold the first one until a given
number of writes wait in the commit queue. A test can then rely on the
next commit group holding all of them, without depending on timing.
"""

import threading
import time

import pytest
from faultfs import FaultFileSystem, _TrackedLog

import tlsm
from tlsm.errors import StorageIOError

THREADS = 8


class _CountingLog(_TrackedLog):
    def sync(self):
        self._owner.before_sync()
        super().sync()
        self._owner.log_syncs += 1
        self._owner.after_sync()


class GatedFileSystem(FaultFileSystem):
    """A FaultFileSystem that counts log fsyncs and can gate the first one.

    With gate_queue set to a count n and db set, the first log fsync waits
    (10 s at most) until n writes are queued. fail_after_first_sync makes
    every fsync after the first fail.
    """

    def __init__(self):
        super().__init__()
        self.log_syncs = 0
        self.gate_queue = None
        self.fail_after_first_sync = False
        self.db = None
        self._gated = False

    def _new_log_file(self, path, fd, chunk_bytes):
        return _CountingLog(self, path, fd, chunk_bytes)

    def before_sync(self):
        if self.gate_queue is None or self._gated:
            return
        self._gated = True
        deadline = time.monotonic() + 10
        while len(self.db._commit_queue) < self.gate_queue:
            assert time.monotonic() < deadline, "writers never queued"
            time.sleep(0.001)

    def after_sync(self):
        if self.fail_after_first_sync:
            self.fail_syncs_after = 0


def _run_threads(count, target):
    """Run target(index) in count threads started together; return their errors."""
    barrier = threading.Barrier(count)
    errors = [None] * count

    def run(index):
        barrier.wait()
        try:
            target(index)
        except Exception as exc:  # noqa: BLE001 - the test checks every class
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    return errors


def _open_gated(path, **options):
    fs = GatedFileSystem()
    db = tlsm.open(path, sync="always", fs=fs, **options)
    fs.db = db
    return fs, db


def test_group_commit_uses_fewer_fsyncs(tmp_path):
    fs, db = _open_gated(tmp_path)
    fs.gate_queue = THREADS
    per_thread = 20

    def write(index):
        for i in range(per_thread):
            db.append(f"t{index}", b"%d" % i)

    assert _run_threads(THREADS, write) == [None] * THREADS
    writes = THREADS * per_thread
    stats = db.stats()
    assert fs.log_syncs < writes
    assert stats["log_syncs"] == fs.log_syncs
    assert stats["synced_writes"] == writes
    assert stats["group_syncs"] < writes
    assert stats["writes_per_sync"] > 1
    assert stats["writes_per_group"] > 1
    db.close()


def test_group_size_bounded_in_bytes(tmp_path):
    fs, db = _open_gated(tmp_path)
    fs.gate_queue = THREADS
    payload = bytes(400 * 1024)

    def write(index):
        db.append(f"t{index}", payload)

    assert _run_threads(THREADS, write) == [None] * THREADS
    # The first writer commits alone while the other seven queue. At 400 KiB
    # each, at most two fit in the 1 MiB bound: groups of 2, 2, 2 and 1.
    stats = db.stats()
    assert stats["commit_groups"] == 5
    assert stats["group_writes"] == THREADS
    assert stats["log_syncs"] == 5
    for index in range(THREADS):
        assert db.get(f"t{index}", 1) == payload
    db.close()


def test_acknowledged_group_writes_survive_power_loss(tmp_path):
    fs, db = _open_gated(tmp_path, memtable_bytes=16384)
    fs.gate_queue = THREADS
    acked = [{} for _ in range(THREADS)]

    def write(index):
        for i in range(30):
            payload = b"%d-%d" % (index, i)
            if i % 3 == 0:
                seq = db.append("shared", payload)
                acked[index][("shared", seq)] = payload
            elif i % 3 == 1:
                seqs = db.append_batch([("shared", payload), (f"own{index}", payload)])
                acked[index][("shared", seqs[0])] = payload
                acked[index][(f"own{index}", seqs[1])] = payload
            else:
                with db.batch() as batch:
                    batch.append(f"own{index}", payload)
                acked[index][(f"own{index}", batch.results[0])] = payload

    assert _run_threads(THREADS, write) == [None] * THREADS
    assert db.stats()["flushes"] >= 1
    fs.power_loss()
    everything = {key: value for part in acked for key, value in part.items()}
    with tlsm.open(tmp_path, fs=FaultFileSystem()) as recovered:
        for (timeline, seq), payload in everything.items():
            assert recovered.get(timeline, seq) == payload
        for timeline in {timeline for timeline, _ in everything}:
            expected = sorted(seq for t, seq in everything if t == timeline)
            assert expected == list(range(1, len(expected) + 1))
            assert [seq for seq, _ in recovered.scan(timeline)] == expected


@pytest.mark.parametrize("sync", ["always", "none"])
def test_group_commit_seqs_dense_and_ordered(tmp_path, sync):
    db = tlsm.open(tmp_path, sync=sync, memtable_bytes=8192)
    results = [[] for _ in range(THREADS)]

    def write(index):
        for i in range(40):
            batch = db.batch()
            batch.append("shared", b"%d:%d" % (index, i))
            batch.append(f"own{index}", b"x")
            seq, _ = db.write(batch)
            results[index].append(seq)

    assert _run_threads(THREADS, write) == [None] * THREADS
    for seqs in results:
        assert seqs == sorted(seqs)
    assigned = sorted(seq for seqs in results for seq in seqs)
    assert assigned == list(range(1, THREADS * 40 + 1))
    for index, seqs in enumerate(results):
        for i, seq in enumerate(seqs):
            assert db.get("shared", seq) == b"%d:%d" % (index, i)
    db.close()


def test_failed_sync_fails_whole_group(tmp_path):
    fs, db = _open_gated(tmp_path)
    fs.gate_queue = THREADS
    fs.fail_after_first_sync = True
    seqs = [None] * THREADS

    def write(index):
        seqs[index] = db.append("shared", b"w%d" % index)

    errors = _run_threads(THREADS, write)
    # The first writer leads a group of its own, and its fsync is held until
    # every other writer waits behind it. Those form the next group, and the
    # fsync of that group fails.
    succeeded = [i for i in range(THREADS) if errors[i] is None]
    assert len(succeeded) == 1
    assert seqs[succeeded[0]] == 1
    for index, error in enumerate(errors):
        if index != succeeded[0]:
            assert isinstance(error, StorageIOError)
            assert "fsync" in str(error)
            assert seqs[index] is None
    assert db.last_seq("shared") == 1
    assert [seq for seq, _ in db.scan("shared")] == [1]
    stats = db.stats()
    assert stats["synced_writes"] == 1
    fs.fail_syncs_after = None
    fs.fail_after_first_sync = False
    assert db.append("shared", b"after") == 2
    fs.power_loss()
    with tlsm.open(tmp_path, fs=FaultFileSystem()) as recovered:
        assert [payload for _, payload in recovered.scan("shared")] == [
            b"w%d" % succeeded[0],
            b"after",
        ]


def test_failed_log_write_fails_whole_group(tmp_path):
    fs, db = _open_gated(tmp_path)
    fs.gate_queue = THREADS

    def arm_write_failure():
        fs.fail_writes_after = 0

    fs.after_sync = arm_write_failure
    errors = _run_threads(THREADS, lambda index: db.append("shared", b"x"))
    failed = [error for error in errors if error is not None]
    assert len(failed) == THREADS - 1
    assert all("no space left" in str(error) for error in failed)
    fs.fail_writes_after = None
    fs.after_sync = lambda: None
    assert db.append("shared", b"after") == 2
    db.close()


def test_concurrent_readers_never_see_gap(tmp_path):
    db = tlsm.open(tmp_path, sync="always", memtable_bytes=16384)
    stop = threading.Event()
    problems = []
    checks = [0]

    def read():
        # Checks once more after the writers stop, so at least once.
        while True:
            finished = stop.is_set()
            last = db.last_seq("shared")
            seqs = [seq for seq, _ in db.scan("shared")]
            if seqs != list(range(1, len(seqs) + 1)) or len(seqs) < last:
                problems.append((last, seqs[-5:]))
            with db.snapshot() as snapshot:
                # Every batch appends once to "left" and once to "right".
                left = snapshot.last_seq("left")
                right = snapshot.last_seq("right")
                if left != right:
                    problems.append(("torn batch", left, right))
            checks[0] += 1
            if finished:
                return

    reader = threading.Thread(target=read)
    reader.start()

    def write(index):
        for i in range(25):
            db.append("shared", b"%d" % i)
            db.append_batch([("left", b"l"), ("right", b"r")])

    try:
        errors = _run_threads(4, write)
    finally:
        stop.set()
        reader.join(60)
    assert errors == [None] * 4
    assert problems == []
    assert checks[0] > 0
    assert db.last_seq("shared") == 100
    db.close()
