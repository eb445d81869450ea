"""The cost model: descriptors, shape of its predictions, and the reference boards vs Table I."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tunerd.costs import costmodel as cm
from tunerd.platform.boards import load_board
from tunerd.costs.calibration_sweep import build_layer
from tunerd.errors import HintsError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

NETWORKS = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]

# Seed 002 ("Throughput of different networks on different mobile SoC components"), Table I:
# frames/s of the whole network on the whole 4-core cluster at peak frequency (ARM-CL 18.05).
TABLE_I = {
    ("odroid-xu3", "A7"): [1.1, 0.9, 1.5, 0.2, 1.5],
    ("odroid-xu3", "A15"): [3.1, 3.4, 5.7, 1.3, 5.0],
    ("hikey970", "A53"): [2.2, 3.0, 6.5, 1.5, 6.8],
    ("hikey970", "A73"): [7.6, 7.1, 17.7, 2.8, 15.7],
}


def features(op, params) -> cm.FeatureTable:
    return cm.FeatureTable.from_units(build_layer(op, params).units)


def board(name):
    return cm.coeffs_from_board(load_board(name))


@pytest.fixture(scope="module")
def table1_models():
    # NOTE: Table I's SqueezeNet is v1.0 (zoo:squeezenet is v1.1); see tools/make_hints.py
    import make_hints
    return make_hints.table1_models()


# ------------------------------------------------------------------ descriptors

@pytest.mark.parametrize("op, params, kind", [
    ("conv", (64, 64, 14, 1, 1, 1), "conv1x1"),
    ("conv", (64, 64, 14, 1, 2, 1), "conv"),            # strided 1x1 goes through im2col
    ("conv", (16, 32, 14, 3, 1, 1), "conv"),
    ("conv", (32, 32, 14, 3, 1, 32), "depthwise"),
    ("conv", (32, 64, 14, 3, 1, 2), "conv"),             # grouped, not depthwise
    ("fc", (256, 100), "fc"),
    ("maxpool", (16, 14, 3, 2), "pool"),
    ("gap", (16, 7), "pool"),
    ("lrn", (16, 14), "lrn"),
    ("add", (16, 14), "elementwise"),
    ("concat", (16, 7, 2), "memory"),
])
def test_layer_kinds(op, params, kind):
    t = features(op, params)
    assert cm.KINDS[t.kind[0]] == kind


def test_conv_features_count_im2col_and_gemm_dims():
    t = features("conv", (16, 32, 14, 3, 1, 1))
    m, n, k = t.gemm[0]
    assert (m, n, k) == (32, 14 * 14, 16 * 9)
    assert t.bytes[0] == 4 * (16 * 14 * 14 + 32 * 14 * 14)
    assert t.cols[0] == 2 * 4 * 16 * 9 * 14 * 14                # columns written + read
    assert t.wbytes[0] == 4 * (32 * 16 * 9 + 32)
    assert features("conv", (16, 32, 14, 1, 1, 1)).cols[0] == 0


def test_views_are_free():
    from tunerd.model.units import LayerInfo
    view = LayerInfo("flat", "Flatten", "view", 0, ((1, 8, 2, 2),), (1, 32), 0)
    assert cm.layer_features(view) is None


# ------------------------------------------------------------------ shape of predictions

@pytest.mark.parametrize("name", ["hikey970", "odroid-xu3", "jetson-tx2"])
def test_monotonic_in_flops(name):
    for coeffs in board(name).values():
        for family in ([("conv", (c, c, 28, 3, 1, 1)) for c in (16, 32, 64, 128, 256)],
                       [("conv", (c, 2 * c, 14, 1, 1, 1)) for c in (16, 64, 256, 1024)],
                       [("fc", (k, 1000)) for k in (256, 1024, 4096)],
                       [("conv", (c, c, 28, 3, 1, c)) for c in (16, 64, 256)]):
            ms = [cm.unit_ms(features(*layer), coeffs, 1)[0] for layer in family]
            assert all(b > a for a, b in zip(ms, ms[1:])), (name, coeffs.core_type, family[0][0], ms)


@pytest.mark.parametrize("name", ["hikey970", "odroid-xu3", "jetson-tx2"])
def test_more_cores_never_slower(name):
    big = features("conv", (256, 256, 28, 3, 1, 1))
    tiny = features("add", (8, 4))
    for coeffs in board(name).values():
        ms = cm.predict_table(big, coeffs, 4)[0]
        assert np.all(np.diff(ms) <= 0)
        assert 2.0 < ms[0] / ms[3] <= 4.0           # a big conv scales, sub-linearly
        tiny_ms = cm.predict_table(tiny, coeffs, 4)[0]
        assert np.all(np.diff(tiny_ms) <= 0)         # a plateau at worst


def test_amdahl_speedup():
    assert cm.speedup(1, 0.3) == pytest.approx(1.0)
    assert cm.speedup(4, 0.0) == pytest.approx(4.0)
    assert cm.speedup(4, 1.0) == pytest.approx(1.0)


def test_small_layers_use_fewer_threads():
    c = board("hikey970")["A73"]
    tiny, big = features("conv", (8, 8, 7, 3, 1, 1)), features("conv", (256, 256, 28, 3, 1, 1))
    slow = c.with_(par_half_ms=1.0)
    gain = lambda t, k: cm.unit_ms(t, k, 1)[0] / cm.unit_ms(t, k, 4)[0]  # noqa: E731
    assert gain(tiny, slow) < gain(tiny, c)
    assert gain(big, slow) == pytest.approx(gain(big, c), rel=0.2)


# ------------------------------------------------------------------ coefficients

def test_coeffs_round_trip():
    c = board("odroid-xu3")["A15"]
    again = cm.CoreCoeffs.from_dict(c.to_dict())
    assert again.to_dict() == c.to_dict()


@pytest.mark.parametrize("patch, match", [
    ({"gflops": -1}, "gflops"),
    ({"eff": {"conv": 0}}, r"eff\[conv\]"),
    ({"eff": {"winograd": 0.5}}, "unknown kinds"),
    ({"alpha": {"conv": 1.5}}, r"alpha\[conv\]"),
    ({"overlap": 2.0}, "overlap"),
    ({"sync_us": float("nan")}, "sync_us"),
])
def test_coeffs_validation(patch, match):
    d = {**board("hikey970")["A53"].to_dict(), **patch}
    with pytest.raises(HintsError, match=match):
        cm.CoreCoeffs.from_dict(d)


def test_board_cluster_without_costmodel_gets_defaults():
    c = cm.cluster_coeffs({"name": "x", "core_type": "A55", "cores": 4, "freq_mhz": 2000,
                           "gflops_per_core": 16.0, "bandwidth_gbs": 4.0})
    assert c.eff == cm.BOARD_DEFAULTS["eff"]
    assert c.bandwidth_gbs * cm.speedup(4, c.alpha_mem) == pytest.approx(4.0)
    with pytest.raises(HintsError, match="unknown costmodel fields"):
        cm.cluster_coeffs({"name": "x", "core_type": "A55", "cores": 4, "gflops_per_core": 16.0,
                           "bandwidth_gbs": 4.0, "costmodel": {"efficiency": 1}})
    for key, junk in (("eff", 0.3), ("alpha", [0.1]), ("shape", "ab")):
        with pytest.raises(HintsError, match=f"costmodel.{key} must be an object"):
            cm.cluster_coeffs({"name": "x", "core_type": "A55", "cores": 4, "gflops_per_core": 16.0,
                               "bandwidth_gbs": 4.0, "costmodel": {key: junk}})


# ------------------------------------------------------------------ Table I

@pytest.mark.parametrize("board_name, core_type", list(TABLE_I))
def test_board_reproduces_table_one(table1_models, board_name, core_type):
    coeffs = board(board_name)[core_type]
    for net, fps in zip(NETWORKS, TABLE_I[(board_name, core_type)]):
        predicted = 1000.0 / cm.predict_units(table1_models[net].units, coeffs, 4)[:, 3].sum()
        assert fps / 1.25 <= predicted <= fps * 1.25, (board_name, core_type, net, fps, predicted)


def test_zoo_squeezenet_v1_1_is_lighter_than_table_one(table1_models):
    from tunerd.model.loader import load_model
    v11 = load_model("zoo:squeezenet", store=False)
    a73 = board("hikey970")["A73"]
    fps = lambda m: 1000.0 / cm.predict_units(m.units, a73, 4)[:, 3].sum()  # noqa: E731
    assert 1.3 < fps(v11) / fps(table1_models["squeezenet"]) < 3.0


def test_jetson_tx2_between_the_reference_boards(table1_models):
    tx2 = board("jetson-tx2")
    for net in ("googlenet", "resnet50"):
        units = table1_models[net].units
        cores = {"A57": 4, "Denver2": 2}
        fps = {t: 1000.0 / cm.predict_units(units, c, 4)[:, cores[t] - 1].sum() for t, c in tx2.items()}
        a15 = 1000.0 / cm.predict_units(units, board("odroid-xu3")["A15"], 4)[:, 3].sum()
        a73 = 1000.0 / cm.predict_units(units, board("hikey970")["A73"], 4)[:, 3].sum()
        assert a15 < fps["A57"] < a73 * 1.2
