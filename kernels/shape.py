"""Shape ops (ONNX semantics). Views where numpy can give one; ``transpose`` copies into ``out``."""
from __future__ import annotations

import numpy as np

from ._checks import check_out


def flatten(x, axis=1):
    """ONNX Flatten: (prod(shape[:axis]), prod(shape[axis:])); axis may be negative."""
    nd = np.ndim(x)
    if not -nd <= axis <= nd:
        raise ValueError(f"flatten: axis {axis} out of range for shape {np.shape(x)}")
    if axis < 0:
        axis += nd
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    return x.reshape(rows, cols)


def reshape_shape(in_shape, shape) -> tuple:
    """Resolve an ONNX Reshape target: 0 copies the input dim, -1 is inferred."""
    in_shape = tuple(int(d) for d in in_shape)
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError) as err:
        raise ValueError(f"reshape: shape must be ints, got {shape!r}") from err
    for i, d in enumerate(dims):
        if d == 0:
            if i >= len(in_shape):
                raise ValueError(f"reshape: 0 at position {i} but input {in_shape} has {len(in_shape)} dims")
            dims[i] = in_shape[i]
        elif d < -1:
            raise ValueError(f"reshape: bad dimension {d} in {tuple(shape)}")
    total = int(np.prod(in_shape, dtype=np.int64))
    if dims.count(-1) > 1:
        raise ValueError(f"reshape: more than one -1 in {tuple(shape)}")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError(f"reshape: cannot infer -1 in {tuple(shape)} for input {in_shape}")
        dims[dims.index(-1)] = total // known
    if int(np.prod(dims, dtype=np.int64)) != total:
        raise ValueError(f"reshape: cannot reshape {in_shape} to {tuple(shape)}")
    return tuple(dims)


def reshape(x, shape):
    """ONNX Reshape (allowzero=0): a view when the layout allows it."""
    return x.reshape(reshape_shape(x.shape, shape))


def transpose(x, perm, out=None):
    """ONNX Transpose into a contiguous (or given) array; perm None reverses the axes."""
    nd = np.ndim(x)
    perm = tuple(range(nd))[::-1] if perm is None else tuple(int(p) for p in perm)
    if sorted(perm) != list(range(nd)):
        raise ValueError(f"transpose: perm {perm} is not a permutation of {nd} axes")
    t = x.transpose(perm)
    out = check_out("transpose", out, t.shape, x.dtype)
    np.copyto(out, t)
    return out


def concat(xs, axis=1, out=None):
    """ONNX Concat along ``axis`` (may be negative)."""
    xs = list(xs)
    if not xs:
        raise ValueError("concat: needs at least one input, got 0")
    nd = np.ndim(xs[0])
    if not -nd <= axis < nd:
        raise ValueError(f"concat: axis {axis} out of range for {nd}-D inputs")
    axis %= nd
    shapes = [np.shape(x) for x in xs]
    for s in shapes:
        if len(s) != nd or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
            raise ValueError(f"concat: shapes {shapes} differ outside axis {axis}")
    shape = list(shapes[0])
    shape[axis] = sum(s[axis] for s in shapes)
    out = check_out("concat", out, tuple(shape), np.result_type(*xs))
    return np.concatenate(xs, axis=axis, out=out)


def identity(x):
    return x


def slice_index(shape, starts, ends, axes=None, steps=None) -> tuple:
    """The numpy index of ONNX Slice on ``shape`` (starts/ends clamped as ONNX does)."""
    nd = len(shape)
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(f"slice: starts {list(starts)}, ends {list(ends)}, axes {axes}, steps {steps} differ in length")
    index = [slice(None)] * nd
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -nd <= axis < nd:
            raise ValueError(f"slice: axis {axis} out of range for shape {tuple(shape)}")
        if step == 0:
            raise ValueError("slice: a step of 0")
        dim = shape[axis % nd]
        # NOTE: ints far outside the dim (INT64_MAX for "to the end") clamp; Python slices do the rest
        start, end = (max(-dim - 1, min(int(v), dim + 1)) for v in (start, end))
        if step < 0 and end < -dim:
            end = None
        index[axis % nd] = slice(start, end, step)
    return tuple(index)


def slice_(x, index: tuple, out=None):
    """``x[index]`` (an index from slice_index) copied into ``out``."""
    part = x[index]
    out = check_out("slice_", out, part.shape, x.dtype)
    np.copyto(out, part)
    return out


def gather(x, indices, axis=0, out=None):
    """ONNX Gather: np.take along ``axis`` (negative indices count from the end)."""
    nd = np.ndim(x)
    if not -nd <= axis < nd:
        raise ValueError(f"gather: axis {axis} out of range for shape {np.shape(x)}")
    indices = np.asarray(indices, np.int64)
    dim = x.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise ValueError(f"gather: indices outside [-{dim}, {dim}) on axis {axis}")
    shape = x.shape[:axis % nd] + indices.shape + x.shape[axis % nd + 1:]
    out = check_out("gather", out, shape, x.dtype)
    np.take(x, np.where(indices < 0, indices + dim, indices), axis=axis, out=out)
    return out


def expand(x, shape, out=None):
    """ONNX Expand: broadcast ``x`` with ``shape`` (numpy's rule in both directions)."""
    try:
        target = np.broadcast_shapes(np.shape(x), tuple(int(d) for d in shape))
    except ValueError as err:
        raise ValueError(f"expand: {np.shape(x)} does not broadcast with {tuple(shape)}") from err
    out = check_out("expand", out, target, x.dtype)
    np.copyto(out, np.broadcast_to(x, target))
    return out


def pad(x, pads, *, mode="constant", value=0.0, out=None):
    """ONNX Pad: ``pads`` is [begin of each axis..., end of each axis...]; negative pads crop."""
    nd = np.ndim(x)
    pads = [int(p) for p in pads]
    if len(pads) != 2 * nd:
        raise ValueError(f"pad: need {2 * nd} pads for shape {np.shape(x)}, got {pads}")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
    if mode not in modes:
        raise ValueError(f"pad: mode must be one of {sorted(modes)}, got {mode!r}")
    crop = tuple(slice(max(0, -b), d - max(0, -e) if e < 0 else None)
                 for b, e, d in zip(pads[:nd], pads[nd:], x.shape))
    widths = [(max(0, b), max(0, e)) for b, e in zip(pads[:nd], pads[nd:])]
    kw = {"constant_values": value} if mode == "constant" else {}
    padded = np.pad(x[crop], widths, mode=modes[mode], **kw)
    out = check_out("pad", out, padded.shape, x.dtype)
    np.copyto(out, padded)
    return out
