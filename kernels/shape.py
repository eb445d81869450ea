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
