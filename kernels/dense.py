"""Fully connected layers: ONNX Gemm and MatMul over float32, BLAS through np.matmul."""
from __future__ import annotations

import numpy as np

from ._checks import apply_activation, check_activation, check_f32, check_out


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, trans_a=False, trans_b=False, activation=None,
         out=None):
    """ONNX Gemm: alpha * op(a) @ op(b) + beta * c, c broadcast to (M, N); optional activation."""
    fn = "gemm"
    a = check_f32(fn, "a", a, 2)
    b = check_f32(fn, "b", b, 2)
    check_activation(fn, activation)
    # NOTE: transposes are views; np.matmul hands them to BLAS as transpose flags, no copy
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"{fn}: inner dimensions differ: op(a) is {A.shape}, op(b) is {B.shape}")
    shape = (A.shape[0], B.shape[1])
    if c is not None:
        if isinstance(c, np.generic):
            c = np.asarray(c)
        c = check_f32(fn, "c", c)
        if not _broadcasts_to(c.shape, shape):
            raise ValueError(f"{fn}: c of shape {c.shape} does not broadcast to {shape}")
    out = check_out(fn, out, shape)
    np.matmul(A, B, out=out)
    if alpha != 1.0:
        out *= np.float32(alpha)
    if c is not None and beta != 0.0:
        if beta == 1.0:
            out += c
        else:
            out += np.float32(beta) * c
    apply_activation(out, activation)
    return out


def matmul(a, b, out=None):
    """ONNX MatMul (numpy matmul semantics: 1-D promotion, batch broadcasting)."""
    fn = "matmul"
    a = check_f32(fn, "a", a)
    b = check_f32(fn, "b", b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"{fn}: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
    shape = matmul_shape(a.shape, b.shape)
    out = check_out(fn, out, shape)
    np.matmul(a, b, out=out)
    return out


def matmul_shape(sa: tuple, sb: tuple) -> tuple:
    """The shape of ONNX MatMul of shapes ``sa`` and ``sb``; ValueError if they do not multiply."""
    ka = sa[-1]
    kb = sb[-2] if len(sb) > 1 else sb[0]
    if ka != kb:
        raise ValueError(f"matmul: inner dimensions differ: {sa} @ {sb}")
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError as err:
        raise ValueError(f"matmul: batch dimensions do not broadcast: {sa} @ {sb}") from err
    rows = (sa[-2],) if len(sa) > 1 else ()
    cols = (sb[-1],) if len(sb) > 1 else ()
    return tuple(batch) + rows + cols


def _broadcasts_to(src: tuple, dst: tuple) -> bool:
    if len(src) > len(dst):
        return False
    return all(s in (1, d) for s, d in zip(src[::-1], dst[::-1]))
