"""GraphBuilder: write a CNN layer by layer in the IR, with deterministic He-style weights.

Layers are emitted as the plain ops an ONNX exporter would write (Conv, BatchNormalization, Relu,
Clip, ...), so the load-time passes fold and fuse them exactly as they do for imported graphs.
"""
from __future__ import annotations

import numpy as np

from . import ops
from ..errors import ModelError
from .graph import Graph, Node


class GraphBuilder:
    def __init__(self, name: str, input_shape: tuple[int, ...], *, seed: int = 0, input_name: str = "data"):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.input_name = input_name
        self.input_shape = tuple(input_shape)
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {input_name: self.input_shape}
        self._count = 0

    @property
    def input(self) -> str:
        return self.input_name

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.shapes[tensor]

    # ------------------------------------------------------------------ plumbing
    def _fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}" if base in self.shapes or base in self.weights else base

    def _weight(self, name: str, value: np.ndarray) -> str:
        name = self._fresh(name)
        self.weights[name] = np.ascontiguousarray(value, dtype=np.float32)
        self.shapes[name] = tuple(value.shape)
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        name = self._fresh(name)
        node = Node(name, op, list(inputs), [name], attrs)
        in_shapes = [self.shapes[i] for i in inputs if i]
        try:
            shape = tuple(ops.OPS[op].infer(node, in_shapes)[0])
        except ValueError as err:
            raise ModelError(f"layer {name!r} ({op}) on input {in_shapes[0]}: {err} (input too small?)") from err
        if any(d <= 0 for d in shape):
            raise ModelError(f"layer {name!r} ({op}) on input {in_shapes[0]} gives an empty output (input too small?)")
        self.shapes[name] = shape
        self.nodes.append(node)
        return name

    # ------------------------------------------------------------------ layers
    def conv(self, x: str, out_ch: int, kernel: int, *, stride: int = 1, pad: int | None = None,
             group: int = 1, bias: bool = True, bn: bool = False, act: str | None = "relu",
             name: str = "conv", bn_gamma: float = 1.0) -> str:
        in_ch = self.shapes[x][1]
        pad = kernel // 2 if pad is None else pad
        fan_in = in_ch // group * kernel * kernel
        w = self.rng.standard_normal((out_ch, in_ch // group, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        inputs = [x, self._weight(f"{name}_w", w)]
        if bias and not bn:
            inputs.append(self._weight(f"{name}_b", self.rng.standard_normal(out_ch) * 0.01))
        y = self.op("Conv", inputs, name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                    pads=[pad] * 4, dilations=[1, 1], group=group)
        if bn:
            y = self.batch_norm(y, name=f"{name}_bn", gamma=bn_gamma)
        return self.activation(y, act, name)

    def batch_norm(self, x: str, *, name: str, gamma: float = 1.0) -> str:
        c = self.shapes[x][1]
        r = self.rng
        params = [gamma * r.uniform(0.8, 1.2, c), r.standard_normal(c) * 0.05,
                  r.standard_normal(c) * 0.05, r.uniform(0.8, 1.2, c)]
        names = [self._weight(f"{name}_{k}", v) for k, v in zip(("scale", "bias", "mean", "var"), params)]
        return self.op("BatchNormalization", [x, *names], name, epsilon=1e-5)

    def activation(self, x: str, act: str | None, name: str) -> str:
        if act is None:
            return x
        if act == "relu":
            return self.op("Relu", [x], f"{name}_relu")
        if act == "relu6":
            return self.op("Clip", [x], f"{name}_relu6", min=0.0, max=6.0)
        raise ValueError(f"unknown activation {act!r}")

    def fc(self, x: str, out_features: int, *, act: str | None = None, name: str = "fc", gain: float = 2.0) -> str:
        shape = self.shapes[x]
        if len(shape) != 2:
            x = self.op("Flatten", [x], f"{name}_flatten", axis=1)
        k = self.shapes[x][1]
        w = self.rng.standard_normal((out_features, k)) * np.sqrt(gain / k)
        b = self.rng.standard_normal(out_features) * 0.01
        y = self.op("Gemm", [x, self._weight(f"{name}_w", w), self._weight(f"{name}_b", b)], name,
                    alpha=1.0, beta=1.0, transA=0, transB=1)
        return self.activation(y, act, name)

    def max_pool(self, x: str, kernel: int, stride: int, *, pad: int = 0, ceil: bool = False, name: str = "pool") -> str:
        return self.op("MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4, ceil_mode=int(ceil))

    def global_avg_pool(self, x: str, *, name: str = "gap") -> str:
        return self.op("GlobalAveragePool", [x], name)

    def lrn(self, x: str, *, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, name: str = "lrn") -> str:
        return self.op("LRN", [x], name, size=size, alpha=alpha, beta=beta, bias=1.0)

    def concat(self, xs: list[str], *, name: str = "concat") -> str:
        return self.op("Concat", xs, name, axis=1)

    def add(self, a: str, b: str, *, name: str = "add") -> str:
        return self.op("Add", [a, b], name)

    def relu(self, x: str, *, name: str = "relu") -> str:
        return self.op("Relu", [x], name)

    def dropout(self, x: str, *, name: str = "dropout") -> str:
        return self.op("Dropout", [x], name, ratio=0.5)

    def softmax(self, x: str, *, name: str = "prob") -> str:
        return self.op("Softmax", [x], name, axis=-1)

    def finish(self, output: str) -> Graph:
        return Graph(self.name, self.input_name, self.input_shape, output, list(self.nodes), dict(self.weights))
