"""Winograd F(2x2, 3x3) convolution (stride 1, dilation 1, one group) over NCHW float32.

Per sample: the zero-padded input as the 4 phase images of a stride-2 "conv" with 4x4 taps
(``_phases``), so that every pass below is a long contiguous loop over all channels and tiles
(one junk column per tile row, like ``_phases`` tap views); the input transform ``V = B^T d B``
(columns then rows: 8 + 16 add/subtract passes); the 16 products ``U[k] @ V[k]`` as ONE batched
``np.matmul`` ``(16, M, C) @ (16, C, tiles)``; the output transform ``Y = A^T M A`` (8 + 4
two-pass sums), the last pass of each writing straight into a strided view of ``out``.
4 multiplies per output and input channel instead of 9.

NOTE: measured against im2col + sgemm (single thread, 2-core x86, OpenBLAS): 1.10-1.20x faster
with >= 64 input channels and >= 28x28 outputs; slower below that (at 14x14 the filter transform
and the skinny GEMMs eat the gain; with 16-32 channels the transforms dominate), hence the
threshold in ``conv._plan``. F(4x4, 3x3) (2.25 multiplies) was slower everywhere: its transforms
need non-unit coefficients, i.e. two numpy passes per term.
NOTE: the filter transform is one small sgemm per call ((16, 9) @ (9, M*C)); no cache of derived
weights, so the kernel stays stateless and a second process maps the same weights and nothing more.
NOTE: the bias costs no pass over the output: A^T has a column of ones (position 1), so adding it
to the row-pass intermediates R[1, j] (half the output each) adds it to every output of a tile.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import _phases

M_TILE = 2                  # outputs per tile side
A_TILE = M_TILE + 2         # inputs per tile side
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
AT = ((1, 1, 1, 0), (0, 1, -1, -1))
ONE = 1                     # AT[:, ONE] is all ones


class Geometry(NamedTuple):
    c: int
    mo: int                 # output channels
    th: int                 # tile rows
    tw: int                 # tile columns
    lay: object             # _phases.Layout of the padded input as a stride-2 conv with 4x4 taps
    parts: tuple            # workspace: (phase images + column pass + V) or R, then U, products, scratch

    @property
    def workspace(self) -> int:
        return sum(self.parts)


@lru_cache(maxsize=256)
def geometry(c, h, w, mo, ho, wo, pads) -> Geometry:
    """3x3 stride-1 conv of (c, h, w) to (mo, ho, wo); ``pads`` (top, left, bottom, right)."""
    m, a = M_TILE, A_TILE
    th, tw = -(-ho // m), -(-wo // m)
    # NOTE: tile (ty, tx) reads padded rows m*ty + r, r < a: phase r % m at row offset r // m (<= 1),
    # i.e. exactly the phase images of a stride-m conv with a*a taps and th x tw outputs.
    lay = _phases.layout(c, h, w, th, tw, (a, a), (m, m), tuple(pads), (1, 1))
    assert lay.hq == th + 1 and lay.wq == tw + 1 and len(lay.phases) == m * m
    t = th * lay.wq                 # GEMM columns: the tiles plus one junk column per tile row
    inputs = lay.size + a * m * c * lay.block + a * a * c * t
    parts = (max(inputs, a * m * mo * t), a * a * mo * c, a * a * mo * t, max(c * lay.block, mo * t))
    return Geometry(c, mo, th, tw, lay, parts)


@lru_cache(maxsize=None)
def _filter_matrix() -> np.ndarray:
    """(16, 9): U[xi*4 + nu] = sum_{ky,kx} G[xi,ky] G[nu,kx] g[ky,kx] (exact in float32)."""
    g = np.array(G, np.float64)
    gg = np.einsum("ik,jl->ijkl", g, g).reshape(A_TILE * A_TILE, 9).astype(np.float32)
    gg.flags.writeable = False
    return gg


def _terms(mat) -> tuple:
    """Each row of a +-1 transform matrix as ((index, sign), ...), a positive term first."""
    return tuple(tuple(sorted(((i, v) for i, v in enumerate(r) if v), key=lambda iv: iv[1] < 0)) for r in mat)


BT_TERMS = _terms(BT)
AT_TERMS = _terms(AT)


def _lincomb(dst, views, terms, tmp) -> None:
    """dst = sum +-views[i] over ``terms``; partial sums go to ``tmp`` (contiguous) so only the
    last pass touches ``dst`` (which may be a slow strided view)."""
    (i0, _), (i1, s1) = terms[0], terms[1]
    rest = terms[2:]
    acc = tmp[: dst.size].reshape(dst.shape) if rest else dst
    (np.add if s1 > 0 else np.subtract)(views[i0], views[i1], out=acc)
    for n, (i, s) in enumerate(rest):
        (np.add if s > 0 else np.subtract)(acc, views[i], out=dst if n == len(rest) - 1 else acc)


def conv3x3(x, w, bias, out, ws, geo: Geometry) -> None:
    """out[i] = conv(x[i], w) + bias (3x3, stride 1, the geometry's pads); no activation."""
    m, a = M_TILE, A_TILE
    c, mo, th, lay = geo.c, geo.mo, geo.th, geo.lay
    wq, blk = lay.wq, lay.block
    t = th * wq
    n_in, n_u, n_m, n_tmp = geo.parts
    o = lay.size
    sbuf = ws[o: o + a * m * c * blk].reshape(a, m, c, blk)
    o += a * m * c * blk
    vbuf = ws[o: o + a * a * c * t].reshape(a * a, c, t)
    rbuf = ws[: a * m * mo * t].reshape(a, m, mo, t)       # reuses the input side, dead by then
    o = n_in
    u = ws[o: o + n_u].reshape(a * a, mo, c)
    o += n_u
    mbuf = ws[o: o + n_m].reshape(a * a, mo, t)
    tmp = ws[o + n_m: o + n_m + n_tmp]
    np.matmul(_filter_matrix(), w.reshape(mo * c, 9).T, out=u.reshape(a * a, mo * c))
    bias2 = None if bias is None else bias[:, None]
    for i in range(x.shape[0]):
        rows = _phases.fill_chw(lay, x[i], ws[: lay.size], 0.0)   # (4*C, blk + wq), row stride blk
        # columns: S[nu, py] = sum_b BT[nu, b] Q[py, b % 2] shifted by b // 2 columns
        for py in range(m):
            cols = [rows[(py * m + b % m) * c: (py * m + b % m + 1) * c, b // m:][:, :blk] for b in range(a)]
            for nu in range(a):
                _lincomb(sbuf[nu, py], cols, BT_TERMS[nu], tmp)
        # rows: V[xi*4 + nu] = sum_r BT[xi, r] S[nu, r % 2] shifted by r // 2 rows
        for nu in range(a):
            rv = [sbuf[nu, r % m, :, (r // m) * wq:][:, :t] for r in range(a)]
            for xi in range(a):
                _lincomb(vbuf[xi * a + nu], rv, BT_TERMS[xi], tmp)
        np.matmul(u, vbuf, out=mbuf)
        # back: R[xi, j] = sum_nu AT[j, nu] M[xi*4 + nu]; Y[r, j] = sum_xi AT[r, xi] R[xi, j]
        for xi in range(a):
            for j in range(m):
                _lincomb(rbuf[xi, j], mbuf[xi * a: (xi + 1) * a], AT_TERMS[j], tmp)
                if xi == ONE and bias2 is not None:
                    np.add(rbuf[xi, j], bias2, out=rbuf[xi, j])
        yi = out[i]
        for r in range(m):
            for j in range(m):
                dst = yi[:, r::m, j::m]
                nr, nc = dst.shape[1], dst.shape[2]
                _lincomb(dst, [rbuf[xi, j].reshape(mo, th, wq)[:, :nr, :nc] for xi in range(a)], AT_TERMS[r], tmp)
