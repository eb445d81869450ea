"""One weights file per model, mapped read-only by every process that runs it.

Layout: 8-byte magic, little-endian u64 header length, a JSON header {name: [offset, shape, dtype]},
then each array's bytes at a 64-byte aligned offset. Opening maps the file once (``np.memmap``,
mode "r") and returns views into the map, so N stage processes share one copy in the page cache.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..files import temp_path

MAGIC = b"TUNERDW1"
ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_weights(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename), so a reader never sees a half-written file."""
    entries, offset = {}, 0
    for name in sorted(weights):
        # NOTE: ascontiguousarray makes a 0-d array 1-d; a scalar constant (Gather's index) keeps its rank
        arr = np.ascontiguousarray(weights[name]).reshape(np.shape(weights[name]))
        entries[name] = [offset, list(arr.shape), arr.dtype.str]
        offset = _aligned(offset + arr.nbytes)
    header = json.dumps(entries).encode()
    data_start = _aligned(len(MAGIC) + 8 + len(header))
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for name in sorted(weights):
            f.seek(data_start + entries[name][0])
            f.write(np.ascontiguousarray(weights[name]).tobytes())
        f.truncate(data_start + offset)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Map the file read-only and return read-only views of every array."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
                raise ModelError(f"{path} is not a tunerd weights file")
            (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
            entries = json.loads(f.read(hlen))
    except OSError as err:
        raise ModelError(f"cannot read weights file {path}: {err}") from err
    except ValueError as err:
        raise ModelError(f"weights file {path} has a corrupt header: {err}") from err
    data_start = _aligned(len(MAGIC) + 8 + hlen)
    size = path.stat().st_size
    if not entries:
        return {}
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, (offset, shape, dtype) in entries.items():
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        start = data_start + offset
        if start + nbytes > size:
            raise ModelError(f"weights file {path} is truncated (array {name!r})")
        out[name] = mm[start:start + nbytes].view(dt).reshape(shape)
    return out
