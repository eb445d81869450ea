"""The model IR: nodes in topological order over named tensors (NCHW float32).

Node semantics are ONNX's (of ``Graph.opset``), normalised at import: constants that ONNX passes as
inputs to Reshape, Clip, Squeeze and Unsqueeze are attributes here; other ops keep their ONNX form,
their constant inputs (axes, pads, scales) named entries of ``Graph.weights`` like the weights, which
``Node.inputs`` reference by name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _jsonable(self.attrs)}

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        return cls(d["name"], d["op"], list(d["inputs"]), list(d["outputs"]), dict(d.get("attrs", {})))


@dataclass
class Graph:
    name: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    nodes: list[Node]
    weights: dict[str, np.ndarray]
    # the ONNX opset the nodes' semantics are those of (13 for the zoo); the export writes it
    opset: int = 13

    def producers(self) -> dict[str, int]:
        """Tensor name -> index of the node producing it."""
        return {out: i for i, n in enumerate(self.nodes) for out in n.outputs}

    def consumers(self) -> dict[str, list[int]]:
        """Activation tensor name -> indices of the nodes reading it (weights excluded)."""
        uses: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for name in n.inputs:
                if name and name not in self.weights:
                    uses.setdefault(name, []).append(i)
        return uses

    def check_topological(self) -> None:
        known = {self.input_name} | set(self.weights)
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in known:
                    raise ModelError(f"node {node.name!r} ({node.op}) reads {name!r}, which no earlier node produces")
            known.update(node.outputs)
        if self.output_name not in known:
            raise ModelError(f"graph output {self.output_name!r} is never produced")

    def structure_dict(self) -> dict:
        return {"name": self.name, "input_name": self.input_name, "input_shape": list(self.input_shape),
                "output_name": self.output_name, "nodes": [n.to_dict() for n in self.nodes],
                "weights": {k: [list(v.shape), str(v.dtype)] for k, v in self.weights.items()},
                # NOTE: only when not 13, so the identity (content_hash) of earlier models stays
                **({"opset": self.opset} if self.opset != 13 else {})}

    def content_hash(self) -> str:
        """sha256 over the structure and every weight's bytes: the model's identity."""
        h = hashlib.sha256(json.dumps(self.structure_dict(), sort_keys=True).encode())
        for key in sorted(self.weights):
            h.update(key.encode())
            h.update(np.ascontiguousarray(self.weights[key]).tobytes())
        return h.hexdigest()


def fresh_name(base: str, taken) -> str:
    """``base``, with ``_`` appended until it is not in ``taken`` (node and tensor names must be unique)."""
    name = base
    while name in taken:
        name += "_"
    return name


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
