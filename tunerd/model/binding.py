"""What binding a node to a kernel call needs (Binding) and what tunerd knows of an op (OpSpec)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .graph import Node

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Binding:
    """What a step needs at bind time."""
    node: Node
    in_slots: list[int]          # slot per activation input (weights are not slots)
    out_slot: int
    weights: list[np.ndarray | None]  # per node input: the constant array, or None for an activation
    in_shapes: list[Shape]
    out_shape: Shape
    workspace: np.ndarray | None


@dataclass(frozen=True)
class OpSpec:
    # output shapes from input shapes; None: onnx.shape_inference shapes it (ops in their ONNX form,
    # whose shapes follow from the values of constant inputs)
    infer: Callable[[Node, list[Shape]], list[Shape]] | None
    bind: Callable[[Binding], Callable[[list], None]]
    kind: str   # cost-model category
    const_inputs: tuple[int, ...] = ()   # inputs the kernel binds as constants (weights)
