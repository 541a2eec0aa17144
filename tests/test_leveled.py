"""Leveled compaction: level invariants, trivial moves, tombstones, style changes."""

import json
import os
import random
import zlib

import pytest
from clock import ManualClock
from tree_check import check_tree

import tlsm
from tlsm import compaction_pick

SMALL = {
    "memtable_bytes": 8 * 1024,
    "block_bytes": 512,
    "level_fanout": 2,
    "level1_bytes": 16 * 1024,
    "level_size_ratio": 3,
    "target_file_bytes": 4 * 1024,
}


def _fill(db, rng, timelines, count, size=60):
    written = {}
    for _ in range(count):
        timeline = rng.choice(timelines)
        payload = rng.randbytes(size)
        seq = db.append(timeline, payload)
        written[(timeline, seq)] = payload
    return written


def _read_all(db, timelines):
    return {
        (timeline, seq): payload
        for timeline in timelines
        for seq, payload in db.scan(timeline)
    }


def test_levels_stay_disjoint_and_data_reads_back(tmp_path):
    rng = random.Random(1)
    timelines = [f"user:{i}" for i in range(300)]
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        written = _fill(db, rng, timelines, 6000)
        assert db.wait_for_compaction(timeout=60)
        check_tree(db)
        levels = db.stats()["levels"]
        assert len(levels) >= 3, levels
        assert levels[0]["files"] < SMALL["level_fanout"]
        for index, level in enumerate(levels[1:-1], start=1):
            bound = SMALL["level1_bytes"] * SMALL["level_size_ratio"] ** (index - 1)
            assert level["bytes"] < bound, (index, level)
        assert max(level["files"] for level in levels[1:]) > 1
        assert _read_all(db, timelines) == written
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        assert _read_all(db, timelines) == written
        check_tree(db)


def test_trivial_move_when_nothing_below_overlaps(tmp_path):
    rng = random.Random(2)
    timelines = [f"t{i:03d}" for i in range(200)]
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        _fill(db, rng, timelines, 4000)
        assert db.wait_for_compaction(timeout=60)
        stats = db.stats()
        # A level that first overflows pushes its tables into an empty level.
        assert stats["trivial_moves"] >= 1
        assert stats["compactions"] >= 1
        check_tree(db)


def test_tombstone_kept_through_partial_merges(tmp_path):
    rng = random.Random(3)
    others = [f"x{i:03d}" for i in range(100)]
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        for i in range(200):
            db.append("victim", b"old %d" % i)
        _fill(db, rng, others, 3000)
        assert db.wait_for_compaction(timeout=60)
        db.trim("victim", 151)
        db.delete("victim", 170)
        db.flush()
        # More writes push the tombstones' file down through partial merges
        # while older victim entries sit in tables those merges do not read.
        _fill(db, rng, others, 3000)
        assert db.wait_for_compaction(timeout=60)
        db.flush()
        check_tree(db)
    expected = [s for s in range(151, 201) if s != 170]
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        assert [seq for seq, _ in db.scan("victim")] == expected
        assert db.last_seq("victim") == 200
        db.compact()
        check_tree(db)
        assert [seq for seq, _ in db.scan("victim")] == expected
        for level in db._manifest.levels:
            for info in level:
                assert not db._tables[info.number].tombstones
        assert db.append("victim", b"new") == 201


def test_delete_timeline_keeps_seq_high_water(tmp_path):
    rng = random.Random(4)
    others = [f"y{i:03d}" for i in range(100)]
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        for i in range(300):
            db.append("gone", b"%d" % i)
        _fill(db, rng, others, 2000)
        db.delete_timeline("gone")
        db.compact()
        assert list(db.scan("gone")) == []
        check_tree(db)
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        assert db.last_seq("gone") == 300
        assert db.append("gone", b"again") == 301


def test_expired_last_level_table_reclaimed(tmp_path):
    clock = ManualClock()
    options = dict(SMALL, expiry_check_seconds=0.05, clock=clock)
    with tlsm.open(tmp_path / "db", **options) as db:
        sync = db.table("sync", ttl=60)
        for i in range(1500):
            sync.append(f"u{i % 50}", os.urandom(60))
        db.compact()
        before = sum(level["bytes"] for level in db.stats()["levels"])
        assert before > 50_000
        clock.advance(61)
        assert db.wait_for_compaction(timeout=30)
        after = db.stats()
        assert sum(level["bytes"] for level in after["levels"]) < 5_000
        assert after["dropped_expired"] >= 1500
        assert list(sync.scan("u1")) == []
        assert sync.last_seq("u1") == 30


def _write_version_1(path):
    """Rewrite the MANIFEST at path as format 1, which has no key ranges."""
    manifest = os.path.join(path, "MANIFEST")
    with open(manifest, "rb") as f:
        body = f.read().split(b"\n", 1)[1]
    state = json.loads(body)
    del state["compaction_style"]
    for level in state["levels"]:
        for info in level:
            info.pop("smallest", None)
            info.pop("largest", None)
    body = json.dumps(state).encode()
    with open(manifest, "wb") as f:
        f.write(b"tlsm-manifest 1 %08x\n" % zlib.crc32(body) + body)


def test_tiered_data_converts_to_leveled_on_open(tmp_path):
    rng = random.Random(5)
    timelines = [f"c{i:03d}" for i in range(150)]
    tiered = dict(
        SMALL, compaction_style="tiered", level_fanout=3, memtable_bytes=1 << 20
    )
    written = {}
    with tlsm.open(tmp_path / "db", **tiered) as db:
        # Every third flush merges level 0 into one new run of level 1, so
        # six flushes leave two overlapping runs there.
        for round_number in range(6):
            written.update(_fill(db, rng, timelines, 400))
            db.flush()
            if round_number % 3 == 2:
                assert db.wait_for_compaction(timeout=60)
        assert [level["files"] for level in db.stats()["levels"]] == [0, 2]
    _write_version_1(tmp_path / "db")
    with tlsm.open(tmp_path / "db", **SMALL) as db:
        assert _read_all(db, timelines) == written
        assert db.wait_for_compaction(timeout=60)
        check_tree(db)
        assert _read_all(db, timelines) == written
    with tlsm.open(tmp_path / "db", **tiered) as db:
        assert _read_all(db, timelines) == written
        more = _fill(db, rng, timelines, 2000)
        assert db.wait_for_compaction(timeout=60)
        assert _read_all(db, timelines) == {**written, **more}


def test_compaction_options_are_checked(tmp_path):
    with pytest.raises(tlsm.InvalidArgumentError, match="compaction_style='lsm'"):
        tlsm.open(tmp_path / "a", compaction_style="lsm")
    with pytest.raises(tlsm.InvalidArgumentError, match="level_size_ratio=1 must"):
        tlsm.open(tmp_path / "b", level_size_ratio=1)
    with pytest.raises(tlsm.InvalidArgumentError, match="max_levels=1 must"):
        tlsm.open(tmp_path / "c", max_levels=1)


def test_pick_scores_levels_against_their_bounds():
    from tlsm.manifest import TableInfo

    options = {
        "level_fanout": 4,
        "level1_bytes": 100,
        "level_size_ratio": 10,
        "max_levels": 4,
    }

    def info(number, size, smallest, largest):
        return TableInfo(number, size, 1, smallest, largest)

    levels = [
        [info(9, 10, b"a", b"z")],
        [info(1, 60, b"a", b"f"), info(2, 60, b"g", b"m")],
        [info(3, 500, b"a", b"c"), info(4, 400, b"d", b"h"), info(5, 100, b"n", b"p")],
    ]
    pointers = {}
    job = compaction_pick.pick("leveled", levels, {}, options, 0, pointers)
    # Level 1 has 120 bytes against a bound of 100: its first table merges
    # with the level-2 tables it overlaps.
    assert job.target == 2
    assert not job.trivial
    assert [i.number for i in job.inputs[1]] == [1]
    assert [i.number for i in job.inputs[2]] == [3, 4]
    job = compaction_pick.pick("leveled", levels, {}, options, 0, pointers)
    # The pointer moves on: table 2 overlaps only table 4.
    assert [i.number for i in job.inputs[1]] == [2]
    assert [i.number for i in job.inputs[2]] == [4]
    levels[2] = [info(5, 100, b"n", b"p")]
    job = compaction_pick.pick("leveled", levels, {}, options, 0, pointers)
    assert job.trivial
    assert [i.number for i in job.inputs[1]] == [1]
    with pytest.raises(AssertionError, match="overlap"):
        compaction_pick.check_leveled(
            [[], [info(1, 1, b"a", b"f"), info(2, 1, b"e", b"g")]]
        )


def test_level0_stall_after_open_starts_compaction(tmp_path):
    # Reopening with more level-0 tables than l0_stop_files: the first full
    # memtable stalls, and the stall must start the merge that compaction
    # otherwise defers for expiry_check_seconds after open.
    wide = dict(SMALL, level_fanout=20, l0_stop_files=20)
    with tlsm.open(tmp_path / "db", **wide) as db:
        for round_number in range(14):
            for i in range(20):
                db.append(f"t{i}", b"%d" % round_number)
            db.flush()
        assert db.stats()["levels"][0]["files"] == 14
    narrow = dict(SMALL, level_fanout=4, l0_stop_files=12, expiry_check_seconds=3600)
    with tlsm.open(tmp_path / "db", **narrow) as db:
        for i in range(2000):
            db.append(f"t{i % 20}", os.urandom(40))
        stats = db.stats()
        # A stall that did not start the deferred merge would wait out
        # expiry_check_seconds, and the test would time out. Level 0 may be back at the stop count when the
        # writes end, since a flush can add the table that triggers the next
        # stall, so the check is that merges ran and the bound held.
        assert stats["stalls"] >= 1
        assert stats["compactions"] + stats["trivial_moves"] >= 1
        assert stats["levels"][0]["files"] <= 12
        assert db.last_seq("t0") == 14 + 100
        db.wait_for_compaction(timeout=60)
        assert db.stats()["levels"][0]["files"] < 12
