"""The ops of modern CNN exports, each in every opset form it comes in, against onnxruntime on real
layer shapes: a graph x -> op -> y imported by tunerd and run on the numpy backend (its kernel and
its binding) and on the onnxruntime backend (its export), both compared with onnxruntime on the
original file. Plus constant folding of exporters' shape arithmetic, symbolic input dimensions and
the ops that only onnxruntime runs."""
from __future__ import annotations

import numpy as np
import pytest

import tunerd
from tunerd.errors import ModelError, UnsupportedOpError

from onnx_cases import ort_run, rel_err

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

n = helper.make_node
TOL = 1e-4
# real shapes: a MobileNetV3 SE block input, a ConvNeXt token map, a ShuffleNet stage input
SE = (1, 96, 14, 14)
TOKENS = (1, 14, 14, 96)
SHUFFLE = (1, 116, 28, 28)


def i64(v):
    return np.array(v, np.int64)


def f32(*shape, seed=1, positive=False):
    v = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(v) + np.float32(0.5) if positive else v


def save(tmp_path, nodes, inits=(), *, opset=13, shape=SE, name="g", dims=None):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      list(dims or shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def check(path, *, input_size=None, numpy=True, x=None):
    """Both backends against onnxruntime on the file; returns the model (onnxruntime backend)."""
    model = tunerd.load_model(path, input_size=input_size, backend="onnxruntime")
    if x is None:
        x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    ref = ort_run(path, x)
    ours = model.run(x)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-5
    if numpy:
        np_model = tunerd.load_model(path, input_size=input_size, backend="numpy")
        assert rel_err(np_model.run(x), ref) <= TOL
    return model


CASES = {
    # reductions: axes as attribute (opset 13) and as input (18), keepdims either way
    "reducemean13_hw": ([n("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)], {}, 13, SE),
    "reducemean18_hw_input": ([n("ReduceMean", ["x", "ax"], ["y"], keepdims=0)], {"ax": i64([-1, -2])}, 18, SE),
    "reducemean18_channels": ([n("ReduceMean", ["x", "ax"], ["y"])], {"ax": i64([1])}, 18, SE),
    "reducemax18_w": ([n("ReduceMax", ["x", "ax"], ["y"], keepdims=1)], {"ax": i64([3])}, 18, SE),
    "reducesum13_input_all": ([n("ReduceSum", ["x"], ["y"], keepdims=0)], {}, 13, SE),
    "reducesum11_attr": ([n("ReduceSum", ["x"], ["y"], axes=[1])], {}, 11, SE),
    # Split in each opset's form, its outputs joined in a new order so the graph has one output
    "split11_attr": ([n("Split", ["x"], ["a", "b"], axis=1, split=[58, 58]), n("Concat", ["b", "a"], ["y"], axis=1)],
                     {}, 11, SHUFFLE),
    "split13_input": ([n("Split", ["x", "s"], ["a", "b", "c"], axis=1), n("Concat", ["c", "a", "b"], ["y"], axis=1)],
                      {"s": i64([16, 50, 50])}, 13, SHUFFLE),
    "split13_equal": ([n("Split", ["x"], ["a", "b"], axis=1), n("Sub", ["b", "a"], ["y"])], {}, 13, SHUFFLE),
    "split18_num_outputs_uneven": ([n("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3),
                                    n("Concat", ["c", "b", "a"], ["y"], axis=2)], {}, 18, SE),
    # slices and gathers as exporters write them (channel halves, a stride, from the end)
    "slice13_channels": ([n("Slice", ["x", "st", "en", "ax"], ["y"])],
                         {"st": i64([58]), "en": i64([2**62]), "ax": i64([1])}, 13, SHUFFLE),
    "slice13_steps_negative": ([n("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                               {"st": i64([-1, 0]), "en": i64([-2**62, 14]), "ax": i64([3, 2]),
                                "sp": i64([-2, 3])}, 13, SE),
    "gather_channel": ([n("Gather", ["x", "i"], ["y"], axis=1)], {"i": i64([0, 5, -1])}, 13, SE),
    "gather_scalar_index": ([n("Gather", ["x", "i"], ["y"], axis=2)], {"i": i64(3)}, 13, SE),
    # activations
    "sigmoid": ([n("Sigmoid", ["x"], ["y"])], {}, 13, SE),
    "silu_as_exported": ([n("Sigmoid", ["x"], ["s"]), n("Mul", ["x", "s"], ["y"])], {}, 13, SE),
    "hardsigmoid": ([n("HardSigmoid", ["x"], ["y"], alpha=1 / 6, beta=0.5)], {}, 13, SE),
    "hardswish": ([n("HardSwish", ["x"], ["y"])], {}, 14, SE),
    "erf": ([n("Erf", ["x"], ["y"])], {}, 13, TOKENS),
    "gelu20": ([n("Gelu", ["x"], ["y"])], {}, 20, TOKENS),
    "gelu20_tanh": ([n("Gelu", ["x"], ["y"], approximate="tanh")], {}, 20, TOKENS),
    "gelu_as_exported": ([n("Div", ["x", "r2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]),
                          n("Mul", ["x", "p"], ["m"]), n("Mul", ["m", "half"], ["y"])],
                         {"r2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}, 13, TOKENS),
    "tanh": ([n("Tanh", ["x"], ["y"])], {}, 13, SE),
    "leakyrelu": ([n("LeakyRelu", ["x"], ["y"], alpha=0.1)], {}, 13, SE),
    "prelu_per_channel": ([n("PRelu", ["x", "sl"], ["y"])], {"sl": f32(96, 1, 1)}, 13, SE),
    # binary ops with broadcasting, constants on either side
    "mul_se_scale": ([n("ReduceMean", ["x"], ["m"], axes=[2, 3]), n("Mul", ["x", "m"], ["y"])], {}, 13, SE),
    "div_by_channel_vector": ([n("Div", ["x", "c"], ["y"])], {"c": f32(1, 96, 1, 1, positive=True)}, 13, SE),
    "sub_from_constant": ([n("Sub", ["c", "x"], ["y"])], {"c": f32(14, 1)}, 13, SE),
    "pow_square": ([n("Pow", ["x", "two"], ["y"])], {"two": np.float32(2)}, 13, SE),
    "pow_general": ([n("Abs", ["x"], ["a"]), n("Pow", ["a", "p"], ["y"])], {"p": np.float32(1.7)}, 13, SE),
    "sqrt_of_square": ([n("Mul", ["x", "x"], ["s"]), n("Sqrt", ["s"], ["y"])], {}, 13, SE),
    # LayerNormalization: ConvNeXt's over the last axis, and over C, H, W
    "layernorm17_last": ([n("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-6)],
                         {"g": f32(96, positive=True), "b": f32(96, seed=2)}, 17, TOKENS),
    "layernorm17_chw_no_bias": ([n("LayerNormalization", ["x", "g"], ["y"], axis=1)],
                                {"g": f32(96, 14, 14)}, 17, SE),
    # matrices and layouts (ConvNeXt's channels-last MLP)
    "matmul_batched_weights": ([n("MatMul", ["x", "w"], ["y"])], {"w": f32(96, 384) * 0.1}, 13, TOKENS),
    "transpose_to_nhwc_and_back": ([n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), n("Relu", ["t"], ["r"]),
                                    n("Transpose", ["r"], ["y"], perm=[0, 3, 1, 2])], {}, 13, SE),
    "expand": ([n("ReduceMean", ["x"], ["m"], axes=[1]), n("Expand", ["m", "s"], ["y"])],
               {"s": i64([1, 4, 14, 14])}, 13, SE),
    "cast_float_to_float": ([n("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], {}, 13, SE),
    "globalmaxpool": ([n("GlobalMaxPool", ["x"], ["y"])], {}, 13, SE),
    "max_min_variadic": ([n("Max", ["x", "c"], ["a"]), n("Min", ["a", "d"], ["y"])],
                         {"c": np.float32(-0.5), "d": f32(96, 1, 1)}, 13, SE),
    # pads: an input (opset 11), with axes (18), reflect and edge
    "pad11_constant": ([n("Pad", ["x", "p", "v"], ["y"])], {"p": i64([0, 0, 1, 2, 0, 0, 3, 0]),
                                                            "v": np.float32(0.25)}, 11, SE),
    "pad18_axes": ([n("Pad", ["x", "p", "", "a"], ["y"], mode="reflect")], {"p": i64([1, 2, 2, 1]),
                                                                            "a": i64([2, 3])}, 18, SE),
    "pad13_edge_and_crop": ([n("Pad", ["x", "p"], ["y"], mode="edge")], {"p": i64([0, 0, -1, 2, 0, 0, 1, -3])},
                            13, SE),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_on_both_backends_matches_onnxruntime(case, tmp_path):
    nodes, inits, opset, shape = CASES[case]
    check(save(tmp_path, nodes, inits, opset=opset, shape=shape))


def test_split_becomes_slices_and_exports_without_split(tmp_path):
    nodes, inits, opset, shape = CASES["split18_num_outputs_uneven"]
    model = check(save(tmp_path, nodes, inits, opset=opset, shape=shape))
    assert [nd.op for nd in model.graph.nodes] == ["Slice", "Slice", "Slice", "Concat"]
    assert model.graph.opset == 18


def test_shape_arithmetic_of_a_channel_shuffle_folds(tmp_path):
    """Shape -> Gather -> Div -> Unsqueeze -> Concat -> Reshape, as the TorchScript exporter writes
    ShuffleNetV2's channel shuffle with dynamic H, W: every shape node folds away at load."""
    c = lambda name, v: n("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v)))  # noqa: E731
    nodes = [
        n("Shape", ["x"], ["s"]),
        c("i0", i64(0)), c("i1", i64(1)), c("i2", i64(2)), c("i3", i64(3)), c("two", i64(2)),
        n("Gather", ["s", "i0"], ["b"], axis=0), n("Gather", ["s", "i1"], ["ch"], axis=0),
        n("Gather", ["s", "i2"], ["h"], axis=0), n("Gather", ["s", "i3"], ["w"], axis=0),
        n("Div", ["ch", "two"], ["cpg"]),
        *[n("Unsqueeze", [t, "ax0"], [t + "_1"]) for t in ("b", "cpg", "h", "w")],
        n("Concat", ["b_1", "two_1", "cpg_1", "h_1", "w_1"], ["shape5"], axis=0),
        n("Reshape", ["x", "shape5"], ["r"]),
        n("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
        n("Concat", ["b_1", "minus1", "h_1", "w_1"], ["shape4"], axis=0),
        n("Reshape", ["t", "shape4"], ["y"]),
    ]
    inits = {"ax0": i64([0]), "two_1": i64([2]), "minus1": i64([-1])}
    path = save(tmp_path, nodes, inits, opset=13, dims=["batch_size", 116, "height", "width"])
    model = check(path, input_size=28)
    assert [nd.op for nd in model.graph.nodes] == ["Reshape", "Transpose", "Reshape"]


def test_range_and_constant_of_shape_fold(tmp_path):
    nodes = [n("Range", ["start", "limit", "delta"], ["r"]), n("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             n("Shape", ["x"], ["s"]), n("ConstantOfShape", ["s"], ["ones"],
                                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
             n("Mul", ["x", "ones"], ["m"]), n("Add", ["m", "rf"], ["y"])]
    inits = {"start": i64(0), "limit": i64(14), "delta": i64(1)}
    model = check(save(tmp_path, nodes, inits, opset=13))
    assert [nd.op for nd in model.graph.nodes] == ["Mul", "Add"]


@pytest.mark.parametrize("batch", ["N", "batch_size", None])
def test_symbolic_batch_binds_to_one_and_symbolic_hw_take_the_input_size(batch, tmp_path, capsys):
    path = save(tmp_path, [n("Relu", ["x"], ["y"])], dims=[batch, 3, "height", "width"])
    with pytest.raises(ModelError, match="symbolic height and width \\(height, width\\).*--input-size"):
        tunerd.load_model(path)
    model = check(path, input_size=40)
    assert model.input_shape == (1, 3, 40, 40)
    from tunerd.commands.cli import main
    assert main(["model", "inspect", str(path)]) == 1
    assert "--input-size" in capsys.readouterr().err
    assert main(["model", "inspect", str(path), "--input-size", "40"]) == 0


def test_a_node_whose_constant_is_computed_at_run_time_runs_on_onnxruntime_only(tmp_path):
    """Expand to a shape computed from the data (not foldable): onnxruntime runs it, numpy refuses."""
    nodes = [n("ReduceMax", ["x"], ["m"], axes=[0, 1, 2, 3], keepdims=0), n("Cast", ["m"], ["k"], to=TensorProto.INT64),
             n("Abs", ["k"], ["a"]), n("Min", ["a", "one"], ["z"]), n("Add", ["z", "one"], ["d"]),
             n("Unsqueeze", ["d", "ax0"], ["d1"]), n("Concat", ["d1", "rest"], ["shape"], axis=0),
             n("Expand", ["x", "shape"], ["y"])]
    inits = {"one": i64(1), "ax0": i64([0]), "rest": i64([96, 14, 14])}
    path = save(tmp_path, nodes, inits, opset=13)
    with pytest.raises(ModelError):
        tunerd.load_model(path, backend="onnxruntime")  # a data-dependent shape has no static plan


RESIZE = {
    "nearest_x2": dict(mode="nearest"),
    "nearest_asymmetric_floor": dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "nearest_round_prefer_ceil": dict(mode="nearest", nearest_mode="round_prefer_ceil"),
    "linear_half_pixel": dict(mode="linear"),
    "linear_align_corners": dict(mode="linear", coordinate_transformation_mode="align_corners"),
    "linear_pytorch_half_pixel": dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    "linear_asymmetric": dict(mode="linear", coordinate_transformation_mode="asymmetric"),
}


@pytest.mark.parametrize("how", sorted(RESIZE))
@pytest.mark.parametrize("target", ["scales", "sizes"])
def test_resize_as_segmentation_heads_use_it(how, target, tmp_path):
    inputs = ["x", "", "sc"] if target == "scales" else ["x", "", "", "sz"]
    consts = {"sc": np.array([1, 1, 2, 2.5], np.float32)} if target == "scales" else {"sz": i64([1, 96, 21, 40])}
    check(save(tmp_path, [n("Resize", inputs, ["y"], **RESIZE[how])], consts, opset=13))


@pytest.mark.parametrize("kw,wshape", [
    (dict(strides=[2, 2], pads=[1, 1, 1, 1]), (96, 32, 4, 4)),                   # FCN-style x2 upsampling
    (dict(strides=[2, 2], output_padding=[1, 1], pads=[1, 1, 1, 1]), (96, 48, 3, 3)),
    (dict(group=4, dilations=[2, 2], pads=[0, 1, 2, 0]), (96, 8, 3, 3)),
    (dict(), (96, 16, 1, 1)),
])
def test_conv_transpose_as_decoders_use_it(kw, wshape, tmp_path):
    consts = {"w": f32(*wshape) * 0.1, "b": f32(wshape[1] * kw.get("group", 1), seed=3)}
    check(save(tmp_path, [n("ConvTranspose", ["x", "w", "b"], ["y"], **kw)], consts, opset=13))


def test_resize_in_a_mode_numpy_lacks_runs_on_onnxruntime_and_numpy_refuses_it_naming_it(tmp_path):
    nodes = [n("Resize", ["x", "", "sc"], ["y"], mode="cubic", name="upsample")]
    path = save(tmp_path, nodes, {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=13)
    model = check(path, numpy=False)
    assert model.output_shape == (1, 96, 28, 28)
    with pytest.raises(UnsupportedOpError, match="'Resize' in node 'upsample': mode 'cubic'.*use the onnxruntime"):
        tunerd.load_model(path, backend="numpy")


# ---------------------------------------------------------------- bad input: one ModelError naming it

def _model(nodes, inits=(), opset=13, extra_opsets=()):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    proto.ir_version = 8
    return proto


def _load_error(tmp_path, proto, **kw):
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path), **kw)
    with pytest.raises(ModelError) as info:
        tunerd.load_model(path)
    assert len(str(info.value).splitlines()) == 1
    return str(info.value), path


def test_a_custom_domain_op_is_refused_naming_node_and_domain(tmp_path):
    foo = n("Foo", ["x"], ["y"], domain="com.example", name="the_foo")
    msg, _ = _load_error(tmp_path, _model([foo], extra_opsets=[helper.make_opsetid("com.example", 1)]))
    assert "com.example.Foo" in msg and "'the_foo'" in msg


def test_a_cycle_is_refused_naming_the_node(tmp_path):
    nodes = [n("Add", ["x", "b"], ["a"], name="first"), n("Relu", ["a"], ["b"], name="second"),
             n("Relu", ["a"], ["y"])]
    msg, _ = _load_error(tmp_path, _model(nodes))
    assert "'first'" in msg and "'b'" in msg and "cycle" in msg


@pytest.mark.parametrize("op", ["If", "Loop"])
def test_ops_with_subgraphs_are_refused_naming_the_node(op, tmp_path):
    body = helper.make_graph([n("Identity", ["x"], ["z"])], "body", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    if op == "If":
        node = n("If", ["c"], ["y"], then_branch=body, else_branch=body, name="the_branch")
        inits = {"c": np.array(True)}
    else:
        node = n("Loop", ["", "c"], ["y"], body=body, name="the_branch")
        inits = {"c": np.array(True)}
    msg, _ = _load_error(tmp_path, _model([node], inits))
    assert f"'{op}'" in msg and "'the_branch'" in msg and "subgraph" in msg


def _with_external_weights(tmp_path):
    proto = _model([n("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])], {"w": f32(8, 4, 3, 3)})
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    return path


def test_external_data_loads_and_missing_or_truncated_data_is_refused_naming_the_file(tmp_path):
    path = _with_external_weights(tmp_path)
    check(path)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelError, match="ext.data is truncated.*'w'"):
        tunerd.load_model(path)
    data.unlink()
    with pytest.raises(ModelError, match="external data file .*ext.data of tensor 'w' cannot be read"):
        tunerd.load_model(path)


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    path = _with_external_weights(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="outside the model's folder"):
        tunerd.load_model(path)


def test_a_model_over_the_size_limit_is_refused_naming_the_file(tmp_path):
    from tunerd.model.onnx_io import import_onnx
    path = _with_external_weights(tmp_path)
    with pytest.raises(ModelError, match="ext.onnx with its external data is .* over the limit"):
        import_onnx(path, max_bytes=path.stat().st_size + 100)
    with pytest.raises(ModelError, match="ext.onnx is .* over the limit"):
        import_onnx(path, max_bytes=10)


def test_truncated_raw_data_is_refused_naming_the_tensor(tmp_path):
    proto = _model([n("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])], {"w": f32(8, 4, 3, 3)})
    t = proto.graph.initializer[0]
    t.raw_data = t.raw_data[:40]
    msg, _ = _load_error(tmp_path, proto)
    assert "'w'" in msg and "truncated" in msg


def test_serve_and_bench_on_numpy_refuse_a_model_with_an_onnxruntime_only_node_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    path = save(tmp_path, [n("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), n("Selu", ["c"], ["y"], name="the_selu")],
                {"w": f32(8, 96, 1, 1)})
    tunerd_bin = str(Path(sys.executable).parent / "tunerd")
    bench = subprocess.run([tunerd_bin, "bench", "--model", str(path), "--threads", "1", "--frames", "1",
                            "--backend", "numpy"], capture_output=True, text=True, timeout=120)
    assert bench.returncode == 1
    assert "'Selu' in node 'the_selu'" in bench.stderr and "use the onnxruntime backend" in bench.stderr
    serve = subprocess.run([tunerd_bin, "serve", "--model", str(path), "--backend", "numpy",
                            "--platform", "emulate:big=0@1.0", "--frames", f"ipc://{tmp_path}/f.sock",
                            "--control", f"ipc://{tmp_path}/c.sock", "--state-dir", str(tmp_path / "state")],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0
    assert "'Selu' in node 'the_selu'" in serve.stderr and "use the onnxruntime backend" in serve.stderr


def test_a_decoder_of_transposed_convolutions_gets_a_unit_per_layer(tmp_path):
    nodes = [n("ConvTranspose", ["x", "w1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]), n("Relu", ["a"], ["r"]),
             n("ConvTranspose", ["r", "w2"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])]
    model = check(save(tmp_path, nodes, {"w1": f32(96, 16, 4, 4) * 0.1, "w2": f32(16, 4, 4, 4, seed=2) * 0.1}))
    assert [u.nodes for u in model.units] == [("ConvTranspose_0", "Relu_1"), ("ConvTranspose_2",)]
