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
from ..errors import ModelError, UnsupportedOpError
from .graph import Graph, Node, fresh_name

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
    for n, name in zip(g.node, _node_names(g.node, path)):
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"unsupported op {n.domain}.{n.op_type} in node {name!r}")
        attrs = {a.name: _attr_value(a, numpy_helper) for a in n.attribute}
        nodes.append(Node(name, n.op_type, list(n.input), list(n.output), attrs))
    graph = Graph(g.name or path.stem, inp.name, tuple(dims), g.output[0].name, nodes,
                  {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in weights.items()})
    _fold_shapes(graph, opset)
    for node in graph.nodes:
        if node.op not in ops.OPS and node.op not in ("Constant", "ConstantOfShape", "Shape", "Gather", "Cast"):
            ops.spec(node)  # raises UnsupportedOpError naming op and node
    return graph


def _node_names(nodes, path) -> list[str]:
    """Each node's name: its own, or ``OP_INDEX`` for unnamed nodes, made unique.

    Later passes name weights and exported nodes after node names, so two alike would share them."""
    taken = set()
    for n in nodes:
        if n.name in taken:
            raise ModelError(f"ONNX model {path} has more than one node named {n.name!r}; node names must be unique")
        if n.name:
            taken.add(n.name)
    names = []
    for i, n in enumerate(nodes):
        name = n.name
        if not name:
            name = fresh_name(f"{n.op_type}_{i}", taken)
            taken.add(name)
        names.append(name)
    return names


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
        if a.get("allowzero") and 0 in a.get("shape", ()):
            raise UnsupportedOpError(f"node {node.name!r} (Reshape): allowzero=1 with a 0 in shape {a['shape']} "
                                     f"makes an empty tensor")
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
        if not a.get("spatial", 1):
            raise UnsupportedOpError(f"node {node.name!r} (BatchNormalization): spatial=0 (per-activation "
                                     f"statistics, opset 7-8) is not supported")
        for key in ("spatial", "momentum", "is_test", "training_mode", "consumed_inputs"):
            a.pop(key, None)
    elif op == "Sum" and len(node.inputs) == 1:
        node.op = "Identity"
    return node


def _fold_shapes(graph: Graph, opset: int) -> None:
    """Normalise each node, then fold Constant, Shape (and Gather/Cast/Unsqueeze/Concat of constants
    after it) using inferred shapes, so exporters' dynamic flatten idioms (Shape -> Gather -> Concat
    -> Reshape) become static."""
    from .passes import _const_eval
    shapes = {k: tuple(v.shape) for k, v in graph.weights.items()}
    shapes[graph.input_name] = tuple(graph.input_shape)
    kept = []
    for node in graph.nodes:
        # NOTE: normalised here, in order, so constant inputs made by earlier Constant/Shape nodes are known
        _normalise(node, opset, graph.weights)
        inputs = [i for i in node.inputs if i]
        if node.op == "Shape" and inputs[0] in shapes:
            # NOTE: Python slicing is ONNX's start/end rule (negatives from the end, clamped)
            start, end = node.attrs.get("start", 0), node.attrs.get("end")
            graph.weights[node.outputs[0]] = np.array(shapes[inputs[0]][start:end], dtype=np.int64)
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

def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *, with_weights: bool = True):
    """Write the (optimised) graph as an opset-13 ONNX model; returns the ModelProto.

    ``with_weights=False`` leaves the graph's weights out of the initializers (the constants the
    export itself adds stay): the skeleton tunerd.backends.subgraph cuts stages from, made without
    reading (or paging in) a byte of the weights."""
    onnx, numpy_helper = _require_onnx()
    from onnx import TensorProto, helper

    from .passes import infer_shapes
    shapes = infer_shapes(graph)
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), name=k) for k, v in graph.weights.items()] \
        if with_weights else []
    out_nodes = []
    # NOTE: tensors and nodes are separate namespaces; added ones take names not used yet in theirs
    tensor_names = set(graph.weights) | {t for n in graph.nodes for t in n.inputs + n.outputs}
    node_names = set()

    def fresh(base, taken):
        name = fresh_name(base, taken)
        taken.add(name)
        return name

    def tensor(base):
        return fresh(base, tensor_names)

    def const(base, value):
        name = tensor(base)
        inits.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    for node in graph.nodes:
        a = {k: v for k, v in node.attrs.items() if k not in ("activation", "coerce_2d")}
        inputs, outputs = list(node.inputs), list(node.outputs)
        act = node.attrs.get("activation")
        name = fresh(node.name, node_names)
        pre_act = tensor(f"{outputs[0]}__pre_act") if act else outputs[0]
        out, post = pre_act, []
        if node.op == "Reshape":
            inputs.append(const(f"{outputs[0]}__shape", np.array(a.pop("shape"), np.int64)))
        elif node.op == "Clip":
            inputs += [const(f"{outputs[0]}__min", np.float32(a.pop("min", -np.inf))),
                       const(f"{outputs[0]}__max", np.float32(a.pop("max", np.inf)))]
        elif node.op in ("Unsqueeze", "Squeeze") and "axes" in a:
            inputs.append(const(f"{outputs[0]}__axes", np.array(a.pop("axes"), np.int64)))
        elif node.op in ("Softmax", "LogSoftmax") and node.attrs.get("coerce_2d"):
            shape = shapes[inputs[0]]
            a["axis"] = int(a.get("axis", 1)) % len(shape)
            if int(np.prod(shape[a["axis"] + 1:], dtype=np.int64)) != 1:
                # NOTE: opset < 13 normalises over all dims from axis on: flatten them into one, and back
                flat, out = tensor(f"{outputs[0]}__flat"), tensor(f"{outputs[0]}__2d")
                out_nodes.append(helper.make_node("Flatten", inputs, [flat], axis=a["axis"],
                                                  name=fresh(f"{name}__flatten", node_names)))
                inputs, a["axis"] = [flat], 1
                back = const(f"{outputs[0]}__shape", np.array(shape, np.int64))
                post.append(helper.make_node("Reshape", [out, back], [pre_act],
                                             name=fresh(f"{name}__unflatten", node_names)))
        elif node.op == "Dropout":
            a = {}
        _drop_newer_attrs(node, a, onnx)
        out_nodes.append(helper.make_node(node.op, inputs, [out], name=name, **a))
        out_nodes += post
        if act == "relu":
            out_nodes.append(helper.make_node("Relu", [pre_act], outputs[:1],
                                              name=fresh(f"{name}__relu", node_names)))
        elif act == "relu6":
            lo = const(f"{outputs[0]}__lo", np.float32(0.0))
            hi = const(f"{outputs[0]}__hi", np.float32(6.0))
            out_nodes.append(helper.make_node("Clip", [pre_act, lo, hi], outputs[:1],
                                              name=fresh(f"{name}__relu6", node_names)))

    # NOTE: without the weights, they are declared as graph inputs of their shape and dtype, so that
    # the skeleton is still a valid model
    weight_inputs = [] if with_weights else [
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype)), list(v.shape))
        for k, v in graph.weights.items()]
    g = helper.make_graph(
        out_nodes, graph.name,
        [helper.make_tensor_value_info(graph.input_name, TensorProto.FLOAT, list(graph.input_shape))]
        + weight_inputs,
        [helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT, list(shapes[graph.output_name]))],
        initializer=inits)
    model = helper.make_model(g, producer_name="tunerd", opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = min(model.ir_version, 8)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"exporting {graph.name!r} gives invalid ONNX: {err}") from err
    if path is not None:
        try:
            onnx.save(model, str(path))
        except OSError as err:
            raise ModelError(f"cannot write {path}: {err.strerror or err}") from err
    return model


def _drop_newer_attrs(node: Node, attrs: dict, onnx) -> None:
    """Drop attributes that opset 13 lacks when they change nothing; raise when they would."""
    known = onnx.defs.get_schema(node.op, EXPORT_OPSET).attributes
    for key in [k for k in attrs if k not in known]:
        value = attrs.pop(key)
        if key == "allowzero" and (not value or 0 not in node.attrs.get("shape", ())):
            continue
        if key == "dilations" and all(int(d) == 1 for d in value):
            continue
        raise ModelError(f"node {node.name!r} ({node.op}): attribute {key}={value!r} has no opset-{EXPORT_OPSET} "
                         f"equivalent, cannot export")
