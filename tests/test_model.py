"""Seeded random runs checked against a dict model, and Cython against Python."""

import importlib.util
import os
import subprocess
import sys

import pytest

from model_run import run_model
from tlsm import _impl

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("seed", range(4))
def test_engine_matches_dict_model(tmp_path, seed):
    observations = run_model(str(tmp_path / "db"), seed, 1500)
    assert len(observations) > 1000


@pytest.mark.parametrize("seed", range(2))
def test_engine_matches_dict_model_with_tiered_compaction(tmp_path, seed):
    observations = run_model(str(tmp_path / "db"), seed, 1500, style="tiered")
    assert len(observations) > 1000


def _history(tmp_path, name, seed, pure):
    env = dict(os.environ)
    env.pop("TLSM_PURE_PYTHON", None)
    if pure:
        env["TLSM_PURE_PYTHON"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "model_run.py"),
            str(tmp_path / name),
            str(seed),
            "2000",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_extensions_and_twins_give_same_history(tmp_path):
    built = all(
        importlib.util.find_spec(f"tlsm_ext.{name}")
        for name in ("block", "merge", "resp")
    )
    if not built:
        if _impl.PURE_PYTHON and not os.environ.get("CI"):
            pytest.skip("the Cython extensions are not built")
        pytest.fail("the Cython extensions are not built; run pip install -e .")
    cython = _history(tmp_path, "cython", 11, pure=False)
    python = _history(tmp_path, "python", 11, pure=True)
    assert int(cython[0]) > 1500
    assert cython == python
