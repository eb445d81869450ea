"""Load-time graph passes: constant folding, no-op removal, BN folding, activation fusion, shapes.

Each pass takes a Graph and returns it (modified in place); they run once when a model is loaded.
"""
from __future__ import annotations

import numpy as np

from .. import kernels as K
from . import ops
from ..errors import ModelError, UnsupportedOpError
from .graph import Graph, Node, fresh_name

NOOP_OPS = frozenset({"Dropout", "Identity"})


def optimize(graph: Graph) -> Graph:
    fold_constants(graph)
    remove_noops(graph)
    fold_batch_norms(graph)
    fuse_activations(graph)
    remove_dead(graph)
    graph.check_topological()
    return graph


def _const_eval(node: Node, args: list[np.ndarray]) -> np.ndarray:
    a, op = node.attrs, node.op
    if op == "Constant":
        return _constant_value(node)
    if op == "ConstantOfShape":
        value = np.asarray(a.get("value", np.zeros(1, np.float32))).reshape(-1)
        return np.full(tuple(int(d) for d in args[0]), value[0], dtype=value.dtype)
    if op in ("Identity", "Dropout"):
        return args[0]
    if op == "Reshape":
        return K.reshape(args[0], a["shape"])
    if op == "Flatten":
        return K.flatten(args[0], int(a.get("axis", 1)))
    if op == "Unsqueeze":
        out = args[0]
        for axis in sorted(int(x) % (out.ndim + len(a["axes"])) for x in a["axes"]):
            out = np.expand_dims(out, axis)
        return out
    if op == "Squeeze":
        return np.squeeze(args[0], axis=tuple(a["axes"]) if a.get("axes") is not None else None)
    if op == "Transpose":
        return np.transpose(args[0], a.get("perm"))
    if op == "Concat":
        return np.concatenate(args, axis=int(a.get("axis", 0)))
    if op == "Add":
        return args[0] + args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op == "Cast":
        return args[0]
    raise UnsupportedOpError(f"cannot evaluate constant node {node.name!r} ({op})")


def _constant_value(node: Node) -> np.ndarray:
    """The value of a Constant node, whichever of ONNX's value attributes holds it."""
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    raise UnsupportedOpError(f"node {node.name!r} (Constant): value attribute {sorted(a)} is not supported "
                             f"(need value, value_float(s) or value_int(s))")


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants (graphs that build weights with ConstantOfShape)."""
    kept = []
    for node in graph.nodes:
        inputs = [i for i in node.inputs if i]
        foldable = node.op in ("Constant", "ConstantOfShape") or (
            inputs and all(i in graph.weights for i in inputs) and node.op not in ops.HEAVY_OPS)
        if foldable and len(node.outputs) >= 1 and node.outputs[0] != graph.output_name:
            value = _const_eval(node, [graph.weights[i] for i in inputs])
            if value.dtype == np.float64:
                value = value.astype(np.float32)
            graph.weights[node.outputs[0]] = value
        else:
            kept.append(node)
    graph.nodes = kept
    return graph


def _rename_input(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]


def remove_noops(graph: Graph) -> Graph:
    kept = []
    for node in graph.nodes:
        if node.op in NOOP_OPS and node.inputs[0] not in graph.weights:
            src, dst = node.inputs[0], node.outputs[0]
            if dst == graph.output_name and src == graph.input_name:
                # NOTE: input straight to output: no producer to rename, so the node stays as a copy
                node.op, node.inputs, node.outputs, node.attrs = "Identity", [src], [dst], {}
                kept.append(node)
                continue
            if dst == graph.output_name:
                # keep the graph's output name: rename the producer's output instead
                for other in kept:
                    other.outputs = [dst if o == src else o for o in other.outputs]
                _rename_input(graph, src, dst)
            else:
                _rename_input(graph, dst, src)
            continue
        kept.append(node)
    graph.nodes = kept
    return graph


def _sole_consumer(graph: Graph, tensor: str) -> Node | None:
    users = [n for n in graph.nodes if tensor in n.inputs]
    if len(users) != 1 or tensor == graph.output_name:
        return None
    return users[0]


def fold_batch_norms(graph: Graph) -> Graph:
    """Conv followed only by BatchNormalization: scale the conv's weights and bias instead."""
    removed = set()
    for node in graph.nodes:
        if node.op != "Conv" or node.attrs.get("activation") or node.inputs[1] not in graph.weights:
            continue
        bn = _sole_consumer(graph, node.outputs[0])
        if bn is None or bn.op != "BatchNormalization" or not all(i in graph.weights for i in bn.inputs[1:5]):
            continue
        if len([o for o in bn.outputs if o]) > 1:
            continue
        w = graph.weights[node.inputs[1]]
        b = graph.weights[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
        scale, shift, mean, var = (graph.weights[i] for i in bn.inputs[1:5])
        w2, b2 = K.fold_batch_norm(w, b, scale, shift, mean, var, epsilon=float(bn.attrs.get("epsilon", 1e-5)))
        # NOTE: fresh names, as node names may repeat; the first keeps NAME/folded_w (shipped hints hash it)
        wname, bname = (fresh_name(f"{node.name}/{k}", graph.weights) for k in ("folded_w", "folded_b"))
        graph.weights[wname], graph.weights[bname] = w2, b2
        node.inputs = [node.inputs[0], wname, bname]
        node.outputs = [bn.outputs[0]]
        removed.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph


def _activation_of(node: Node) -> str | None:
    if node.op == "Relu":
        return "relu"
    if node.op == "Clip" and float(node.attrs.get("min", -np.inf)) == 0.0 and float(node.attrs.get("max", np.inf)) == 6.0:
        return "relu6"
    return None


def fuse_activations(graph: Graph) -> Graph:
    """Conv/Gemm followed only by Relu or Clip(0, 6): apply it inside the kernel, in place."""
    removed = set()
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or node.attrs.get("activation"):
            continue
        act = _sole_consumer(graph, node.outputs[0])
        kind = _activation_of(act) if act is not None else None
        if kind is None:
            continue
        node.attrs["activation"] = kind
        node.outputs = [act.outputs[0]]
        removed.add(id(act))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph


def remove_dead(graph: Graph) -> Graph:
    needed = {graph.output_name}
    kept = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    graph.nodes = kept[::-1]
    graph.weights = {k: v for k, v in graph.weights.items() if k in needed}
    return graph


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape (weights included); raises at load time on unsupported ops or bad shapes."""
    shapes: dict[str, tuple[int, ...]] = {k: tuple(v.shape) for k, v in graph.weights.items()}
    shapes[graph.input_name] = tuple(graph.input_shape)
    for node in graph.nodes:
        spec = ops.spec(node)
        for i in spec.const_inputs:
            if i < len(node.inputs) and node.inputs[i] and node.inputs[i] not in graph.weights:
                raise UnsupportedOpError(f"node {node.name!r} ({node.op}): weights must be constant, "
                                         f"input {i} is tensor {node.inputs[i]!r}")
        in_shapes = [shapes[i] for i in node.inputs if i]
        try:
            outs = spec.infer(node, in_shapes)
        except (UnsupportedOpError, ModelError):
            raise
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ModelError(f"node {node.name!r} ({node.op}): cannot infer output shape from {in_shapes}: {err}") from err
        if any(d <= 0 for d in outs[0]):
            raise ModelError(f"node {node.name!r} ({node.op}): output shape {outs[0]} is empty "
                             f"(input {in_shapes[0]} too small for this layer?)")
        extra = [o for o in node.outputs[1:] if o]
        if extra and any(any(o in n.inputs for n in graph.nodes) for o in extra):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): extra outputs {extra} are not supported")
        shapes[node.outputs[0]] = tuple(int(d) for d in outs[0])
    return shapes
