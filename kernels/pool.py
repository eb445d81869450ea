"""2-D max/average pooling (ONNX semantics) as a max/sum over the k*k tap views of the padded,
phase-split input (see ``_phases``), and global pooling."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import _phases
from ._checks import check_f32, check_out, pair, quad, take_workspace, view_2d


def _out_len(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil_mode: bool) -> int:
    span = size + p0 + p1 - d * (k - 1) - 1
    o = (-(-span // s) if ceil_mode else span // s) + 1
    # NOTE: ONNX (and PyTorch) drop a last ceil_mode window that would start in the right padding.
    if ceil_mode and (o - 1) * s >= size + p0:
        o -= 1
    return o


def pool_output_hw(h, w, kernel, strides, pads, dilations=(1, 1), ceil_mode=False) -> tuple[int, int]:
    """Output (ho, wo) of a 2-D pool; ``pads`` is (top, left, bottom, right)."""
    fn = "pool_output_hw"
    kh, kw = pair(fn, "kernel", kernel, 1)
    sy, sx = pair(fn, "strides", strides, 1)
    dy, dx = pair(fn, "dilations", dilations, 1)
    pt, pl, pb, pr = quad(fn, "pads", pads)
    if pt >= dy * (kh - 1) + 1 or pb >= dy * (kh - 1) + 1 or pl >= dx * (kw - 1) + 1 or pr >= dx * (kw - 1) + 1:
        raise ValueError(f"{fn}: pads {tuple(pads)} must be smaller than the kernel {(kh, kw)}")
    ho = _out_len(int(h), kh, sy, pt, pb, dy, bool(ceil_mode))
    wo = _out_len(int(w), kw, sx, pl, pr, dx, bool(ceil_mode))
    if ho < 1 or wo < 1:
        raise ValueError(f"{fn}: kernel {(kh, kw)} does not fit input {(h, w)} with pads {tuple(pads)}")
    return ho, wo


class _Plan(NamedTuple):
    out_shape: tuple
    lay: _phases.Layout
    hcw: bool
    acc: int                # workspace elements of the accumulator (0: accumulate into out)

    @property
    def workspace(self) -> int:
        return self.lay.size + self.acc


@lru_cache(maxsize=256)
def _plan(fn, x_shape, kernel, strides, pads, dilations, ceil_mode) -> _Plan:
    if len(x_shape) != 4:
        raise ValueError(f"{fn}: x must be 4-D NCHW, got shape {x_shape}")
    n, c, h, w = x_shape
    kernel = pair(fn, "kernel", kernel, 1)
    strides = pair(fn, "strides", strides, 1)
    dilations = pair(fn, "dilations", dilations, 1)
    pads = quad(fn, "pads", pads)
    ho, wo = pool_output_hw(h, w, kernel, strides, pads, dilations, ceil_mode)
    lay = _phases.layout(c, h, w, ho, wo, kernel, strides, pads, dilations)
    hcw = lay.span < _phases.MIN_CHW_SPAN_POOL
    direct = lay.wq == wo and not hcw
    return _Plan((n, c, ho, wo), lay, hcw, 0 if direct else c * lay.span)


def _plan_for(fn, x_shape, kernel, strides, pads, dilations, ceil_mode) -> _Plan:
    try:
        return _plan(fn, tuple(x_shape), tuple(kernel), tuple(strides), tuple(pads), tuple(dilations),
                     bool(ceil_mode))
    except TypeError as err:
        raise ValueError(f"{fn}: bad geometry kernel={kernel!r} strides={strides!r} pads={pads!r} "
                         f"dilations={dilations!r}") from err


def pool_workspace_size(x_shape, kernel, *, strides, pads=(0, 0, 0, 0), dilations=(1, 1),
                        ceil_mode=False) -> int:
    """Elements of float32 scratch ``max_pool2d``/``avg_pool2d`` need for these shapes."""
    return _plan_for("pool_workspace_size", x_shape, kernel, strides, pads, dilations, ceil_mode).workspace


def max_pool2d(x, kernel, *, strides, pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=False,
               out=None, workspace=None):
    """ONNX MaxPool (2-D, NCHW float32)."""
    fn = "max_pool2d"
    check_f32(fn, "x", x, 4)
    plan = _plan_for(fn, x.shape, kernel, strides, pads, dilations, ceil_mode)
    out = check_out(fn, out, plan.out_shape)
    _pool(x, out, take_workspace(fn, workspace, plan.workspace), plan, -np.inf, np.maximum, None)
    return out


def avg_pool2d(x, kernel, *, strides, pads=(0, 0, 0, 0), ceil_mode=False, count_include_pad=False,
               out=None, workspace=None):
    """ONNX AveragePool (2-D, NCHW float32, no dilations).

    With ``count_include_pad`` the divisor counts the explicit pads but not the extra overhang a
    ceil_mode window may have past them (as onnxruntime does).
    """
    fn = "avg_pool2d"
    check_f32(fn, "x", x, 4)
    plan = _plan_for(fn, x.shape, kernel, strides, pads, (1, 1), ceil_mode)
    out = check_out(fn, out, plan.out_shape)
    lay = plan.lay
    inv = _inverse_counts(lay.h, lay.w, lay.ho, lay.wo, tuple(kernel), tuple(strides), tuple(pads),
                          bool(count_include_pad))
    _pool(x, out, take_workspace(fn, workspace, plan.workspace), plan, 0.0, np.add, inv)
    return out


@lru_cache(maxsize=256)
def _inverse_counts(h, w, ho, wo, kernel, strides, pads, include_pad) -> np.ndarray:
    """1 / (number of window elements averaged) per output pixel, (ho, wo) float32."""
    def counts(size, o, k, s, p0, p1):
        start = np.arange(o) * s - p0
        lo, hi = (-p0, size + p1) if include_pad else (0, size)
        return np.minimum(start + k, hi) - np.maximum(start, lo)
    cy = counts(h, ho, kernel[0], strides[0], pads[0], pads[2])
    cx = counts(w, wo, kernel[1], strides[1], pads[1], pads[3])
    inv = (1.0 / np.outer(cy, cx)).astype(np.float32)
    inv.flags.writeable = False
    return inv


def _pool(x, out, ws, plan: _Plan, fill: float, reduce, inv) -> None:
    lay, hcw = plan.lay, plan.hcw
    c, span = lay.c, lay.span
    qbuf = ws[: lay.size]
    accbuf = ws[lay.size: lay.size + plan.acc]
    for i in range(x.shape[0]):
        views = _phases.tap_views(lay, _phases.fill(lay, x[i], qbuf, fill, hcw), hcw)
        acc = view_2d(out[i], c, span) if plan.acc == 0 else None
        if acc is None:
            acc = (accbuf if plan.acc else np.empty(c * span, np.float32)).reshape(views[0].shape)
        if len(views) == 1:
            np.copyto(acc, views[0])
        else:
            reduce(views[0], views[1], out=acc)
            for v in views[2:]:
                reduce(acc, v, out=acc)
        res = _phases.result_view(lay, acc, hcw)
        if inv is not None:
            np.multiply(res, inv, out=out[i])
        elif not np.may_share_memory(res, out[i]):
            np.copyto(out[i], res)


def global_avg_pool(x, out=None):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1)."""
    fn = "global_avg_pool"
    check_f32(fn, "x", x, 4)
    n, c, h, w = x.shape
    out = check_out(fn, out, (n, c, 1, 1))
    o2 = out.reshape(n, c)
    np.add.reduce(x.reshape(n, c, h * w), axis=2, out=o2)
    o2 *= np.float32(1.0 / (h * w))
    return out


def global_max_pool(x, out=None):
    """Max over H and W: (N, C, H, W) -> (N, C, 1, 1)."""
    fn = "global_max_pool"
    check_f32(fn, "x", x, 4)
    n, c, h, w = x.shape
    out = check_out(fn, out, (n, c, 1, 1))
    np.maximum.reduce(x.reshape(n, c, h * w), axis=2, out=out.reshape(n, c))
    return out
