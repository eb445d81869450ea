"""Real exports: torchvision CNNs as PyTorch's TorchScript (opset 17) and dynamo (opset 18) ONNX
exporters write them (tests/data/reference_graphs, skeletons filled with seeded random weights).

Each loads, and runs on both backends agreeing with onnxruntime on the original file: the whole
model (onnxruntime backend within 1e-5 relative, numpy within 1e-4) and every unit (the numpy plan
of a unit against the onnxruntime session of the same unit, on the same input). Graphs with symbolic
height and width run at SIZE; static ones at their own size.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference_graphs as R

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tunerd.backends import get_backend  # noqa: E402
from tunerd.model.loader import load_model  # noqa: E402

SIZE = 32
NAMES = R.names()
ORT_TOL = 1e-5
NUMPY_TOL = 1e-4
# what the suite expects to find (tools/export_reference_graphs.py: 12 models x 2 exporters)
EXPECTED = 24


def case(name: str, tmp_root):
    """(model, frame, onnxruntime's output on the original file) for the export ``name``."""
    path = R.materialise(name, tmp_root)
    sess = R.ort_session(path)
    dims = sess.get_inputs()[0].shape
    static = all(isinstance(d, int) for d in dims[2:])
    model = load_model(path, input_size=None if static else SIZE, store=False)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    path.unlink()                      # NOTE: the weights (up to 110 MB) are in the model now
    return model, x, ref


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_the_export_set_is_complete():
    assert len(NAMES) == EXPECTED
    assert {n.split(".")[1] for n in NAMES} == {"torchscript", "dynamo"}


@pytest.mark.parametrize("name", NAMES)
def test_whole_model_and_every_unit_on_both_backends_agree_with_onnxruntime(name, tmp_path):
    # NOTE: one test per model, so its weights are made and loaded once
    model, x, ref = case(name, tmp_path)
    assert model.output_shape == ref.shape == (1, 1000)
    assert np.abs(ref).max() > 0 and np.all(np.isfinite(ref))
    assert rel(model.use_backend(get_backend("onnxruntime")).run(x), ref) <= ORT_TOL
    assert rel(model.use_backend(get_backend("numpy")).run(x), ref) <= NUMPY_TOL
    ort_backend = get_backend("onnxruntime")
    assert len(model.units) >= 9
    for u in range(len(model.units)):
        runner = ort_backend.compile(model, u, u)
        expected = np.empty(runner.output_shape, np.float32)
        runner.run(x, expected)
        ours = model.plan(u, u).run(x)
        assert ours.shape == expected.shape
        assert rel(ours, expected) <= NUMPY_TOL, f"unit {u} ({model.units[u].first_node}..)"
        x = expected
    assert rel(x, ref) <= ORT_TOL        # the units chained are the whole model
