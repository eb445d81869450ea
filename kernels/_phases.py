"""Padded, phase-split copies of an input: the scratch layout of convolution (the source of
im2col copies, and of depthwise taps).

NOTE: why phases. A conv tap with stride s reads x[s*y + r, s*x + c].
Splitting the padded input into s*s phase images Q[p][a, b] = P[s*a + py, s*b + px] turns every
tap into a stride-1 read of one phase at an offset. Flattening each phase image row-major with a
width of ``wq`` columns turns that read into ONE contiguous slice per channel
(``Q[p, c].ravel()[shift : shift + ho*wq]``); the ``wq - wo`` trailing columns of each output row
are junk and are dropped when the result is compacted into the output. Numpy then runs every tap
as a long contiguous vectorised loop instead of millions of short strided rows.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

# NOTE: below this many elements per channel plane, numpy's per-row loop overhead dominates
# channel-major tap loops (measured: ~45 ns a row); the (rows, channels, cols) layout pays two
# transposing copies to get one long loop per tap instead (measured on 2-core x86).
MIN_CHW_SPAN = 2048


class Layout(NamedTuple):
    c: int
    h: int
    w: int
    ho: int
    wo: int
    hq: int                 # rows of one phase image
    wq: int                 # columns of one phase image (>= wo)
    phases: tuple           # (py, px) of each phase actually read by some tap
    taps: tuple             # (phase, oy, ox) of each tap, row-major (ky, kx): phase image offsets
    copies: tuple           # per phase: (a0, na, i0, b0, nb, j0): Q[a0:a0+na, b0:b0+nb] <- x[i0::sy, j0::sx]
    sy: int
    sx: int

    @property
    def span(self) -> int:
        """Elements of one output channel computed in phase layout (ho rows of wq)."""
        return self.ho * self.wq

    @property
    def block(self) -> int:
        """Elements of one (phase, channel) image."""
        return self.hq * self.wq

    @property
    def size(self) -> int:
        # NOTE: the flat read of a tap's last output row runs up to ``wq - wo`` elements past the
        # phase image; a spare row at the end keeps the last channel's read inside the buffer.
        return len(self.phases) * self.c * self.hq * self.wq + self.wq


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=512)
def layout(c, h, w, ho, wo, kernel, strides, pads, dilations) -> Layout:
    kh, kw = kernel
    sy, sx = strides
    dy, dx = dilations
    pt, pl = pads[0], pads[1]
    phase_of = {}
    raw_taps = []
    for ky in range(kh):
        for kx in range(kw):
            ry, rx = ky * dy, kx * dx
            p = phase_of.setdefault((ry % sy, rx % sx), len(phase_of))
            raw_taps.append((p, ry // sy, rx // sx))
    max_oy = max(t[1] for t in raw_taps)
    max_ox = max(t[2] for t in raw_taps)
    wq = wo + max_ox
    hq = ho + max_oy
    phases = tuple(phase_of)
    taps = tuple(raw_taps)
    copies = []
    for py, px in phases:
        a0 = max(0, _ceil_div(pt - py, sy))
        i0 = a0 * sy + py - pt
        na = max(0, min(hq - a0, _ceil_div(h - i0, sy)))
        b0 = max(0, _ceil_div(pl - px, sx))
        j0 = b0 * sx + px - pl
        nb = max(0, min(wq - b0, _ceil_div(w - j0, sx)))
        copies.append((a0, na, i0, b0, nb, j0))
    return Layout(c, h, w, ho, wo, hq, wq, phases, taps, tuple(copies), sy, sx)


def fill_chw(lay: Layout, x: np.ndarray, buf: np.ndarray, fill: float) -> np.ndarray:
    """Write the phase images of one sample ``x`` (C, H, W) channel-major into ``buf``.

    Returns ``rows`` of shape (nphases * C, hq*wq + wq) with a row stride of hq*wq (rows
    overlap): the input of tap (p, oy, ox) for channels c0:c1 is
    ``rows[p*C + c0 : p*C + c1, oy*wq + ox :][:, :span]``.
    """
    nph, c, blk = len(lay.phases), lay.c, lay.block
    buf = buf[: lay.size]
    q = buf[: nph * c * blk].reshape(nph, c, lay.hq, lay.wq)
    buf[nph * c * blk:].fill(fill)
    for p, cp in enumerate(lay.copies):
        _fill_one(q[p], x, cp, lay, fill, 1, 2)
    st = buf.strides[0]
    return np.lib.stride_tricks.as_strided(buf, shape=(nph * c, blk + lay.wq), strides=(blk * st, st))


def fill_hcw(lay: Layout, x: np.ndarray, buf: np.ndarray, fill: float) -> np.ndarray:
    """Write the phase images of one sample ``x`` (C, H, W) row-major as (hq, C, wq) into ``buf``.

    Returns the flat buffer: the input of tap (p, oy, ox) for all channels and output rows is the
    contiguous ``flat[p*hq*C*wq + oy*C*wq + ox :][: ho*C*wq]``, laid out (ho, C, wq).
    """
    nph, c, blk = len(lay.phases), lay.c, lay.block
    buf = buf[: lay.size]
    q = buf[: nph * c * blk].reshape(nph, lay.hq, c, lay.wq)
    buf[nph * c * blk:].fill(fill)
    xt = x.transpose(1, 0, 2)
    for p, cp in enumerate(lay.copies):
        _fill_one(q[p], xt, cp, lay, fill, 0, 2)
    return buf


def _fill_one(qp, x, cp, lay, fill, ax_h, ax_w) -> None:
    """Fill one phase image ``qp`` (axes ax_h, ax_w are rows, columns) from ``x`` (same axes)."""
    a0, na, i0, b0, nb, j0 = cp
    if na == 0 or nb == 0:
        qp.fill(fill)
        return
    a1, b1 = a0 + na, b0 + nb
    hsl = [slice(None)] * 3
    if a0:
        hsl[ax_h] = slice(0, a0)
        qp[tuple(hsl)].fill(fill)
    if a1 < lay.hq:
        hsl[ax_h] = slice(a1, None)
        qp[tuple(hsl)].fill(fill)
    hsl[ax_h] = slice(a0, a1)
    if b0:
        hsl[ax_w] = slice(0, b0)
        qp[tuple(hsl)].fill(fill)
    if b1 < lay.wq:
        hsl[ax_w] = slice(b1, None)
        qp[tuple(hsl)].fill(fill)
    hsl[ax_w] = slice(b0, b1)
    src = [slice(None)] * 3
    src[ax_h] = slice(i0, i0 + lay.sy * (na - 1) + 1, lay.sy)
    src[ax_w] = slice(j0, j0 + lay.sx * (nb - 1) + 1, lay.sx)
    np.copyto(qp[tuple(hsl)], x[tuple(src)])


def fill(lay: Layout, x: np.ndarray, buf: np.ndarray, value: float, hcw: bool):
    return fill_hcw(lay, x, buf, value) if hcw else fill_chw(lay, x, buf, value)


def tap_views(lay: Layout, filled, hcw: bool) -> list:
    """The input of every tap for all channels, as equal-shape 2-D views, in tap order.

    Channel-major: (C, span); rows-outer: (ho, C*wq). An accumulator of the same shape holds the
    result, seen as (C, ho, wo) through ``result_view``.
    """
    c, wq, ho = lay.c, lay.wq, lay.ho
    if hcw:
        row = c * wq
        plane = lay.hq * row
        size = ho * row
        return [filled[p * plane + oy * row + ox:][:size].reshape(ho, row) for p, oy, ox in lay.taps]
    span = lay.span
    return [filled[p * c: (p + 1) * c, oy * wq + ox:][:, :span] for p, oy, ox in lay.taps]


def result_view(lay: Layout, acc: np.ndarray, hcw: bool) -> np.ndarray:
    """(C, ho, wo) view of an accumulator shaped like ``tap_views``' views."""
    if hcw:
        return acc.reshape(lay.ho, lay.c, lay.wq).transpose(1, 0, 2)[:, :, :lay.wo]
    return acc.reshape(lay.c, lay.ho, lay.wq)[:, :, :lay.wo]

