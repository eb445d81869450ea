"""ONNX ConvTranspose (2-D, NCHW): one GEMM per group to columns, then a strided scatter-add of each
kernel tap into the output (col2im), cropped by the pads."""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out, pair, quad


def conv_transpose_output_hw(h: int, w: int, kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                             output_padding=(0, 0)) -> tuple[int, int]:
    (kh, kw), (sy, sx), (dy, dx) = kernel, strides, dilations
    t, l, b, r = pads
    return ((h - 1) * sy + (kh - 1) * dy + 1 + output_padding[0] - t - b,
            (w - 1) * sx + (kw - 1) * dx + 1 + output_padding[1] - l - r)


def conv_transpose2d(x, w, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                     output_padding=(0, 0), group=1, out=None):
    """``x`` (N, C, H, W), ``w`` (C, M / group, kh, kw), ``bias`` (M,) or None."""
    fn = "conv_transpose2d"
    x = check_f32(fn, "x", x, 4)
    w = check_f32(fn, "w", w, 4)
    sy, sx = pair(fn, "strides", strides, 1)
    dy, dx = pair(fn, "dilations", dilations, 1)
    oy, ox = pair(fn, "output_padding", output_padding, 0)
    t, l, b, r = quad(fn, "pads", pads)
    n, c, h, wd = x.shape
    if w.shape[0] != c or c % group:
        raise ValueError(f"{fn}: weights {w.shape} do not fit {c} input channels in {group} groups")
    mg, kh, kw = w.shape[1:]
    m = mg * group
    ho, wo = conv_transpose_output_hw(h, wd, (kh, kw), (sy, sx), (t, l, b, r), (dy, dx), (oy, ox))
    if ho <= 0 or wo <= 0:
        raise ValueError(f"{fn}: output {ho}x{wo} is empty")
    if bias is not None:
        bias = check_f32(fn, "bias", bias, 1)
        if bias.shape[0] != m:
            raise ValueError(f"{fn}: bias must have shape ({m},), got {bias.shape}")
    out = check_out(fn, out, (n, m, ho, wo))
    full = np.zeros((n, m, ho + t + b, wo + l + r), np.float32)
    cg = c // group
    for i in range(n):
        for g in range(group):
            xg = x[i, g * cg:(g + 1) * cg].reshape(cg, h * wd)
            wg = w[g * cg:(g + 1) * cg].reshape(cg, mg * kh * kw)
            cols = (wg.T @ xg).reshape(mg, kh, kw, h, wd)
            dst = full[i, g * mg:(g + 1) * mg]
            for ky in range(kh):
                for kx in range(kw):
                    y0, x0 = ky * dy, kx * dx
                    dst[:, y0:y0 + sy * (h - 1) + 1:sy, x0:x0 + sx * (wd - 1) + 1:sx] += cols[:, ky, kx]
    np.copyto(out, full[:, :, t:t + ho, l:l + wo])
    if bias is not None:
        out += bias.reshape(1, m, 1, 1)
    return out
