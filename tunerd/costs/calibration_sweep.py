"""The calibration sweep: the synthetic layers timed on every cluster and core count, and how each
is built.

A sweep layer is a one-layer model built with :class:`tunerd.model.builder.GraphBuilder` and run
through the same load-time passes and :class:`tunerd.model.plan.ExecutionPlan` as real models, so its
time is what that layer costs inside a network. The measuring child builds them to time them, the fit
to count their features (:mod:`tunerd.costs.calibration_fit`).
"""
from __future__ import annotations

from typing import Sequence

# (op, params). conv: (in ch, out ch, H=W, kernel, stride, group); fc: (in, out); pool/lrn/
# elementwise/concat: (channels, H=W, ...). Sizes span the zoo models' layers at 224x224.
FULL_SWEEP: list[tuple[str, tuple]] = [
    # 1x1 convs: small and large channel counts, big and small planes
    ("conv", (16, 64, 56, 1, 1, 1)), ("conv", (64, 16, 56, 1, 1, 1)), ("conv", (64, 256, 56, 1, 1, 1)),
    ("conv", (256, 64, 56, 1, 1, 1)), ("conv", (192, 64, 28, 1, 1, 1)), ("conv", (256, 32, 28, 1, 1, 1)),
    ("conv", (128, 512, 28, 1, 1, 1)), ("conv", (512, 128, 28, 1, 1, 1)), ("conv", (480, 16, 14, 1, 1, 1)),
    ("conv", (512, 512, 14, 1, 1, 1)), ("conv", (1024, 256, 14, 1, 1, 1)), ("conv", (832, 384, 7, 1, 1, 1)),
    ("conv", (1024, 1024, 7, 1, 1, 1)), ("conv", (2048, 512, 7, 1, 1, 1)), ("conv", (32, 64, 112, 1, 1, 1)),
    ("conv", (512, 1000, 13, 1, 1, 1)), ("conv", (256, 512, 28, 1, 2, 1)),
    # kxk convs
    ("conv", (3, 64, 224, 3, 2, 1)), ("conv", (3, 64, 224, 7, 2, 1)), ("conv", (3, 96, 224, 11, 4, 1)),
    ("conv", (16, 64, 56, 3, 1, 1)), ("conv", (64, 64, 56, 3, 1, 1)), ("conv", (64, 192, 56, 3, 1, 1)),
    ("conv", (96, 128, 28, 3, 1, 1)), ("conv", (128, 128, 28, 3, 1, 1)), ("conv", (128, 128, 56, 3, 2, 1)),
    ("conv", (256, 256, 14, 3, 1, 1)), ("conv", (384, 384, 13, 3, 1, 2)), ("conv", (512, 512, 7, 3, 1, 1)),
    ("conv", (48, 192, 13, 3, 1, 1)), ("conv", (16, 32, 28, 5, 1, 1)), ("conv", (32, 128, 7, 5, 1, 1)),
    ("conv", (96, 256, 27, 5, 1, 2)),
    # depthwise
    ("conv", (32, 32, 112, 3, 1, 32)), ("conv", (64, 64, 112, 3, 2, 64)), ("conv", (128, 128, 56, 3, 1, 128)),
    ("conv", (256, 256, 28, 3, 1, 256)), ("conv", (512, 512, 14, 3, 1, 512)), ("conv", (1024, 1024, 7, 3, 1, 1024)),
    # fully connected (batch 1: matrix-vector, bandwidth-bound when the weights are big)
    ("fc", (1024, 1000)), ("fc", (2048, 1000)), ("fc", (4096, 1000)), ("fc", (4096, 4096)), ("fc", (9216, 4096)),
    # pooling
    ("maxpool", (64, 112, 3, 2)), ("maxpool", (192, 56, 3, 2)), ("maxpool", (256, 27, 3, 2)),
    ("maxpool", (480, 28, 3, 1)), ("maxpool", (832, 14, 3, 1)), ("gap", (1024, 7)), ("gap", (2048, 7)),
    ("gap", (1000, 13)),
    # LRN
    ("lrn", (64, 56)), ("lrn", (96, 55)), ("lrn", (192, 56)), ("lrn", (256, 27)),
    # elementwise
    ("relu", (256, 56)), ("relu", (1024, 14)), ("add", (256, 56)), ("add", (512, 28)), ("add", (2048, 7)),
    ("softmax", (1000,)),
    # concat
    ("concat", (64, 56, 2)), ("concat", (128, 28, 4)), ("concat", (256, 14, 4)), ("concat", (128, 7, 4)),
]

QUICK_SWEEP: list[tuple[str, tuple]] = [
    ("conv", (16, 64, 28, 1, 1, 1)), ("conv", (128, 128, 14, 1, 1, 1)), ("conv", (256, 256, 7, 1, 1, 1)),
    ("conv", (3, 32, 56, 3, 2, 1)), ("conv", (32, 64, 28, 3, 1, 1)), ("conv", (64, 64, 14, 3, 1, 1)),
    ("conv", (16, 32, 14, 5, 1, 1)),
    ("conv", (64, 64, 28, 3, 1, 64)), ("conv", (256, 256, 7, 3, 1, 256)),
    ("fc", (1024, 1000)), ("fc", (2048, 512)),
    ("maxpool", (64, 28, 3, 2)), ("gap", (512, 7)), ("lrn", (64, 28)),
    ("relu", (128, 28)), ("add", (128, 28)), ("concat", (64, 14, 2)),
]


def build_layer(op: str, params: Sequence[int]):
    """A one-layer model for the sweep (built, optimised and split like a real one)."""
    from ..model import passes
    from ..model.builder import GraphBuilder
    from ..model.loader import Model
    p = tuple(int(v) for v in params)
    name = f"{op}_{'x'.join(map(str, p))}"
    if op == "conv":
        cin, cout, hw, k, s, g = p
        b = GraphBuilder(name, (1, cin, hw, hw))
        out = b.conv(b.input, cout, k, stride=s, group=g, name="conv")
    elif op == "fc":
        b = GraphBuilder(name, (1, p[0]))
        out = b.fc(b.input, p[1], act="relu", name="fc")
    else:
        shape = (1, p[0]) if op == "softmax" else (1, p[0], p[1], p[1])
        b = GraphBuilder(name, shape)
        x = b.input
        if op == "maxpool":
            k, s = p[2], p[3]
            out = b.max_pool(x, k, s, pad=(k - 1) // 2 if s == 1 else 0, name="pool")
        elif op == "gap":
            out = b.global_avg_pool(x, name="gap")
        elif op == "lrn":
            out = b.lrn(x, name="lrn")
        elif op == "relu":
            out = b.relu(x, name="relu")
        elif op == "add":
            out = b.add(x, x, name="add")
        elif op == "softmax":
            out = b.softmax(x, name="softmax")
        elif op == "concat":
            out = b.concat([x] * p[2], name="concat")
        else:
            raise ValueError(f"unknown sweep op {op!r}")
    graph = passes.optimize(b.finish(out))
    return Model(graph, source=f"sweep:{name}")
