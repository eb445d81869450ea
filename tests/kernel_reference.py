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


def pad_nchw(x, pads):
    """float64 copy with H and W zero-padded by (top, left, bottom, right)."""
    t, l, b, r = pads
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (t, b), (l, r)))


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
    """Max/mean over the k*k taps of a NaN-padded copy; the avg divisor counts explicit pads (not
    the ceil_mode overhang past them) only with ``count_include_pad``."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sy, sx = strides
    dy, dx = dilations
    t, l, b, r = pads
    ho = pool_out_size(h, kh, sy, t, b, dy, ceil_mode)
    wo = pool_out_size(w, kw, sx, l, r, dx, ceil_mode)
    over = (max(0, (ho - 1) * sy + dy * (kh - 1) + 1 - (h + t + b)),
            max(0, (wo - 1) * sx + dx * (kw - 1) + 1 - (w + l + r)))
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (t, b + over[0]), (l, r + over[1])), constant_values=np.nan)
    in_pads = np.pad(np.ones((h + t + b, w + l + r)), ((0, over[0]), (0, over[1])))
    taps, counted = [], []
    for ky in range(kh):
        for kx in range(kw):
            rows = slice(ky * dy, ky * dy + sy * (ho - 1) + 1, sy)
            cols = slice(kx * dx, kx * dx + sx * (wo - 1) + 1, sx)
            taps.append(xp[:, :, rows, cols])
            counted.append(in_pads[rows, cols])
    taps = np.stack(taps)
    if mode == "max":
        return np.nanmax(taps, axis=0)
    count = np.sum(counted, axis=0) if count_include_pad else np.sum(~np.isnan(taps), axis=0)
    return np.nansum(taps, axis=0) / count


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
