"""Hints files: making, the versioned schema, validation errors, shipped files, the CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tunerd.costs import hints as H
from tunerd.commands.cli import main
from tunerd.errors import HintsError
from tunerd.model.loader import load_model

ZOO = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]
BOARDS = ["hikey970", "odroid-xu3", "jetson-tx2", "rk3588", "sd855", "tensor-g1", "intel-hybrid"]


@pytest.fixture(scope="module")
def small():
    return load_model("zoo:squeezenet", input_size=64, store=False)


@pytest.fixture(scope="module")
def small_hints(small):
    return H.make_hints(small, board="hikey970")


def test_make_hints_from_board(small, small_hints):
    h = small_hints
    assert h.schema == "tunerd-hints/1"
    assert (h.model_name, h.model_hash, h.input_shape) == (small.name, small.hash, small.input_shape)
    assert [c["core_type"] for c in h.clusters] == ["A53", "A73"]
    assert h.producer["kind"] == "board" and h.producer["name"] == "hikey970"
    assert h.interconnect_gbs == 3.0
    assert [u.first_node for u in h.units] == [u.first_node for u in small.units]
    assert h.out_bytes.tolist() == [u.out_bytes for u in small.units]
    for ms in h.predicted_ms.values():
        assert ms.shape == (len(small.units), 4)
        assert np.all(ms > 0) and np.all(np.diff(ms, axis=1) <= 0)
    assert h.fps("A73", 4) > h.fps("A53", 4)


def test_to_table(small_hints):
    from tunerd.costs.table import UnitCostTable
    table = small_hints.to_table()
    assert isinstance(table, UnitCostTable)
    assert table.n_units == small_hints.n_units
    assert np.array_equal(table.ms("A73", 2), small_hints.ms("A73", 2))


def test_round_trip(tmp_path, small, small_hints):
    path = H.save_hints(small_hints, tmp_path / "h.json")
    again = H.load_hints(path, model=small)
    assert again.to_dict() == json.loads(json.dumps(small_hints.to_dict()))
    for t, ms in small_hints.predicted_ms.items():
        np.testing.assert_allclose(again.predicted_ms[t], ms, rtol=1e-5)


def _broken(d, path, value=None, delete=False):
    d = copy.deepcopy(d)
    *keys, last = path
    target = d
    for k in keys:
        target = target[k]
    if delete:
        del target[last]
    else:
        target[last] = value
    return d


@pytest.mark.parametrize("path, value, delete, match", [
    (("schema",), None, True, "missing field 'schema'"),
    (("schema",), "tunerd-hints/0", False, "unsupported schema 'tunerd-hints/0'"),
    (("model",), None, True, "missing field 'model'"),
    (("model", "hash"), None, True, "missing field model.'hash'"),
    (("model", "input_shape"), [1, 3, -2, 2], False, "input_shape"),
    (("units",), None, True, "missing field 'units'"),
    (("units",), [], False, "'units' is empty"),
    (("units", 0, "flops"), None, True, r"missing field units\[0\]\.'flops'"),
    (("units", 1, "index"), 7, False, "index is 7, expected 1"),
    (("units", 0, "out_bytes"), -4, False, "out_bytes must be >= 0"),
    (("units", 2, "predicted_ms", "A73", 1), -1.0, False, "unit 2 on 2 core"),
    (("units", 2, "predicted_ms", "A73", 0), float("nan"), False, "finite and > 0"),
    (("units", 3, "predicted_ms", "A73"), [1.0], False, "rows of different lengths"),
    (("units", 3, "predicted_ms", "A73", 0), "fast", False, r"list of ms \(numbers\)"),
    (("units", 3, "predicted_ms", "A73", 0), "1.5", False, r"list of ms \(numbers\)"),
    (("units", 3, "predicted_ms", "A73", 0), True, False, r"list of ms \(numbers\)"),
    (("coefficients",), "none", False, "'coefficients' must be an object of objects"),
    (("coefficients",), {"A73": 3}, False, "'coefficients' must be an object of objects"),
    (("clusters", 1, "name"), "little", False, "clusters has a name twice"),
    (("units", 1, "predicted_ms", "A53"), None, True, "core types"),
    (("clusters", 0, "core_type"), "A55", False, "no predicted_ms"),
    (("clusters", 1, "cores"), 8, False, "covers 1-4"),
    (("interconnect_gbs",), -1, False, "interconnect_gbs"),
])
def test_validation_errors(small_hints, path, value, delete, match):
    with pytest.raises(HintsError, match=match):
        H.Hints.from_dict(_broken(small_hints.to_dict(), path, value, delete))


def test_load_errors(tmp_path, small, small_hints):
    with pytest.raises(HintsError, match="not found"):
        H.load_hints(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HintsError, match="not JSON"):
        H.load_hints(bad)
    # made for another model: unit count, then hash
    other = load_model("zoo:mobilenet", input_size=64, store=False)
    path = H.save_hints(small_hints, tmp_path / "h.json")
    with pytest.raises(HintsError, match=r"18 units but model 'mobilenet' has 28"):
        H.load_hints(path, model=other)
    d = small_hints.to_dict()
    d["model"]["hash"] = "0" * 64
    bad.write_text(json.dumps(d))
    with pytest.raises(HintsError, match="hints were made for model hash 000000000000"):
        H.load_hints(bad, model=small)


def test_predict_for_board_from_source():
    h = H.predict_for_board("zoo:alexnet", "odroid-xu3", input_size=64)
    assert h.n_units == 8 and h.input_shape == (1, 3, 64, 64)
    assert set(h.predicted_ms) == {"A7", "A15"}


def test_make_hints_needs_one_source(small):
    with pytest.raises(HintsError, match="either a board or a calibration"):
        H.make_hints(small)
    with pytest.raises(HintsError, match="unknown board"):
        H.make_hints(small, board="no-such-board")


def test_board_platform_stands_for_its_board(small):
    from tunerd.platform.spec import resolve_platform
    h = H.make_hints(small, platform=resolve_platform("board:odroid-xu3"))
    assert h.producer["name"] == "odroid-xu3"
    assert H.hints_for_platform(small, resolve_platform("board:odroid-xu3")).n_units == h.n_units


@pytest.fixture(scope="module")
def zoo_models():
    return {name: load_model(f"zoo:{name}", store=False) for name in ZOO}


@pytest.mark.parametrize("board", BOARDS)
def test_shipped_hints_match_the_zoo(zoo_models, board):
    """Shipped hints load and belong to today's zoo models.

    If this fails after a change to the zoo, the passes or the kernels' BN folding (the hash covers
    the folded weights), regenerate them: ``.venv/bin/python tools/make_hints.py``.
    """
    for name, model in zoo_models.items():
        h = H.shipped_hints(name, board)
        assert h is not None, f"no shipped hints for {name} on {board}"
        assert h.producer["name"] == board
        assert [(u.first_node, u.last_node, u.flops, u.out_bytes) for u in h.units] == \
            [(u.first_node, u.last_node, u.flops, u.out_bytes) for u in model.units], name
        H.check_model(h, model, f"{name}.{board}")
        fresh = H.predict_for_board(model, board)
        for t, ms in fresh.predicted_ms.items():
            np.testing.assert_allclose(h.predicted_ms[t], ms, rtol=1e-4,
                                       err_msg=f"{name}.{board}: board file changed; rerun tools/make_hints.py")


def test_no_shipped_hints_for_unknown():
    assert H.shipped_hints("lenet", "hikey970") is None


# ------------------------------------------------------------------ CLI

def test_cli_hints_board(tmp_path, capsys):
    out = tmp_path / "sq.json"
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--board", "hikey970",
                 "-o", str(out)]) == 0
    assert "squeezenet, 18 units" in capsys.readouterr().err
    assert H.load_hints(out).producer["name"] == "hikey970"
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--platform", "board:odroid-xu3"]) == 0
    assert json.loads(capsys.readouterr().out)["producer"]["name"] == "odroid-xu3"


def test_cli_hints_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--board", "nope"]) == 1
    assert "unknown board 'nope'" in capsys.readouterr().err
    assert main(["hints", "--model", "zoo:squeezenet", "--input-size", "64", "--platform", "auto",
                 "--backend", "numpy"]) == 1
    assert "run `tunerd calibrate --platform auto --backend numpy` first" in capsys.readouterr().err
    assert main(["hints", "--model", "zoo:squeezenet", "--board", "hikey970", "--calibration", "x.json"]) == 1
    assert "--calibration goes with --platform" in capsys.readouterr().err
