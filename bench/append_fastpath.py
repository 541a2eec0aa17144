"""Single appends and small batches: tlsm against rocksdict in one process.

Workload (synthetic, seeded): 10,000 timelines "tl:NNNNN" whose popularity
follows a Zipf distribution (the k-th most popular timeline has weight 1/k),
128 random bytes per payload.

  appends   N single appends through db.append(timeline_id, payload) with
            the default sync="none". rocksdict gets key = timeline id +
            8-byte big-endian seq from a per-timeline counter kept in a dict
            by this script, and db.put with WriteOptions.sync=False.
  batches   N / 21 batches of 1 store entry + 20 sync entries through
            db.append_batch; rocksdict writes each batch as a WriteBatch.

Each measurement runs in a fresh data directory, REPEAT times per peer,
interleaved, and the median appends (or entries) per second is reported
with the ratio tlsm / rocksdict. Run with TLSM_PURE_PYTHON=1 to measure the
pure-Python twins instead of the Cython extensions.

    python bench/append_fastpath.py [--appends N] [--repeat R] [--json FILE]
"""

import argparse
import bisect
import gc
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tlsm  # noqa: E402
from tlsm import block  # noqa: E402

TIMELINES = 10_000
PAYLOAD_BYTES = 128
BATCH_MEMBERS = 20


def build_workload(appends, seed=1):
    """Return (single appends, batches) as lists of (timeline_id, payload)."""
    rng = random.Random(seed)
    names = [f"tl:{i:05d}" for i in range(TIMELINES)]
    cumulative = list(itertools.accumulate(1.0 / k for k in range(1, TIMELINES + 1)))
    total = cumulative[-1]

    def pick():
        return names[bisect.bisect_left(cumulative, rng.random() * total)]

    singles = [(pick(), rng.randbytes(PAYLOAD_BYTES)) for _ in range(appends)]
    batches = []
    for _ in range(appends // (BATCH_MEMBERS + 1)):
        store = ("store:" + pick(), rng.randbytes(PAYLOAD_BYTES))
        members = [store] + [
            ("sync:" + pick(), rng.randbytes(PAYLOAD_BYTES))
            for _ in range(BATCH_MEMBERS)
        ]
        batches.append(members)
    return singles, batches


def run_tlsm_appends(path, singles):
    with tlsm.open(path) as db:
        append = db.append
        started = time.perf_counter()
        for timeline_id, payload in singles:
            append(timeline_id, payload)
        elapsed = time.perf_counter() - started
    return len(singles) / elapsed


def run_tlsm_batches(path, batches):
    with tlsm.open(path) as db:
        append_batch = db.append_batch
        started = time.perf_counter()
        for batch in batches:
            append_batch(batch)
        elapsed = time.perf_counter() - started
    return sum(map(len, batches)) / elapsed


def _open_rocksdict(path):
    from rocksdict import Options, Rdict, WriteOptions

    db = Rdict(path, Options(raw_mode=True))
    write_options = WriteOptions()
    write_options.sync = False
    db.set_write_options(write_options)
    return db


def run_rocksdict_appends(path, singles):
    db = _open_rocksdict(path)
    put = db.put
    counters = {}
    get = counters.get
    started = time.perf_counter()
    for timeline_id, payload in singles:
        seq = get(timeline_id, 0) + 1
        counters[timeline_id] = seq
        put(timeline_id.encode() + seq.to_bytes(8, "big"), payload)
    elapsed = time.perf_counter() - started
    db.close()
    return len(singles) / elapsed


def run_rocksdict_batches(path, batches):
    from rocksdict import WriteBatch

    db = _open_rocksdict(path)
    counters = {}
    get = counters.get
    started = time.perf_counter()
    for entries in batches:
        batch = WriteBatch(raw_mode=True)
        for timeline_id, payload in entries:
            seq = get(timeline_id, 0) + 1
            counters[timeline_id] = seq
            batch.put(timeline_id.encode() + seq.to_bytes(8, "big"), payload)
        db.write(batch)
    elapsed = time.perf_counter() - started
    db.close()
    return sum(map(len, batches)) / elapsed


def measure(scratch, repeat, runs):
    """Run every (name, function, data) of runs repeat times, interleaved."""
    rates = {name: [] for name, _, _ in runs}
    for round_index in range(repeat):
        for name, function, data in runs:
            path = os.path.join(scratch, f"{name}-{round_index}")
            gc.collect()
            rates[name].append(function(path, data))
            shutil.rmtree(path, ignore_errors=True)
            print(f"  round {round_index + 1} {name}: {rates[name][-1]:,.0f}/s")
    return {name: statistics.median(values) for name, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scratch", default=None, help="parent of data directories")
    parser.add_argument("--json", default=None, help="write the medians here")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cpus, tlsm implementation {block.IMPLEMENTATION}, "
        f"{args.appends:,} appends, {args.repeat} repetitions"
    )
    singles, batches = build_workload(args.appends)
    scratch = tempfile.mkdtemp(prefix="tlsm-bench-", dir=args.scratch)
    try:
        medians = measure(
            scratch,
            args.repeat,
            [
                ("tlsm appends", run_tlsm_appends, singles),
                ("rocksdict appends", run_rocksdict_appends, singles),
                ("tlsm batches", run_tlsm_batches, batches),
                ("rocksdict batches", run_rocksdict_batches, batches),
            ],
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, rate in medians.items():
        print(f"{name:20} {rate:12,.0f} per second (median)")
    for kind in ("appends", "batches"):
        ratio = medians[f"tlsm {kind}"] / medians[f"rocksdict {kind}"]
        print(f"ratio tlsm/rocksdict {kind}: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"implementation": block.IMPLEMENTATION, **medians}, out, indent=2)


if __name__ == "__main__":
    main()
