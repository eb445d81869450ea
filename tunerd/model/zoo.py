"""Built-in networks (the seeds' five), with deterministic weights (fixed seed, He-style init).

- alexnet: BVLC AlexNet (grouped conv2/4/5, LRN), as in Caffe and ONNX's bvlc_alexnet.
- googlenet: Inception v1 (BVLC GoogLeNet, ceil-mode pools, LRN), without auxiliary heads.
- mobilenet: MobileNet v1, width 1.0, BN + ReLU6 after every conv (BN folded at load time).
- resnet50: ResNet-50 v1.5 (stride in the 3x3 conv of each downsampling bottleneck), BN folded.
- squeezenet: SqueezeNet 1.1 (3x3 conv1 with 64 filters, as ONNX's light squeezenet).

All run at 224x224 by default; ``input_size`` shrinks the input (any size that keeps every layer's
output non-empty; final average pools are global, so the classifier adapts).
"""
from __future__ import annotations

from typing import Callable

from .builder import GraphBuilder
from ..errors import ModelError
from .graph import Graph

NUM_CLASSES = 1000
DEFAULT_SIZE = 224


def alexnet(b: GraphBuilder) -> str:
    x = b.conv(b.input, 96, 11, stride=4, pad=2, name="conv1")
    x = b.max_pool(b.lrn(x, name="norm1"), 3, 2, name="pool1")
    x = b.conv(x, 256, 5, pad=2, group=2, name="conv2")
    x = b.max_pool(b.lrn(x, name="norm2"), 3, 2, name="pool2")
    x = b.conv(x, 384, 3, name="conv3")
    x = b.conv(x, 384, 3, group=2, name="conv4")
    x = b.conv(x, 256, 3, group=2, name="conv5")
    x = b.max_pool(x, 3, 2, name="pool5")
    x = b.dropout(b.fc(x, 4096, act="relu", name="fc6"), name="drop6")
    x = b.dropout(b.fc(x, 4096, act="relu", name="fc7"), name="drop7")
    return b.softmax(b.fc(x, NUM_CLASSES, name="fc8", gain=1.0))


def _inception(b: GraphBuilder, x: str, name: str, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> str:
    b1 = b.conv(x, c1, 1, name=f"{name}/1x1")
    b2 = b.conv(b.conv(x, r3, 1, name=f"{name}/3x3_reduce"), c3, 3, name=f"{name}/3x3")
    b3 = b.conv(b.conv(x, r5, 1, name=f"{name}/5x5_reduce"), c5, 5, name=f"{name}/5x5")
    b4 = b.conv(b.max_pool(x, 3, 1, pad=1, name=f"{name}/pool"), pp, 1, name=f"{name}/pool_proj")
    return b.concat([b1, b2, b3, b4], name=f"{name}/output")


def googlenet(b: GraphBuilder) -> str:
    x = b.conv(b.input, 64, 7, stride=2, pad=3, name="conv1/7x7_s2")
    x = b.lrn(b.max_pool(x, 3, 2, ceil=True, name="pool1/3x3_s2"), name="pool1/norm1")
    x = b.conv(x, 64, 1, name="conv2/3x3_reduce")
    x = b.conv(x, 192, 3, name="conv2/3x3")
    x = b.max_pool(b.lrn(x, name="conv2/norm2"), 3, 2, ceil=True, name="pool2/3x3_s2")
    x = _inception(b, x, "inception_3a", 64, 96, 128, 16, 32, 32)
    x = _inception(b, x, "inception_3b", 128, 128, 192, 32, 96, 64)
    x = b.max_pool(x, 3, 2, ceil=True, name="pool3/3x3_s2")
    for name, cfg in (("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
                      ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
                      ("4e", (256, 160, 320, 32, 128, 128))):
        x = _inception(b, x, f"inception_{name}", *cfg)
    x = b.max_pool(x, 3, 2, ceil=True, name="pool4/3x3_s2")
    x = _inception(b, x, "inception_5a", 256, 160, 320, 32, 128, 128)
    x = _inception(b, x, "inception_5b", 384, 192, 384, 48, 128, 128)
    x = b.dropout(b.global_avg_pool(x, name="pool5/7x7_s1"), name="pool5/drop")
    return b.softmax(b.fc(x, NUM_CLASSES, name="loss3/classifier", gain=1.0))


def mobilenet(b: GraphBuilder) -> str:
    x = b.conv(b.input, 32, 3, stride=2, bias=False, bn=True, act="relu6", name="conv0")
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (out_ch, stride) in enumerate(blocks, start=1):
        ch = b.shape(x)[1]
        x = b.conv(x, ch, 3, stride=stride, group=ch, bias=False, bn=True, act="relu6", name=f"conv{i}_dw")
        x = b.conv(x, out_ch, 1, bias=False, bn=True, act="relu6", name=f"conv{i}_pw")
    x = b.global_avg_pool(x, name="pool")
    # NOTE: random 3x3 depthwise filters shrink the signal on small late feature maps (most taps
    # read padding), so the classifier gets a larger gain to keep the softmax informative.
    return b.softmax(b.fc(x, NUM_CLASSES, name="fc", gain=30.0))


def _bottleneck(b: GraphBuilder, x: str, name: str, width: int, stride: int) -> str:
    out_ch = width * 4
    y = b.conv(x, width, 1, bias=False, bn=True, name=f"{name}_a")
    y = b.conv(y, width, 3, stride=stride, bias=False, bn=True, name=f"{name}_b")
    # NOTE: a small last-BN gamma keeps the residual sum's variance bounded over 16 random blocks
    y = b.conv(y, out_ch, 1, bias=False, bn=True, act=None, name=f"{name}_c", bn_gamma=0.3)
    if stride != 1 or b.shape(x)[1] != out_ch:
        x = b.conv(x, out_ch, 1, stride=stride, bias=False, bn=True, act=None, name=f"{name}_proj")
    return b.relu(b.add(y, x, name=f"{name}_sum"), name=f"{name}_relu")


def resnet50(b: GraphBuilder) -> str:
    x = b.conv(b.input, 64, 7, stride=2, pad=3, bias=False, bn=True, name="conv1")
    x = b.max_pool(x, 3, 2, pad=1, name="pool1")
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=2):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 2 else 1
            x = _bottleneck(b, x, f"res{stage}{'abcdef'[i]}", width, stride)
    x = b.global_avg_pool(x, name="pool5")
    return b.softmax(b.fc(x, NUM_CLASSES, name="fc1000", gain=1.0))


def _fire(b: GraphBuilder, x: str, name: str, squeeze: int, expand: int) -> str:
    s = b.conv(x, squeeze, 1, name=f"{name}/squeeze1x1")
    e1 = b.conv(s, expand, 1, name=f"{name}/expand1x1")
    e3 = b.conv(s, expand, 3, name=f"{name}/expand3x3")
    return b.concat([e1, e3], name=f"{name}/concat")


def squeezenet(b: GraphBuilder) -> str:
    x = b.conv(b.input, 64, 3, stride=2, pad=0, name="conv1")
    x = b.max_pool(x, 3, 2, ceil=True, name="pool1")
    x = _fire(b, x, "fire2", 16, 64)
    x = _fire(b, x, "fire3", 16, 64)
    x = b.max_pool(x, 3, 2, ceil=True, name="pool3")
    x = _fire(b, x, "fire4", 32, 128)
    x = _fire(b, x, "fire5", 32, 128)
    x = b.max_pool(x, 3, 2, ceil=True, name="pool5")
    for i, (sq, ex) in enumerate(((48, 192), (48, 192), (64, 256), (64, 256)), start=6):
        x = _fire(b, x, f"fire{i}", sq, ex)
    x = b.dropout(x, name="drop9")
    x = b.conv(x, NUM_CLASSES, 1, name="conv10")
    x = b.op("Flatten", [b.global_avg_pool(x, name="pool10")], "pool10_flat", axis=1)
    return b.softmax(x)


NETWORKS: dict[str, Callable[[GraphBuilder], str]] = {
    "alexnet": alexnet, "googlenet": googlenet, "mobilenet": mobilenet,
    "resnet50": resnet50, "squeezenet": squeezenet,
}


def build(name: str, *, input_size: int | None = None, seed: int = 0) -> Graph:
    if name not in NETWORKS:
        raise ModelError(f"unknown zoo model {name!r}; choose one of: {', '.join(sorted(NETWORKS))}")
    size = DEFAULT_SIZE if input_size is None else int(input_size)
    b = GraphBuilder(name, (1, 3, size, size), seed=seed)
    try:
        out = NETWORKS[name](b)
    except ModelError as err:
        raise ModelError(f"zoo:{name} cannot be built at input size {size}: {err}") from err
    return b.finish(out)
