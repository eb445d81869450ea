"""FLOPs per node (a multiply-add counts 2): a formula for the ops tunerd knows, the element count
of the output for any other (what a memory-bound op does per element, roughly)."""
from __future__ import annotations

import numpy as np

from .binding import Shape
from .graph import Node

# Ops whose output is a view of their input (no compute, no buffer of their own).
VIEW_OPS = frozenset({"Flatten", "Reshape", "Unsqueeze", "Squeeze", "Dropout", "Identity"})


def node_flops(node: Node, in_shapes: list[Shape], out_shape: Shape) -> int:
    out = int(np.prod(out_shape, dtype=np.int64))
    op = node.op
    if op == "Conv":
        w = in_shapes[1]
        per_out = 2 * int(np.prod(w[1:], dtype=np.int64))
        return out * per_out + (out if len(node.inputs) > 2 and node.inputs[2] else 0)
    if op == "ConvTranspose":
        w = in_shapes[1]
        return 2 * int(np.prod(in_shapes[0], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64)) \
            + (out if len(node.inputs) > 2 and node.inputs[2] else 0)
    if op == "Gemm":
        k = in_shapes[0][0] if node.attrs.get("transA", 0) else in_shapes[0][1]
        return 2 * out * k + (out if len(node.inputs) > 2 and node.inputs[2] else 0)
    if op == "MatMul":
        return 2 * out * in_shapes[0][-1]
    if op in ("MaxPool", "AveragePool"):
        return out * int(np.prod(node.attrs["kernel_shape"]))
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return int(np.prod(in_shapes[0], dtype=np.int64))
    if op == "LRN":
        return out * (2 * int(node.attrs["size"]) + 4)
    if op in ("Softmax", "LogSoftmax"):
        return 4 * out
    if op == "BatchNormalization":
        return 2 * out
    if op.startswith("Reduce"):
        return int(np.prod(in_shapes[0], dtype=np.int64))
    if op == "LayerNormalization":
        return 6 * out
    if op in ("Erf", "Gelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh"):
        return 4 * out
    if op in VIEW_OPS:
        return 0
    return out
