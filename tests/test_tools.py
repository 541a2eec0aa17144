"""The data-directory tools: inspection, manifest repair, a short crash loop."""

import os
import subprocess
import sys

import tlsm

TOOLS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"
)


def _tool(name, *args):
    return subprocess.run(
        [sys.executable, os.path.join(TOOLS, name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fill(path):
    with tlsm.open(path, memtable_bytes=8192) as db:
        sync = db.table("sync", ttl=3600)
        for i in range(2000):
            db.append("t%d" % (i % 9), b"x%d" % i)
            sync.append("u%d" % (i % 4), b"y%d" % i)
        db.trim("t1", 100)


def test_inspect_lists_tables_and_verifies(tmp_path):
    _fill(tmp_path)
    result = _tool("inspect_data.py", tmp_path, "--verify", "--timeline", "t1")
    assert result.returncode == 0, result.stderr
    assert "table 'sync'" in result.stdout
    assert "deleted [0, 100)" in result.stdout
    assert "seq=222" in result.stdout


def test_inspect_reports_damage(tmp_path):
    _fill(tmp_path)
    table = sorted(n for n in os.listdir(tmp_path) if n.endswith(".sst"))[0]
    data = bytearray((tmp_path / table).read_bytes())
    data[10] ^= 0xFF
    (tmp_path / table).write_bytes(bytes(data))
    result = _tool("inspect_data.py", tmp_path, "--verify")
    assert result.returncode == 1
    assert f"DAMAGED {table}" in result.stdout


def test_repair_rebuilds_lost_manifest(tmp_path):
    _fill(tmp_path)
    os.remove(tmp_path / "MANIFEST")
    result = _tool("repair_manifest.py", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with tlsm.open(tmp_path) as db:
        assert db.last_seq("t0") == 223
        assert db.get("t0", 5) == b"x36"
        assert list(db.scan("t1", limit=1)) == [(100, b"x892")]
        assert db.table("table-1").last_seq("u0") == 500
        assert db.append("t0", b"new") == 224


def test_crash_loop_short_run(tmp_path):
    result = _tool(
        "crash_loop.py", "--rounds", 3, "--seconds", 60, "--data", tmp_path / "db"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 3 rounds" in result.stdout


def test_repair_refuses_open_directory(tmp_path):
    _fill(tmp_path)
    os.remove(tmp_path / "MANIFEST")
    (tmp_path / "MANIFEST").write_bytes(b"garbage")
    from tlsm.fs import OsFileSystem

    fs = OsFileSystem()
    token = fs.lock(str(tmp_path / "LOCK"))
    try:
        result = _tool("repair_manifest.py", tmp_path)
    finally:
        fs.unlock(token)
    assert result.returncode == 2
    assert "locked" in result.stdout
    assert (tmp_path / "MANIFEST").read_bytes() == b"garbage"


def test_repair_leaves_readable_manifest(tmp_path):
    _fill(tmp_path)
    before = (tmp_path / "MANIFEST").read_bytes()
    result = _tool("repair_manifest.py", tmp_path)
    assert result.returncode == 0
    assert "nothing to repair" in result.stdout
    assert (tmp_path / "MANIFEST").read_bytes() == before


def _table_with_damaged_block(tmp_path):
    """Write 2,000 entries to one table, flip a byte of its first block; return its name."""
    with tlsm.open(tmp_path, compression=False, memtable_bytes=1 << 20) as db:
        for i in range(2000):
            db.append("t%d" % (i % 4), b"v%05d" % i + b"." * 60)
    (table,) = [n for n in os.listdir(tmp_path) if n.endswith(".sst")]
    data = bytearray((tmp_path / table).read_bytes())
    data[100] ^= 0xFF
    (tmp_path / table).write_bytes(bytes(data))
    return table


def test_repair_salvages_intact_blocks(tmp_path):
    table = _table_with_damaged_block(tmp_path)
    os.remove(tmp_path / "MANIFEST")
    result = _tool("repair_manifest.py", tmp_path)
    assert result.returncode == 1
    assert "salvaged" in result.stdout
    assert (tmp_path / "lost" / table).exists()
    with tlsm.open(tmp_path) as db:
        survivors = sum(len(list(db.scan("t%d" % i))) for i in range(4))
        assert 1900 < survivors < 2000
        assert db.last_seq("t0") == 500
        assert db.append("t0", b"next") == 501


def test_repair_dry_run_counts_the_same_loss(tmp_path):
    table = _table_with_damaged_block(tmp_path)
    dry = _tool("repair_manifest.py", tmp_path, "--force", "--dry-run")
    assert dry.returncode == 1
    assert "would salvage" in dry.stdout
    assert (tmp_path / table).exists()
    real = _tool("repair_manifest.py", tmp_path, "--force")
    assert real.returncode == 1
    summary = [line for line in dry.stdout.splitlines() if "entries lost" in line]
    assert summary
    assert " 0 entries lost" not in summary[0]
    assert summary == [
        line for line in real.stdout.splitlines() if "entries lost" in line
    ]


def test_inspect_reports_damaged_manifest(tmp_path):
    _fill(tmp_path)
    (tmp_path / "MANIFEST").write_bytes(b"tlsm-manifest 1 00000000\n{}")
    result = _tool("inspect_data.py", tmp_path)
    assert result.returncode == 1
    assert "DAMAGED MANIFEST" in result.stdout
    assert "repair_manifest.py" in result.stdout
