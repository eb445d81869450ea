"""ONNX import and export (the ``onnx`` extra).

Import (after tunerd.model.onnx_read has read and checked the file) normalises a graph to the IR:
initializers become weights (also in old-style graphs that list them as graph inputs), every node
whose inputs are all constant is evaluated once by onnx's reference evaluator and becomes a weight
(shape arithmetic included: ``Shape`` of a tensor of known shape folds first), constant inputs of
Reshape/Clip/Unsqueeze/Squeeze become attributes, Softmax gets its opset's axis semantics, and the
load-time expansions of tunerd.model.passes (Split into Slices) apply. Any other standard op stays a
node in its ONNX form: the ops tunerd has no numpy kernel for run on the onnxruntime backend.
Export writes the graph's opset (13, or the source's if newer) that onnxruntime runs, re-expanding
fused activations into their own nodes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import onnx_eval, ops, passes
from ..errors import ModelError, UnsupportedOpError
from .graph import Graph, Node, fresh_name
from .onnx_form_ops import ONNX_FORM_OPS
from .onnx_read import MAX_MODEL_BYTES, check_nodes, input_dims, read_model

EXPORT_OPSET = 13
# ops whose IR form is tunerd's own (attributes normalised at import, whatever the source opset);
# the export writes them in any opset from 13 on. The others keep the ONNX form of their opset.
NORMALISED_OPS = frozenset(ops.OPS) - frozenset(ONNX_FORM_OPS)


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


def import_onnx(path: str | os.PathLike, *, input_size: int | None = None,
                max_bytes: int = MAX_MODEL_BYTES) -> Graph:
    onnx, numpy_helper = _require_onnx()
    path = Path(path)
    model = read_model(path, max_bytes)
    g = model.graph
    if not g.node:
        raise ModelError(f"ONNX model {path} has no nodes (corrupt or truncated file?)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"ONNX model {path} declares no default-domain opset")
    if opset < 7:
        raise ModelError(f"ONNX model {path} uses opset {opset}; tunerd imports opset 7 and newer")
    names = _node_names(g.node, path)
    check_nodes(g, names, path)
    if opset < EXPORT_OPSET and _needs_conversion(g, opset):
        model, opset = _convert(model, path), EXPORT_OPSET
        g = model.graph
        names = _node_names(g.node, path)

    weights = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelError(f"ONNX model {path} must have exactly one non-constant input, has {[i.name for i in inputs]}")
    if len(g.output) != 1:
        raise ModelError(f"ONNX model {path} must have exactly one output, has {len(g.output)}")
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem not in (0, onnx.TensorProto.FLOAT):
        raise ModelError(f"input {inp.name!r} of {path} is {onnx.TensorProto.DataType.Name(elem)}, not float32")
    dims = input_dims(inp, input_size, path)
    weights = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in weights.items()}
    graph = Graph(g.name or path.stem, inp.name, dims, g.output[0].name, [], weights,
                  opset=max(opset, EXPORT_OPSET))
    graph.nodes = _fold_and_type(g.node, names, graph, opset)
    return graph


def _needs_conversion(g, opset: int) -> bool:
    """Whether an old-opset graph holds ops that tunerd keeps in their ONNX form and whose form
    changed by the export opset (they must then be converted for the export to run them)."""
    from onnx import defs
    for n in g.node:
        if n.op_type in NORMALISED_OPS:
            continue
        if defs.get_schema(n.op_type, opset).since_version != defs.get_schema(n.op_type, EXPORT_OPSET).since_version:
            return True
    return False


def _convert(model, path):
    from onnx import version_converter
    try:
        return version_converter.convert_version(model, EXPORT_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises RuntimeError and its own types
        raise ModelError(f"ONNX model {path}: cannot convert it to opset {EXPORT_OPSET}: {err}") from err


def _fold_and_type(protos, names, graph: Graph, opset: int) -> list[Node]:
    """The IR nodes of the ONNX nodes: each normalised and typed in order; a node whose inputs are
    all constant is evaluated once (onnx.reference) and becomes a weight, and ``Shape``/``Size`` of
    a tensor of known shape fold, so the shape arithmetic exporters write becomes static."""
    _, numpy_helper = _require_onnx()
    weights = graph.weights
    types = {k: (onnx_eval.elem_type(v.dtype), tuple(v.shape)) for k, v in weights.items()}
    types[graph.input_name] = (onnx_eval.FLOAT, tuple(graph.input_shape))
    nodes = []
    for proto, name in zip(protos, names):
        inputs = [i for i in proto.input if i]
        if all(i in weights for i in inputs):
            if graph.output_name in proto.output:
                raise ModelError(f"node {name!r} ({proto.op_type}): the graph's output is a constant")
            proto = _named(proto, name)
            for out, value in zip(proto.output, onnx_eval.evaluate(proto, weights, opset)):
                if out:
                    weights[out] = value.astype(np.float32) if value.dtype == np.float64 else value
                    types[out] = (onnx_eval.elem_type(weights[out].dtype), tuple(weights[out].shape))
            continue
        if proto.op_type in ("Shape", "Size"):
            shape = types[inputs[0]][1]
            a = {x.name: x.i for x in proto.attribute}
            # NOTE: Python slicing is ONNX's start/end rule (negatives from the end, clamped)
            value = np.array(shape[a.get("start", 0):a.get("end")], dtype=np.int64) if proto.op_type == "Shape" \
                else np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
            weights[proto.output[0]] = value
            types[proto.output[0]] = (onnx_eval.elem_type(np.int64), tuple(value.shape))
            continue
        attrs = {a.name: _attr_value(a, numpy_helper) for a in proto.attribute}
        node = _normalise(Node(name, proto.op_type, list(proto.input), list(proto.output), attrs), opset, weights)
        for ir_node in passes.expand(node, types, weights, opset):
            for out, t in zip(ir_node.outputs, passes.node_types(ir_node, types, weights, opset)):
                if out:
                    types[out] = t
            if types[ir_node.outputs[0]][0] != onnx_eval.FLOAT:
                raise UnsupportedOpError(f"node {ir_node.name!r} ({ir_node.op}) makes a tensor of ONNX type "
                                         f"{types[ir_node.outputs[0]][0]}, not float32, from activations; tunerd's "
                                         f"activations are float32")
            nodes.append(ir_node)
    return nodes


def _named(proto, name: str):
    if proto.name == name:
        return proto
    from onnx import NodeProto
    copy = NodeProto()
    copy.CopyFrom(proto)
    copy.name = name
    return copy


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


# ---------------------------------------------------------------- export

def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *, with_weights: bool = True):
    """Write the (optimised) graph as an ONNX model of its opset (13 or newer); returns the ModelProto.

    ``with_weights=False`` leaves the graph's weights out of the initializers (the constants the
    export itself adds stay): the skeleton tunerd.backends.subgraph cuts stages from, made without
    reading (or paging in) a byte of the weights."""
    onnx, numpy_helper = _require_onnx()
    from onnx import TensorProto, helper

    from .passes import infer_shapes
    shapes = infer_shapes(graph)
    opset = max(EXPORT_OPSET, graph.opset)
    # NOTE: a 0-d constant (a scalar index) as it is: ascontiguousarray would make it 1-d
    inits = [numpy_helper.from_array(np.ascontiguousarray(v) if v.ndim else np.asarray(v), name=k)
             for k, v in graph.weights.items()] \
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
        a = {k: v for k, v in node.attrs.items() if k not in onnx_eval.INTERNAL_ATTRS}
        inputs, outputs = list(node.inputs), list(node.outputs)
        act = node.attrs.get("activation") or ("times_input" if node.attrs.get("times_input") else None)
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
        _drop_newer_attrs(node, a, onnx, opset)
        extra = outputs[1:] if node.op not in ops.OPS else []
        out_nodes.append(onnx_eval.to_proto(node, name=name, inputs=inputs, outputs=[out] + extra, attrs=a))
        out_nodes += post
        if act == "relu":
            out_nodes.append(helper.make_node("Relu", [pre_act], outputs[:1],
                                              name=fresh(f"{name}__relu", node_names)))
        elif act == "relu6":
            lo = const(f"{outputs[0]}__lo", np.float32(0.0))
            hi = const(f"{outputs[0]}__hi", np.float32(6.0))
            out_nodes.append(helper.make_node("Clip", [pre_act, lo, hi], outputs[:1],
                                              name=fresh(f"{name}__relu6", node_names)))
        elif act == "times_input":       # a fused SiLU: x * sigmoid(x)
            out_nodes.append(helper.make_node("Mul", [inputs[0], pre_act], outputs[:1],
                                              name=fresh(f"{name}__silu", node_names)))

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
    model = helper.make_model(g, producer_name="tunerd", opset_imports=[helper.make_opsetid("", opset)])
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


def _drop_newer_attrs(node: Node, attrs: dict, onnx, opset: int) -> None:
    """Drop attributes that the export's opset lacks when they change nothing; raise when they would."""
    known = onnx.defs.get_schema(node.op, opset).attributes
    for key in [k for k in attrs if k not in known]:
        value = attrs.pop(key)
        if key == "allowzero" and (not value or 0 not in node.attrs.get("shape", ())):
            continue
        if key == "dilations" and all(int(d) == 1 for d in value):
            continue
        raise ModelError(f"node {node.name!r} ({node.op}): attribute {key}={value!r} has no opset-{opset} "
                         f"equivalent, cannot export")
