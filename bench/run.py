"""Run the whole benchmark suite and write bench/results/latest.json and BENCHMARKS.md.

    python -m bench.run            # full: 1,000,000 appends, 3 repetitions
    python -m bench.run --quick    # 50,000 appends, 1 repetition, under 2 minutes
    python -m bench.report         # rebuild BENCHMARKS.md and charts from the JSON

The suite has three parts, and each module's docstring lists its workloads:
  embedded   bench/embedded.py, one process per peer and repetition.
  profile    bench/profiling.py, cProfile of tlsm's embedded workloads, and
             of the tlsm server under two of the server tests.
  server     bench/server.py, tlsm's server against redis-server Streams.
Repetitions run the peers in turn (all peers once, then all again), so a
slow spell of the shared machine hits every peer alike. Figures are medians
over repetitions, and ratios are tlsm's median over the peer's median.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    # Run as a script (python bench/run.py): make the repository importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from tqdm import tqdm

from bench import server as server_bench
from bench.peers import DEFAULT_MODES, PEERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")

FULL_SIZES = {
    "appends": 1_000_000,
    "latency_appends": 20_000,
    "batches": 20_000,
    "pulls": 50_000,
    "newest": 50_000,
    "mixed": 50_000,
    "sync_appends": 1_000,
    "sync_batches": 200,
}
QUICK_SIZES = {
    "appends": 50_000,
    "latency_appends": 2_000,
    "batches": 2_000,
    "pulls": 5_000,
    "newest": 5_000,
    "mixed": 5_000,
    "sync_appends": 200,
    "sync_batches": 50,
}
# The profile loads as many appends as the run, so reads see the same size.
PROFILE_SIZES = {
    "latency_appends": 0,
    "batches": 2_000,
    "pulls": 10_000,
    "newest": 10_000,
    "mixed": 0,
}
FULL_SERVER_SIZES = {
    "append_p1": 100_000,
    "append_p16": 400_000,
    "newest20_p1": 100_000,
    "newest20_p16": 200_000,
    "pull100_p16": 100_000,
    "always_p1": 20_000,
    "always_p16": 20_000,
    "profile_requests": 50_000,
    "preload_per_key": 20,
}
QUICK_SERVER_SIZES = {
    "append_p1": 10_000,
    "append_p16": 30_000,
    "newest20_p1": 10_000,
    "newest20_p16": 20_000,
    "pull100_p16": 10_000,
    "always_p1": 2_000,
    "always_p16": 4_000,
    "profile_requests": 5_000,
    "preload_per_key": 3,
}


# -- machine and versions ------------------------------------------------


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _filesystem_of(path):
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            if path.startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype)
    return best[1]


def _git(*args):
    done = subprocess.run(
        ["git", *args], cwd=REPO, check=False, capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info(scratch):
    import psutil

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "scratch_dir": scratch,
        "scratch_filesystem": _filesystem_of(scratch),
        "load_average_start": os.getloadavg(),
    }


def package_versions():
    import importlib.metadata

    out = {}
    for name in (
        "tlsm",
        "rocksdict",
        "plyvel",
        "lmdb",
        "numpy",
        "matplotlib",
        "lz4",
        "tqdm",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    for name, cls in PEERS.items():
        try:
            out.update(cls().versions())
        except ImportError as exc:
            out[name] = f"not installed ({exc})"
    return out


# -- embedded ------------------------------------------------------------


def _run_module(module, args, scratch, label):
    work_dir = tempfile.mkdtemp(prefix=f"{label}-", dir=scratch)
    out_path = os.path.join(work_dir, "result.json")
    # faulthandler prints the Python stack if an extension crashes the process.
    argv = [sys.executable, "-X", "faulthandler", "-m", module]
    argv += ["--dir", work_dir, "--out", out_path] + args
    try:
        done = subprocess.run(
            argv, cwd=REPO, check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            return {
                "error": f"{label} exited with {done.returncode}: {done.stderr[-3000:]}"
            }
        with open(out_path) as f:
            return json.load(f)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_embedded(peers, sizes, repeat, source, seed, scratch):
    """Return {peer: [result of each repetition]}."""
    runs = {peer: [] for peer in peers}
    common = ["--sizes", json.dumps(sizes), "--source", source, "--seed", str(seed)]
    with tqdm(total=repeat * len(peers), desc="embedded", unit="run") as bar:
        for repetition in range(repeat):
            for peer in peers:
                bar.set_postfix_str(f"{peer} #{repetition + 1}")
                result = _run_module(
                    "bench.embedded", ["--peer", peer] + common, scratch, peer
                )
                runs[peer].append(result)
                if "error" in result:
                    tqdm.write(result["error"])
                bar.update(1)
    return runs


def run_profile(appends, source, seed, scratch):
    sizes = dict(PROFILE_SIZES, appends=appends)
    args = ["--sizes", json.dumps(sizes), "--source", source, "--seed", str(seed)]
    args += ["--profile-appends", str(min(appends, 100_000))]
    return _run_module("bench.profiling", args, scratch, "profile")


# -- server --------------------------------------------------------------


def run_servers(sizes, repeat, placements, seed, scratch):
    """Return {placement: {persistence: {kind: [results per repetition]}}}."""
    payload = server_bench.make_payload(seed)
    plan = [
        (placement, persistence, kind)
        for placement in placements
        for persistence in ("none", "always")
        for kind in ("redis", "tlsm")
    ]
    total = repeat * sum(server_bench.count_tests(p) for _, p, _ in plan)
    runs = {}
    with tqdm(total=total, desc="server", unit="test") as bar:
        for _repetition in range(repeat):
            for placement, persistence, kind in plan:
                bar.set_postfix_str(f"{kind} {persistence} {placement}")
                slot = runs.setdefault(placement, {}).setdefault(persistence, {})
                try:
                    result = server_bench.run_one_server(
                        kind, persistence, placement, sizes, payload, scratch, bar
                    )
                except Exception as exc:  # noqa: BLE001 - record it, run the rest
                    result = {"error": str(exc)}
                    tqdm.write(f"{kind} {persistence} {placement}: {exc}")
                slot.setdefault(kind, []).append(result)
    return runs


def run_server_profile(sizes, payload, scratch):
    try:
        return server_bench.profile_tlsm_server(sizes, payload, scratch)
    except Exception as exc:  # noqa: BLE001 - a failed profile keeps the results
        print(f"server profile failed: {exc}")
        return {"error": str(exc)}


def save_results(results, path, started):
    """Write results to path as JSON, with the end load average and duration."""
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.time() - started
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


# -- summaries -----------------------------------------------------------


def _get(result, path):
    value = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


EMBEDDED_METRICS = (
    "append.ops_per_s",
    "append.latency_us.p50",
    "append.latency_us.p99",
    "append.latency_us.p99.9",
    "batch.entries_per_s",
    "batch.ops_per_s",
    "batch.latency_us.p50",
    "batch.latency_us.p99",
    "batch.latency_us.p99.9",
    "pull.ops_per_s",
    "pull.latency_us.p50",
    "pull.latency_us.p99",
    "pull.latency_us.p99.9",
    "newest.ops_per_s",
    "newest.latency_us.p50",
    "newest.latency_us.p99",
    "newest.latency_us.p99.9",
    "mixed.ops_per_s",
    "mixed.latency_us.p50",
    "mixed.latency_us.p99",
    "mixed.latency_us.p99.9",
    "reopen_to_first_read_s",
    "close_after_load_s",
    "close_after_all_s",
    "disk.allocated_bytes",
    "disk.apparent_bytes",
    "disk.payload_bytes",
    "store_rss_bytes",
    "always.append.ops_per_s",
    "always.append.latency_us.p50",
    "always.append.latency_us.p99",
    "always.append.latency_us.p99.9",
    "always.batch.entries_per_s",
    "always.batch.latency_us.p50",
    "always.batch.latency_us.p99",
)


def _get_metric(result, path):
    # "p99.9" contains a dot, so it cannot be looked up part by part.
    if path.endswith("p99.9"):
        parent = _get(result, path[: -len(".p99.9")])
        return parent.get("p99.9") if isinstance(parent, dict) else None
    return _get(result, path)


def summarize_embedded(runs):
    """Return medians per peer, ratios of tlsm to each peer, and result checks."""
    medians = {}
    for peer, results in runs.items():
        good = [r for r in results if "error" not in r]
        medians[peer] = {
            path: _median([_get_metric(r, path) for r in good])
            for path in EMBEDDED_METRICS
        }
        medians[peer]["runs"] = len(good)
        allocated = medians[peer]["disk.allocated_bytes"]
        payload = medians[peer]["disk.payload_bytes"]
        medians[peer]["disk_ratio"] = (
            allocated / payload if allocated and payload else None
        )
    ratios = {}
    base = medians.get("tlsm", {})
    for peer, values in medians.items():
        if peer == "tlsm":
            continue
        ratios[peer] = {}
        for path in EMBEDDED_METRICS:
            if path.endswith("per_s") and base.get(path) and values.get(path):
                ratios[peer][path] = base[path] / values[path]
    return {
        "medians": medians,
        "ratios_tlsm_over_peer": ratios,
        "checks": _check_reads(runs),
    }


def _check_reads(runs):
    """Compare the entries each peer returned; all peers should agree."""
    totals = {}
    for peer, results in runs.items():
        for result in results:
            if "error" in result:
                continue
            key = tuple(
                _get(result, f"{w}.entries") for w in ("pull", "newest", "batch")
            )
            totals.setdefault(peer, set()).add(key)
    reference = totals.get("dict") or next(iter(totals.values()), None)
    mismatches = {
        p: sorted(v) for p, v in totals.items() if reference and v != reference
    }
    return {
        "entries_returned (pull, newest, batch)": {
            p: sorted(v) for p, v in totals.items()
        },
        "mismatches": mismatches,
    }


def summarize_servers(runs):
    """Return {placement: {persistence: {test: {kind: medians, ratio}}}}."""
    out = {}
    for placement, by_persistence in runs.items():
        for persistence, by_kind in by_persistence.items():
            tests = {}
            for kind, results in by_kind.items():
                good = [r for r in results if "error" not in r]
                tests_run = {
                    t for r in good for t, v in r.items() if isinstance(v, dict)
                }
                for test in sorted(tests_run):
                    samples = [r[test] for r in good if test in r]
                    entry = {
                        "ops_per_s": _median([s["ops_per_s"] for s in samples]),
                        "server_cpu_us_per_op": _median(
                            [1e6 * s["server_cpu_s"] / s["requests"] for s in samples]
                        ),
                        "runs": len(samples),
                    }
                    for p in ("p50", "p99", "p99.9"):
                        entry[p] = _median([s["latency_us"].get(p) for s in samples])
                    tests.setdefault(test, {})[kind] = entry
            for test, kinds in tests.items():
                if kinds.get("tlsm", {}).get("ops_per_s") and kinds.get(
                    "redis", {}
                ).get("ops_per_s"):
                    kinds["ratio_tlsm_over_redis"] = (
                        kinds["tlsm"]["ops_per_s"] / kinds["redis"]["ops_per_s"]
                    )
            out.setdefault(placement, {})[persistence] = tests
    return out


# -- main ----------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Run tlsm's benchmark suite."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 1 repetition"
    )
    parser.add_argument(
        "--repeat", type=int, help="repetitions of each measurement (3; 1 with --quick)"
    )
    parser.add_argument(
        "--appends", type=int, help="single appends in the load phase (1,000,000)"
    )

    parser.add_argument(
        "--source",
        choices=("synthetic", "irc"),
        default="synthetic",
        help="synthetic Zipf workload or the IRC replay set (synthetic)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of every generator (42)"
    )

    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated embedded peers ({','.join(PEERS)})",
    )
    parser.add_argument(
        "--placements",
        default="same,split",
        help="CPU placements of the server tests: same, split (both)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to skip: embedded, profile, server",
    )

    parser.add_argument(
        "--scratch",
        default=None,
        help="directory for data directories (a new temp dir under $TMPDIR)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(RESULTS_DIR, "latest.json"),
        help="results file (bench/results/latest.json)",
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--no-report", action="store_true", help="do not write BENCHMARKS.md"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    server_sizes = dict(QUICK_SERVER_SIZES if args.quick else FULL_SERVER_SIZES)
    if args.appends:
        sizes["appends"] = args.appends
    repeat = args.repeat or (1 if args.quick else 3)
    skip = {part for part in args.skip.split(",") if part}
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(
            f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}"
        )
    placements = [p for p in args.placements.split(",") if p]
    for placement in placements:
        if placement not in server_bench.PLACEMENTS:
            raise SystemExit(f"unknown placement {placement!r}; use same or split")

    scratch = tempfile.mkdtemp(prefix="tlsm-bench-", dir=args.scratch)
    started = time.time()
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "command": " ".join(
            ["python -m bench.run"] + (argv if argv is not None else sys.argv[1:])
        ),
        "note": args.note,
        "quick": args.quick,
        "repeat": repeat,
        "git": {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain")),
        },
        "machine": machine_info(scratch),
        "versions": package_versions(),
        "config": {
            "source": args.source,
            "seed": args.seed,
            "sizes": sizes,
            "server_sizes": server_sizes,
            "peers": peers,
            "default_modes": {p: DEFAULT_MODES[p] for p in peers},
            "placements": {p: server_bench.PLACEMENTS[p] for p in placements},
            "server_clients": server_bench.CLIENTS,
            "server_keyspace": server_bench.KEYSPACE,
        },
    }
    print(
        f"tlsm bench: {results['machine']['cpu_model']}, {results['machine']['usable_cpus']} CPUs, "
        f"git {results['git']['commit'] and results['git']['commit'][:10]}, "
        f"repeat {repeat}, appends {sizes['appends']:,}, scratch {scratch}"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    try:
        if "embedded" not in skip:
            runs = run_embedded(peers, sizes, repeat, args.source, args.seed, scratch)
            results["embedded"] = {"runs": runs, "summary": summarize_embedded(runs)}
            save_results(results, args.out, started)
        if "profile" not in skip:
            print("profiling tlsm")
            profile = run_profile(sizes["appends"], args.source, args.seed, scratch)
            results["profile"] = {"embedded": profile}
            save_results(results, args.out, started)
        if "server" not in skip:
            results["versions"].update(server_bench.server_versions())
            runs = run_servers(server_sizes, repeat, placements, args.seed, scratch)
            results["server"] = {"runs": runs, "summary": summarize_servers(runs)}
            save_results(results, args.out, started)
            if "profile" not in skip:
                payload = server_bench.make_payload(args.seed)
                results.setdefault("profile", {})["server"] = run_server_profile(
                    server_sizes, payload, scratch
                )
    finally:
        # Whatever finished is kept, even when a later part raised.
        shutil.rmtree(scratch, ignore_errors=True)
        save_results(results, args.out, started)
    print(f"wrote {args.out} after {results['seconds']:.0f} s")
    if not args.no_report:
        from bench import report

        report.main(["--results", args.out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
