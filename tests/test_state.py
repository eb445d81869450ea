"""State store: atomic, keyed by model, platform and frequency state."""
from __future__ import annotations

import json
import os

from tunerd.daemon.state import StateStore, atomic_write_json, read_json


def test_tuned_round_trip_and_keys(tmp_path):
    store = StateStore(tmp_path)
    store.save_tuned("m1", "p1", "big=2000000", config="0-3@big:1 | 4-7@little:1", fps=12.5)
    got = store.load_tuned("m1", "p1", "big=2000000")
    assert got["config"] == "0-3@big:1 | 4-7@little:1" and got["fps"] == 12.5
    assert store.load_tuned("m1", "p1", "big=1200000") is None      # other frequency state
    assert store.load_tuned("m2", "p1", "big=2000000") is None      # other model


def test_corrupt_or_partial_files_are_ignored(tmp_path):
    store = StateStore(tmp_path)
    path = store.tuned_path("m", "p", "f")
    path.parent.mkdir(parents=True)
    path.write_text('{"config": "0-1@big:1", "fps"')               # torn write
    assert store.load_tuned("m", "p", "f") is None
    path.write_text(json.dumps(["not", "a", "map"]))
    assert store.load_tuned("m", "p", "f") is None


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_checkpoint_round_trip(tmp_path):
    store = StateStore(tmp_path)
    assert store.load_checkpoint("m", "p") is None
    store.save_checkpoint("m", "p", {"population": [[1, 2]], "evaluations": 3})
    assert store.load_checkpoint("m", "p") == {"population": [[1, 2]], "evaluations": 3}


def test_temp_files_of_dead_writers_are_swept(tmp_path):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "tuned").mkdir()
    stale = tmp_path / "tuned" / f".abc.json.{dead.pid}.tmp"
    stale.write_text("{")
    mine = tmp_path / "tuned" / f".def.json.{os.getpid()}.tmp"
    mine.write_text("{")
    StateStore(tmp_path)
    assert not stale.exists() and mine.exists()
