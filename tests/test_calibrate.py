"""Calibration: the sweep's layers, the fit, the file, and a quick run on emulated clusters."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from tunerd.costs import calibrate as C
from tunerd.costs.calibration_child import robust_ms
from tunerd.costs.calibration_file import SCHEMA, load_calibration
from tunerd.costs.calibration_fit import Sample, _features, fit, refit
from tunerd.costs.calibration_sweep import FULL_SWEEP, QUICK_SWEEP, build_layer
from tunerd.costs import costmodel as cm
from tunerd.commands.cli import main
from tunerd.errors import ConfigError, HintsError
from tunerd.platform.fakesysfs import set_emulated_freq
from tunerd.costs.hints import load_hints, make_hints
from tunerd.model.loader import load_model
from tunerd.platform.spec import resolve_platform
from tunerd.platform.identity import platform_key

TWO_CPUS = len(os.sched_getaffinity(0)) >= 2


@pytest.mark.parametrize("op, params", sorted(set(QUICK_SWEEP), key=str))
def test_sweep_layers_build(op, params):
    model = build_layer(op, params)
    assert len(model.units) == 1
    assert cm.FeatureTable.from_units(model.units).n_units == 1


def test_every_kind_in_both_sweeps():
    for sweep in (QUICK_SWEEP, FULL_SWEEP):
        kinds = {cm.KINDS[k] for k in _features(sweep).kind}
        assert kinds == set(cm.KINDS)


def test_fit_recovers_a_known_model():
    true = cm.CoreCoeffs("x", 50.0, 12.0, act_gbs=60.0,
                         eff={"conv": 0.7, "conv1x1": 0.9, "depthwise": 0.1, "fc": 10.0, "pool": 0.05,
                              "lrn": 0.08, "elementwise": 0.1, "memory": 0.1},
                         overhead_us={k: 20.0 for k in cm.KINDS}, shape={"m0": 16.0, "n0": 64.0, "k0": 0.0})
    sweep = QUICK_SWEEP
    table = _features(sweep)
    samples = []
    for n, alpha in ((1, None), (2, 0.2)):
        c = true if alpha is None else true.with_(alpha={k: alpha for k in cm.KINDS}, alpha_mem=1.0)
        for i, ms in enumerate(cm.unit_ms(table, c, n)):
            samples.append(Sample(i, "x", n, float(ms)))
    # NOTE: weights far bigger than the cache, so the warm sweep sees them at DRAM speed too
    coeffs, report = fit(samples, sweep, quick=True, llc={"x": 1.0})
    assert report["x"]["median_abs_err_1"] < 0.02
    assert report["x"]["median_abs_err_2"] < 0.1


def test_robust_ms_ignores_slow_runs():
    assert robust_ms([5.0, 1.0, 9.0]) == 1.0
    runs = [1.0 + 0.01 * i for i in range(20)] + [30.0] * 20
    assert robust_ms(runs) == pytest.approx(1.01, abs=0.01)


def test_progress_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = C.Progress(20, stream=out)
    for _ in range(20):
        bar.step("big:1")
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 11 and lines[-1].startswith("calibrate: 20/20 (100%)")


def test_calibrating_a_board_is_refused():
    with pytest.raises(ConfigError, match="simulated board"):
        C.calibrate("board:hikey970")


def test_calibration_file_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema": "tunerd-calibration/0"}))
    with pytest.raises(HintsError, match="unsupported schema"):
        load_calibration(path)
    path.write_text(json.dumps({"schema": SCHEMA, "platform": {}, "date": "x", "coefficients": {}}))
    with pytest.raises(HintsError, match="non-empty"):
        load_calibration(path)
    path.write_text(json.dumps({"schema": SCHEMA, "platform": {}, "date": "x",
                                "coefficients": {"A": {"gflops": 1}}}))
    with pytest.raises(HintsError, match="lack field 'bandwidth_gbs'"):
        load_calibration(path)
    with pytest.raises(HintsError, match="not found"):
        load_calibration(tmp_path / "none.json")
    coeffs = cm.cluster_coeffs({"name": "x", "core_type": "A", "cores": 1, "gflops_per_core": 1.0,
                                "bandwidth_gbs": 1.0}).to_dict()
    for key, junk in (("platform", "auto"), ("machine", 3), ("samples", {})):
        path.write_text(json.dumps({"schema": SCHEMA, "platform": {}, "date": "x", "coefficients": {"A": coeffs},
                                    key: junk}))
        with pytest.raises(HintsError, match=f"'{key}' must be"):
            load_calibration(path)


@pytest.fixture(scope="module")
def quick_emulated(tmp_path_factory):
    """One quick calibration of two emulated clusters (big at full speed, little at half)."""
    if not TWO_CPUS:
        pytest.skip("needs two CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    spec = f"emulate:big={cpus[0]}@1.0,little={cpus[1]}@0.5"
    out = tmp_path_factory.mktemp("cal") / "cal.json"
    assert main(["calibrate", "--platform", spec, "--quick", "--no-progress", "-o", str(out)]) == 0
    return spec, out


def test_quick_calibration_on_emulated_clusters(quick_emulated, capsys):
    spec, path = quick_emulated
    cal = load_calibration(path)
    assert cal.quick and cal.platform["spec"] == spec
    assert set(cal.coefficients) == {"emu@1", "emu@0.5"}
    assert len(cal.samples) == 2 * len(QUICK_SWEEP)
    assert cal.machine.get("numpy")
    # measured times are stretched by 1/speed, and the slow cluster's fit predicts ~2x slower
    measured = {t: np.array([s["ms"] for s in cal.samples if s["core_type"] == t]) for t in cal.coefficients}
    assert 1.4 < float(np.median(measured["emu@0.5"] / measured["emu@1"])) < 2.8
    table = _features(QUICK_SWEEP)
    slow, fast = (cm.unit_ms(table, cal.coefficients[t], 1) for t in ("emu@0.5", "emu@1"))
    # NOTE: a fit of a quick sweep's few noisy timings: it has come out at 2.82 on a quiet machine;
    # the bounds catch a stretch that is missing (1) or doubled (4), not the noise
    assert 1.4 < float(np.median(slow / fast)) < 3.5
    # and hints for a model come out per cluster
    model = load_model("zoo:squeezenet", input_size=64, store=False)
    h = make_hints(model, calibration=path, platform=spec)
    assert h.ms("emu@0.5", 1).shape == h.ms("emu@1", 1).shape == (len(model.units),)


def test_a_throttle_in_force_while_calibrating_is_not_filed_as_the_nominal_cost(fake_sysfs, monkeypatch):
    """Costs are filed under the nominal core type emu@SPEED: a layer that takes 2 ms on a real
    core costs 4 ms on a cluster of speed 0.5, whatever cap its emulated cpufreq has right now
    (the daemon scales by the current speed itself)."""
    spec = "emulate:big=0@1.0,little=1@0.5"
    root = fake_sysfs(spec, max_khz=2_000_000)
    set_emulated_freq(root, 1, 1_000_000)                      # little throttled to half its clock
    platform = resolve_platform(spec, sysfs_root=root, available_cpus={0, 1})

    class FakeChild:
        def __init__(self, cpus, threads):
            pass

        def request(self, request):
            return [{"ms": 2.0, "clean": 3}]

        def close(self):
            pass
    monkeypatch.setattr(C, "Child", FakeChild)
    samples = C.measure(platform, QUICK_SWEEP[:2], quick=True, progress=False, max_cores=1)
    assert {(s.core_type, s.ms) for s in samples} == {("emu@1", 2.0), ("emu@0.5", 4.0)}


def test_refit_reproduces_the_file(quick_emulated):
    cal = load_calibration(quick_emulated[1])
    again = refit(cal)
    table = _features(QUICK_SWEEP)
    for t, c in cal.coefficients.items():      # the same up to the rounding of stored times
        np.testing.assert_allclose(cm.unit_ms(table, again.coefficients[t], 1), cm.unit_ms(table, c, 1), rtol=1e-2)


def test_cli_hints_from_calibration(quick_emulated, tmp_path, capsys):
    spec, path = quick_emulated
    out = tmp_path / "h.json"
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--platform", spec,
                 "--calibration", str(path), "-o", str(out)]) == 0
    h = load_hints(out)
    assert h.producer["kind"] == "calibration"
    assert [c["name"] for c in h.clusters] == ["little", "big"]


def test_cli_calibrate_json_to_default_place(tmp_path, monkeypatch, capsys):
    if not TWO_CPUS:
        pytest.skip("needs two CPUs")
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path))
    cpu = sorted(os.sched_getaffinity(0))[1]
    spec = f"emulate:solo={cpu}@0.8"
    assert main(["calibrate", "--platform", spec, "--quick", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["coefficients"]) == {"emu@0.8"}
    assert os.path.exists(report["file"]) and report["file"].startswith(str(tmp_path))
    # `tunerd hints --platform` finds it there
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--platform", spec]) == 0
    assert json.loads(capsys.readouterr().out)["producer"]["kind"] == "calibration"


def test_daemon_hints_calibrate_once_then_reuse(quick_emulated, tmp_path, monkeypatch):
    from tunerd.costs import hints as H
    spec, path = quick_emulated
    platform = resolve_platform(spec)
    model = load_model("zoo:squeezenet", input_size=64, store=False)
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_calibrate(p, **kw):
        calls.append(kw)
        return load_calibration(path)
    monkeypatch.setattr(C, "calibrate", fake_calibrate)
    backend = load_calibration(path).backend     # the fixture calibrated with `auto`
    first = H.hints_for_platform(model, platform, cache_dir=tmp_path / "state", backend=backend)
    again = H.hints_for_platform(model, platform, cache_dir=tmp_path / "state", backend=backend)
    assert len(calls) == 1 and calls[0]["quick"] and not calls[0]["progress"]
    assert calls[0]["backend"] == backend
    tail = "" if backend == "numpy" else f".{backend}"
    assert (tmp_path / "state" / f"calibration-{platform_key(platform)}{tail}.json").is_file()
    assert first.backend == backend
    assert first.to_dict()["units"] == again.to_dict()["units"]
    assert again.producer["kind"] == "calibration"


def test_the_measuring_child_imports_the_callers_tunerd_whatever_its_working_directory(tmp_path):
    import subprocess
    import sys

    import tunerd
    from tunerd.costs.calibration_child import SAFE_PATH
    (tmp_path / "tunerd").mkdir()
    (tmp_path / "tunerd" / "__init__.py").write_text("raise ImportError('the wrong tunerd')\n")
    out = subprocess.run([sys.executable, "-c", SAFE_PATH + "import tunerd; print(tunerd.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tunerd.__file__
