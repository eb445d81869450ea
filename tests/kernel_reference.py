"""Trusted (slow, float64) references for the kernels, and the one check helper the tests use."""
from __future__ import annotations

import numpy as np


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """Shape first, then dtype float32, then values."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"expected an ndarray, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.float32, f"dtype {actual.dtype} != float32"
    np.testing.assert_allclose(actual, expected.astype(np.float64), rtol=rtol, atol=atol)


def pad_nchw(x, pads, value=0.0, extra=(0, 0)):
    """Pad H and W by (top, left, bottom, right) plus ``extra`` (bottom, right) overhang."""
    t, l, b, r = pads
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (t, b + extra[0]), (l, r + extra[1])),
                  constant_values=value)


def conv2d_ref(x, w, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """Direct definition: an einsum per output pixel window, per group."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sy, sx = strides
    dy, dx = dilations
    xp = pad_nchw(x, pads)
    ho = (xp.shape[2] - dy * (kh - 1) - 1) // sy + 1
    wo = (xp.shape[3] - dx * (kw - 1) - 1) // sx + 1
    y = np.zeros((n, m, ho, wo))
    mg = m // group
    w64 = np.asarray(w, np.float64)
    for g in range(group):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w64[g * mg:(g + 1) * mg]
        for ky in range(kh):
            for kx in range(kw):
                patch = xg[:, :, ky * dy: ky * dy + sy * (ho - 1) + 1: sy,
                           kx * dx: kx * dx + sx * (wo - 1) + 1: sx]
                y[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, wg[:, :, ky, kx])
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def pool_out_size(size, k, s, p0, p1, d=1, ceil_mode=False):
    """ONNX/PyTorch rule: with ceil_mode the last window must start inside input or left pad."""
    eff = d * (k - 1) + 1
    num = size + p0 + p1 - eff
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= size + p0:
        o -= 1
    return o


def pool2d_ref(x, kernel, strides, pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=False,
               mode="max", count_include_pad=False):
    """Loop over output pixels; avg divisor counts pads (not the ceil overhang) when asked."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sy, sx = strides
    dy, dx = dilations
    t, l, b, r = pads
    ho = pool_out_size(h, kh, sy, t, b, dy, ceil_mode)
    wo = pool_out_size(w, kw, sx, l, r, dx, ceil_mode)
    x64 = np.asarray(x, np.float64)
    y = np.zeros((n, c, ho, wo))
    for oy in range(ho):
        for ox in range(wo):
            ys = [oy * sy - t + ky * dy for ky in range(kh)]
            xs = [ox * sx - l + kx * dx for kx in range(kw)]
            inside = [(i, j) for i in ys for j in xs if 0 <= i < h and 0 <= j < w]
            vals = np.stack([x64[:, :, i, j] for i, j in inside], axis=-1)
            if mode == "max":
                y[:, :, oy, ox] = vals.max(axis=-1)
            else:
                if count_include_pad:
                    cnt = sum(1 for i in ys for j in xs if -t <= i < h + b and -l <= j < w + r)
                else:
                    cnt = len(inside)
                y[:, :, oy, ox] = vals.sum(axis=-1) / cnt
    return y


def load_kernels():
    """``tunerd.kernels``, from the installed package or, uninstalled, from the source tree.

    NOTE: pyproject maps the top-level kernels/ directory to ``tunerd.kernels``; without an
    (editable) install that mapping does not exist, so register the directory under that name.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    try:
        return importlib.import_module("tunerd.kernels")
    except ModuleNotFoundError as err:
        if err.name != "tunerd.kernels":
            raise
    root = Path(__file__).resolve().parents[1] / "kernels"
    spec = importlib.util.spec_from_file_location(
        "tunerd.kernels", root / "__init__.py", submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tunerd.kernels"] = mod
    spec.loader.exec_module(mod)
    return mod
