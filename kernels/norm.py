"""Normalisation for inference: BatchNormalization (and folding it into a conv) and LRN."""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out


def _bn_vectors(fn, c, scale, bias, mean, var, epsilon):
    vs = []
    for name, v in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        vs.append(check_f32(fn, name, v, 1))
        if v.shape[0] != c:
            raise ValueError(f"{fn}: {name} must have shape ({c},), got {v.shape}")
    scale, bias, mean, var = vs
    if not epsilon >= 0:
        raise ValueError(f"{fn}: epsilon must be >= 0, got {epsilon!r}")
    mul = scale / np.sqrt(var + np.float32(epsilon))
    return mul, bias - mean * mul


def batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, out=None):
    """Inference BatchNormalization over axis 1 of an (N, C, ...) float32 tensor."""
    fn = "batch_norm"
    check_f32(fn, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must be at least 2-D (N, C, ...), got shape {x.shape}")
    mul, add = _bn_vectors(fn, x.shape[1], scale, bias, mean, var, epsilon)
    out = check_out(fn, out, x.shape)
    tail = (1,) * (x.ndim - 2)
    np.multiply(x, mul.reshape(-1, *tail), out=out)
    out += add.reshape(-1, *tail)
    return out


def fold_batch_norm(w, b, scale, bias, mean, var, *, epsilon=1e-5):
    """Fold an inference BatchNormalization into the conv (or Gemm-as-conv) before it.

    ``w`` is (M, ...) with M output channels, ``b`` the conv bias or None; returns new float32
    (w2, b2) with conv(x, w2, b2) == batch_norm(conv(x, w, b)).
    """
    fn = "fold_batch_norm"
    w = check_f32(fn, "w", w)
    if w.ndim < 1:
        raise ValueError(f"{fn}: w must have an output-channel axis, got shape {w.shape}")
    m = w.shape[0]
    if b is not None:
        b = check_f32(fn, "b", b, 1)
        if b.shape[0] != m:
            raise ValueError(f"{fn}: b must have shape ({m},), got {b.shape}")
    mul, add = _bn_vectors(fn, m, scale, bias, mean, var, epsilon)
    w2 = w * mul.reshape(-1, *(1,) * (w.ndim - 1))
    b2 = add if b is None else add + b * mul
    return np.ascontiguousarray(w2, np.float32), np.ascontiguousarray(b2, np.float32)


def lrn(x, size, *, alpha=1e-4, beta=0.75, bias=1.0, out=None):
    """ONNX LRN: x / (bias + alpha/size * sum of x^2 over a window of ``size`` channels)^beta."""
    fn = "lrn"
    check_f32(fn, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must be at least 2-D (N, C, ...), got shape {x.shape}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{fn}: size must be an int >= 1, got {size!r}")
    out = check_out(fn, out, x.shape)
    c = x.shape[1]
    lo = (size - 1) // 2            # channels before c in the window; ceil((size-1)/2) after
    hi = size - 1 - lo
    if np.may_share_memory(out, x):
        np.copyto(out, lrn(x, size, alpha=alpha, beta=beta, bias=bias))
        return out
    sq = np.square(x)
    # NOTE: a sum of shifted slices, not a cumsum difference: no cancellation in float32
    np.copyto(out, sq)
    for d in range(1, lo + 1):
        out[:, d:] += sq[:, : c - d]
    for d in range(1, hi + 1):
        out[:, : c - d] += sq[:, d:]
    out *= np.float32(alpha / size)
    out += np.float32(bias)
    if beta == 0.75:
        # t^-0.75 = 1 / (sqrt(t) * sqrt(sqrt(t))): two square roots beat a float power
        np.sqrt(out, out=sq)
        np.sqrt(sq, out=out)
        out *= sq
        np.divide(x, out, out=out)
    else:
        np.power(out, np.float32(-beta), out=out)
        np.multiply(x, out, out=out)
    return out


def layer_norm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, out=None):
    """ONNX LayerNormalization (opset 17): normalise over axes ``axis``.. of ``x``, then
    ``* scale + bias`` (both broadcast over those axes)."""
    fn = "layer_norm"
    check_f32(fn, "x", x)
    check_f32(fn, "scale", scale)
    if bias is not None:
        check_f32(fn, "bias", bias)
    nd = x.ndim
    if not -nd <= axis < nd:
        raise ValueError(f"{fn}: axis {axis} out of range for shape {x.shape}")
    axis %= nd
    out = check_out(fn, out, x.shape)
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    x2 = x.reshape(rows, -1)
    o2 = out.reshape(rows, -1)
    if not np.may_share_memory(o2, out):
        o2 = np.empty(x2.shape, np.float32)
    mean = x2.mean(axis=1, keepdims=True)
    np.subtract(x2, mean, out=o2)
    var = np.einsum("ij,ij->i", o2, o2).reshape(rows, 1) / np.float32(x2.shape[1])
    var += np.float32(epsilon)
    np.sqrt(var, out=var)
    o2 /= var
    if not np.may_share_memory(o2, out):
        np.copyto(out, o2.reshape(out.shape))
    out *= scale
    if bias is not None:
        out += bias
    return out
