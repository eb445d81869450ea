"""Costs per backend: calibrations and hints say which backend's kernels they price, files made
before backends existed read as numpy's, and nothing ever uses one backend's costs for another."""
from __future__ import annotations

import json
import os

import pytest

from tunerd.costs import calibrate as C
from tunerd.costs import costmodel as cm
from tunerd.costs import hints as H
from tunerd.costs.calibration_file import (SCHEMA, Calibration, calibration_file_name,
                                           default_calibration_path, load_calibration, save_calibration)
from tunerd.errors import HintsError
from tunerd.model.loader import load_model
from tunerd.platform.identity import platform_key
from tunerd.platform.spec import resolve_platform

CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture
def platform():
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    return resolve_platform(f"emulate:big={CPUS[0]}@1.0,little={CPUS[1]}@0.5")


def _calibration(platform, backend: str) -> Calibration:
    """A made-up calibration of ``platform`` (no measuring: these tests are about the bookkeeping)."""
    coeffs = {c.core_type: cm.cluster_coeffs({"name": c.name, "core_type": c.core_type, "cores": c.cores,
                                              "gflops_per_core": 10.0 * c.speed, "bandwidth_gbs": 5.0})
              for c in platform.clusters}
    clusters = [{"name": c.name, "core_type": c.core_type, "cpus": list(c.cpus), "speed": c.speed}
                for c in platform.clusters]
    return Calibration(coeffs, {"spec": platform.spec, "source": platform.source, "clusters": clusters},
                       "2026-12-03T00:00:00+00:00", {}, quick=True, backend=backend)


@pytest.fixture
def model():
    return load_model("zoo:squeezenet", input_size=64, store=False)


def test_a_calibration_file_records_its_backend(tmp_path, platform):
    path = save_calibration(_calibration(platform, "onnxruntime"), tmp_path / "c.json")
    assert json.loads(path.read_text())["backend"] == "onnxruntime"
    assert load_calibration(path).backend == "onnxruntime"


def test_a_calibration_from_before_backends_reads_as_numpy(tmp_path, platform):
    data = _calibration(platform, "numpy").to_dict()
    del data["backend"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_calibration(path).backend == "numpy"


def test_an_unknown_backend_in_a_calibration_is_refused(tmp_path, platform):
    data = _calibration(platform, "numpy").to_dict()
    data["backend"] = "tensorrt"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HintsError, match="'backend' must be one of numpy, onnxruntime"):
        load_calibration(path)


def test_each_backend_has_its_own_calibration_file_and_numpy_keeps_the_old_name(platform, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path))
    key = platform_key(platform)
    assert default_calibration_path(platform, "numpy").name == f"{key}.json"
    assert default_calibration_path(platform).name == f"{key}.json"
    assert default_calibration_path(platform, "onnxruntime").name == f"{key}.onnxruntime.json"
    assert calibration_file_name(platform, "onnxruntime", "calibration-") == f"calibration-{key}.onnxruntime.json"
    with pytest.raises(HintsError, match="no calibration of backend 'auto'"):
        calibration_file_name(platform, "auto")


def test_hints_carry_the_calibrations_backend(platform, model):
    hints = H.make_hints(model, calibration=_calibration(platform, "onnxruntime"), platform=platform)
    assert hints.backend == "onnxruntime" and hints.producer["backend"] == "onnxruntime"
    again = H.Hints.from_dict(json.loads(H.dumps(hints)))
    assert again.backend == "onnxruntime"


def test_hints_for_one_backend_are_never_made_from_anothers_calibration(platform, model):
    with pytest.raises(HintsError, match="measured on the onnxruntime backend.*calibrate --backend numpy"):
        H.make_hints(model, calibration=_calibration(platform, "onnxruntime"), platform=platform, backend="numpy")


def test_load_hints_refuses_another_backends_costs(tmp_path, platform, model):
    path = H.save_hints(H.make_hints(model, calibration=_calibration(platform, "numpy"), platform=platform),
                        tmp_path / "h.json")
    assert H.load_hints(path, backend="numpy").backend == "numpy"
    with pytest.raises(HintsError, match="hints for the numpy backend, the daemon runs onnxruntime"):
        H.load_hints(path, backend="onnxruntime")


def test_hints_from_before_backends_are_numpys_and_board_hints_serve_any(tmp_path, platform, model):
    data = json.loads(H.dumps(H.make_hints(model, calibration=_calibration(platform, "numpy"), platform=platform)))
    del data["producer"]["backend"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert H.load_hints(old).backend == "numpy"
    with pytest.raises(HintsError):
        H.load_hints(old, backend="onnxruntime")
    board = H.save_hints(H.make_hints(model, board="hikey970"), tmp_path / "board.json")
    for backend in ("numpy", "onnxruntime"):
        assert H.load_hints(board, backend=backend).backend is None


def test_the_daemons_hints_calibrate_the_backend_it_runs(tmp_path, platform, model, monkeypatch):
    """A stored numpy calibration is not used for onnxruntime: that backend gets its own quick one,
    kept under its own name; asked again, each backend finds its own file."""
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path / "cache"))
    state = tmp_path / "state"
    save_calibration(_calibration(platform, "numpy"), state / calibration_file_name(platform, "numpy", "calibration-"))
    calls = []

    def fake_calibrate(p, **kw):
        calls.append(kw["backend"])
        return _calibration(platform, kw["backend"])
    monkeypatch.setattr(C, "calibrate", fake_calibrate)
    assert H.hints_for_platform(model, platform, cache_dir=state, backend="numpy").backend == "numpy"
    assert calls == []
    assert H.hints_for_platform(model, platform, cache_dir=state, backend="onnxruntime").backend == "onnxruntime"
    assert calls == ["onnxruntime"]
    assert (state / calibration_file_name(platform, "onnxruntime", "calibration-")).is_file()
    assert H.hints_for_platform(model, platform, cache_dir=state, backend="onnxruntime").backend == "onnxruntime"
    assert calls == ["onnxruntime"]
    with pytest.raises(HintsError, match="measured on the numpy backend"):
        H.hints_for_platform(model, platform, calibration=_calibration(platform, "numpy"), backend="onnxruntime")


def test_quick_calibration_through_onnxruntime_in_a_pinned_child():
    """The sweep's layers run through onnxruntime in the measuring child (one small request)."""
    pytest.importorskip("onnxruntime")
    from tunerd.costs.calibration_child import run_child
    from tunerd.costs.calibration_sweep import QUICK_SWEEP
    layers = [list(QUICK_SWEEP[0]), list(QUICK_SWEEP[-1])]
    records = run_child(CPUS[:1], 1, {"kind": "layers", "layers": layers, "backend": "onnxruntime",
                                 "min_time_s": 0.01, "min_runs": 3, "max_runs": 5})
    assert [r["i"] for r in records] == [0, 1]
    assert all(r["ms"] > 0 and r["runs"] >= 3 for r in records)


def test_calibration_schema_unchanged():
    assert SCHEMA == "tunerd-calibration/1"
