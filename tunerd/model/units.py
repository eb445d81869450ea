"""Units: the tuner's grain. A unit is a run of consecutive nodes between two allowed cut points.

A cut point after node i is allowed when exactly one activation tensor is alive across it (produced
at or before i, read after i); then a pipeline stage boundary there hands over one tensor. Between
allowed cuts we keep only those that leave at least one heavy op (Conv, ConvTranspose, Gemm, MatMul)
in every unit, so light layers (ReLU, pooling, LRN, softmax) ride with the heavy layer before them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops
from .flops import node_flops
from .graph import Graph

FLOAT_BYTES = 4


@dataclass(frozen=True)
class LayerInfo:
    """What the cost model may know of one node: descriptors only, no timing."""
    name: str
    op: str
    kind: str
    flops: int
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    weight_bytes: int
    attrs: dict = field(default_factory=dict, compare=False)

    @property
    def bytes_moved(self) -> int:
        acts = sum(int(np.prod(s)) for s in self.in_shapes) * FLOAT_BYTES
        return acts + int(np.prod(self.out_shape)) * FLOAT_BYTES


@dataclass(frozen=True)
class Unit:
    index: int
    first: int                 # index of the first node
    last: int                  # index of the last node (inclusive)
    input: str                 # the one tensor entering the unit
    output: str                # the one tensor leaving it (crossing the cut after it)
    nodes: tuple[str, ...]
    flops: int
    weight_bytes: int
    in_bytes: int
    out_bytes: int
    layers: tuple[LayerInfo, ...]

    @property
    def first_node(self) -> str:
        return self.nodes[0]

    @property
    def last_node(self) -> str:
        return self.nodes[-1]

    def to_dict(self) -> dict:
        return {"index": self.index, "first_node": self.first_node, "last_node": self.last_node,
                "nodes": list(self.nodes), "flops": self.flops, "weight_bytes": self.weight_bytes,
                "in_bytes": self.in_bytes, "out_bytes": self.out_bytes}


def layer_infos(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> list[LayerInfo]:
    infos = []
    for node in graph.nodes:
        in_names = [i for i in node.inputs if i]
        act_shapes = tuple(shapes[i] for i in in_names if i not in graph.weights)
        all_shapes = [shapes[i] for i in in_names]
        wbytes = sum(graph.weights[i].nbytes for i in in_names if i in graph.weights)
        out = shapes[node.outputs[0]]
        infos.append(LayerInfo(node.name, node.op, ops.kind(node.op),
                               int(node_flops(node, all_shapes, out)), act_shapes, out, int(wbytes),
                               ops.describe_attrs(node)))
    return infos


def live_across_cuts(graph: Graph) -> list[set[str]]:
    """For each node i, the activation tensors alive across the cut right after it."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and name not in graph.weights:
                last_use[name] = i
    last_use[graph.output_name] = len(graph.nodes)
    born = {graph.input_name: -1}
    for i, node in enumerate(graph.nodes):
        for o in node.outputs:
            born[o] = i
    live = []
    for i in range(len(graph.nodes)):
        live.append({t for t, b in born.items() if b <= i < last_use.get(t, -2)})
    return live


def split_units(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> list[Unit]:
    infos = layer_infos(graph, shapes)
    live = live_across_cuts(graph)
    n = len(graph.nodes)
    clean = [i for i in range(n - 1) if len(live[i]) == 1]
    # segments between clean cuts
    bounds, start = [], 0
    for c in clean + [n - 1]:
        bounds.append((start, c))
        start = c + 1
    # merge segments without a heavy op into the one before (or after, for a leading one)
    merged: list[list[int]] = []
    for first, last in bounds:
        heavy = any(graph.nodes[j].op in ops.HEAVY_OPS for j in range(first, last + 1))
        if merged and (not heavy or not merged[-1][2]):
            merged[-1][1] = last
            merged[-1][2] = merged[-1][2] or heavy
        else:
            merged.append([first, last, heavy])
    units = []
    for index, (first, last, _) in enumerate(merged):
        entering = graph.input_name if first == 0 else next(iter(live[first - 1]))
        leaving = graph.output_name if last == n - 1 else next(iter(live[last]))
        layers = tuple(infos[first:last + 1])
        units.append(Unit(
            index=index, first=first, last=last, input=entering, output=leaving,
            nodes=tuple(graph.nodes[j].name for j in range(first, last + 1)),
            flops=sum(li.flops for li in layers), weight_bytes=sum(li.weight_bytes for li in layers),
            in_bytes=int(np.prod(shapes[entering])) * FLOAT_BYTES,
            out_bytes=int(np.prod(shapes[leaving])) * FLOAT_BYTES, layers=layers))
    return units
