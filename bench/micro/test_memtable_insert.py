"""Micro-benchmarks of memtable inserts: the general path and the append fast path.

Workloads:

* memtable-add: 10,000 Memtable.add calls (the insert the general write
  path makes under its locks) over 100 timelines, 128-byte values.
* fast-append: 10,000 db.append calls through tlsm.writer's fast path
  (log record into the mapped log, then the memtable insert), Cython
  against the pure-Python twin, on a real database in a temporary
  directory with a memtable large enough never to flush.

Run: python -m pytest bench/micro -q --benchmark-only
"""

import importlib
import itertools

import pytest

import tlsm
from tlsm import writer
from tlsm.keys import KIND_PUT
from tlsm.memtable import Memtable

CALLS = 10_000
TIMELINES = 100
VALUE = b"v" * 128
MEMTABLE_BYTES = 1 << 30


def _implementations():
    try:
        extension = importlib.import_module("tlsm_ext.writer")
        cython = pytest.param(extension, id="cython")
    except ImportError:
        cython = pytest.param(
            None,
            id="cython",
            marks=pytest.mark.skip(reason="tlsm_ext.writer is not built"),
        )
    return [cython, pytest.param(writer.PurePython, id="python")]


@pytest.mark.benchmark(group="memtable-add")
def test_memtable_add(benchmark):
    memtable = Memtable(1)
    keys = [b"\x00timeline:%d" % i for i in range(TIMELINES)]
    seqs = itertools.count(1)

    def insert():
        for i in range(CALLS):
            memtable.add(keys[i % TIMELINES], next(seqs), KIND_PUT, 0, VALUE)

    benchmark(insert)


@pytest.mark.benchmark(group="fast-append")
@pytest.mark.parametrize("impl", _implementations())
def test_fast_append(benchmark, impl, tmp_path):
    db = tlsm.open(tmp_path / "db", memtable_bytes=MEMTABLE_BYTES)
    try:
        db._fast.detach()
        db._fast = impl.FastWriter(
            db._write_lock,
            db._visible_lock,
            db._last_seqs,
            MEMTABLE_BYTES,
            db._max_payload,
            db._options["max_batch_bytes"],
            db._sync,
        )
        db._fast.attach(db._active, db._log.file)
        timelines = [f"timeline:{i}" for i in range(TIMELINES)]
        for timeline in timelines:
            db.append(timeline, VALUE)  # fills the last-seq cache

        def append():
            for i in range(CALLS):
                db.append(timelines[i % TIMELINES], VALUE)

        benchmark.pedantic(append, rounds=5, iterations=1)
        assert db.last_seq(timelines[0]) > CALLS // TIMELINES
    finally:
        db.close()
