"""Numpy layer kernels over NCHW float32 arrays: pure functions, no I/O, no logging, no timing.

Every kernel producing a tensor takes ``out=`` (exact shape and dtype; written and returned);
kernels with scratch take ``workspace=`` (1-D float32, at least ``*_workspace_size`` elements).
Bad arguments raise ValueError naming the value.
"""
from .conv import conv2d, conv2d_workspace_size, conv_output_hw
from .dense import gemm, matmul
from .elementwise import add, clip, log_softmax, mul, relu, sigmoid, softmax, sum_
from .norm import batch_norm, fold_batch_norm, lrn
from .pool import (
    avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, pool_output_hw, pool_workspace_size,
)
from .shape import concat, flatten, identity, reshape, transpose

__all__ = [
    "add", "avg_pool2d", "batch_norm", "clip", "concat", "conv2d", "conv2d_workspace_size",
    "conv_output_hw", "flatten", "fold_batch_norm", "gemm", "global_avg_pool", "global_max_pool",
    "identity", "log_softmax", "lrn", "matmul", "max_pool2d", "mul", "pool_output_hw",
    "pool_workspace_size", "relu", "reshape", "sigmoid", "softmax", "sum_", "transpose",
]
