"""The real-export test set: torchvision CNNs as PyTorch's two ONNX exporters write them.

tests/data/reference_graphs/NAME.EXPORTER.onnx.gz are skeletons made by
tools/export_reference_graphs.py: every large floating-point initializer kept its name, dtype and
dims but not its data (``doc_string`` "tunerd:stripped"). ``materialise`` fills those with seeded
random values, scaled so activations neither vanish nor explode through a deep net (He-style by the
fan-in of the consumer) and positive where the consumer needs it (BatchNormalization variances).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "reference_graphs"
STRIPPED = "tunerd:stripped"


def names() -> list[str]:
    """``NAME.EXPORTER`` of every skeleton, sorted."""
    return sorted(p.name[:-len(".onnx.gz")] for p in DATA.glob("*.onnx.gz"))


def load_skeleton(name: str):
    import onnx
    with gzip.open(DATA / f"{name}.onnx.gz", "rb") as f:
        return onnx.load_model_from_string(f.read())


def _roles(graph) -> dict[str, tuple[str, int]]:
    """Initializer name -> (op, input index) of its first consumer, looking through the Identity
    nodes the TorchScript exporter puts between a shared parameter and its users."""
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    roles = {}
    for node in graph.node:
        if node.op_type == "Identity":
            continue
        for k, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            roles.setdefault(name, (node.op_type, k))
    return roles


def _value(shape, role, rng) -> np.ndarray:
    op, k = role
    shape = tuple(int(d) for d in shape)

    def normal(std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if op == "BatchNormalization" and k in (1, 4):
        # scale and var: positive, around 1, so that deep nets stay in range
        return rng.uniform(0.5, 1.5, shape)
    if op == "LayerNormalization" and k == 1:
        return rng.uniform(0.5, 1.5, shape)
    if len(shape) >= 2:
        if op == "MatMul" and k == 1:
            fan_in = shape[-2]
        elif op == "Gemm":
            fan_in = shape[1] if k == 1 else shape[0]
        else:
            fan_in = int(np.prod(shape[1:]))
        return normal(np.sqrt(2.0 / max(1, fan_in)))
    return normal(0.1)


def materialise(name: str, out_dir: Path, seed: int = 0) -> Path:
    """The skeleton ``name`` with seeded random weights, saved as out_dir/NAME.onnx; returns its path."""
    import onnx
    from onnx import helper, numpy_helper
    model = load_skeleton(name)
    g = model.graph
    roles = _roles(g)
    rng = np.random.default_rng(seed)
    for t in g.initializer:
        if t.doc_string != STRIPPED:
            continue
        value = _value(t.dims, roles.get(t.name, ("", 0)), rng)
        filled = numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(t.data_type)), t.name)
        t.CopyFrom(filled)
    path = Path(out_dir) / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def ort_session(path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
