"""The `tlsm` command line: help, version, serve defaults and failures, and
the replay subcommand."""

import re
import signal
import socket
import subprocess
import sys
import time

import redis
from conftest import START_STOP_LIMIT_SECONDS, server_env

import tlsm
from tlsm import cli


def run_tlsm(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tlsm.cli", *args],
        capture_output=True,
        check=False,
        text=True,
        env=server_env(),
        cwd=cwd,
        timeout=START_STOP_LIMIT_SECONDS,
    )


def test_help_lists_commands():
    result = run_tlsm("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "replay" in result.stdout


def test_version_matches_package():
    result = run_tlsm("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tlsm {tlsm.__version__}"


def test_serve_help_shows_defaults():
    result = run_tlsm("serve", "--help")
    assert result.returncode == 0
    # argparse wraps help lines, also after a hyphen.
    text = re.sub(r"-\s+", "-", " ".join(result.stdout.split()))
    for expected in ("127.0.0.1", "7379", "./tlsm-data", "--sync", "--log-level"):
        assert expected in text


def test_replay_help_comes_from_replay_module():
    result = run_tlsm("replay", "--help")
    assert result.returncode == 0
    assert "--devices-per-member" in result.stdout


def test_missing_command_is_usage_error():
    result = run_tlsm()
    assert result.returncode == 2
    assert "required" in result.stderr


def test_invalid_port_rejected():
    result = run_tlsm("serve", "--port", "70000")
    assert result.returncode == 2
    assert "port must be in 0..65535, got 70000" in result.stderr


def test_parser_defaults():
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.data, args.sync) == (
        "127.0.0.1", 7379, "./tlsm-data", "none"
    )  # fmt: skip
    assert args.log_level == "INFO"
    late = cli.build_parser().parse_args(["serve", "--log-level", "debug"])
    assert late.log_level == "DEBUG"


def test_serve_creates_default_data_dir(tmp_path):
    # The port is the one default that must not be used here: 7379 may be a
    # real server on this machine, so the OS picks a free port instead.
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tlsm.cli", "serve", "--port", "0"],
            stdout=log_file,
            stderr=log_file,
            env=server_env(),
            cwd=tmp_path,
        )
    try:
        port = None
        deadline = time.monotonic() + START_STOP_LIMIT_SECONDS
        while port is None and time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"serving on 127\.0\.0\.1:(\d+)", log_path.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.02)
        assert port is not None, log_path.read_text()
        client = redis.Redis(host="127.0.0.1", port=port)
        assert client.execute_command("TL.APPEND", "t", b"x") == 1
        client.close()
        assert (tmp_path / "tlsm-data").is_dir()
        assert str(tmp_path / "tlsm-data") in log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=START_STOP_LIMIT_SECONDS)
    assert code == 0
    assert "tlsm stopped" in log_path.read_text()


def test_port_in_use_fails_with_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_tlsm("serve", "--port", str(port), "--data", str(tmp_path / "d"))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
