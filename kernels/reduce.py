"""Reductions (ONNX ReduceMean/ReduceMax/ReduceSum/ReduceMin) over float32 arrays."""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out

_UFUNCS = {"mean": np.add, "sum": np.add, "max": np.maximum, "min": np.minimum}


def reduce_axes(shape: tuple, axes) -> tuple[int, ...]:
    """``axes`` (None or empty: all) as sorted non-negative axes of ``shape``; ValueError if out of range."""
    nd = len(shape)
    if axes is None or len(axes) == 0:
        return tuple(range(nd))
    out = set()
    for a in axes:
        a = int(a)
        if not -nd <= a < nd:
            raise ValueError(f"reduce: axis {a} out of range for shape {tuple(shape)}")
        out.add(a % nd)
    return tuple(sorted(out))


def reduce(x, kind: str, axes=None, *, keepdims=True, out=None):
    """Reduce ``x`` over ``axes`` (None: all) by ``kind`` in mean, sum, max, min."""
    fn = f"reduce_{kind}"
    if kind not in _UFUNCS:
        raise ValueError(f"reduce: kind must be one of {sorted(_UFUNCS)}, got {kind!r}")
    check_f32(fn, "x", x)
    axes = reduce_axes(x.shape, axes)
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    shape = kept if keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
    out = check_out(fn, out, shape)
    _UFUNCS[kind].reduce(x, axis=axes, out=out.reshape(kept), keepdims=True)
    if kind == "mean":
        out *= np.float32(1.0 / max(1, int(np.prod([x.shape[a] for a in axes], dtype=np.int64))))
    return out
