"""ONNX import against onnxruntime on real graphs, and export of the zoo."""
from __future__ import annotations

import numpy as np
import pytest

import tunerd
from tunerd.errors import ModelError, UnsupportedOpError
from tunerd.model.onnx_io import export_onnx

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


def test_an_op_without_a_numpy_kernel_runs_on_onnxruntime_and_numpy_refuses_it(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="r"),
                           helper.make_node("Selu", ["h"], ["y"], name="the_selu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "selu.onnx"
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    model = tunerd.load_model(path, backend="onnxruntime")
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    assert rel_err(model.run(x), ort_run(path, x)) <= 1e-6
    with pytest.raises(UnsupportedOpError, match="'Selu' in node 'the_selu'.*use the onnxruntime backend"):
        tunerd.load_model(path, backend="numpy")
    from tunerd.commands.cli import main
    assert main(["model", "inspect", str(path), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["onnxruntime_only"] == ["the_selu"]
    assert main(["model", "inspect", str(path)]) == 0
    assert "the_selu (Selu)" in capsys.readouterr().out


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


# ---------------------------------------------------------------- tiny graphs against onnxruntime

def _save(tmp_path, nodes, inits=(), opset=13, shape=(1, 4, 5, 6), name="g"):
    """Save a one-input graph x -> ... -> y as tmp_path/NAME.onnx."""
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=list(inits))
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8  # what the installed onnxruntime reads
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def _check_against_ort(path):
    model = tunerd.load_model(path)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    ref = ort_run(path, x)
    ours = model.run(x)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= TOL
    return model


def _const(name, value):
    from onnx import helper, numpy_helper
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _graph_cases():
    from onnx import helper, numpy_helper
    n, init = helper.make_node, numpy_helper.from_array
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    return {
        "clip_bounds_from_constant_nodes": ([
            _const("lo", np.float32(0)), _const("hi", np.float32(6)),
            n("Conv", ["x", "w"], ["c"]), n("Clip", ["c", "lo", "hi"], ["y"])], [init(_w(3, 4, 1, 1) * 4, "w")], 13),
        "squeeze_unsqueeze_axes_from_constant_nodes": ([
            n("GlobalAveragePool", ["x"], ["g"]), _const("a", i64([3, 2])), n("Squeeze", ["g", "a"], ["s"]),
            _const("b", i64([0])), n("Unsqueeze", ["s", "b"], ["y"])], [], 13),
        "constant_value_ints": ([n("Constant", [], ["s"], value_ints=[1, -1]), n("Reshape", ["x", "s"], ["y"])],
                                [], 13),
        "constant_value_float": ([n("Constant", [], ["c"], value_float=2.5), n("Mul", ["x", "c"], ["y"])], [], 13),
        "flatten_axis_-1": ([n("Flatten", ["x"], ["y"], axis=-1)], [], 13),
        "flatten_axis_-3": ([n("Flatten", ["x"], ["y"], axis=-3)], [], 13),
        "shape_start": ([n("Shape", ["x"], ["s"], start=1), n("Reshape", ["x", "s"], ["y"])], [], 15),
        "shape_end": ([n("Shape", ["x"], ["s"], end=-2), n("Concat", ["s", "m1"], ["t"], axis=0),
                       n("Reshape", ["x", "t"], ["y"])], [init(i64([-1]), "m1")], 15),
        "dropout_input_to_output": ([n("Dropout", ["x"], ["y"])], [], 13),
        "sum_input_to_output": ([n("Sum", ["x"], ["y"])], [], 13),
    }


@pytest.mark.parametrize("case", sorted(_graph_cases()))
def test_tiny_graphs_match_onnxruntime(case, tmp_path):
    nodes, inits, opset = _graph_cases()[case]
    _check_against_ort(_save(tmp_path, nodes, inits, opset))


def test_generated_node_names_do_not_collide(tmp_path):
    """An unnamed Conv (named Conv_0 by the importer) beside a Conv the file names 'Conv_0', each with its BN."""
    from onnx import helper, numpy_helper
    bn = [numpy_helper.from_array(v, f"{p}{k}") for p in "ab" for k, v in
          zip("sbm", (_w(4, seed=1), _w(4, seed=2), _w(4, seed=3)))]
    bn += [numpy_helper.from_array(np.abs(_w(4, seed=4)) + 0.1, f"{p}v") for p in "ab"]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "as", "ab", "am", "av"], ["d1"]),
             helper.make_node("Conv", ["d1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="Conv_0"),
             helper.make_node("BatchNormalization", ["c2", "bs", "bb", "bm", "bv"], ["y"])]
    inits = [numpy_helper.from_array(_w(4, 4, 3, 3, seed=s), f"w{i}") for i, s in ((1, 5), (2, 6))]
    model = _check_against_ort(_save(tmp_path, nodes, inits + bn))
    names = [n.name for n in model.graph.nodes]
    assert len(set(names)) == len(names)


def test_duplicate_node_names_are_rejected(tmp_path):
    from onnx import helper
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["h"], name="twice"),
                            helper.make_node("Relu", ["h"], ["y"], name="twice")])
    with pytest.raises(ModelError, match="more than one node named 'twice'"):
        tunerd.load_model(path)


@pytest.mark.parametrize("name", ["bvlc_alexnet", "squeezenet"])
def test_light_graphs_with_legacy_softmax_export(name, tmp_path):
    path = light_with_random_weights(name, tmp_path)
    out = tmp_path / "exported.onnx"
    export_onnx(tunerd.load_model(path).graph, out)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert rel_err(ort_run(out, x), ort_run(path, x)) <= TOL


def _export_cases():
    from onnx import helper, numpy_helper
    n = helper.make_node
    return {
        "softmax11_axis1_4d": ([n("Softmax", ["x"], ["y"], axis=1)], [], 11),
        "logsoftmax11_axis3_4d": ([n("LogSoftmax", ["x"], ["y"], axis=3)], [], 11),
        "reshape14_allowzero": ([n("Reshape", ["x", "s"], ["y"], allowzero=1)],
                                [numpy_helper.from_array(np.array([1, 4, 30], np.int64), "s")], 14),
        "avgpool19_dilations_1": ([n("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], dilations=[1, 1],
                                     pads=[1, 1, 1, 1])], [], 19),
    }


@pytest.mark.parametrize("case", sorted(_export_cases()))
def test_export_of_imported_graphs_runs_in_onnxruntime(case, tmp_path):
    nodes, inits, opset = _export_cases()[case]
    model = _check_against_ort(_save(tmp_path, nodes, inits, opset))
    out = tmp_path / "exported.onnx"
    export_onnx(model.graph, out)
    x = np.random.default_rng(1).standard_normal(model.input_shape).astype(np.float32)
    assert rel_err(ort_run(out, x), model.run(x)) <= TOL


def test_export_rejects_attributes_opset13_lacks(tmp_path):
    from tunerd.model.graph import Graph, Node
    g = Graph("t", "x", (1, 4, 8, 8), "y",
              [Node("the_pool", "AveragePool", ["x"], ["y"], {"kernel_shape": [2, 2], "dilations": [2, 2]})], {})
    with pytest.raises(ModelError, match="'the_pool'.*dilations"):
        export_onnx(g, tmp_path / "x.onnx")


def test_export_names_added_tensors_uniquely(tmp_path):
    """Two Reshapes named alike (possible in a hand-built graph) get their own shape constants."""
    from tunerd.model.graph import Graph, Node
    g = Graph("t", "x", (1, 4, 5, 6), "y", [Node("r", "Reshape", ["x"], ["a"], {"shape": [1, -1]}),
                                             Node("r", "Reshape", ["a"], ["y"], {"shape": [4, 30]})], {})
    out = tmp_path / "x.onnx"
    export_onnx(g, out)
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(out, x), x.reshape(4, 30))


def test_export_to_missing_directory_is_a_one_line_error(tmp_path, capsys):
    from tunerd.commands.cli import main
    assert main(["model", "export", "zoo:squeezenet", "--input-size", "32",
                 "-o", str(tmp_path / "missing" / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case,error,match", [
    ("conv_weights_from_activation", UnsupportedOpError, "'the_node'.*weights must be constant"),
    ("bn_scale_from_activation", UnsupportedOpError, "'the_node'.*weights must be constant"),
    ("bn_spatial0", UnsupportedOpError, "'the_node'.*spatial=0"),
    ("lrn_without_size", ModelError, "'the_node'.*'size'"),
])
def test_unsupported_graphs_fail_at_load_naming_the_node(case, error, match, tmp_path):
    from onnx import helper, numpy_helper
    s4 = numpy_helper.from_array(_w(4), "s")
    node, inits, opset = {
        "conv_weights_from_activation": (helper.make_node("Conv", ["x", "x"], ["y"], name="the_node"), [], 13),
        "bn_scale_from_activation": (helper.make_node("BatchNormalization", ["x", "x", "s", "s", "s"], ["y"],
                                                      name="the_node"), [s4], 13),
        "bn_spatial0": (helper.make_node("BatchNormalization", ["x", "s", "s", "s", "s"], ["y"], spatial=0,
                                         name="the_node"), [s4], 7),
        "lrn_without_size": (helper.make_node("LRN", ["x"], ["y"], name="the_node"), [], 13),
    }[case]
    path = _save(tmp_path, [node], inits, opset)
    with pytest.raises(error, match=match):
        tunerd.load_model(path)
