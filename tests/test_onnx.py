"""ONNX import against onnxruntime on real graphs, and export of the zoo."""
from __future__ import annotations

import numpy as np
import pytest

import tunerd
from tunerd.errors import ModelError, UnsupportedOpError
from tunerd.onnx_io import export_onnx

from onnx_cases import LIGHT, light_with_random_weights, ort_run, rel_err

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOL = 1e-4


@pytest.mark.parametrize("name", LIGHT)
def test_light_graphs_match_onnxruntime(name, tmp_path):
    path = light_with_random_weights(name, tmp_path)
    model = tunerd.load_model(path)
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal(model.input_shape).astype(np.float32)
        assert rel_err(model.run(x), ort_run(path, x)) <= TOL


@pytest.mark.parametrize("name,size", [("alexnet", 64), ("googlenet", 32), ("mobilenet", 32),
                                       ("resnet50", 32), ("squeezenet", 32)])
def test_zoo_export_runs_the_same_in_onnxruntime(name, size, tmp_path):
    model = tunerd.load_model(f"zoo:{name}", input_size=size)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model.graph, path)
    x = np.random.default_rng(3).standard_normal(model.input_shape).astype(np.float32)
    assert rel_err(model.run(x), ort_run(path, x)) <= TOL
    # and the exported file imports back to the same model
    again = tunerd.load_model(path)
    assert len(again.units) == len(model.units)
    assert rel_err(again.run(x), model.run(x)) <= 1e-6


def test_corrupt_and_truncated_onnx(tmp_path):
    good = tmp_path / "sq.onnx"
    export_onnx(tunerd.load_model("zoo:squeezenet", input_size=32).graph, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError):
        tunerd.load_model(truncated)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a model" * 100)
    with pytest.raises(ModelError):
        tunerd.load_model(junk)


def test_unsupported_op_in_onnx_names_op_and_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="r"),
                           helper.make_node("Erf", ["h"], ["y"], name="the_erf")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedOpError, match="'Erf' in node 'the_erf'"):
        tunerd.load_model(path)


def test_dynamic_flatten_idiom_and_opset7(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (as exporters write flatten) folds statically."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32), "fc")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    ax0 = numpy_helper.from_array(np.array([0], np.int64), "ax0")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["c", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                          initializer=[w, fc, zero, minus1, ax0])
    path = tmp_path / "dyn.onnx"
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8  # what the installed onnxruntime reads
    onnx.save(proto, str(path))
    model = tunerd.load_model(path)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert rel_err(model.run(x), ort_run(path, x)) <= TOL
