"""ONNX import and export (the ``onnx`` extra).

Import normalises a graph to the IR: initializers become weights (also in old-style graphs that list
them as graph inputs), constant inputs of Reshape/Clip/Unsqueeze/Squeeze become attributes, Softmax
gets its opset's axis semantics, and ``Shape`` of a tensor whose shape is known folds to a constant.
Export writes opset 13 that onnxruntime runs, re-expanding fused activations into their own nodes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import ops
from .errors import ModelError, UnsupportedOpError
from .graph import Graph, Node

EXPORT_OPSET = 13


def _require_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ModelError("ONNX support needs the 'onnx' extra: pip install 'tunerd[onnx]'") from err
    return onnx, numpy_helper


def _attr_value(attr, numpy_helper):
    import onnx
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def import_onnx(path: str | os.PathLike, *, input_size: int | None = None) -> Graph:
    onnx, numpy_helper = _require_onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises its own DecodeError types
        raise ModelError(f"cannot read ONNX model {path}: {type(err).__name__}: {err}") from err
    g = model.graph
    if not g.node:
        raise ModelError(f"ONNX model {path} has no nodes (corrupt or truncated file?)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"ONNX model {path} declares no default-domain opset")
    if opset < 7:
        raise ModelError(f"ONNX model {path} uses opset {opset}; tunerd imports opset 7 and newer")

    weights = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelError(f"ONNX model {path} must have exactly one non-constant input, has {[i.name for i in inputs]}")
    if len(g.output) != 1:
        raise ModelError(f"ONNX model {path} must have exactly one output, has {len(g.output)}")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelError(f"input {inp.name!r} of {path} has rank {len(dims)}; tunerd runs NCHW image models")
    elem = inp.type.tensor_type.elem_type
    if elem not in (0, onnx.TensorProto.FLOAT):
        raise ModelError(f"input {inp.name!r} of {path} is {onnx.TensorProto.DataType.Name(elem)}, not float32")
    dims[0] = 1
    if input_size is not None:
        dims[2] = dims[3] = int(input_size)

    nodes = []
    for i, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"unsupported op {n.domain}.{n.op_type} in node {n.name or i!r}")
        name = n.name or f"{n.op_type}_{i}"
        attrs = {a.name: _attr_value(a, numpy_helper) for a in n.attribute}
        nodes.append(_normalise(Node(name, n.op_type, list(n.input), list(n.output), attrs), opset, weights))
    graph = Graph(g.name or path.stem, inp.name, tuple(dims), g.output[0].name, nodes,
                  {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in weights.items()})
    _fold_shapes(graph)
    for node in graph.nodes:
        if node.op not in ops.OPS and node.op not in ("Constant", "ConstantOfShape", "Shape", "Gather", "Cast"):
            ops.spec(node)  # raises UnsupportedOpError naming op and node
    return graph


def _const_input(node: Node, index: int, weights: dict, what: str):
    if len(node.inputs) <= index or not node.inputs[index]:
        return None
    name = node.inputs[index]
    if name not in weights:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): {what} must be a constant, got tensor {name!r}")
    return weights[name]


def _normalise(node: Node, opset: int, weights: dict) -> Node:
    """Move constant inputs into attributes and pin opset-dependent semantics."""
    op, a = node.op, node.attrs
    if op == "Reshape" and opset >= 5:
        if node.inputs[1] in weights:
            a["shape"] = [int(v) for v in weights[node.inputs[1]]]
            node.inputs = node.inputs[:1]
    elif op == "Clip" and opset >= 11:
        lo = _const_input(node, 1, weights, "min")
        hi = _const_input(node, 2, weights, "max")
        if lo is not None:
            a["min"] = float(lo)
        if hi is not None:
            a["max"] = float(hi)
        node.inputs = node.inputs[:1]
    elif op in ("Unsqueeze", "Squeeze") and opset >= 13:
        axes = _const_input(node, 1, weights, "axes")
        if axes is not None:
            a["axes"] = [int(v) for v in axes]
        node.inputs = node.inputs[:1]
    elif op in ("Softmax", "LogSoftmax"):
        if opset < 13:
            a.setdefault("axis", 1)
            a["coerce_2d"] = True
        else:
            a.setdefault("axis", -1)
    elif op == "Dropout":
        node.inputs = node.inputs[:1]
    elif op == "Gemm":
        a.pop("broadcast", None)
    elif op == "BatchNormalization":
        for key in ("spatial", "momentum", "is_test", "training_mode", "consumed_inputs"):
            a.pop(key, None)
    elif op == "Sum" and len(node.inputs) == 1:
        node.op = "Identity"
    return node


def _fold_shapes(graph: Graph) -> None:
    """Fold Shape (and Gather/Cast/Unsqueeze/Concat of constants after it) using inferred shapes,
    so exporters' dynamic flatten idioms (Shape -> Gather -> Concat -> Reshape) become static."""
    from .passes import _const_eval
    shapes = {k: tuple(v.shape) for k, v in graph.weights.items()}
    shapes[graph.input_name] = tuple(graph.input_shape)
    kept = []
    for node in graph.nodes:
        inputs = [i for i in node.inputs if i]
        if node.op == "Shape" and inputs[0] in shapes:
            graph.weights[node.outputs[0]] = np.array(shapes[inputs[0]], dtype=np.int64)
        elif node.op in ("Constant", "ConstantOfShape") or (inputs and all(i in graph.weights for i in inputs)
                                                            and node.op not in ops.HEAVY_OPS):
            args = [graph.weights[i] for i in inputs]
            if node.op == "Gather":
                value = np.take(args[0], args[1].astype(np.int64), axis=int(node.attrs.get("axis", 0)))
            elif node.op == "Cast":
                value = args[0]
            else:
                value = _const_eval(node, args)
            graph.weights[node.outputs[0]] = np.asarray(value)
        else:
            if node.op == "Reshape" and "shape" not in node.attrs:
                if len(node.inputs) > 1 and node.inputs[1] in graph.weights:
                    node.attrs["shape"] = [int(v) for v in graph.weights[node.inputs[1]]]
                    node.inputs = node.inputs[:1]
                else:
                    raise UnsupportedOpError(f"node {node.name!r} (Reshape): target shape is not a constant")
            kept.append(node)
            if node.op in ops.OPS and all(i in shapes for i in inputs):
                try:
                    outs = ops.OPS[node.op].infer(node, [shapes[i] for i in inputs])
                    shapes[node.outputs[0]] = tuple(outs[0])
                except Exception:  # noqa: BLE001 - shape errors are reported later with context
                    pass
        for out in node.outputs[:1]:
            if out in graph.weights:
                shapes[out] = tuple(graph.weights[out].shape)
    graph.nodes = kept


# ---------------------------------------------------------------- export

def export_onnx(graph: Graph, path: str | os.PathLike | None = None):
    """Write the (optimised) graph as an opset-13 ONNX model; returns the ModelProto."""
    onnx, numpy_helper = _require_onnx()
    from onnx import TensorProto, helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(v), name=k) for k, v in graph.weights.items()]
    out_nodes = []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    for node in graph.nodes:
        a = {k: v for k, v in node.attrs.items() if k not in ("activation", "coerce_2d")}
        inputs, outputs = list(node.inputs), list(node.outputs)
        act = node.attrs.get("activation")
        pre_act = f"{outputs[0]}__pre_act" if act else outputs[0]
        if node.op == "Reshape":
            inputs.append(const(f"{node.name}__shape", np.array(a.pop("shape"), np.int64)))
        elif node.op == "Clip":
            inputs += [const(f"{node.name}__min", np.float32(a.pop("min", -np.inf))),
                       const(f"{node.name}__max", np.float32(a.pop("max", np.inf)))]
        elif node.op in ("Unsqueeze", "Squeeze") and "axes" in a:
            inputs.append(const(f"{node.name}__axes", np.array(a.pop("axes"), np.int64)))
        elif node.op in ("Softmax", "LogSoftmax") and node.attrs.get("coerce_2d"):
            raise ModelError(f"node {node.name!r}: legacy 2-D-coerced {node.op} cannot be exported to opset 13")
        elif node.op == "Dropout":
            a = {}
        out_nodes.append(helper.make_node(node.op, inputs, [pre_act], name=node.name, **a))
        if act == "relu":
            out_nodes.append(helper.make_node("Relu", [pre_act], outputs[:1], name=f"{node.name}__relu"))
        elif act == "relu6":
            lo = const(f"{node.name}__lo", np.float32(0.0))
            hi = const(f"{node.name}__hi", np.float32(6.0))
            out_nodes.append(helper.make_node("Clip", [pre_act, lo, hi], outputs[:1], name=f"{node.name}__relu6"))

    from .passes import infer_shapes
    out_shape = infer_shapes(graph)[graph.output_name]
    g = helper.make_graph(
        out_nodes, graph.name,
        [helper.make_tensor_value_info(graph.input_name, TensorProto.FLOAT, list(graph.input_shape))],
        [helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT, list(out_shape))],
        initializer=inits)
    model = helper.make_model(g, producer_name="tunerd", opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = min(model.ir_version, 8)
    if path is not None:
        onnx.save(model, str(path))
    return model
