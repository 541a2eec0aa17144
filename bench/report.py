"""Write BENCHMARKS.md and its PNG charts from a results file of bench.run.

    python -m bench.report [--results bench/results/latest.json] [--out BENCHMARKS.md]

Charts go to bench/results/ next to the results file. Nothing is measured
here, so the report can be rebuilt at any time from the JSON.
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = (
    ("append.ops_per_s", "single appends/s"),
    ("batch.entries_per_s", "1+20 batches, entries/s"),
    ("pull.ops_per_s", '"after checkpoint, up to 100" reads/s'),
    ("newest.ops_per_s", '"newest 20, reverse" reads/s'),
    ("mixed.ops_per_s", "mixed ops/s"),
)
LATENCY_WORKLOADS = ("append", "batch", "pull", "newest", "mixed")
PEER_COLORS = {
    "tlsm": "#d62728",
    "rocksdict": "#1f77b4",
    "plyvel": "#2ca02c",
    "lmdb": "#9467bd",
    "sqlite": "#8c564b",
    "dict": "#7f7f7f",
    "redis": "#1f77b4",
}


# -- formatting ----------------------------------------------------------


def rate(value):
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def micros(value):
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def seconds(value):
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def mib(value):
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


# -- targets -------------------------------------------------------------


def _target_row(name, value, reference, achieved, required, format_value):
    """Build one row of the targets table, where achieved and required are ratios."""
    if achieved is None:
        status = "not measured"
    elif achieved >= required:
        status = "met"
    else:
        status = f"missed: {achieved / required:.0%} of the target"
    return (
        name,
        format_value(value),
        format_value(reference),
        ratio(achieved),
        f">= {required:g}x",
        status,
    )


def embedded_targets(summary):
    med = summary["medians"]
    tlsm = med.get("tlsm", {})
    rocks = med.get("rocksdict", {})
    lmdb = med.get("lmdb", {})

    def over(a, b, key):
        return a.get(key) / b.get(key) if a.get(key) and b.get(key) else None

    rows = [
        _target_row(
            "single appends vs rocksdict",
            tlsm.get("append.ops_per_s"),
            rocks.get("append.ops_per_s"),
            over(tlsm, rocks, "append.ops_per_s"),
            2,
            rate,
        ),
        _target_row(
            "1+20 batches, entries/s vs rocksdict",
            tlsm.get("batch.entries_per_s"),
            rocks.get("batch.entries_per_s"),
            over(tlsm, rocks, "batch.entries_per_s"),
            2,
            rate,
        ),
        _target_row(
            "after-checkpoint reads vs lmdb",
            tlsm.get("pull.ops_per_s"),
            lmdb.get("pull.ops_per_s"),
            over(tlsm, lmdb, "pull.ops_per_s"),
            1,
            rate,
        ),
        _target_row(
            "newest-20 reads vs lmdb",
            tlsm.get("newest.ops_per_s"),
            lmdb.get("newest.ops_per_s"),
            over(tlsm, lmdb, "newest.ops_per_s"),
            1,
            rate,
        ),
    ]
    reopen = tlsm.get("reopen_to_first_read_s")
    rocks_reopen = rocks.get("reopen_to_first_read_s")
    rows.append(
        _target_row(
            "reopen to first read vs rocksdict (rocksdict time / tlsm time)",
            reopen,
            rocks_reopen,
            rocks_reopen / reopen if reopen and rocks_reopen else None,
            1,
            seconds,
        )
    )
    close = tlsm.get("close_after_load_s")
    rows.append(
        _target_row(
            "close() after the load, vs 1 s (1 s / close time)",
            close,
            1.0,
            1.0 / close if close else None,
            1,
            seconds,
        )
    )
    disk = tlsm.get("disk_ratio")
    rows.append(
        _target_row(
            "bytes on disk vs 1.1x payload bytes (1.1 / (disk / payload))",
            tlsm.get("disk.allocated_bytes"),
            1.1 * (tlsm.get("disk.payload_bytes") or 0),
            1.1 / disk if disk else None,
            1,
            mib,
        )
    )
    return rows


def server_targets(summary):
    rows = []
    checks = (
        (
            "none",
            "append P1",
            0.5,
            "unpipelined appends, sync none vs XADD AOF everysec",
        ),
        (
            "none",
            "append P16",
            0.5,
            "appends pipelined 16, sync none vs XADD AOF everysec",
        ),
        (
            "always",
            "append P1",
            1.0,
            "unpipelined appends, sync always vs XADD appendfsync always",
        ),
        ("none", "newest20 P16", 0.5, "newest 20 pipelined 16 vs XREVRANGE COUNT 20"),
    )
    for placement, by_persistence in summary.items():
        for persistence, test, required, name in checks:
            kinds = by_persistence.get(persistence, {}).get(test, {})
            rows.append(
                _target_row(
                    f"{name} ({placement} core)",
                    kinds.get("tlsm", {}).get("ops_per_s"),
                    kinds.get("redis", {}).get("ops_per_s"),
                    kinds.get("ratio_tlsm_over_redis"),
                    required,
                    rate,
                )
            )
    return rows


# -- charts --------------------------------------------------------------


def chart_embedded_ratios(summary, path):
    ratios = summary["ratios_tlsm_over_peer"]
    peers = [p for p in ratios if ratios[p]]
    if not peers:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(peers)
    for i, peer in enumerate(peers):
        values = [ratios[peer].get(key) or 0 for key, _ in WORKLOADS]
        positions = [x + i * width for x in range(len(WORKLOADS))]
        ax.bar(positions, values, width, label=peer, color=PEER_COLORS.get(peer))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(WORKLOADS))])
    ax.set_xticklabels(
        [label.replace(" reads/s", "").replace(", ", "\n") for _, label in WORKLOADS],
        fontsize=8,
    )
    ax.set_ylabel("tlsm / peer (throughput, log scale)")
    ax.set_title(
        "Embedded throughput of tlsm relative to each peer (above 1: tlsm faster)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cdf_from_histogram(histogram):
    edges = histogram["edges_us"]
    counts = histogram["counts"]
    total = sum(counts) or 1
    xs, ys, running = [], [], 0
    for edge, count in zip(edges[1:], counts):
        running += count
        xs.append(edge)
        ys.append(running / total)
    return xs, ys


def chart_embedded_latency(runs, path):
    fig, axes = plt.subplots(1, len(LATENCY_WORKLOADS), figsize=(15, 3.8), sharey=True)
    for ax, workload in zip(axes, LATENCY_WORKLOADS):
        for peer, results in runs.items():
            good = [
                r
                for r in results
                if "error" not in r and r.get(workload, {}).get("histogram")
            ]
            if not good:
                continue
            xs, ys = _cdf_from_histogram(good[0][workload]["histogram"])
            ax.plot(xs, ys, label=peer, color=PEER_COLORS.get(peer))
        ax.set_xscale("log")
        ax.set_title(workload, fontsize=9)
        ax.set_xlabel("latency (us, log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of calls")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Embedded latency distribution per call (first repetition)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_server(summary, runs, path):
    placements = list(summary)
    if not placements:
        return None
    fig, axes = plt.subplots(
        2, len(placements), figsize=(6.5 * len(placements), 8), squeeze=False
    )
    for column, placement in enumerate(placements):
        ax = axes[0][column]
        labels, tlsm_values, redis_values = [], [], []
        for persistence, tests in summary[placement].items():
            for test, kinds in tests.items():
                labels.append(f"{test}\n{persistence}")
                tlsm_values.append(kinds.get("tlsm", {}).get("ops_per_s") or 0)
                redis_values.append(kinds.get("redis", {}).get("ops_per_s") or 0)
        xs = range(len(labels))
        ax.bar(
            [x - 0.2 for x in xs],
            tlsm_values,
            0.4,
            label="tlsm",
            color=PEER_COLORS["tlsm"],
        )
        ax.bar(
            [x + 0.2 for x in xs],
            redis_values,
            0.4,
            label="redis",
            color=PEER_COLORS["redis"],
        )
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("requests/s (log)")
        ax.set_title(f"Server throughput, {placement} core placement")
        ax.legend(fontsize=8)

        ax = axes[1][column]
        for kind, style in (("tlsm", "-"), ("redis", "--")):
            results = runs.get(placement, {}).get("none", {}).get(kind, [])
            good = [r for r in results if "error" not in r]
            for test in ("append P1", "newest20 P16"):
                if good and test in good[0]:
                    rows = good[0][test]["percentile_rows"]
                    ax.plot(
                        [us for _, us in rows],
                        [pct / 100 for pct, _ in rows],
                        style,
                        label=f"{kind} {test}",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("latency (us, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"Latency distribution, {placement} core (first repetition)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sections ------------------------------------------------------------


def section_run(results):
    machine = results["machine"]
    git = results["git"]
    config = results["config"]
    lines = ["## Run", ""]
    if results.get("quick"):
        lines += [
            "**Quick run** (small sizes, one repetition): it checks the harness; "
            "its figures are not results.",
            "",
        ]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    commit = git.get("commit") or "unknown"
    lines += [
        f"- Started {results['started']}, took {results.get('seconds', 0):.0f} s: "
        f"`{results['command']}`",
        f"- Git commit {commit}{' with uncommitted changes' if git.get('dirty') else ''}",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs of "
        f"{machine['logical_cpus']}, {mib(machine['memory_bytes'])} memory, Linux "
        f"{machine['kernel']}, Python {machine['python']}",
        f"- Data directories on {machine['scratch_filesystem']} ({machine['scratch_dir']})",
        f"- Load average at start {fmt_load(machine.get('load_average_start'))}, at end "
        f"{fmt_load(machine.get('load_average_end'))}",
        f"- Repetitions: {results['repeat']} per measurement; figures are medians",
        f"- Workload: {config['source']}, seed {config['seed']}, sizes "
        + ", ".join(f"{k} {v:,}" for k, v in config["sizes"].items()),
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(results["versions"].items())),
        "",
    ]
    return lines


def fmt_load(values):
    return "-" if not values else " ".join(f"{v:.2f}" for v in values)


def section_targets(results):
    lines = ["## Targets", ""]
    rows = []
    if "embedded" in results:
        rows += embedded_targets(results["embedded"]["summary"])
    if "server" in results:
        rows += server_targets(results["server"]["summary"])
    lines.append(
        table(("target", "tlsm", "reference", "ratio", "required", "status"), rows)
    )
    lines += [
        "",
        "Embedded targets compare tlsm in mode none with each peer in mode none "
        "(rocksdict's default: WAL written per write, not fsynced). Disk use is "
        "allocated bytes after the load and close(), over the payload bytes alone "
        "(keys not counted).",
        "",
    ]
    return lines


def section_embedded(results, charts):
    embedded = results["embedded"]
    summary = embedded["summary"]
    med = summary["medians"]
    ratios = summary["ratios_tlsm_over_peer"]
    modes = results["config"]["default_modes"]
    lines = ["## Embedded", ""]
    lines += [
        "Each peer runs in its own process, on the same operations. Mode none: every "
        "write reaches the OS before the call returns, without fsync; the dict keeps "
        "everything in memory. Default durability of each peer:",
        "",
    ]
    lines.append(
        table(
            ("peer", "default mode", "setting"),
            [(p, m[0], m[1]) for p, m in modes.items()],
        )
    )
    lines += ["", "### Throughput (mode none), with tlsm's ratio to each peer", ""]
    rows = []
    for peer, values in med.items():
        row = [peer]
        for key, _ in WORKLOADS:
            cell = rate(values.get(key))
            if peer != "tlsm" and ratios.get(peer, {}).get(key):
                cell += f" (tlsm {ratios[peer][key]:.2f}x)"
            row.append(cell)
        rows.append(row)
    lines.append(table(["peer"] + [label for _, label in WORKLOADS], rows))
    if charts.get("ratios"):
        lines += ["", f"![tlsm throughput relative to peers]({charts['ratios']})"]

    lines += ["", "### Latency per call, us (p50 / p99 / p99.9)", ""]
    rows = []
    for peer, values in med.items():
        row = [peer]
        for workload in LATENCY_WORKLOADS:
            row.append(
                " / ".join(
                    micros(values.get(f"{workload}.latency_us.{p}"))
                    for p in ("p50", "p99", "p99.9")
                )
            )
        rows.append(row)
    lines.append(table(["peer"] + list(LATENCY_WORKLOADS), rows))
    lines += [
        "",
        "Append latencies come from a separate timed pass of "
        f"{results['config']['sizes']['latency_appends']:,} appends after the load; "
        "the load itself is timed as a whole.",
    ]
    if charts.get("latency"):
        lines += ["", f"![latency distributions]({charts['latency']})"]

    lines += ["", "### Durability mode always (fsync per write or batch)", ""]
    rows = []
    for peer, values in med.items():
        if values.get("always.append.ops_per_s") is None:
            continue
        rows.append(
            (
                peer,
                rate(values.get("always.append.ops_per_s")),
                " / ".join(
                    micros(values.get(f"always.append.latency_us.{p}"))
                    for p in ("p50", "p99", "p99.9")
                ),
                rate(values.get("always.batch.entries_per_s")),
            )
        )
    lines.append(
        table(
            (
                "peer",
                "single appends/s",
                "append latency p50/p99/p99.9 us",
                "1+20 batch entries/s",
            ),
            rows,
        )
    )

    lines += ["", "### Reopen, close, disk and memory", ""]
    rows = []
    for peer, values in med.items():
        rows.append(
            (
                peer,
                seconds(values.get("close_after_load_s")),
                seconds(values.get("reopen_to_first_read_s")),
                seconds(values.get("close_after_all_s")),
                mib(values.get("disk.allocated_bytes")),
                ratio(values.get("disk_ratio")),
                mib(values.get("store_rss_bytes")),
            )
        )
    lines.append(
        table(
            (
                "peer",
                "close() after load",
                "reopen to first read",
                "close() at the end",
                "bytes on disk",
                "disk / payload",
                "peak RSS above baseline",
            ),
            rows,
        )
    )
    lines += [
        "",
        "Peak RSS above baseline is the process's peak RSS during the mode-none "
        "phases (VmHWM, reset just before the store is opened) minus its RSS at "
        "that moment, so the workload lists are not counted.",
    ]
    checks = summary["checks"]
    lines += [
        "",
        "Read check: entries returned by pulls, newest-20 reads and batches per "
        "peer: "
        + (
            "all peers agree."
            if not checks["mismatches"]
            else f"MISMATCH {checks['mismatches']}"
        ),
        "",
    ]
    errors = [
        f"{p}: {r['error'][-600:]}"
        for p, rs in embedded["runs"].items()
        for r in rs
        if "error" in r
    ]
    return lines + failure_lines(errors)


def section_server(results, charts):
    server = results["server"]
    lines = ["## Server", ""]
    lines += [
        f"redis-benchmark, {results['config']['server_clients']} clients on 127.0.0.1, "
        f"-r {results['config']['server_keyspace']}, 128-byte payload. "
        "Persistence none: tlsm --sync none vs Redis AOF appendfsync everysec; "
        "always: tlsm --sync always vs appendfsync always. Placement same: server "
        "and client on CPU 0; split: server on CPU 0, client on CPU 1. Latencies "
        "are upper bounds read from redis-benchmark's percentile table.",
        "",
    ]
    for placement, by_persistence in server["summary"].items():
        lines += [f"### {placement} core", ""]
        rows = []
        for persistence, tests in by_persistence.items():
            for test, kinds in tests.items():
                tlsm = kinds.get("tlsm", {})
                redis = kinds.get("redis", {})
                rows.append(
                    (
                        f"{test} ({persistence})",
                        rate(tlsm.get("ops_per_s")),
                        rate(redis.get("ops_per_s")),
                        ratio(kinds.get("ratio_tlsm_over_redis")),
                        " / ".join(
                            micros(tlsm.get(p)) for p in ("p50", "p99", "p99.9")
                        ),
                        " / ".join(
                            micros(redis.get(p)) for p in ("p50", "p99", "p99.9")
                        ),
                        f"{micros(tlsm.get('server_cpu_us_per_op'))} / "
                        f"{micros(redis.get('server_cpu_us_per_op'))}",
                        f"{tlsm.get('runs', 0)} / {redis.get('runs', 0)}",
                    )
                )
        lines.append(
            table(
                (
                    "test",
                    "tlsm req/s",
                    "redis req/s",
                    "tlsm / redis",
                    "tlsm p50/p99/p99.9 us",
                    "redis p50/p99/p99.9 us",
                    "server CPU us/req tlsm / redis",
                    "runs tlsm / redis",
                ),
                rows,
            )
        )
        lines.append("")
    if charts.get("server"):
        lines += [f"![server throughput and latency]({charts['server']})", ""]
    errors = [
        f"{placement} {persistence} {kind}: {failure[-600:]}"
        for placement, a in server["runs"].items()
        for persistence, b in a.items()
        for kind, rs in b.items()
        for r in rs
        for failure in (r.get("error"), r.get("server_error"))
        if failure
    ]
    return lines + failure_lines(errors)


def failure_lines(errors):
    """Return markdown lines that list failures as an indented code block."""
    if not errors:
        return []
    lines = ["Failed runs:", ""]
    for error in errors:
        lines += [f"    {line}" for line in error.splitlines() if line.strip()]
    return lines + [""]


def _profile_table(profile, count):
    rows = [
        (
            f"`{row['function']}`",
            f"{row['share']:.0%}",
            f"{row['tottime_s']:.3f}",
            f"{row['cumtime_s']:.3f}",
            f"{row['calls']:,}",
        )
        for row in profile["top"][:count]
    ]
    return table(("function", "own share", "own s", "cumulative s", "calls"), rows)


def section_profile(results):
    profile = results.get("profile") or {}
    lines = ["## Where tlsm's time goes", ""]
    embedded = profile.get("embedded") or {}
    if "error" in embedded:
        lines += [f"Embedded profile failed: {embedded['error'][-500:]}", ""]
    elif embedded:
        lines += [
            "cProfile of tlsm's embedded workloads (bench/profiling.py). The "
            "append phase profiles the first 100,000 appends, and the reads and "
            "batches run on the database of the full size. cProfile slows Python "
            "calls, so only the shares count. Top functions by own time:",
            "",
        ]
        for phase in ("append", "batch", "pull", "newest", "close", "reopen"):
            if phase in embedded:
                lines += [
                    f"### {phase} ({embedded[phase]['total_s']:.2f} s profiled)",
                    "",
                    _profile_table(embedded[phase], 8),
                    "",
                ]
    server = profile.get("server")
    if server and "error" in server:
        lines += [f"Server profile failed: {server['error'][-500:]}", ""]
    elif server:
        lines += [
            "### server: unpipelined appends, then newest-20 pipelined 16 "
            f"({server['total_s']:.2f} s profiled)",
            "",
            _profile_table(server, 12),
            "",
        ]
    return lines


def write_report(results, out_path, chart_dir):
    os.makedirs(chart_dir, exist_ok=True)
    relative = os.path.relpath(chart_dir, os.path.dirname(os.path.abspath(out_path)))
    charts = {}
    if "embedded" in results:
        embedded = results["embedded"]
        if chart_embedded_ratios(
            embedded["summary"], os.path.join(chart_dir, "embedded_ratios.png")
        ):
            charts["ratios"] = f"{relative}/embedded_ratios.png"
        chart_embedded_latency(
            embedded["runs"], os.path.join(chart_dir, "embedded_latency.png")
        )
        charts["latency"] = f"{relative}/embedded_latency.png"
    server_chart = os.path.join(chart_dir, "server.png")
    if "server" in results and chart_server(
        results["server"]["summary"], results["server"]["runs"], server_chart
    ):
        charts["server"] = f"{relative}/server.png"

    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.report` from bench/results/latest.json, which "
        "`python -m bench.run` writes (bench/README.md describes the workloads). "
        "Every ratio compares figures measured in the same run.",
        "",
    ]
    lines += section_run(results)
    lines += section_targets(results)
    if "embedded" in results:
        lines += section_embedded(results, charts)
    if "server" in results:
        lines += section_server(results, charts)
    lines += section_profile(results)
    with open(out_path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", default=os.path.join(REPO, "bench", "results", "latest.json")
    )
    parser.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    chart_dir = os.path.dirname(os.path.abspath(args.results))
    print(f"wrote {write_report(results, args.out, chart_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
