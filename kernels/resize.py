"""ONNX Resize of H and W (nearest and linear), separable: per axis, precomputed source indices and
weights (``resize_axis``), then ``resize2d`` gathers and blends along H, then W."""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coords(in_size: int, out_size: int, scale: float, coord: str) -> np.ndarray:
    x = np.arange(out_size, dtype=np.float64)
    if coord == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if coord == "align_corners":
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
    if coord == "asymmetric":
        return x / scale
    if coord == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise ValueError(f"resize: coordinate_transformation_mode must be one of {COORDINATE_MODES}, got {coord!r}")


def resize_axis(in_size: int, out_size: int, scale: float, *, mode="nearest", coord="half_pixel",
                nearest_mode="round_prefer_floor") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(first source index, second source index, weight of the second) per output position; for
    ``nearest`` the second index and the weight are None's stand-ins (index repeated, weight None)."""
    if in_size < 1 or out_size < 1 or not scale > 0:
        raise ValueError(f"resize: sizes {in_size} -> {out_size} and scale {scale!r} must be positive")
    x = _source_coords(in_size, out_size, float(scale), coord)
    if mode == "nearest":
        rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                    "floor": np.floor, "ceil": np.ceil}
        if nearest_mode not in rounding:
            raise ValueError(f"resize: nearest_mode must be one of {NEAREST_MODES}, got {nearest_mode!r}")
        i = np.clip(rounding[nearest_mode](x), 0, in_size - 1).astype(np.intp)
        return i, i, None
    if mode != "linear":
        raise ValueError(f"resize: mode must be 'nearest' or 'linear', got {mode!r}")
    x = np.clip(x, 0, in_size - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize2d(x, rows, cols, out=None):
    """Resize the last two axes of ``x`` by ``rows`` and ``cols`` (each a resize_axis result)."""
    check_f32("resize2d", "x", x)
    (r0, r1, rw), (c0, c1, cw) = rows, cols
    out = check_out("resize2d", out, x.shape[:-2] + (len(r0), len(c0)))
    if rw is None:
        tmp = x[..., r0, :]
    else:
        tmp = x[..., r0, :] * (np.float32(1) - rw)[:, None]
        tmp += x[..., r1, :] * rw[:, None]
    if cw is None:
        np.copyto(out, tmp[..., c0])
    else:
        np.multiply(tmp[..., c0], np.float32(1) - cw, out=out)
        out += tmp[..., c1] * cw
    return out
