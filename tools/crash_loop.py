"""Kill a writing process with SIGKILL again and again and check what survives.

    python tools/crash_loop.py [--rounds 50] [--seconds 600] [--sync none|periodic|always]

Each round starts a child that opens one data directory and appends single
entries and cross-table batches as fast as it can, printing every
acknowledged write. After a random delay the parent kills it with SIGKILL,
reopens the directory and checks that every acknowledged write is present
with its payload, that each timeline's seqs strictly increase, and that the
next append gets a seq above every acknowledged one. Small memtables make
flushes and compactions happen during the run. Stops after --rounds rounds
or --seconds seconds, whichever comes first, and exits 1 on the first
failure, naming the round and the missing write.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import tlsm

CHILD_OPTIONS = {
    "memtable_bytes": 64 * 1024,
    "level_fanout": 3,
    "level1_bytes": 256 * 1024,
    "level_size_ratio": 4,
    "target_file_bytes": 32 * 1024,
}


def child(path, sync):
    db = tlsm.open(path, sync=sync, **CHILD_OPTIONS)
    sync_table = db.table("sync", ttl=3600)
    out = sys.stdout
    count = 0
    while True:
        timeline = f"t{count % 17}"
        payload = b"%d" % count
        if count % 4 == 3:
            with db.batch() as batch:
                batch.append(timeline, payload)
                batch.append(f"u{count % 5}", payload, table=sync_table)
            first, second = batch.results
            out.write(
                f"default {timeline} {first} {count}\nsync u{count % 5} {second} {count}\n"
            )
        else:
            seq = db.append(timeline, payload)
            out.write(f"default {timeline} {seq} {count}\n")
        out.flush()
        count += 1


def run_round(path, sync, rng):
    # The child reports to a file, not a pipe, because a pipe that is not read
    # while the parent sleeps fills up and stalls the child.
    with tempfile.TemporaryFile("w+") as report:
        process = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                path,
                "--sync",
                sync,
            ],
            stdout=report,
            text=True,
        )
        time.sleep(rng.uniform(0.05, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        report.seek(0)
        output = report.read()
    acked = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].isdigit():
            acked[(parts[0], parts[1], int(parts[2]))] = parts[3].encode()
    with tlsm.open(path, **CHILD_OPTIONS) as db:
        tables = {"default": db.table("default"), "sync": db.table("sync")}
        for (table, timeline, seq), payload in acked.items():
            if tables[table].get(timeline, seq) != payload:
                return f"acknowledged write {table}/{timeline}/{seq} missing or wrong"
        highest = {}
        for table, timeline, seq in acked:
            highest[(table, timeline)] = max(highest.get((table, timeline), 0), seq)
        for (table, timeline), seq in highest.items():
            seqs = [s for s, _ in tables[table].scan(timeline)]
            if seqs != sorted(set(seqs)):
                return f"{table}/{timeline} seqs not strictly increasing"
            if tables[table].last_seq(timeline) < seq:
                return f"{table}/{timeline} last seq went below acknowledged {seq}"
    return None, len(acked)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=50, help="maximum number of kills"
    )
    parser.add_argument("--seconds", type=float, default=600, help="maximum run time")
    parser.add_argument(
        "--sync", choices=("none", "periodic", "always"), default="none"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", help="data directory (default: a new temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.sync)
        return 0
    rng = random.Random(args.seed)
    path = args.data or tempfile.mkdtemp(prefix="tlsm-crash-")
    deadline = time.monotonic() + args.seconds
    total = 0
    for round_number in range(1, args.rounds + 1):
        if time.monotonic() > deadline:
            break
        result = run_round(path, args.sync, rng)
        if isinstance(result, str):
            print(f"round {round_number}: FAILED: {result} (data in {path})")
            return 1
        total += result[1]
        print(f"round {round_number}: {result[1]} acknowledged writes verified")
    print(f"ok: {round_number} rounds, {total} acknowledged writes verified in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
