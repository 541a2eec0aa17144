"""Scan throughput of tlsm against LMDB, both measured in one process.

Workload: the synthetic load of bench.workloads (1,000,000 appends of 128
random bytes over 10,000 timelines with Zipf popularity, seed 42), written
once to each store under --scratch and reused by later runs. Each round
then times, on the reopened stores, "entries after a checkpoint, up to
100" (bench.peers pull) and "newest 20, reverse" (bench.peers newest) over
the same random timelines, alternating tlsm and LMDB. Prints each round
and the medians of scans/s and of the tlsm/LMDB ratio.

With --cold, both stores are reopened before each round, so tlsm starts
with an empty block cache as in bench.embedded, which reads right after a
reopen.

Run: python -m bench.scan_ratio [--rounds 7] [--reads 20000] [--cold]
"""

import argparse
import os
import platform
import statistics
import time

import tlsm.scan
from bench import peers, workloads


def _load(peer, path, appends):
    peer.open(path, "none")
    for timeline_id, payload in appends:
        peer.append(timeline_id, payload)
    peer.close()
    with open(os.path.join(path, ".loaded"), "w") as marker:
        marker.write("done\n")


def _time_calls(call, items):
    started = time.perf_counter()
    for item in items:
        call(*item)
    return len(items) / (time.perf_counter() - started)


def _open_stores(scratch, appends, work):
    """Return the opened peers and their paths, loading a store at first use."""
    stores = {"tlsm": peers.TlsmPeer(), "lmdb": peers.LmdbPeer()}
    paths = {}
    for name, peer in stores.items():
        path = paths[name] = os.path.join(scratch, f"{name}-{appends}")
        if not os.path.exists(os.path.join(path, ".loaded")):
            os.makedirs(path, exist_ok=True)
            _load(peer, path, work.appends)
        peer.open(path, "none")
    return stores, paths


def _run_round(stores, operations):
    """Time each read kind on both stores and return {kind: {store: scans/s}}."""
    rates = {}
    for kind, items in operations.items():
        rates[kind] = {
            name: _time_calls(getattr(peer, kind), items)
            for name, peer in stores.items()
        }
    return rates


def _print_medians(results):
    for kind, rounds in results.items():
        tlsm_rate = statistics.median(r["tlsm"] for r in rounds)
        lmdb_rate = statistics.median(r["lmdb"] for r in rounds)
        ratio = statistics.median(r["tlsm"] / r["lmdb"] for r in rounds)
        print(
            f"median {kind}: tlsm {tlsm_rate / 1e3:.1f}k/s, lmdb "
            f"{lmdb_rate / 1e3:.1f}k/s, ratio {ratio:.2f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default="/tmp/tlsm-scan-ratio")
    parser.add_argument("--appends", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="reopen both stores before each round, as bench.embedded reads "
        "right after a reopen (tlsm's block cache starts empty)",
    )
    args = parser.parse_args(argv)
    sizes = {
        "appends": args.appends,
        "latency_appends": 0,
        "batches": 0,
        "pulls": args.reads,
        "newest": args.reads,
        "mixed": 0,
    }
    work = workloads.build(sizes)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {args.appends} appends, "
        f"tlsm scan implementation {tlsm.scan.IMPLEMENTATION}"
    )
    stores, paths = _open_stores(args.scratch, args.appends, work)
    operations = {
        "pull": [(t, a, workloads.PULL_LIMIT) for t, a in work.pulls],
        "newest": [(t, workloads.NEWEST_COUNT) for t in work.newest],
    }

    results = {kind: [] for kind in operations}
    for round_number in range(args.rounds):
        if args.cold:
            for name, peer in stores.items():
                peer.close()
                peer.open(paths[name], "none")
        line = []
        for kind, rates in _run_round(stores, operations).items():
            results[kind].append(rates)
            line.append(
                f"{kind} tlsm {rates['tlsm'] / 1e3:.1f}k lmdb "
                f"{rates['lmdb'] / 1e3:.1f}k ratio {rates['tlsm'] / rates['lmdb']:.2f}"
            )
        print(f"round {round_number}: " + "; ".join(line))
    _print_medians(results)
    for peer in stores.values():
        peer.close()


if __name__ == "__main__":
    main()
