"""What tunerd knows about each operator: output shapes, FLOPs, cost-model kind, and how to bind it
to a kernel call. One table (``OPS``) is the whole list of ops with a numpy kernel (those that keep
their ONNX form come from tunerd.model.onnx_form_ops); any other standard op is still a node of the
graph, shaped by onnx, costed as memory-bound, and run by the onnxruntime backend only.

A bound step is a closure ``step(bufs)`` over a list of arrays indexed by tensor slot: it reads its
inputs from ``bufs`` and writes its output into the preallocated ``bufs[out]`` (view ops instead
store a view). Weights are bound as constants.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import kernels as K
from ..errors import ModelError, UnsupportedOpError
from .binding import Binding, OpSpec, Shape
from .flops import VIEW_OPS  # noqa: F401 - ops whose output is a view of their input (plan, passes)
from .graph import Node
from .onnx_form_ops import ONNX_FORM_OPS, numpy_reason as _form_reason

# Ops that carry the bulk of a CNN's work; a unit holds at least one of them.
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _ints(v, n=2) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if v is not None else (1,) * n


def _conv_geometry(node: Node, x: Shape, w: Shape) -> dict:
    a = node.attrs
    kernel = tuple(a.get("kernel_shape") or w[2:])
    strides = _ints(a.get("strides"))
    dilations = _ints(a.get("dilations"))
    pads = _resolve_pads(node, x[2:], kernel, strides, dilations)
    return {"kernel": kernel, "strides": strides, "dilations": dilations, "pads": pads}


def _resolve_pads(node: Node, hw: Shape, kernel, strides, dilations) -> tuple[int, int, int, int]:
    attrs = node.attrs
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", "", None):
        pads = attrs.get("pads") or (0, 0, 0, 0)
        if len(pads) != 4:
            raise ModelError(f"node {node.name!r}: pads {list(pads)} is not 2-D (need 4 values)")
        return tuple(int(p) for p in pads)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(hw, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return (begin[0], begin[1], end[0], end[1])
    raise UnsupportedOpError(f"node {node.name!r}: auto_pad={auto!r} is not supported")


# ---------------------------------------------------------------- shape inference

def _infer_conv(node, s):
    x, w = s[0], s[1]
    if len(x) != 4 or len(w) != 4:
        raise UnsupportedOpError(f"node {node.name!r}: only 2-D convolution (NCHW) is supported, got input {x}")
    g = _conv_geometry(node, x, w)
    if tuple(g["kernel"]) != tuple(w[2:]):
        raise ModelError(f"node {node.name!r}: kernel_shape {list(g['kernel'])} differs from the weights' "
                         f"{list(w[2:])}")
    group = int(node.attrs.get("group", 1))
    if x[1] != w[1] * group:
        raise ModelError(f"node {node.name!r}: input has {x[1]} channels, weights expect {w[1]}x{group} groups")
    if len(s) > 2 and tuple(s[2]) != (w[0],):
        raise ModelError(f"node {node.name!r}: bias has shape {s[2]}, need ({w[0]},) for {w[0]} output channels")
    ho, wo = K.conv_output_hw(x[2], x[3], g["kernel"], g["strides"], g["pads"], g["dilations"])
    return [(x[0], w[0], ho, wo)]


def _infer_pool(node, s):
    x = s[0]
    if len(x) != 4:
        raise UnsupportedOpError(f"node {node.name!r}: only 2-D pooling is supported, got input {x}")
    a = node.attrs
    kernel = _ints(a["kernel_shape"])
    strides = _ints(a.get("strides"))
    dil = _ints(a.get("dilations"))
    pads = _resolve_pads(node, x[2:], kernel, strides, dil)
    ho, wo = K.pool_output_hw(x[2], x[3], kernel, strides, pads, dil, bool(a.get("ceil_mode", 0)))
    return [(x[0], x[1], ho, wo)]


def _infer_gemm(node, s):
    a, b = s[0], s[1]
    if len(a) != 2 or len(b) != 2:
        raise ModelError(f"node {node.name!r}: Gemm needs 2-D inputs, got {a} and {b}")
    m = a[1] if node.attrs.get("transA", 0) else a[0]
    ka = a[0] if node.attrs.get("transA", 0) else a[1]
    kb = b[1] if node.attrs.get("transB", 0) else b[0]
    n = b[0] if node.attrs.get("transB", 0) else b[1]
    if ka != kb:
        raise ModelError(f"node {node.name!r}: Gemm inner sizes differ ({ka} vs {kb})")
    if len(s) > 2 and _broadcast_to(s[2], (m, n)) != (m, n):
        raise ModelError(f"node {node.name!r}: Gemm C of shape {s[2]} does not broadcast to {(m, n)}")
    return [(m, n)]


def _broadcast_to(a: Shape, b: Shape) -> Shape | None:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        return None


def _infer_matmul(node, s):
    try:
        return [K.matmul_shape(tuple(s[0]), tuple(s[1]))]
    except ValueError as err:
        raise ModelError(f"node {node.name!r} (MatMul): {err}") from err


def _infer_broadcast(node, s):
    try:
        return [tuple(np.broadcast_shapes(*s))]
    except ValueError as err:
        raise ModelError(f"node {node.name!r}: shapes {s} do not broadcast") from err


def _axis(node, axis, rank: int) -> int:
    """``axis`` in [-rank, rank) made non-negative, else a ModelError naming the node."""
    if not -rank <= int(axis) < rank:
        raise ModelError(f"node {node.name!r} ({node.op}): axis {axis} is out of range for rank {rank}")
    return int(axis) % rank


def _infer_concat(node, s):
    axis = _axis(node, node.attrs.get("axis", 1), len(s[0]))
    base = list(s[0])
    for other in s[1:]:
        if len(other) != len(base) or any(o != b for i, (o, b) in enumerate(zip(other, base)) if i != axis):
            raise ModelError(f"node {node.name!r}: cannot concatenate shapes {s} on axis {axis}")
    base[axis] = sum(x[axis] for x in s)
    return [tuple(base)]


def _infer_flatten(node, s):
    return [K.flatten(np.empty(s[0], np.float32), int(node.attrs.get("axis", 1))).shape]


def _infer_reshape(node, s):
    return [K.reshape(np.empty(s[0], np.float32), node.attrs["shape"]).shape]


def _infer_unsqueeze(node, s):
    shape = list(s[0])
    rank = len(shape) + len(node.attrs["axes"])
    axes = sorted(_axis(node, a, rank) for a in node.attrs["axes"])
    if len(set(axes)) != len(axes):
        raise ModelError(f"node {node.name!r} (Unsqueeze): axes {list(node.attrs['axes'])} repeat an axis")
    for axis in axes:
        shape.insert(axis, 1)
    return [tuple(shape)]


def _infer_squeeze(node, s):
    axes = node.attrs.get("axes")
    if axes is None:
        return [tuple(d for d in s[0] if d != 1)]
    axes = {_axis(node, a, len(s[0])) for a in axes}
    if any(s[0][a] != 1 for a in axes):
        raise ModelError(f"node {node.name!r} (Squeeze): axes {sorted(axes)} of shape {s[0]} are not all 1")
    return [tuple(d for i, d in enumerate(s[0]) if i not in axes)]


def _infer_transpose(node, s):
    perm = node.attrs.get("perm") or list(range(len(s[0])))[::-1]
    if sorted(int(p) for p in perm) != list(range(len(s[0]))):
        raise ModelError(f"node {node.name!r} (Transpose): perm {list(perm)} is not a permutation of {len(s[0])} axes")
    return [tuple(s[0][p] for p in perm)]


def _infer_bn(node, s):
    channels = (s[0][1],) if len(s[0]) > 1 else None
    if len(s) != 5 or any(tuple(p) != channels for p in s[1:5]):
        raise ModelError(f"node {node.name!r} (BatchNormalization): scale, bias, mean and var must each have "
                         f"shape {channels} for input {s[0]}, got {s[1:]}")
    return [s[0]]


def _infer_softmax(node, s):
    _axis(node, node.attrs.get("axis", -1), len(s[0]))
    return [s[0]]


def _infer_lrn(node, s):
    if int(node.attrs.get("size", 0)) < 1:
        raise ModelError(f"node {node.name!r} (LRN): attribute 'size' (a positive int) is required")
    return [s[0]]


def _same(node, s):
    return [s[0]]


def _infer_global(node, s):
    return [(s[0][0], s[0][1], 1, 1)]


# ---------------------------------------------------------------- binding

def _bind_conv(b: Binding):
    node, (xs,), o = b.node, b.in_slots, b.out_slot
    w = b.weights[1]
    bias = b.weights[2] if len(b.weights) > 2 else None
    g = _conv_geometry(node, b.in_shapes[0], w.shape)
    kw = dict(strides=g["strides"], pads=g["pads"], dilations=g["dilations"],
              group=int(node.attrs.get("group", 1)), activation=node.attrs.get("activation"),
              workspace=b.workspace)
    conv2d = K.conv2d

    def step(bufs):
        conv2d(bufs[xs], w, bias, out=bufs[o], **kw)
    return step


def _bind_pool(b: Binding):
    node, (xs,), o = b.node, b.in_slots, b.out_slot
    a = node.attrs
    kernel = _ints(a["kernel_shape"])
    strides = _ints(a.get("strides"))
    dil = _ints(a.get("dilations"))
    pads = _resolve_pads(node, b.in_shapes[0][2:], kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    ws = b.workspace
    if node.op == "MaxPool":
        fn, kw = K.max_pool2d, dict(strides=strides, pads=pads, dilations=dil, ceil_mode=ceil)
    else:
        if dil != (1, 1):
            raise UnsupportedOpError(f"node {node.name!r}: AveragePool with dilations is not supported")
        fn, kw = K.avg_pool2d, dict(strides=strides, pads=pads, ceil_mode=ceil,
                                     count_include_pad=bool(a.get("count_include_pad", 0)))

    def step(bufs):
        fn(bufs[xs], kernel, out=bufs[o], workspace=ws, **kw)
    return step


def _bind_unary(fn: Callable, **kw):
    def bind(b: Binding):
        (xs,), o = b.in_slots, b.out_slot

        def step(bufs):
            fn(bufs[xs], out=bufs[o], **kw)
        return step
    return bind


def _bind_sigmoid(b: Binding):
    """Sigmoid, or x * sigmoid(x) where passes.fuse_silu folded the Mul in (``times_input``)."""
    return _bind_unary(K.silu if b.node.attrs.get("times_input") else K.sigmoid)(b)


def _bind_gemm(b: Binding):
    node, o = b.node, b.out_slot
    a = node.attrs
    kw = dict(alpha=float(a.get("alpha", 1.0)), beta=float(a.get("beta", 1.0)),
              trans_a=bool(a.get("transA", 0)), trans_b=bool(a.get("transB", 0)),
              activation=a.get("activation"))
    args = _arg_getters(b)
    gemm = K.gemm

    if len(args) == 2:
        args.append(lambda bufs: None)
    ga, gb, gc = args

    def step(bufs):
        gemm(ga(bufs), gb(bufs), gc(bufs), out=bufs[o], **kw)
    return step


def _arg_getters(b: Binding) -> list[Callable]:
    """Per node input, a getter returning the constant or the slot's current array."""
    getters, slots = [], iter(b.in_slots)
    for w in b.weights:
        if w is None:
            s = next(slots)
            getters.append(lambda bufs, s=s: bufs[s])
        else:
            getters.append(lambda bufs, w=w: w)
    return getters


def _bind_binary(fn):
    def bind(b: Binding):
        ga, gb = _arg_getters(b)
        o = b.out_slot

        def step(bufs):
            fn(ga(bufs), gb(bufs), out=bufs[o])
        return step
    return bind


def _bind_sum(b: Binding):
    getters, o = _arg_getters(b), b.out_slot

    def step(bufs):
        K.sum_([g(bufs) for g in getters], out=bufs[o])
    return step


def _bind_concat(b: Binding):
    getters, o = _arg_getters(b), b.out_slot
    axis = int(b.node.attrs.get("axis", 1)) % len(b.out_shape)

    def step(bufs):
        K.concat([g(bufs) for g in getters], axis=axis, out=bufs[o])
    return step


def _bind_bn(b: Binding):
    (xs,), o = b.in_slots, b.out_slot
    scale, bias, mean, var = b.weights[1:5]
    eps = float(b.node.attrs.get("epsilon", 1e-5))

    def step(bufs):
        K.batch_norm(bufs[xs], scale, bias, mean, var, epsilon=eps, out=bufs[o])
    return step


def _bind_view(b: Binding):
    (xs,), o = b.in_slots, b.out_slot
    shape = b.out_shape

    def step(bufs):
        bufs[o] = bufs[xs].reshape(shape)
    return step


def _bind_transpose(b: Binding):
    (xs,), o = b.in_slots, b.out_slot
    perm = tuple(b.node.attrs.get("perm") or list(range(len(b.in_shapes[0])))[::-1])

    def step(bufs):
        K.transpose(bufs[xs], perm, out=bufs[o])
    return step


def _bind_softmax(fn):
    def bind(b: Binding):
        (xs,), o = b.in_slots, b.out_slot
        axis = int(b.node.attrs.get("axis", -1))
        coerce = bool(b.node.attrs.get("coerce_2d", False))

        def step(bufs):
            fn(bufs[xs], axis, coerce_2d=coerce, out=bufs[o])
        return step
    return bind


def _bind_lrn(b: Binding):
    (xs,), o = b.in_slots, b.out_slot
    a = b.node.attrs
    kw = dict(alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0)))
    size = int(a["size"])

    def step(bufs):
        K.lrn(bufs[xs], size, out=bufs[o], **kw)
    return step


def _bind_clip(b: Binding):
    (xs,), o = b.in_slots, b.out_slot
    lo = float(b.node.attrs.get("min", -np.inf))
    hi = float(b.node.attrs.get("max", np.inf))

    def step(bufs):
        K.clip(bufs[xs], lo, hi, out=bufs[o])
    return step


OPS: dict[str, OpSpec] = {
    "Conv": OpSpec(_infer_conv, _bind_conv, "conv", const_inputs=(1, 2)),
    "MaxPool": OpSpec(_infer_pool, _bind_pool, "pool"),
    "AveragePool": OpSpec(_infer_pool, _bind_pool, "pool"),
    "GlobalAveragePool": OpSpec(_infer_global, _bind_unary(K.global_avg_pool), "pool"),
    "GlobalMaxPool": OpSpec(_infer_global, _bind_unary(K.global_max_pool), "pool"),
    "Gemm": OpSpec(_infer_gemm, _bind_gemm, "fc"),
    "MatMul": OpSpec(_infer_matmul, _bind_binary(K.matmul), "fc"),
    "BatchNormalization": OpSpec(_infer_bn, _bind_bn, "elementwise", const_inputs=(1, 2, 3, 4)),
    "LRN": OpSpec(_infer_lrn, _bind_lrn, "lrn"),
    "Concat": OpSpec(_infer_concat, _bind_concat, "memory"),
    "Add": OpSpec(_infer_broadcast, _bind_binary(K.add), "elementwise"),
    "Mul": OpSpec(_infer_broadcast, _bind_binary(K.mul), "elementwise"),
    "Sum": OpSpec(_infer_broadcast, _bind_sum, "elementwise"),
    "Relu": OpSpec(_same, _bind_unary(K.relu), "elementwise"),
    "Clip": OpSpec(_same, _bind_clip, "elementwise"),
    "Sigmoid": OpSpec(_same, _bind_sigmoid, "elementwise"),
    "Softmax": OpSpec(_infer_softmax, _bind_softmax(K.softmax), "elementwise"),
    "LogSoftmax": OpSpec(_infer_softmax, _bind_softmax(K.log_softmax), "elementwise"),
    "Transpose": OpSpec(_infer_transpose, _bind_transpose, "memory"),
    "Flatten": OpSpec(_infer_flatten, _bind_view, "view"),
    "Reshape": OpSpec(_infer_reshape, _bind_view, "view"),
    "Unsqueeze": OpSpec(_infer_unsqueeze, _bind_view, "view"),
    "Squeeze": OpSpec(_infer_squeeze, _bind_view, "view"),
    "Dropout": OpSpec(_same, _bind_view, "view"),
    "Identity": OpSpec(_same, _bind_view, "view"),
    **ONNX_FORM_OPS,
}
# what an op without a numpy kernel is costed as: it runs on the onnxruntime backend only
ORT_ONLY_KIND = "memory"
ORT_ONLY_HINT = "use the onnxruntime backend"


def has_kernel(op: str) -> bool:
    """Whether the numpy backend runs ``op`` (every other standard op runs on onnxruntime only)."""
    return op in OPS


def numpy_reason(node: Node, weights: dict) -> str | None:
    """Why the numpy backend cannot run ``node`` (one line naming op and node), or None if it can."""
    if node.op not in OPS:
        return f"unsupported op {node.op!r} in node {node.name!r}: the numpy backend has no kernel for it"
    why = _form_reason(node, weights)
    return None if why is None else f"op {node.op!r} in node {node.name!r}: {why}, which the numpy backend lacks"


def check_numpy(nodes, weights: dict) -> None:
    """An UnsupportedOpError for the first node the numpy backend cannot run."""
    for node in nodes:
        why = numpy_reason(node, weights)
        if why is not None:
            raise UnsupportedOpError(f"{why}; {ORT_ONLY_HINT}")


def kind(op: str) -> str:
    """The op's cost-model category (ops without a numpy kernel are memory-bound)."""
    spec_ = OPS.get(op)
    return spec_.kind if spec_ is not None else ORT_ONLY_KIND


def spec(node: Node) -> OpSpec:
    """The op's numpy spec; an op without one is an UnsupportedOpError naming op and node."""
    try:
        return OPS[node.op]
    except KeyError:
        raise UnsupportedOpError(
            f"unsupported op {node.op!r} in node {node.name!r}: the numpy backend has no kernel for it; "
            f"{ORT_ONLY_HINT}") from None


def workspace_size(node: Node, in_shapes: list[Shape]) -> int:
    """Scratch elements the node's kernel wants (0 for none)."""
    if node.op == "Conv":
        x, w = in_shapes[0], in_shapes[1]
        g = _conv_geometry(node, x, w)
        return int(K.conv2d_workspace_size(x, w, strides=g["strides"], pads=g["pads"],
                                           dilations=g["dilations"], group=int(node.attrs.get("group", 1))))
    if node.op in ("MaxPool", "AveragePool"):
        a = node.attrs
        kernel, strides, dil = _ints(a["kernel_shape"]), _ints(a.get("strides")), _ints(a.get("dilations"))
        pads = _resolve_pads(node, in_shapes[0][2:], kernel, strides, dil)
        return int(K.pool_workspace_size(in_shapes[0], kernel, strides=strides, pads=pads, dilations=dil,
                                         ceil_mode=bool(a.get("ceil_mode", 0))))
    return 0


def describe_attrs(node: Node) -> dict[str, Any]:
    return {k: v for k, v in node.attrs.items() if k != "activation"}
