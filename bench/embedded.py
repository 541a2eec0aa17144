"""One peer, one repetition of the embedded workloads, in its own process.

run.py starts this module once per peer and repetition, so that peak memory
and caches of one library never show up in another's figures:

    python -m bench.embedded --peer tlsm --sizes '{...}' --dir /tmp/x --out r.json

Phases, in order, on one data directory in mode "none":
  1. load: the single appends, timed as a whole (no per-call timer);
  2. append latency: further single appends, each timed;
  3. close() after the load, bytes on disk, then reopen to the first read;
  4. pulls (entries after a checkpoint, up to 100) and newest-20 reads;
  5. group-send batches; 6. the mixed workload; 7. close() again.
Then, on a fresh directory in mode "always" (fsync per write), a smaller
number of single appends and batches, each timed.
Peak RSS is this process's peak RSS (VmHWM, reset just before the store is
opened) minus its RSS at that moment, so the workload lists built first are
not counted.
"""

import argparse
import json
import os
import resource
import sys
import time

from . import workloads
from .peers import PEERS

PERCENTILES = (50, 99, 99.9)


def percentiles(samples_ns):
    """Return p50, p99 and p99.9 of samples_ns in microseconds (nearest rank)."""
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)
    out = {}
    for p in PERCENTILES:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        out[f"p{p:g}"] = ordered[index] / 1000
    out["mean"] = sum(ordered) / len(ordered) / 1000
    return out


def histogram(samples_ns, bins=60):
    """Return a log-spaced histogram (edges in us, counts) for the report charts."""
    if not samples_ns:
        return None
    import numpy as np

    values = np.asarray(samples_ns, dtype=np.float64) / 1000
    low = max(values.min(), 0.05)
    edges = np.logspace(np.log10(low), np.log10(values.max() * 1.001), bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    return {"edges_us": edges.round(3).tolist(), "counts": counts.tolist()}


def disk_bytes(path):
    """Return allocated bytes (st_blocks) of every file under path."""
    total = 0
    apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            total += st.st_blocks * 512
            apparent += st.st_size
    return total, apparent


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss():
    """Reset the process's peak RSS (VmHWM) and return the current RSS in bytes.

    Writing 5 to /proc/self/clear_refs resets VmHWM (Linux 4.0 and later), so
    the peak measured next excludes the transient peak of building the
    workload. Without it, the peak since process start is used.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return (
        _status_bytes("VmRSS")
        or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )


def peak_rss_bytes():
    peak = _status_bytes("VmHWM")
    return peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _throughput(ops, seconds, entries=None):
    out = {
        "ops": ops,
        "seconds": seconds,
        "ops_per_s": ops / seconds if seconds else None,
    }
    if entries is not None:
        out["entries"] = entries
        out["entries_per_s"] = entries / seconds if seconds else None
    return out


def _timed_each(call, items, star=False):
    """Call call(item) per item; return wall seconds, per-call ns, entries returned."""
    clock = time.perf_counter_ns
    samples = []
    record = samples.append
    total = 0
    started = clock()
    if star:
        for item in items:
            t0 = clock()
            total += len(call(*item))
            record(clock() - t0)
    else:
        for item in items:
            t0 = clock()
            total += len(call(item))
            record(clock() - t0)
    return (clock() - started) / 1e9, samples, total


def _load(peer, appends):
    append = peer.append
    started = time.perf_counter()
    for timeline_id, payload in appends:
        append(timeline_id, payload)
    return time.perf_counter() - started


def _timed_appends(peer, appends):
    append = peer.append
    clock = time.perf_counter_ns
    samples = []
    started = clock()
    for timeline_id, payload in appends:
        t0 = clock()
        append(timeline_id, payload)
        samples.append(clock() - t0)
    return (clock() - started) / 1e9, samples


def _mixed(peer, ops):
    clock = time.perf_counter_ns
    append, pull, newest = peer.append, peer.pull, peer.newest
    samples = []
    started = clock()
    for op in ops:
        t0 = clock()
        kind = op[0]
        if kind == "newest":
            newest(op[1], op[2])
        elif kind == "pull":
            pull(op[1], op[2], workloads.PULL_LIMIT)
        else:
            append(op[1], op[2])
        samples.append(clock() - t0)
    return (clock() - started) / 1e9, samples


def _record(result, name, seconds, samples, ops, entries=None):
    result[name] = _throughput(ops, seconds, entries)
    result[name]["latency_us"] = percentiles(samples)
    result[name]["histogram"] = histogram(samples)


def run_none_mode(peer, work, path, result):
    """Phases 1 to 7 in mode "none" (or "memory" for the dict)."""
    mode = peer.modes[0]
    persistent = mode != "memory"
    baseline = reset_peak_rss()
    peer.open(path, mode)
    result["settings"] = peer.settings(mode)
    result["mode"] = mode

    seconds = _load(peer, work.appends)
    result["append"] = _throughput(len(work.appends), seconds)
    seconds, samples = _timed_appends(peer, work.extra_appends)
    result["append"]["latency_us"] = percentiles(samples)
    result["append"]["histogram"] = histogram(samples)
    result["append"]["latency_ops_per_s"] = len(samples) / seconds if seconds else None

    first_timeline = work.newest[0]
    if persistent:
        started = time.perf_counter()
        peer.close()
        result["close_after_load_s"] = time.perf_counter() - started
        allocated, apparent = disk_bytes(path)
        result["disk"] = {
            "allocated_bytes": allocated,
            "apparent_bytes": apparent,
            # The latency pass appended extra_appends after the load.
            "payload_bytes": work.payload_bytes
            + sum(len(p) for _, p in work.extra_appends),
            "entries": len(work.appends) + len(work.extra_appends),
        }
        started = time.perf_counter()
        peer.open(path, mode)
        peer.newest(first_timeline, 1)
        result["reopen_to_first_read_s"] = time.perf_counter() - started

    limit = workloads.PULL_LIMIT
    seconds, samples, total = _timed_each(
        peer.pull, [(t, a, limit) for t, a in work.pulls], star=True
    )
    _record(result, "pull", seconds, samples, len(work.pulls), total)
    count = workloads.NEWEST_COUNT
    seconds, samples, total = _timed_each(
        peer.newest, [(t, count) for t in work.newest], star=True
    )
    _record(result, "newest", seconds, samples, len(work.newest), total)

    seconds, samples, total = _timed_each(peer.append_batch, work.batches)
    _record(result, "batch", seconds, samples, len(work.batches), total)

    seconds, samples = _mixed(peer, work.mixed)
    _record(result, "mixed", seconds, samples, len(work.mixed))

    started = time.perf_counter()
    peer.close()
    if persistent:
        result["close_after_all_s"] = time.perf_counter() - started
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["baseline_rss_bytes"] = baseline
    result["store_rss_bytes"] = result["peak_rss_bytes"] - baseline


def run_always_mode(peer, work, path, sizes, result):
    """Single appends and batches with an fsync per write, each call timed."""
    if "always" not in peer.modes:
        return
    peer.open(path, "always")
    out = {"settings": peer.settings("always")}
    appends = work.extra_appends[: sizes["sync_appends"]]
    seconds, samples = _timed_appends(peer, appends)
    _record(out, "append", seconds, samples, len(appends))
    batches = work.batches[: sizes["sync_batches"]]
    seconds, samples, total = _timed_each(peer.append_batch, batches)
    _record(out, "batch", seconds, samples, len(batches), total)
    peer.close()
    result["always"] = out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument(
        "--sizes", required=True, help="JSON object of operation counts"
    )
    parser.add_argument("--source", default="synthetic", choices=("synthetic", "irc"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dir", required=True, help="empty scratch directory")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    sizes = json.loads(args.sizes)
    started = time.perf_counter()
    work = workloads.build(sizes, source=args.source, seed=args.seed)
    peer = PEERS[args.peer]()
    result = {
        "peer": args.peer,
        "workload": work.describe(),
        "build_seconds": time.perf_counter() - started,
        "versions": peer.versions(),
    }
    run_none_mode(peer, work, os.path.join(args.dir, "none"), result)
    run_always_mode(peer, work, os.path.join(args.dir, "always"), sizes, result)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
