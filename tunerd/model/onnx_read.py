"""Reading an ONNX file and checking it before import: every bad input is one ModelError at load.

A file over the size limit (with its external data), external data that is missing, truncated or
outside the model's folder, a node of a custom domain or an op ONNX does not define, an op with
subgraphs (If, Loop, Scan), a node reading a tensor made later (a cycle), and an input whose height
and width are symbolic when no input size is given: each names the file, the node or the tensor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError, UnsupportedOpError

# NOTE: tunerd maps a model's weights into every stage process; 2 GiB is protobuf's own limit for
# one file and far above any CNN for the boards it targets
MAX_MODEL_BYTES = 2 * 2**30


def _onnx():
    try:
        import onnx
    except ImportError as err:
        raise ModelError("ONNX support needs the 'onnx' extra: pip install 'tunerd[onnx]'") from err
    return onnx


def input_dims(inp, input_size: int | None, path) -> tuple[int, ...]:
    """The NCHW input shape: a symbolic (or unset) batch binds to 1, symbolic H, W to ``input_size``,
    which also replaces fixed ones; symbolic H, W without it are a ModelError that says so."""
    dims = list(inp.type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise ModelError(f"input {inp.name!r} of {path} has rank {len(dims)}; tunerd runs NCHW image models")
    fixed = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if fixed[1] is None:
        raise ModelError(f"input {inp.name!r} of {path}: the channel dimension is symbolic "
                         f"({dims[1].dim_param or '?'}); tunerd needs it fixed")
    if input_size is not None:
        return (1, fixed[1], int(input_size), int(input_size))
    if fixed[2] is None or fixed[3] is None:
        sym = [dims[i].dim_param or "?" for i in (2, 3)]
        raise ModelError(f"input {inp.name!r} of {path} has symbolic height and width ({sym[0]}, {sym[1]}): "
                         f"give the input size (--input-size N, or load_model(..., input_size=N))")
    return (1, fixed[1], fixed[2], fixed[3])


def read_model(path: Path, max_bytes: int = MAX_MODEL_BYTES):
    """The ModelProto with its external data loaded; every failure one ModelError naming the file."""
    onnx = _onnx()
    from onnx import external_data_helper
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ModelError(f"cannot read ONNX model {path}: {err.strerror or err}") from err
    if size > max_bytes:
        raise ModelError(f"ONNX model {path} is {size / 2**20:.0f} MiB, over the limit of "
                         f"{max_bytes / 2**20:.0f} MiB")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError types
        raise ModelError(f"cannot read ONNX model {path}: {type(err).__name__}: {err}") from err
    total = size
    for t in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(t):
            continue
        info = external_data_helper.ExternalDataInfo(t)
        file = (path.parent / info.location).resolve()
        if path.parent.resolve() not in file.parents:
            raise ModelError(f"ONNX model {path}: tensor {t.name!r} names external data outside the model's "
                             f"folder ({info.location!r})")
        try:
            have = file.stat().st_size
        except OSError as err:
            raise ModelError(f"ONNX model {path}: external data file {file} of tensor {t.name!r} cannot be "
                             f"read: {err.strerror or err}") from err
        need = int(info.offset or 0) + int(info.length or 0)
        if info.length and have < need:
            raise ModelError(f"ONNX model {path}: external data file {file} is truncated ({have} bytes, "
                             f"tensor {t.name!r} needs {need})")
        total += int(info.length or have)
    if total > max_bytes:
        raise ModelError(f"ONNX model {path} with its external data is {total / 2**20:.0f} MiB, over the "
                         f"limit of {max_bytes / 2**20:.0f} MiB")
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
        for t in external_data_helper._get_all_tensors(model):
            check_raw_data(t)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - onnx raises OSError, ValueError, its own types
        raise ModelError(f"ONNX model {path}: cannot load its external data: {type(err).__name__}: {err}") from err
    return model


def check_raw_data(t) -> None:
    """A tensor whose stored bytes do not match its dims is a ModelError (a truncated raw_data)."""
    from onnx import helper
    if not t.HasField("raw_data"):
        return
    n = int(np.prod(t.dims, dtype=np.int64))
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError):
        return
    if len(t.raw_data) != n * itemsize:
        raise ModelError(f"tensor {t.name!r} holds {len(t.raw_data)} bytes for dims {list(t.dims)} "
                         f"({n * itemsize} expected): truncated data")


def check_nodes(g, names, path) -> None:
    """Standard ops only, no subgraphs, and every input made before it is read (no cycle)."""
    from onnx import defs
    known = {t.name for t in g.initializer} | {i.name for i in g.input}
    producers = {o: name for n, name in zip(g.node, names) for o in n.output}
    for n, name in zip(g.node, names):
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"unsupported op {n.domain}.{n.op_type} in node {name!r}: tunerd runs "
                                     f"standard ONNX ops only (custom domain {n.domain!r})")
        if not defs.has(n.op_type):
            raise UnsupportedOpError(f"unsupported op {n.op_type!r} in node {name!r}: not a standard ONNX op")
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute):
            raise UnsupportedOpError(f"unsupported op {n.op_type!r} in node {name!r}: ops with subgraphs "
                                     f"(If, Loop, Scan) are not supported")
        for i in n.input:
            if i and i not in known:
                where = producers.get(i)
                raise ModelError(f"ONNX model {path}: node {name!r} ({n.op_type}) reads {i!r}, "
                                 + (f"made later by node {where!r} (a cycle, or nodes out of topological order)"
                                    if where else "which nothing makes"))
        known.update(n.output)
