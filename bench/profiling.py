"""Profile of tlsm's embedded workloads: the top functions of each phase.

    python -m bench.profiling --sizes '{...}' --dir /tmp/x --out profile.json

Runs the workload against tlsm in mode "none", each phase under its own
cProfile.Profile, and writes the top functions of each phase by own time.
Only the first --profile-appends appends of the load are profiled. The rest
load without the profiler, so the reads and batches that follow see a
database of the full size. cProfile adds a cost per Python call, so the
phases run slower than in bench.embedded and only the shares matter.
"""

import argparse
import cProfile
import json
import os
import pstats
import sys

from . import workloads
from .peers import TlsmPeer


def top_functions(stats, count=15):
    """Return the count functions with the most own time in a pstats.Stats."""
    total = stats.total_tt or 1e-12
    rows = []
    for (filename, line, name), (
        _cc,
        calls,
        tottime,
        cumtime,
        _,
    ) in stats.stats.items():
        rows.append(
            {
                "function": f"{_short_path(filename)}:{line}({name})",
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
                "share": tottime / total,
            }
        )
    rows.sort(key=lambda row: row["tottime_s"], reverse=True)
    return {"total_s": stats.total_tt, "top": rows[:count]}


def _short_path(filename):
    for marker in ("/tlsm/", "/tlsm_ext/", "/bench/"):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + 1 :]
    return os.path.basename(filename) if filename.startswith("/") else filename


def _profiled(call):
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    return top_functions(pstats.Stats(profiler))


def profile_tlsm(work, path, profile_appends):
    """Return {phase: top functions} for tlsm on work."""
    peer = TlsmPeer()
    peer.open(path, "none")
    limit = workloads.PULL_LIMIT
    count = workloads.NEWEST_COUNT

    def load(appends):
        for timeline_id, payload in appends:
            peer.append(timeline_id, payload)

    def pulls():
        for timeline_id, after in work.pulls:
            peer.pull(timeline_id, after, limit)

    def newest():
        for timeline_id in work.newest:
            peer.newest(timeline_id, count)

    def batches():
        for batch in work.batches:
            peer.append_batch(batch)

    out = {"append": _profiled(lambda: load(work.appends[:profile_appends]))}
    load(work.appends[profile_appends:])
    out["close"] = _profiled(peer.close)
    out["reopen"] = _profiled(lambda: peer.open(path, "none"))
    out["pull"] = _profiled(pulls)
    out["newest"] = _profiled(newest)
    out["batch"] = _profiled(batches)
    peer.close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", required=True, help="JSON object of operation counts"
    )
    parser.add_argument("--source", default="synthetic", choices=("synthetic", "irc"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--profile-appends", type=int, default=100_000, help="appends profiled"
    )
    parser.add_argument("--dir", required=True, help="empty scratch directory")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    work = workloads.build(json.loads(args.sizes), source=args.source, seed=args.seed)
    result = profile_tlsm(work, os.path.join(args.dir, "tlsm"), args.profile_appends)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
