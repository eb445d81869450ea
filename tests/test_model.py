"""Model IR, zoo, units, plans, storage and bad input."""
from __future__ import annotations

import numpy as np
import pytest

import tunerd
from tunerd.errors import ModelError, UnsupportedOpError
from tunerd.model.graph import Graph, Node
from tunerd.model.loader import Model

# (name, small input size used in tests, unit count at 224)
ZOO = [("alexnet", 64, 8), ("googlenet", 32, 13), ("mobilenet", 32, 28), ("resnet50", 32, 18), ("squeezenet", 32, 18)]


def load_reference(source, **kw):
    """The model on the numpy backend: this file tests the model wing's own plans (the reference)."""
    return tunerd.load_model(source, backend="numpy", **kw)


def frame(model, seed=0):
    return np.random.default_rng(seed).standard_normal(model.input_shape).astype(np.float32)


@pytest.mark.parametrize("name,size,units", ZOO)
def test_zoo_unit_counts_at_full_size(name, size, units):
    model = load_reference(f"zoo:{name}")
    assert model.input_shape == (1, 3, 224, 224)
    assert len(model.units) == units
    assert model.output_shape == (1, 1000)
    # units tile the nodes exactly, in order
    covered = [n for u in model.units for n in u.nodes]
    assert covered == [n.name for n in model.graph.nodes]
    assert all(u.flops > 0 for u in model.units)
    assert model.units[-1].out_bytes == 4000


@pytest.mark.parametrize("name,size,units", ZOO)
def test_zoo_small_outputs_are_informative(name, size, units):
    model = load_reference(f"zoo:{name}", input_size=size)
    out = model.run(frame(model))
    assert out.shape == (1, 1000) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert abs(out.sum() - 1.0) < 1e-4
    # not degenerate: not uniform, not one-hot, and depends on the input
    assert out.max() < 0.9 and out.max() > 1.5 / 1000
    other = model.run(frame(model, seed=1))
    assert not np.allclose(out, other)


def test_zoo_is_deterministic():
    a = load_reference("zoo:squeezenet", input_size=32)
    b = load_reference("zoo:squeezenet", input_size=32)
    assert a.hash == b.hash
    np.testing.assert_array_equal(a.run(frame(a)), b.run(frame(b)))


def test_flops_of_known_networks():
    # multiply-adds counted as 2: AlexNet (BVLC, grouped) ~1.45 GFLOP, ResNet-50 ~8.2 GFLOP at 224
    assert load_reference("zoo:alexnet").flops == pytest.approx(1.45e9, rel=0.05)
    assert load_reference("zoo:resnet50").flops == pytest.approx(8.2e9, rel=0.05)
    assert load_reference("zoo:mobilenet").flops == pytest.approx(1.14e9, rel=0.05)


def test_plans_by_unit_range_compose_to_the_whole_model():
    model = load_reference("zoo:googlenet", input_size=32)
    x = frame(model)
    ref = model.run(x)
    cut = 5
    head, tail = model.plan(0, cut - 1), model.plan(cut, len(model.units) - 1)
    mid = head.run(x).copy()
    assert mid.nbytes == model.units[cut - 1].out_bytes
    np.testing.assert_array_equal(tail.run(mid), ref)


@pytest.mark.parametrize("name,size", [("alexnet", 64), ("squeezenet", 32)])
def test_plan_run_into_given_output_and_timed(name, size):
    model = load_reference(f"zoo:{name}", input_size=size)
    plan = model.plan()
    x = frame(model)
    out = np.empty(plan.output_shape, np.float32)
    assert plan.run(x, out=out) is out
    res, times = plan.run_timed(x)
    assert len(times) == len(model.units) and all(t > 0 for t in times)
    np.testing.assert_array_equal(res, out)


def test_concat_inputs_are_written_in_place():
    model = load_reference("zoo:googlenet", input_size=32)
    plan = model.plan()
    assert len(plan._concat_inputs) == 9            # every inception block's concat
    x = frame(model)
    # the same frame twice gives the same result (no stale slices), and matches unit-by-unit plans
    a = plan.run(x).copy()
    np.testing.assert_array_equal(plan.run(x), a)
    y = x
    for i in range(len(model.units)):
        y = model.plan(i, i).run(y).copy()
    np.testing.assert_array_equal(y, a)


def test_stored_model_maps_weights_read_only(tmp_path):
    model = load_reference("zoo:squeezenet", input_size=32)
    assert model.path is not None
    again = Model.open(model.path)
    w = next(iter(again.graph.weights.values()))
    assert isinstance(w.base, np.memmap) or isinstance(w, np.memmap) or not w.flags.writeable
    with pytest.raises(ValueError):
        w[...] = 0
    np.testing.assert_array_equal(again.run(frame(model)), model.run(frame(model)))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((1, 3, 32, 32), np.float64), "dtype"),
    (np.zeros((1, 3, 33, 32), np.float32), "shape"),
    ([[1.0]], "numpy array"),
])
def test_run_rejects_bad_input(bad, match):
    model = load_reference("zoo:squeezenet", input_size=32)
    with pytest.raises(ModelError, match=match):
        model.run(bad)


def test_unknown_zoo_model_and_missing_file():
    with pytest.raises(ModelError, match="unknown zoo model 'vgg'"):
        load_reference("zoo:vgg")
    with pytest.raises(ModelError, match="not found"):
        load_reference("/nonexistent/model.onnx")


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ModelError, match="too small|empty"):
        load_reference("zoo:alexnet", input_size=16)


def test_an_op_without_a_numpy_kernel_is_a_node_the_numpy_plan_refuses_naming_it():
    pytest.importorskip("onnx")
    g = Graph("t", "x", (1, 3, 8, 8), "y", [Node("mystery", "Selu", ["x"], ["y"])], {})
    model = Model(g)                      # shaped by onnx.shape_inference, costed as memory-bound
    assert model.output_shape == (1, 3, 8, 8)
    assert model.units[0].layers[0].kind == "memory" and model.units[0].flops == 3 * 8 * 8
    with pytest.raises(UnsupportedOpError, match="'Selu' in node 'mystery'.*use the onnxruntime backend"):
        model.run(frame(model))


def test_batch_norm_and_activation_are_folded():
    model = load_reference("zoo:mobilenet", input_size=32)
    ops = {n.op for n in model.graph.nodes}
    assert "BatchNormalization" not in ops and "Clip" not in ops
    assert all(n.attrs.get("activation") == "relu6" for n in model.graph.nodes if n.op == "Conv")


def test_plan_ending_in_an_in_place_concat_writes_into_out():
    model = load_reference("zoo:googlenet", input_size=32)
    x = frame(model)
    head = model.plan(0, 3)                          # unit 3 = inception_3a, ends in its Concat
    assert head.output_name in head._concat_inputs
    ref = head.run(x).copy()
    out = np.full(head.output_shape, np.nan, np.float32)
    assert head.run(x, out=out) is out
    np.testing.assert_array_equal(out, ref)
    res, _ = head.run_timed(x, out=np.zeros(head.output_shape, np.float32))
    np.testing.assert_array_equal(res, ref)
    np.testing.assert_array_equal(head.run(x), ref)  # internal buffers restored


def _param(*shape, seed=0, positive=False):
    v = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(v) + 0.1 if positive else v


@pytest.mark.parametrize("nodes,weights,match", [
    ([Node("n", "Conv", ["x", "w", "b"], ["y"])], {"w": _param(3, 4, 3, 3), "b": _param(5)}, "'n': bias"),
    ([Node("n", "Conv", ["x", "w"], ["y"], {"kernel_shape": [2, 2]})], {"w": _param(3, 4, 3, 3)}, "'n': kernel_shape"),
    ([Node("n", "BatchNormalization", ["x", "s", "s", "s", "s"], ["y"])], {"s": _param(3)}, "'n'.*shape"),
    ([Node("n", "Transpose", ["x"], ["y"], {"perm": [0, 1]})], {}, "'n'.*perm"),
    ([Node("n", "Softmax", ["x"], ["y"], {"axis": 5})], {}, "'n'.*axis 5"),
    ([Node("n", "Flatten", ["x"], ["y"], {"axis": 7})], {}, "'n'.*axis 7"),
    ([Node("n", "Concat", ["x", "x"], ["y"], {"axis": 5})], {}, "'n'.*axis 5"),
    ([Node("n", "Squeeze", ["x"], ["y"], {"axes": [1]})], {}, "'n'.*not all 1"),
    ([Node("n", "Unsqueeze", ["x"], ["y"], {"axes": [0, 0]})], {}, "'n'.*repeat"),
    ([Node("n", "LRN", ["x"], ["y"])], {}, "'n'.*size"),
    ([Node("n", "MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "auto_pad": "FOO"})], {}, "'n'.*auto_pad"),
    ([Node("f", "Flatten", ["x"], ["h"]), Node("n", "Gemm", ["h", "w", "c"], ["y"])],
     {"w": _param(120, 3), "c": _param(5)}, "'n'.*C of shape"),
    ([Node("n", "Conv", ["x", "x"], ["y"])], {}, "'n'.*weights must be constant"),
])
def test_bad_layers_fail_at_load_naming_the_node(nodes, weights, match):
    g = Graph("t", "x", (1, 4, 5, 6), "y", nodes, weights)
    with pytest.raises(ModelError, match=match):
        Model(g)


@pytest.mark.parametrize("axis", [-1, -2, -3])
def test_flatten_axis_follows_onnx(axis):
    model = Model(Graph("t", "x", (1, 4, 5, 6), "y", [Node("f", "Flatten", ["x"], ["y"], {"axis": axis})], {}))
    x = frame(model)
    k = axis + 4 if axis < 0 else axis
    np.testing.assert_array_equal(model.run(x), x.reshape(int(np.prod(x.shape[:k])), -1))


def test_batch_norm_folding_with_repeated_node_names():
    """Two Convs named alike, each followed by a BN, keep their own folded weights."""
    from tunerd.model import passes

    def graph(first, second):
        nodes = [Node(first, "Conv", ["x", "w1"], ["c1"], {"pads": [1, 1, 1, 1]}),
                 Node("bn1", "BatchNormalization", ["c1", "s1", "b1", "m1", "v1"], ["d1"]),
                 Node(second, "Conv", ["d1", "w2"], ["c2"], {"pads": [1, 1, 1, 1]}),
                 Node("bn2", "BatchNormalization", ["c2", "s2", "b2", "m2", "v2"], ["y"])]
        weights = {"w1": _param(4, 4, 3, 3, seed=1), "w2": _param(4, 4, 3, 3, seed=2)}
        for i in "12":
            weights.update({f"s{i}": _param(4, seed=3), f"b{i}": _param(4, seed=4), f"m{i}": _param(4, seed=5),
                            f"v{i}": _param(4, seed=6, positive=True)})
        return Graph("t", "x", (1, 4, 8, 8), "y", nodes, weights)

    unfolded = Model(graph("conv", "conv"))
    folded = Model(passes.optimize(graph("conv", "conv")))
    assert "BatchNormalization" not in {n.op for n in folded.graph.nodes}
    x = frame(unfolded)
    ref = unfolded.run(x)
    assert float(np.max(np.abs(folded.run(x) - ref)) / np.max(np.abs(ref))) <= 1e-4


def test_an_unwritable_model_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be\n")
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(blocker))
    with pytest.raises(ModelError, match="cannot store the optimised model in .*TUNERD_CACHE_DIR"):
        load_reference("zoo:squeezenet", input_size=32)
