"""Numpy layer kernels over NCHW float32 arrays: pure functions, no I/O, no logging, no timing.

Every kernel producing a tensor takes ``out=`` (exact shape and dtype; written and returned);
kernels with scratch take ``workspace=`` (1-D float32, at least ``*_workspace_size`` elements).
Bad arguments raise ValueError naming the value.
"""
from .activation import (
    abs_, erf, exp, gelu, hard_sigmoid, hard_swish, leaky_relu, neg, prelu, silu, sqrt, tanh,
)
from .conv import conv2d, conv2d_workspace_size, conv_output_hw
from .conv_transpose import conv_transpose2d, conv_transpose_output_hw
from .dense import gemm, matmul, matmul_shape
from .elementwise import add, clip, div, log_softmax, max_, min_, mul, pow_, relu, sigmoid, softmax, sub, sum_
from .norm import batch_norm, fold_batch_norm, layer_norm, lrn
from .pool import (
    avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, pool_output_hw, pool_workspace_size,
)
from .reduce import reduce, reduce_axes
from .resize import resize2d, resize_axis
from .shape import concat, expand, flatten, gather, identity, pad, reshape, slice_, slice_index, transpose

__all__ = [
    "abs_", "add", "avg_pool2d", "batch_norm", "clip", "concat", "conv2d", "conv2d_workspace_size",
    "conv_output_hw", "conv_transpose2d", "conv_transpose_output_hw", "div", "erf", "exp", "expand", "flatten", "fold_batch_norm", "gather", "gelu", "gemm",
    "global_avg_pool", "global_max_pool", "hard_sigmoid", "hard_swish", "identity", "layer_norm",
    "leaky_relu", "log_softmax", "lrn", "matmul", "matmul_shape", "max_", "max_pool2d", "min_", "mul", "neg", "pad",
    "pool_output_hw", "pool_workspace_size", "pow_", "prelu", "reduce", "reduce_axes", "relu", "reshape", "resize2d", "resize_axis",
    "sigmoid", "silu", "slice_", "slice_index", "softmax", "sqrt", "sub", "sum_", "tanh", "transpose",
]
