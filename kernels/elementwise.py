"""Elementwise ops and softmax over float32 arrays (numpy broadcasting, ONNX semantics)."""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out


def _operand_shape(fn: str, name: str, a) -> tuple:
    """Arrays must be float32; Python scalars pass (NEP 50 keeps the result float32)."""
    if isinstance(a, np.ndarray):
        check_f32(fn, name, a)
    elif not isinstance(a, (int, float)):
        raise ValueError(f"{fn}: {name} must be a float32 array or a Python number, got {type(a).__name__}")
    return np.shape(a)


def _shape2(fn: str, a, b) -> tuple:
    _operand_shape(fn, "a", a)
    _operand_shape(fn, "b", b)
    try:
        return np.broadcast_shapes(np.shape(a), np.shape(b))
    except ValueError as err:
        raise ValueError(f"{fn}: shapes {np.shape(a)} and {np.shape(b)} do not broadcast") from err


def add(a, b, out=None):
    """a + b with numpy broadcasting."""
    out = check_out("add", out, _shape2("add", a, b))
    return np.add(a, b, out=out)


def mul(a, b, out=None):
    """a * b with numpy broadcasting."""
    out = check_out("mul", out, _shape2("mul", a, b))
    return np.multiply(a, b, out=out)


def sum_(xs, out=None):
    """ONNX Sum: elementwise sum of any number (>= 1) of broadcastable arrays."""
    xs = list(xs)
    if not xs:
        raise ValueError("sum_: needs at least one input, got 0")
    for i, x in enumerate(xs):
        _operand_shape("sum_", f"xs[{i}]", x)
    try:
        shape = np.broadcast_shapes(*(np.shape(x) for x in xs))
    except ValueError as err:
        raise ValueError(f"sum_: shapes {[np.shape(x) for x in xs]} do not broadcast") from err
    out = check_out("sum_", out, shape)
    if len(xs) == 1:
        np.copyto(out, xs[0])
        return out
    np.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        np.add(out, x, out=out)
    return out


def relu(x, out=None):
    check_f32("relu", "x", x)
    out = check_out("relu", out, np.shape(x))
    # NOTE: clip is vectorised against scalars, maximum is not (see _checks.apply_activation)
    return np.clip(x, 0.0, np.inf, out=out)


def clip(x, lo, hi, out=None):
    """Clamp to [lo, hi]; either bound may be +-inf (or None: unbounded)."""
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    check_f32("clip", "x", x)
    if lo > hi:
        raise ValueError(f"clip: lo {lo} > hi {hi}")
    out = check_out("clip", out, np.shape(x))
    return np.clip(x, lo, hi, out=out)


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)), without overflow warnings for large |x|."""
    check_f32("sigmoid", "x", x)
    out = check_out("sigmoid", out, np.shape(x))
    np.negative(x, out=out)
    with np.errstate(over="ignore", under="ignore"):
        np.exp(out, out=out)
    out += np.float32(1)
    np.reciprocal(out, out=out)
    return out


def _softmax_2d(fn: str, x, axis, coerce_2d: bool, out):
    """(x2, o2, ax, copy_back): inputs seen so the normalised axis is ``ax``."""
    check_f32(fn, "x", x)
    nd = x.ndim
    if nd == 0 or not isinstance(axis, (int, np.integer)) or not -nd <= axis < nd:
        raise ValueError(f"{fn}: axis {axis!r} out of range for shape {x.shape}")
    axis = int(axis) + nd if axis < 0 else int(axis)
    out = check_out(fn, out, x.shape)
    if not coerce_2d:
        return x, out, axis, out
    # NOTE: opset < 13: flatten to (prod(shape[:axis]), prod(shape[axis:])), normalise the rows
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    o2 = out.reshape(rows, cols)
    if not np.may_share_memory(o2, out):
        o2 = np.empty((rows, cols), np.float32)
    return x.reshape(rows, cols), o2, 1, out


def softmax(x, axis=-1, *, coerce_2d=False, out=None):
    """ONNX Softmax (opset >= 13 semantics, or opset < 13 with ``coerce_2d``)."""
    x2, o2, ax, out = _softmax_2d("softmax", x, axis, coerce_2d, out)
    np.subtract(x2, x2.max(axis=ax, keepdims=True), out=o2)
    np.exp(o2, out=o2)
    o2 /= o2.sum(axis=ax, keepdims=True)
    if not np.may_share_memory(o2, out):
        np.copyto(out, o2.reshape(out.shape))
    return out


def log_softmax(x, axis=-1, *, coerce_2d=False, out=None):
    """ONNX LogSoftmax (same axis rules as ``softmax``)."""
    x2, o2, ax, out = _softmax_2d("log_softmax", x, axis, coerce_2d, out)
    np.subtract(x2, x2.max(axis=ax, keepdims=True), out=o2)
    o2 -= np.log(np.exp(o2).sum(axis=ax, keepdims=True))
    if not np.may_share_memory(o2, out):
        np.copyto(out, o2.reshape(out.shape))
    return out


def sub(a, b, out=None):
    """a - b with numpy broadcasting."""
    out = check_out("sub", out, _shape2("sub", a, b))
    return np.subtract(a, b, out=out)


def div(a, b, out=None):
    """a / b with numpy broadcasting (float division, inf/nan as IEEE says)."""
    out = check_out("div", out, _shape2("div", a, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b, out=out)


def pow_(a, b, out=None):
    """a ** b with numpy broadcasting; b == 2 and b == 0.5 take the cheap ufuncs."""
    out = check_out("pow_", out, _shape2("pow_", a, b))
    if np.ndim(b) == 0 and float(b) == 2.0:
        return np.multiply(a, a, out=out)
    if np.ndim(b) == 0 and float(b) == 0.5:
        return np.sqrt(a, out=out)
    with np.errstate(invalid="ignore"):
        return np.power(a, b, out=out)


def max_(xs, out=None):
    """ONNX Max/Min helper: elementwise max of broadcastable arrays."""
    return _fold(np.maximum, "max_", xs, out)


def min_(xs, out=None):
    return _fold(np.minimum, "min_", xs, out)


def _fold(ufunc, fn, xs, out):
    xs = list(xs)
    for i, x in enumerate(xs):
        _operand_shape(fn, f"xs[{i}]", x)
    out = check_out(fn, out, np.broadcast_shapes(*(np.shape(x) for x in xs)))
    if len(xs) == 1:
        np.copyto(out, xs[0])
        return out
    ufunc(xs[0], xs[1], out=out)
    for x in xs[2:]:
        ufunc(out, x, out=out)
    return out
