"""Write amplification of the engine's compaction on timeline appends.

Workload: N appends of 128 random bytes over 10,000 timelines with
Zipf-skewed popularity (the same shape as bench/workloads.py), default
options except the memtable size and compaction style, then a wait until
no compaction is due, then close(). Prints bytes written to the log, by
flushes and by compactions, per level, and their ratio to the payload and
key bytes appended.

    python bench/write_amp.py [--appends 1000000] [--memtable-mib 32]
                              [--style leveled|tiered]
"""

import argparse
import os
import random
import tempfile
import time

import tlsm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=1_000_000)
    parser.add_argument("--memtable-mib", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--style", choices=("leveled", "tiered"), default="leveled")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    weights = [1 / (rank + 1) for rank in range(10_000)]
    timelines = rng.choices(
        [f"timeline:{i}" for i in range(10_000)], weights, k=args.appends
    )
    payloads = [os.urandom(128) for _ in range(4096)]
    path = tempfile.mkdtemp(prefix="tlsm-wamp-")
    started = time.perf_counter()
    db = tlsm.open(
        path, memtable_bytes=args.memtable_mib << 20, compaction_style=args.style
    )
    for i, timeline in enumerate(timelines):
        db.append(timeline, payloads[i & 4095])
    db.flush()
    db.wait_for_compaction()
    db.close()
    elapsed = time.perf_counter() - started
    # stats() stays readable after close(): the counters cover the whole run,
    # including the final flush.
    stats = db.stats()
    levels = stats["levels"]
    print(
        f"{args.appends} appends in {elapsed:.1f} s, memtable {args.memtable_mib} "
        f"MiB, {args.style} compaction"
    )
    user = stats["user_bytes"]
    for name in ("wal_bytes", "flush_bytes", "compaction_bytes_written"):
        print(
            f"  {name:26s} {stats[name] / 2**20:9.1f} MiB  {stats[name] / user:5.2f}x"
        )
    print(f"  {'user bytes (ids + payloads)':26s} {user / 2**20:9.1f} MiB")
    print(
        f"  write amplification        {stats['write_amplification']:.2f} "
        f"(log + flush + compaction bytes / user bytes)"
    )
    print(
        f"  compactions {stats['compactions']}, trivial moves "
        f"{stats['trivial_moves']}, flushes {stats['flushes']}"
    )
    for number, level in enumerate(levels):
        print(
            f"  level {number}: {level['files']} files, {level['bytes'] / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
