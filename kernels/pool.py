"""2-D max/average pooling (ONNX semantics), separable: a max/sum over the kernel rows, then over
the kernel columns, each term one shifted view of the padded input; and global pooling."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ._checks import check_f32, check_out, pair, quad, take_workspace


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
    hq: int                 # rows of one row-phase image
    wp: int                 # columns of the padded rows (every column a window reads)
    rows: tuple             # per row phase: (a0, na, i0): R[p][:, a0:a0+na] <- x[:, i0::sy][:, :na]
    cols: tuple             # (b0, nb): R[..., b0:b0+nb] <- x[..., :nb]
    vert: tuple             # per kernel row: (row phase, row offset)
    horiz: tuple            # per kernel column: column offset
    strides: tuple

    @property
    def plane(self) -> int:
        return self.out_shape[1] * self.hq * self.wp

    @property
    def spare(self) -> int:
        """Elements a flat read may run past a plane (kept inside the buffers)."""
        return max(oy for _, oy in self.vert) * self.wp + max(self.horiz)

    @property
    def workspace(self) -> int:
        return (len(self.rows) + 1) * self.plane + 2 * self.spare


# NOTE: pooling runs on row-phase images of the padded input, channels stacked as one tall image,
# so that every pass is ONE contiguous vector loop over all channels (numpy's per-row overhead
# and its slow strided max loops dominate otherwise): rows first (row phases turn a row stride
# into whole-row offsets), then columns at full resolution, and the column stride is taken by
# the final copy. Rows past each channel's outputs are junk and never copied out.
@lru_cache(maxsize=256)
def _plan(fn, x_shape, kernel, strides, pads, dilations, ceil_mode) -> _Plan:
    if len(x_shape) != 4:
        raise ValueError(f"{fn}: x must be 4-D NCHW, got shape {x_shape}")
    n, c, h, w = x_shape
    (kh, kw) = kernel = pair(fn, "kernel", kernel, 1)
    (sy, sx) = strides = pair(fn, "strides", strides, 1)
    (dy, dx) = dilations = pair(fn, "dilations", dilations, 1)
    pt, pl, _, _ = pads = quad(fn, "pads", pads)
    ho, wo = pool_output_hw(h, w, kernel, strides, pads, dilations, ceil_mode)
    row_phases = sorted({ky * dy % sy for ky in range(kh)})
    vert = tuple((row_phases.index(ky * dy % sy), ky * dy // sy) for ky in range(kh))
    hq = ho + max(oy for _, oy in vert)
    wp = sx * (wo - 1) + dx * (kw - 1) + 1
    rows = []
    for py in row_phases:
        a0 = max(0, -(-(pt - py) // sy))
        i0 = a0 * sy + py - pt
        na = max(0, min(hq - a0, -(-(h - i0) // sy)))
        rows.append((a0, na, i0))
    cols = (pl, min(w, wp - pl))
    horiz = tuple(kx * dx for kx in range(kw))
    return _Plan((n, c, ho, wo), hq, wp, tuple(rows), cols, vert, horiz, strides)


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
    inv = _inverse_counts(x.shape[2], x.shape[3], plan, tuple(kernel), tuple(pads), bool(count_include_pad))
    _pool(x, out, take_workspace(fn, workspace, plan.workspace), plan, 0.0, np.add, inv)
    return out


@lru_cache(maxsize=256)
def _inverse_counts(h, w, plan: _Plan, kernel, pads, include_pad) -> np.ndarray:
    """1 / (number of window elements averaged) per output pixel, laid out like one channel of
    the pooled rows (hq, wp) so it scales all channels in one long loop; 0 at junk positions."""
    def counts(size, o, k, s, p0, p1):
        start = np.arange(o) * s - p0
        lo, hi = (-p0, size + p1) if include_pad else (0, size)
        return np.minimum(start + k, hi) - np.maximum(start, lo)
    _, _, ho, wo = plan.out_shape
    sy, sx = plan.strides
    cy = counts(h, ho, kernel[0], sy, pads[0], pads[2])
    cx = counts(w, wo, kernel[1], sx, pads[1], pads[3])
    inv = np.zeros((plan.hq, plan.wp), np.float32)
    inv[:ho, : sx * (wo - 1) + 1: sx] = 1.0 / np.outer(cy, cx)
    inv.flags.writeable = False
    return inv.reshape(-1)


def _pool(x, out, ws, plan: _Plan, fill: float, reduce, inv) -> None:
    _, c, ho, wo = plan.out_shape
    hq, wp, plane, spare = plan.hq, plan.wp, plan.plane, plan.spare
    sy, sx = plan.strides
    nph = len(plan.rows)
    rbuf = ws[: nph * plane + spare]
    vbuf = ws[nph * plane + spare: (nph + 1) * plane + 2 * spare]
    r4 = rbuf[: nph * plane].reshape(nph, c, hq, wp)
    b0, nb = plan.cols
    for i in range(x.shape[0]):
        for p, (a0, na, i0) in enumerate(plan.rows):
            _fill_rows(r4[p], x[i], fill, a0, na, i0, sy, b0, nb)
        rbuf[nph * plane:].fill(fill)
        vbuf[plane:].fill(fill)
        _reduce([rbuf[p * plane + oy * wp:][:plane] for p, oy in plan.vert], vbuf[:plane], reduce)
        res = _reduce([vbuf[ox: ox + plane] for ox in plan.horiz], rbuf[:plane], reduce)
        if inv is not None:
            res2 = res.reshape(c, hq * wp)
            np.multiply(res2, inv, out=res2)
        np.copyto(out[i], res.reshape(c, hq, wp)[:, :ho, : sx * (wo - 1) + 1: sx])


def _fill_rows(r, x, fill, a0, na, i0, sy, b0, nb) -> None:
    """One row-phase image r (C, hq, wp): rows a0:a0+na from x rows i0::sy, the rest ``fill``."""
    if na == 0:
        r.fill(fill)
        return
    a1, b1 = a0 + na, b0 + nb
    if a0:
        r[:, :a0] = fill
    if a1 < r.shape[1]:
        r[:, a1:] = fill
    if b0:
        r[:, a0:a1, :b0] = fill
    if b1 < r.shape[2]:
        r[:, a0:a1, b1:] = fill
    np.copyto(r[:, a0:a1, b0:b1], x[:, i0: i0 + sy * (na - 1) + 1: sy, :nb])


def _reduce(views: list, acc, reduce):
    """Elementwise ``reduce`` of equal-shape views into ``acc`` (the view itself when alone)."""
    if len(views) == 1:
        if acc is None:
            return views[0]
        np.copyto(acc, views[0])
        return acc
    reduce(views[0], views[1], out=acc)
    for v in views[2:]:
        reduce(acc, v, out=acc)
    return acc


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
