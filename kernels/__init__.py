"""Numpy layer kernels over NCHW float32 arrays: pure functions, no I/O."""
from .conv import conv2d, conv2d_workspace_size, conv_output_hw
