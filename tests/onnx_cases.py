"""Shared helpers for tests that use onnx's shipped graphs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

LIGHT = ["bvlc_alexnet", "inception_v1", "resnet50", "squeezenet"]


def onnx_data_dir() -> Path:
    onnx = pytest.importorskip("onnx")
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"


def light_with_random_weights(name: str, out_dir: Path, seed: int = 0) -> Path:
    """The light graph with every ConstantOfShape-built weight replaced by a random initializer."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(onnx_data_dir() / "light" / f"light_{name}.onnx"))
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in g.initializer}
    keep, new_inits, drop = [], [], set()
    for node in g.node:
        if node.op_type == "ConstantOfShape":
            shape = [int(d) for d in numpy_helper.to_array(inits[node.input[0]])]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
            if fan_in:
                value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            else:   # biases, BN parameters: around 1 for scales/variances would also do; keep small and positive
                value = rng.uniform(0.5, 1.5, shape)
            new_inits.append(numpy_helper.from_array(value.astype(np.float32), name=node.output[0]))
            drop.add(node.input[0])
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    remaining = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(remaining + new_inits)
    inputs = [i for i in g.input if i.name not in drop]
    del g.input[:]
    g.input.extend(inputs)
    path = out_dir / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def ort_run(path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref)))
