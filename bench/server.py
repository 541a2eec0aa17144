"""Server workloads: tlsm's RESP server against redis-server Streams.

Both servers are driven by redis-benchmark with 50 clients on 127.0.0.1, at
ports picked free at run time (never 6379 or 7379), and each server gets a
fresh data directory under a temporary directory. Every server is started
here and stopped here by its pid (SIGTERM, then SIGKILL after 30 s).

Tests, each unpipelined (-P 1) and pipelined (-P 16) unless noted, with
-r 10000 so __rand_int__ picks one of 10,000 timelines or streams:

  append       TL.APPEND tl:__rand_int__ <128 B>   vs  XADD tl:__rand_int__ * p <128 B>
  newest20     TL.REVRANGE tl:K + - COUNT 20        vs  XREVRANGE tl:K + - COUNT 20
  pull100      TL.PULL COUNT 100 BLOCK 1000 TIMELINES tl:K 0
                                                   vs  XREAD COUNT 100 BLOCK 1000 STREAMS tl:K 0
               (-P 16 only. The preload below gives every timeline
               entries, so the BLOCK path returns at once.)

Before the tests, a server in persistence "none" is filled with
preload_per_key entries in each of the 10,000 timelines (redis-py,
pipelined), so every read finds entries and no BLOCK ever waits.

Persistence pairs: tlsm --sync none with Redis appendonly yes, appendfsync
everysec ("none" below); tlsm --sync always with appendfsync always
("always", append tests only). Redis RDB snapshots are off (save "").

CPU placement (taskset): "same" runs client and server on CPU 0, "split"
runs the server on CPU 0 and the client on CPU 1. The server's CPU seconds
per test come from /proc through psutil.

The payload is one fixed 128-byte string per run, because redis-benchmark
repeats its arguments. Identical payloads compress well, which helps a
store that compresses blocks (tlsm does, with LZ4) on disk, not in these
request rates.
"""

import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time

import psutil
import redis

RESERVED_PORTS = (6379, 7379)
CLIENTS = 50
KEYSPACE = 10_000
PLACEMENTS = {"same": ("0", "0"), "split": ("0", "1")}  # (server CPUs, client CPUs)
STOP_TIMEOUT = 30.0


def free_port():
    """Return a free TCP port on 127.0.0.1 that is not one of RESERVED_PORTS."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def make_payload(seed, size=128):
    rng = random.Random(seed)
    return "".join(
        rng.choice(string.ascii_letters + string.digits) for _ in range(size)
    )


def test_commands(payload):
    """Return {test name: (tlsm argv, redis argv, pipelines)}."""
    return {
        "append": (
            ["TL.APPEND", "tl:__rand_int__", payload],
            ["XADD", "tl:__rand_int__", "*", "p", payload],
            (1, 16),
        ),
        "newest20": (
            ["TL.REVRANGE", "tl:__rand_int__", "+", "-", "COUNT", "20"],
            ["XREVRANGE", "tl:__rand_int__", "+", "-", "COUNT", "20"],
            (1, 16),
        ),
        "pull100": (
            [
                "TL.PULL",
                "COUNT",
                "100",
                "BLOCK",
                "1000",
                "TIMELINES",
                "tl:__rand_int__",
                "0",
            ],
            [
                "XREAD",
                "COUNT",
                "100",
                "BLOCK",
                "1000",
                "STREAMS",
                "tl:__rand_int__",
                "0",
            ],
            (16,),
        ),
    }


class ServerProcess:
    """A server started by this module and stopped by its pid."""

    def __init__(self, kind, persistence, cpus, root, profile_path=None):
        self.kind = kind
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix=f"{kind}-", dir=root)
        self.log_path = os.path.join(self.data_dir, "server.log")
        if kind == "redis":
            argv = [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.data_dir, "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec" if persistence == "none" else "always",
                "--daemonize", "no", "--logfile", self.log_path,
            ]  # fmt: skip
        else:
            python = [sys.executable]
            if profile_path:
                python += ["-m", "cProfile", "-o", profile_path]
            argv = python + [
                "-m", "tlsm.cli", "serve", "--port", str(self.port),
                "--data", os.path.join(self.data_dir, "data"), "--sync", persistence,
                "--log-level", "WARNING",
            ]  # fmt: skip
        self.argv = ["taskset", "-c", cpus] + argv
        self._log = open(self.log_path + ".stderr", "wb")
        # taskset execs the server, so this pid is the server's own.
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.ps = psutil.Process(self.proc.pid)
        self._wait_ready()

    def _wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited with {self.proc.returncode} at start: "
                    f"{self.output_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.kind} server on port {self.port} not ready after {timeout} s"
        )

    def output_tail(self, size=1500):
        """Return the end of the server's stdout, stderr and log file."""
        tail = []
        for path in (self.log_path + ".stderr", self.log_path):
            try:
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - size))
                    tail.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(tail).strip() or "(no output)"

    def cpu_seconds(self):
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self):
        """Send SIGTERM to the server's pid, SIGKILL if it has not exited in 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


_PERCENTILE_LINE = re.compile(r"^\s*([\d.]+)% <= ([\d.]+) milliseconds")
_THROUGHPUT = re.compile(r"throughput summary: ([\d.]+) requests per second")


def parse_benchmark_output(text):
    """Return rps and latency percentiles (us) from redis-benchmark's report.

    Percentiles come from the "Latency by percentile distribution" table,
    taking the first row at or above each target, so they are upper bounds
    at the table's resolution.
    """
    match = _THROUGHPUT.search(text)
    if not match:
        raise RuntimeError(f"no throughput in redis-benchmark output:\n{text[-2000:]}")
    rows = []
    section = text.split("Latency by percentile distribution:", 1)[-1]
    section = section.split("Cumulative distribution", 1)[0]
    for line in section.splitlines():
        row = _PERCENTILE_LINE.match(line)
        if row:
            rows.append((float(row.group(1)), float(row.group(2)) * 1000))
    latency = {}
    for target in (50, 99, 99.9):
        value = next(
            (us for pct, us in rows if pct >= target), rows[-1][1] if rows else None
        )
        latency[f"p{target:g}"] = value
    return {
        "ops_per_s": float(match.group(1)),
        "latency_us": latency,
        "percentile_rows": rows,
    }


def run_benchmark(port, cpus, requests, pipeline, command):
    argv = [
        "taskset", "-c", cpus, "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
        "-c", str(CLIENTS), "-n", str(requests), "-P", str(pipeline), "-r", str(KEYSPACE),
    ] + command  # fmt: skip
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"redis-benchmark failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    result = parse_benchmark_output(done.stdout.replace("\r", "\n"))
    result["argv"] = argv[3:]
    return result


def preload(kind, port, per_key, payload, batch=1000):
    """Append per_key entries to each of the KEYSPACE timelines (tl:000000000042)."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        pipe = client.pipeline(transaction=False)
        queued = 0
        for _round in range(per_key):
            for number in range(KEYSPACE):
                # redis-benchmark writes __rand_int__ as 12 zero-padded digits.
                key = f"tl:{number:012d}"
                if kind == "tlsm":
                    pipe.execute_command("TL.APPEND", key, payload)
                else:
                    pipe.execute_command("XADD", key, "*", "p", payload)
                queued += 1
                if queued == batch:
                    pipe.execute()
                    queued = 0
        if queued:
            pipe.execute()
    finally:
        client.close()


def run_one_server(kind, persistence, placement, sizes, payload, root, progress=None):
    """Start one server, run its tests, stop it and return {"test P<n>": result}."""
    server_cpus, client_cpus = PLACEMENTS[placement]
    server = ServerProcess(kind, persistence, server_cpus, root)
    results = {}
    try:
        if persistence == "none":
            started = time.monotonic()
            try:
                preload(kind, server.port, sizes["preload_per_key"], payload)
            except redis.RedisError as exc:
                raise RuntimeError(f"preload of {kind} failed: {exc}") from exc
            results["preload_s"] = time.monotonic() - started
        for name, (tlsm_cmd, redis_cmd, pipelines) in test_commands(payload).items():
            if persistence == "always" and name != "append":
                continue
            for pipeline in pipelines:
                requests = sizes[f"{name}_p{pipeline}"]
                if persistence == "always":
                    requests = sizes[f"always_p{pipeline}"]
                cpu_before = server.cpu_seconds()
                command = tlsm_cmd if kind == "tlsm" else redis_cmd
                result = run_benchmark(
                    server.port, client_cpus, requests, pipeline, command
                )
                result["server_cpu_s"] = server.cpu_seconds() - cpu_before
                result["requests"] = requests
                results[f"{name} P{pipeline}"] = result
                if progress:
                    progress.update(1)
    finally:
        returncode = server.stop()
    if returncode not in (0, -signal.SIGTERM):
        # The tests already ran, so their figures are kept next to the failure.
        results["server_error"] = (
            f"{kind} server exited with {returncode} after the tests: "
            f"{server.output_tail()}"
        )
    return results


def count_tests(persistence):
    if persistence == "always":
        return 2
    return sum(len(p) for _, _, p in test_commands("x").values())


def server_versions():
    out = {}
    for name in ("redis-server", "redis-benchmark"):
        done = subprocess.run(
            [name, "--version"], check=False, capture_output=True, text=True
        )
        out[name] = done.stdout.strip()
    return out


def profile_tlsm_server(sizes, payload, root, top=15):
    """Run the unpipelined append test against a tlsm server under cProfile.

    Returns the top functions by own time. cProfile slows the server, so
    the request rate of this run is not a result.
    """
    import pstats

    from .profiling import top_functions

    profile_path = os.path.join(root, "server.prof")
    server = ServerProcess("tlsm", "none", "0", root, profile_path=profile_path)
    try:
        tlsm_cmd = test_commands(payload)["append"][0]
        run_benchmark(server.port, "1", sizes["profile_requests"], 1, tlsm_cmd)
        newest_cmd = test_commands(payload)["newest20"][0]
        run_benchmark(server.port, "1", sizes["profile_requests"], 16, newest_cmd)
    finally:
        server.stop()
    if not os.path.exists(profile_path):
        return None
    return top_functions(pstats.Stats(profile_path), top)


def scratch_dir():
    root = tempfile.mkdtemp(prefix="tlsm-bench-server-")
    return root, lambda: shutil.rmtree(root, ignore_errors=True)
