"""SIGKILL of the server in the middle of a replay keeps every acknowledged send."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "irc-sample.jsonl.gz")
TOOL = os.path.join(ROOT, "tools", "replay_crash.py")


def _load_tool():
    spec = importlib.util.spec_from_file_location("replay_crash", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [[], ["--threads", "--fanout-threshold", "5"]])
def test_kill_mid_replay_keeps_acknowledged(tmp_path, extra):
    result = subprocess.run(
        [sys.executable, TOOL, SAMPLE, "--kill-after-acks", "500", "--data",
         str(tmp_path / "data"), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replay exited 2" in result.stdout
    assert "ok: " in result.stdout


def test_store_check_detects_lost_ack(tlsm_server):
    tool = _load_tool()
    plan = tool.load_plan(SAMPLE, limit=20)
    ids = {
        "conversation": [(tool.PREFIX + n).encode() for n in plan.conversations],
        "user": [(tool.PREFIX + n).encode() for n in plan.members],
    }
    client = tlsm_server.client()
    acks = {}
    for s in range(10):
        conversation = ids["conversation"][plan.send_conversation[s]]
        user = ids["user"][plan.send_sender[s]]
        client.execute_command("IM.JOIN", conversation, user)
        acks[s] = client.execute_command(
            "IM.SEND", conversation, user, f"m{s}", plan.payloads[plan.send_message[s]]
        )
    assert tool.check_store(client, plan, acks, ids) == {0: 10}
    # Claim that one more send was acknowledged than the server stored.
    acks[10] = 11
    with pytest.raises(tool.CheckFailed, match="missing"):
        tool.check_store(client, plan, acks, ids)
