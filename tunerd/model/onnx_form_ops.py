"""The ops of modern CNN exports that tunerd keeps in their ONNX form, with their numpy bindings.

Their constant inputs (axes, starts/ends, pads, shapes) stay inputs that name weights, so the export
writes the node back as it came and every opset's form is read here (an attribute before the opset
that made it an input). Their shapes come from onnx.shape_inference (``infer=None``). A node whose
needed constant is computed at run time, or that uses a mode its kernel lacks, is not refused: it
runs on the onnxruntime backend only (``numpy_reason`` says why).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import kernels as K
from ..kernels.resize import COORDINATE_MODES
from .binding import Binding, OpSpec

FLOAT = 1


def inputs_of(b: Binding) -> list:
    """Per positional input of the node: its constant array, the int slot of an activation, or None
    for an input left out (an empty name)."""
    weights, slots, out = iter(b.weights), iter(b.in_slots), []
    for name in b.node.inputs:
        if not name:
            out.append(None)
            continue
        w = next(weights)
        out.append(w if w is not None else next(slots))
    return out


def _const(args: list, index: int, default=None):
    a = args[index] if index < len(args) else None
    return default if a is None else np.asarray(a)


def _getter(a) -> Callable:
    if isinstance(a, int):
        return lambda bufs: bufs[a]
    return lambda bufs: a


def _unary(fn: Callable, **fixed):
    def bind(b: Binding):
        xs, o = b.in_slots[0], b.out_slot
        kw = {**fixed, **{k: conv(b.node.attrs.get(k, d)) for k, (d, conv) in _ATTRS.get(b.node.op, {}).items()}}

        def step(bufs):
            fn(bufs[xs], out=bufs[o], **kw)
        return step
    return bind


# per op: attribute -> (ONNX default, converter), handed to its kernel as keyword arguments
_ATTRS = {"HardSigmoid": {"alpha": (0.2, float), "beta": (0.5, float)},
          "LeakyRelu": {"alpha": (0.01, float)},
          "Gelu": {"approximate": ("none", str)}}


def _binary(fn: Callable):
    def bind(b: Binding):
        ga, gb = (_getter(a) for a in inputs_of(b))
        o = b.out_slot

        def step(bufs):
            fn(ga(bufs), gb(bufs), out=bufs[o])
        return step
    return bind


def _variadic(fn: Callable):
    def bind(b: Binding):
        getters, o = [_getter(a) for a in inputs_of(b)], b.out_slot

        def step(bufs):
            fn([g(bufs) for g in getters], out=bufs[o])
        return step
    return bind


def _reduce_axes(node, args):
    """ReduceX's axes (attribute before opset 18, ReduceSum's before 13; an input after), or None."""
    axes = _const(args, 1)
    if axes is None and "axes" in node.attrs:
        axes = node.attrs["axes"]
    if axes is not None and len(axes) == 0:
        axes = None
    return None if axes is None else [int(a) for a in axes]


def _bind_reduce(kind: str):
    def bind(b: Binding):
        node, args, o = b.node, inputs_of(b), b.out_slot
        xs = args[0]
        axes = _reduce_axes(node, args)
        keep = bool(node.attrs.get("keepdims", 1))
        if axes is None and node.attrs.get("noop_with_empty_axes", 0):
            def step(bufs):
                np.copyto(bufs[o], bufs[xs])
            return step

        def step(bufs):
            K.reduce(bufs[xs], kind, axes, keepdims=keep, out=bufs[o])
        return step
    return bind


def _bind_slice(b: Binding):
    node, args, o = b.node, inputs_of(b), b.out_slot
    a = node.attrs
    if len(args) > 1:      # opset >= 10: starts, ends, axes, steps as inputs
        starts, ends, axes, steps = (_const(args, i) for i in (1, 2, 3, 4))
    else:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    index = K.slice_index(b.in_shapes[0], [int(v) for v in starts], [int(v) for v in ends],
                          None if axes is None else [int(v) for v in axes],
                          None if steps is None else [int(v) for v in steps])
    xs = args[0]

    def step(bufs):
        K.slice_(bufs[xs], index, out=bufs[o])
    return step


def _bind_gather(b: Binding):
    args, o = inputs_of(b), b.out_slot
    xs, indices = args[0], np.asarray(args[1], np.int64)
    axis = int(b.node.attrs.get("axis", 0))

    def step(bufs):
        K.gather(bufs[xs], indices, axis, out=bufs[o])
    return step


def _bind_expand(b: Binding):
    args, o = inputs_of(b), b.out_slot
    xs, shape = args[0], [int(d) for d in args[1]]

    def step(bufs):
        K.expand(bufs[xs], shape, out=bufs[o])
    return step


def _bind_pad(b: Binding):
    node, args, o = b.node, inputs_of(b), b.out_slot
    xs, nd = args[0], len(b.in_shapes[0])
    pads = _const(args, 1)
    pads = [int(p) for p in (pads if pads is not None else node.attrs["pads"])]
    axes = _const(args, 3)
    if axes is not None:        # opset 18: pads only of these axes
        full = [0] * (2 * nd)
        axes = [int(a) % nd for a in axes]
        for k, axis in enumerate(axes):
            full[axis], full[nd + axis] = pads[k], pads[len(axes) + k]
        pads = full
    value = _const(args, 2)
    value = float(value.reshape(-1)[0]) if value is not None else float(node.attrs.get("value", 0.0))
    mode = node.attrs.get("mode", "constant")

    def step(bufs):
        K.pad(bufs[xs], pads, mode=mode, value=value, out=bufs[o])
    return step


def _bind_layer_norm(b: Binding):
    node, args, o = b.node, inputs_of(b), b.out_slot
    xs, scale, bias = args[0], _getter(args[1]), _getter(args[2]) if len(args) > 2 and args[2] is not None else None
    axis, eps = int(node.attrs.get("axis", -1)), float(node.attrs.get("epsilon", 1e-5))

    def step(bufs):
        K.layer_norm(bufs[xs], scale(bufs), None if bias is None else bias(bufs), axis=axis, epsilon=eps,
                     out=bufs[o])
    return step


def _resize_scales(b: Binding, args) -> tuple[float, float]:
    """Resize's H and W scales: the ``scales`` input, or output over input size when ``sizes`` is given."""
    scales = _const(args, 2)
    (h, w), (ho, wo) = b.in_shapes[0][2:], b.out_shape[2:]
    if scales is not None and scales.size:
        return float(scales[2]), float(scales[3])
    return ho / h, wo / w


def _bind_resize(b: Binding):
    node, args, o = b.node, inputs_of(b), b.out_slot
    a = node.attrs
    kw = dict(mode=a.get("mode", "nearest"), coord=a.get("coordinate_transformation_mode", "half_pixel"),
              nearest_mode=a.get("nearest_mode", "round_prefer_floor"))
    sh, sw = _resize_scales(b, args)
    (h, w), (ho, wo) = b.in_shapes[0][2:], b.out_shape[2:]
    rows, cols = K.resize_axis(h, ho, sh, **kw), K.resize_axis(w, wo, sw, **kw)
    xs = args[0]

    def step(bufs):
        K.resize2d(bufs[xs], rows, cols, out=bufs[o])
    return step


def _resize_reason(node, weights) -> str | None:
    a = node.attrs
    if a.get("mode", "nearest") not in ("nearest", "linear"):
        return f"mode {a.get('mode')!r}"
    if a.get("coordinate_transformation_mode", "half_pixel") not in COORDINATE_MODES:
        return f"coordinate_transformation_mode {a.get('coordinate_transformation_mode')!r}"
    if int(a.get("antialias", 0)) or a.get("axes") is not None:
        return "antialias or axes"
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy {a.get('keep_aspect_ratio_policy')!r}"
    scales = weights.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if scales is not None and scales.size and any(float(v) != 1.0 for v in np.asarray(scales).reshape(-1)[:2]):
        return "resizing the batch or channel axis"
    return None


def _bind_conv_transpose(b: Binding):
    node, args, o = b.node, inputs_of(b), b.out_slot
    a = node.attrs
    w = np.asarray(args[1])
    bias = _const(args, 2)
    kw = dict(strides=a.get("strides", (1, 1)), pads=a.get("pads", (0, 0, 0, 0)), dilations=a.get("dilations", (1, 1)),
              output_padding=a.get("output_padding", (0, 0)), group=int(a.get("group", 1)))
    xs = args[0]

    def step(bufs):
        K.conv_transpose2d(bufs[xs], w, bias, out=bufs[o], **kw)
    return step


def _conv_transpose_reason(node, weights) -> str | None:
    a = node.attrs
    if a.get("output_shape") is not None or a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return "output_shape or auto_pad (explicit pads only)"
    w = weights.get(node.inputs[1])
    if w is not None and w.ndim != 4:
        return f"{w.ndim - 2}-D convolution"
    return None


def _bind_copy(b: Binding):
    xs, o = b.in_slots[0], b.out_slot

    def step(bufs):
        np.copyto(bufs[o], bufs[xs])
    return step


def numpy_reason(node, weights: dict) -> str | None:
    """Why the numpy backend cannot run this node of an op it has a kernel for, or None if it can."""
    spec = ONNX_FORM_OPS.get(node.op)
    if spec is None:
        return None
    for i in NEEDS_CONST.get(node.op, ()):
        if i < len(node.inputs) and node.inputs[i] and node.inputs[i] not in weights:
            return f"input {i} ({node.inputs[i]!r}) is computed at run time; its numpy kernel needs it constant"
    a = node.attrs
    if node.op == "Pad" and a.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"mode {a.get('mode')!r}"
    if node.op == "Cast" and int(a.get("to", FLOAT)) != FLOAT:
        return f"a cast to ONNX type {a.get('to')}"
    if node.op == "LayerNormalization" and int(a.get("stash_type", 1)) != 1:
        return f"stash_type {a.get('stash_type')}"
    if node.op == "Resize":
        return _resize_reason(node, weights)
    if node.op == "ConvTranspose":
        return _conv_transpose_reason(node, weights)
    return None


# inputs each op's binding reads as constants (a run-time value makes the node onnxruntime-only)
NEEDS_CONST = {"ConvTranspose": (1, 2), "Slice": (1, 2, 3, 4), "Gather": (1,), "Expand": (1,), "Pad": (1, 2, 3), "Resize": (2, 3),
               **{f"Reduce{k}": (1,) for k in ("Mean", "Max", "Min", "Sum")}}

ONNX_FORM_OPS: dict[str, OpSpec] = {
    "Sub": OpSpec(None, _binary(K.sub), "elementwise"),
    "Div": OpSpec(None, _binary(K.div), "elementwise"),
    "Pow": OpSpec(None, _binary(K.pow_), "elementwise"),
    "PRelu": OpSpec(None, _binary(K.prelu), "elementwise"),
    "Max": OpSpec(None, _variadic(K.max_), "elementwise"),
    "Min": OpSpec(None, _variadic(K.min_), "elementwise"),
    "HardSigmoid": OpSpec(None, _unary(K.hard_sigmoid), "elementwise"),
    "HardSwish": OpSpec(None, _unary(K.hard_swish), "elementwise"),
    "LeakyRelu": OpSpec(None, _unary(K.leaky_relu), "elementwise"),
    "Gelu": OpSpec(None, _unary(K.gelu), "elementwise"),
    "Erf": OpSpec(None, _unary(K.erf), "elementwise"),
    "Tanh": OpSpec(None, _unary(K.tanh), "elementwise"),
    "Sqrt": OpSpec(None, _unary(K.sqrt), "elementwise"),
    "Exp": OpSpec(None, _unary(K.exp), "elementwise"),
    "Neg": OpSpec(None, _unary(K.neg), "elementwise"),
    "Abs": OpSpec(None, _unary(K.abs_), "elementwise"),
    "ReduceMean": OpSpec(None, _bind_reduce("mean"), "pool"),
    "ReduceMax": OpSpec(None, _bind_reduce("max"), "pool"),
    "ReduceMin": OpSpec(None, _bind_reduce("min"), "pool"),
    "ReduceSum": OpSpec(None, _bind_reduce("sum"), "pool"),
    "LayerNormalization": OpSpec(None, _bind_layer_norm, "elementwise"),
    "Slice": OpSpec(None, _bind_slice, "memory"),
    "Gather": OpSpec(None, _bind_gather, "memory"),
    "Expand": OpSpec(None, _bind_expand, "memory"),
    "Pad": OpSpec(None, _bind_pad, "memory"),
    "Cast": OpSpec(None, _bind_copy, "memory"),
    "Resize": OpSpec(None, _bind_resize, "memory"),
    "ConvTranspose": OpSpec(None, _bind_conv_transpose, "conv"),
}
