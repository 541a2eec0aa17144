"""Fixtures that run a real `tlsm serve` process on a free loopback port.

The server is started with `--port 0`, so the OS picks a free port, and the
fixture reads the port from the server's "serving on" log line. Its stderr
goes to server.log in the test's tmp_path, which pytest keeps for a failed
test.
"""

import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
_SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")
# Upper bound for a server to start or stop. Only a hung process reaches it,
# so it guards against hangs and is not a timing assertion.
START_STOP_LIMIT_SECONDS = 60


def server_env():
    """Return the environment for a server subprocess that imports this checkout."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    return env


def _terminate_with_parent():
    """Ask Linux to send SIGTERM to this child when pytest dies, even by a signal."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the fixtures' teardown still stops the server


def wait_until_blocked(admin, client_id):
    """Poll CLIENT LIST through admin until client client_id is blocked."""
    deadline = time.monotonic() + START_STOP_LIMIT_SECONDS
    marker = f"id={client_id} ".encode()
    while time.monotonic() < deadline:
        for line in admin.execute_command("CLIENT", "LIST").splitlines():
            if line.startswith(marker) and b" blocked=1" in line:
                return
        time.sleep(0.005)
    raise AssertionError(f"client {client_id} never blocked")


class ServerProcess:
    """A `python -m tlsm.cli serve` subprocess on 127.0.0.1 with its own data dir."""

    def __init__(self, data_dir, log_path, extra_args=()):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.process = None
        self.port = None
        self._clients = []

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        """Start the server and wait until it logs its port."""
        # Restarts append to the same log, so wait for one more "serving on" line.
        starts_before = len(self._logged_ports())
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "tlsm.cli", "serve",
                    "--host", "127.0.0.1", "--port", "0",
                    "--data", str(self.data_dir), "--log-level", "DEBUG",
                    *self.extra_args,
                ],
                stdout=log_file,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                env=server_env(),
                cwd=str(self.data_dir.parent),
                preexec_fn=_terminate_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + START_STOP_LIMIT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.log_text()}"
                )
            ports = self._logged_ports()
            if len(ports) > starts_before:
                self.port = int(ports[-1])
                return self
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"server did not start:\n{self.log_text()}")

    def _logged_ports(self):
        if not self.log_path.exists():
            return []
        return _SERVING.findall(self.log_text())

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def client(self, protocol=2, **kwargs):
        """Return a redis-py client of this server; closed when the server stops."""
        client = redis.Redis(
            host="127.0.0.1", port=self.port, protocol=protocol, **kwargs
        )
        self._clients.append(client)
        return client

    def _close_clients(self):
        for client in self._clients:
            client.close()
        self._clients.clear()

    def signal(self, signum):
        """Send signum to the server process."""
        os.kill(self.process.pid, signum)

    def terminate(self):
        """Send SIGTERM and return the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self):
        """Send SIGKILL and return the exit code (-9)."""
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        return self.wait()

    def wait(self):
        code = self.process.wait(timeout=START_STOP_LIMIT_SECONDS)
        self._close_clients()
        return code

    def restart(self):
        """Start a new server process on the same data dir (new port)."""
        assert self.process.poll() is not None, "stop the server before restart()"
        return self.start()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self._close_clients()


@pytest.fixture
def tlsm_server(tmp_path):
    """A fresh server on tmp_path/data, killed after the test."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a whole test module; tests use distinct timeline names."""
    base = tmp_path_factory.mktemp("shared")
    server = ServerProcess(base / "data", base / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def client(shared_server):
    """A RESP2 redis-py client of the shared server."""
    return shared_server.client(protocol=2)


@pytest.fixture
def client3(shared_server):
    """A RESP3 redis-py client of the shared server."""
    return shared_server.client(protocol=3)


@pytest.fixture
def redis_cli():
    """Path of redis-cli; skips the test when it is missing, unless CI is set."""
    path = shutil.which("redis-cli")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-cli is not on PATH, and CI requires it")
        pytest.skip("redis-cli is not on PATH")
    return path
