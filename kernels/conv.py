"""2-D convolution (NCHW, ONNX Conv semantics).

Four paths, chosen from the shapes alone (see ``_plan``):
- ``gemm1x1``: 1x1 kernel, stride 1, no padding: ``W_g (M/g, C/g) @ x_g (C/g, H*W)`` straight into
  ``out``, no copy at all.
- ``gemm``: exact im2col (no junk columns) by one 5-D strided copy per phase image of
  ``_phases`` (unit-stride rows even for strided convs), then one ``np.matmul(W_g, cols_g,
  out=<view of out>)`` per group.
- ``winograd``: 3x3, stride 1, dilation 1, one group, >= 64 input channels, >= 28x28 outputs:
  Winograd F(2x2, 3x3) (``winograd``), 4 multiplies per output and input channel instead of 9.
- ``depthwise``: one input channel per group: no im2col; ``acc += w[:, tap] * tap view`` over the
  kh*kw taps, vectorised over channels.
Bias and activation are applied in place on the output.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import _phases, winograd
from ._checks import (
    apply_activation, check_activation, check_f32, check_out, pair, quad, take_workspace, view_2d,
)


def conv_output_hw(h, w, kernel, strides, pads, dilations) -> tuple[int, int]:
    """Output (ho, wo) of a conv; ``pads`` is (top, left, bottom, right)."""
    kh, kw = pair("conv_output_hw", "kernel", kernel, 1)
    sy, sx = pair("conv_output_hw", "strides", strides, 1)
    dy, dx = pair("conv_output_hw", "dilations", dilations, 1)
    pt, pl, pb, pr = quad("conv_output_hw", "pads", pads)
    ho = (int(h) + pt + pb - dy * (kh - 1) - 1) // sy + 1
    wo = (int(w) + pl + pr - dx * (kw - 1) - 1) // sx + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"conv_output_hw: kernel {(kh, kw)} (dilations {(dy, dx)}) does not fit input "
            f"{(h, w)} with pads {tuple(pads)}")
    return ho, wo


# NOTE: where Winograd F(2x2, 3x3) beats im2col + sgemm (measured single-thread, 2-core x86 with
# OpenBLAS: 1.10-1.20x from 64 channels at 28x28 and up; 0.6-0.8x with 16-32 channels or at 14x14)
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_PIXELS = 28 * 28


class _Plan(NamedTuple):
    path: str               # "gemm1x1" | "gemm" | "winograd" | "depthwise"
    out_shape: tuple
    lay: object             # depthwise: the _phases.Layout; winograd: the winograd.Geometry
    parts: tuple            # workspace segments (elements), in order; see the path's function
    jobs: tuple = ()         # gemm: im2col copies (see _im2col_jobs)

    @property
    def workspace(self) -> int:
        return sum(self.parts)


@lru_cache(maxsize=512)
def _plan(x_shape, w_shape, strides, pads, dilations, group) -> _Plan:
    fn = "conv2d"
    if len(x_shape) != 4:
        raise ValueError(f"{fn}: x must be 4-D NCHW, got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"{fn}: w must be 4-D (M, C/group, kh, kw), got shape {w_shape}")
    n, c, h, w = x_shape
    m, cg, kh, kw = w_shape
    if not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"{fn}: group must be an int >= 1, got {group!r}")
    if c % group or m % group:
        raise ValueError(f"{fn}: group {group} must divide input channels {c} and output channels {m}")
    if cg != c // group:
        raise ValueError(
            f"{fn}: w has {cg} input channels per group, expected {c // group} "
            f"(x channels {c}, group {group})")
    if min(x_shape) < 1 or min(w_shape) < 1:
        raise ValueError(f"{fn}: empty shapes x {x_shape} w {w_shape}")
    strides = pair(fn, "strides", strides, 1)
    dilations = pair(fn, "dilations", dilations, 1)
    pads = quad(fn, "pads", pads)
    ho, wo = conv_output_hw(h, w, (kh, kw), strides, pads, dilations)
    out_shape = (n, m, ho, wo)
    ntaps = kh * kw
    if cg == 1 and group > 1:
        lay = _phases.layout(c, h, w, ho, wo, (kh, kw), strides, pads, dilations)
        # phase images, accumulator, product, per-tap weights (+ bias) expanded to a row
        acc = c * lay.span
        weights = (m // c) * (ntaps + 1) * c * (lay.wq if lay.span < _phases.MIN_CHW_SPAN else 1)
        return _Plan("depthwise", out_shape, lay, (lay.size, acc, acc, weights))
    if ntaps == 1 and strides == (1, 1) and pads == (0, 0, 0, 0):
        return _Plan("gemm1x1", out_shape, None, ())
    if ((kh, kw) == (3, 3) and strides == (1, 1) and dilations == (1, 1) and group == 1
            and c >= WINOGRAD_MIN_CHANNELS and ho * wo >= WINOGRAD_MIN_PIXELS):
        geo = winograd.geometry(c, h, w, m, ho, wo, pads)
        return _Plan("winograd", out_shape, geo, geo.parts)
    # phase images of one sample (none when x itself will do), im2col columns of one sample
    if strides == (1, 1) and not any(pads):
        lay, jobs = None, ((0, slice(None), slice(None), 0, 0) + dilations,)
    else:
        lay = _phases.layout(c, h, w, ho, wo, (kh, kw), strides, pads, dilations)
        jobs = _im2col_jobs(lay, kh, kw, strides, dilations)
    k, npix = c * ntaps, ho * wo
    # NOTE: with few columns per output (first layers) the bias pass over the big output costs as
    # much as the GEMM: fold the bias in as a column of W against a row of ones instead.
    fold = m * (k + 1) if group == 1 and 2 * (k + 1) <= npix else 0
    return _Plan("gemm", out_shape, lay, (lay.size if lay else 0, k * npix + (npix if fold else 0), fold), jobs)


def _im2col_jobs(lay, kh, kw, strides, dilations) -> tuple:
    """Copies that fill im2col columns (C, kh, kw, ho, wo) from phase images, as few as possible.

    Each job is (phase, ky slice, kx slice, oy0, ox0, step_y, step_x): columns[:, ky slice,
    kx slice] <- phase[:, oy0 + step_y*a + y, ox0 + step_x*b + x].
    """
    sy, sx = strides
    if dilations == (1, 1):
        # tap (py + sy*a, px + sx*b) reads phase (py, px) at offset (a, b)
        return tuple((p, slice(py, None, sy), slice(px, None, sx), 0, 0, 1, 1)
                     for p, (py, px) in enumerate(lay.phases))
    if strides == (1, 1):
        return ((0, slice(None), slice(None), 0, 0) + tuple(dilations),)
    return tuple((p, slice(ky, ky + 1), slice(kx, kx + 1), oy, ox, 1, 1)
                 for (ky, kx), (p, oy, ox) in zip(np.ndindex(kh, kw), lay.taps))


def _plan_for(x_shape, w_shape, strides, pads, dilations, group) -> _Plan:
    try:
        return _plan(tuple(x_shape), tuple(w_shape), tuple(strides), tuple(pads), tuple(dilations), group)
    except TypeError as err:  # unhashable junk in an argument
        raise ValueError(
            f"conv2d: bad geometry strides={strides!r} pads={pads!r} dilations={dilations!r} "
            f"group={group!r}") from err


def conv2d_workspace_size(x_shape, w_shape, *, strides=(1, 1), pads=(0, 0, 0, 0),
                          dilations=(1, 1), group=1) -> int:
    """Elements of float32 scratch ``conv2d`` needs for these shapes (0 when none)."""
    return _plan_for(x_shape, w_shape, strides, pads, dilations, group).workspace


def conv2d(x, w, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
           activation=None, out=None, workspace=None):
    """ONNX Conv over NCHW float32 with optional fused bias and activation ("relu", "relu6")."""
    fn = "conv2d"
    x = check_f32(fn, "x", x, 4)
    w = check_f32(fn, "w", w, 4)
    check_activation(fn, activation)
    plan = _plan_for(x.shape, w.shape, strides, pads, dilations, group)
    m = w.shape[0]
    if bias is not None:
        bias = check_f32(fn, "bias", bias, 1)
        if bias.shape[0] != m:
            raise ValueError(f"{fn}: bias must have shape ({m},), got {bias.shape}")
    out = check_out(fn, out, plan.out_shape)
    ws = take_workspace(fn, workspace, plan.workspace)
    if plan.path == "gemm1x1":
        _conv_gemm1x1(x, w, bias, group, activation, out)
    elif plan.path == "gemm":
        _conv_gemm(x, w, bias, group, activation, out, ws, plan)
    elif plan.path == "winograd":
        winograd.conv3x3(x, w, bias, out, ws, plan.lay)
        apply_activation(out, activation)
    else:
        _conv_depthwise(x, w, bias, activation, out, ws, plan)
    return out


def _finish(y: np.ndarray, bias, activation) -> None:
    """Bias and activation in place on one sample's output (M, ho, wo)."""
    if bias is not None:
        y += bias[:, None, None]
    apply_activation(y, activation)


def _conv_gemm1x1(x, w, bias, group, activation, out) -> None:
    n, c, h, wd = x.shape
    m, cg = w.shape[:2]
    mg = m // group
    w2 = w.reshape(m, cg)
    for i in range(n):
        xi = x[i].reshape(c, h * wd)
        for g in range(group):
            wg, xg = w2[g * mg: (g + 1) * mg], xi[g * cg: (g + 1) * cg]
            dst = view_2d(out[i, g * mg: (g + 1) * mg], mg, h * wd)
            if dst is not None:
                np.matmul(wg, xg, out=dst)
            else:
                out[i, g * mg: (g + 1) * mg] = np.matmul(wg, xg).reshape(mg, h, wd)
        _finish(out[i], bias, activation)


def _conv_gemm(x, w, bias, group, activation, out, ws, plan: _Plan) -> None:
    # NOTE: exact im2col (no junk columns) by a few 5-D strided copies from the phase images
    # (unit-stride rows even for strided convs); GEMM output rows are output rows, so np.matmul
    # writes straight into out.
    n, c = x.shape[:2]
    m, cg, kh, kw = w.shape
    _, _, ho, wo = plan.out_shape
    lay = plan.lay
    mg, kg = m // group, cg * kh * kw
    w2 = w.reshape(m, kg)
    nq, ncols, nfold = plan.parts
    k, npix = c * kh * kw, ho * wo
    cols = ws[nq: nq + k * npix].reshape(k, npix)
    cols5 = cols.reshape(c, kh, kw, ho, wo)
    if nfold and bias is not None:
        wb = ws[nq + ncols: nq + ncols + nfold].reshape(m, k + 1)
        np.copyto(wb[:, :k], w2)
        np.copyto(wb[:, k], bias)
        w2, kg, bias = wb, k + 1, None
        cols = ws[nq: nq + ncols].reshape(k + 1, npix)
        cols[k] = 1.0
    for i in range(n):
        if lay is None:
            phases = x[i][None]
        else:
            _phases.fill_chw(lay, x[i], ws[:nq], 0.0)
            phases = ws[: len(lay.phases) * lay.c * lay.block].reshape(-1, c, lay.hq, lay.wq)
        for p, ky, kx, oy, ox, ty, tx in plan.jobs:
            dst = cols5[:, ky, kx]
            src = phases[p, :, oy:, ox:]
            st_c, st_h, st_w = src.strides
            np.copyto(dst, np.lib.stride_tricks.as_strided(
                src, shape=dst.shape, strides=(st_c, ty * st_h, tx * st_w, st_h, st_w), writeable=False))
        yi = out[i]
        for g in range(group):
            wg = w2[g * mg: (g + 1) * mg]
            cols_g = cols[g * kg: (g + 1) * kg]
            dst = view_2d(yi[g * mg: (g + 1) * mg], mg, ho * wo)
            if dst is not None:
                np.matmul(wg, cols_g, out=dst)
            else:
                yi[g * mg: (g + 1) * mg] = np.matmul(wg, cols_g).reshape(mg, ho, wo)
        _finish(yi, bias, activation)


def _conv_depthwise(x, w, bias, activation, out, ws, plan: _Plan) -> None:
    lay = plan.lay
    n, c = x.shape[:2]
    m, _, kh, kw = w.shape
    mult = m // c
    ntaps = kh * kw
    hcw = lay.span < _phases.MIN_CHW_SPAN
    nq, nacc, _, nw = plan.parts
    qbuf = ws[:nq]
    acc = ws[nq: nq + nacc]
    tmp = ws[nq + nacc: nq + 2 * nacc]
    wbuf = ws[nq + 2 * nacc: nq + 2 * nacc + nw]
    wtap = w.reshape(c, mult, ntaps).transpose(1, 2, 0)     # (mult, ntaps, C)
    bias2 = None if bias is None else bias.reshape(c, mult).T
    if hcw:
        # NOTE: rows-outer views are (ho, C*wq): each tap's weights become one contiguous row
        wq = lay.wq
        wexp = wbuf.reshape(mult, ntaps + 1, c, wq)
        np.copyto(wexp[:, :ntaps], wtap[..., None])
        if bias2 is not None:
            np.copyto(wexp[:, ntaps], bias2[..., None])
        weights = wexp.reshape(mult, ntaps + 1, c * wq)
        biases = [None if bias is None else weights[j, ntaps] for j in range(mult)]
    else:
        weights = wbuf.reshape(mult, ntaps + 1, c, 1)
        np.copyto(weights[:, :ntaps, :, 0], wtap)
        biases = [None if bias is None else bias2[j, :, None] for j in range(mult)]
    for i in range(n):
        views = _phases.tap_views(lay, _phases.fill(lay, x[i], qbuf, 0.0, hcw), hcw)
        a = acc.reshape(views[0].shape)
        t = tmp.reshape(views[0].shape)
        yi = out[i].reshape(c, mult, lay.ho, lay.wo)
        for j in range(mult):
            _accumulate(a, t, views, weights[j], biases[j])
            np.copyto(yi[:, j], _phases.result_view(lay, a, hcw))
        apply_activation(out[i], activation)


def _accumulate(acc, tmp, views, weights, bias) -> None:
    """acc = sum_t views[t] * weights[t] (+ bias); numpy has no fused multiply-add ufunc."""
    np.multiply(views[0], weights[0], out=acc)
    if bias is not None:
        np.add(acc, bias, out=acc)
    for t in range(1, len(views)):
        np.multiply(views[t], weights[t], out=tmp)
        np.add(acc, tmp, out=acc)
