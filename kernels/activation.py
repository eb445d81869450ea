"""Activations and unary math of modern CNN exports (ONNX semantics) over float32 arrays.

Each writes ``out`` (or a fresh array) and returns it; ``x`` and ``out`` may be the same array.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_f32, check_out

# NOTE: Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 in exact arithmetic), evaluated in float32:
# numpy has no erf and scipy is no dependency; tests/test_kernels.py measures it against math.erf
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(v) for v in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


def _unary(fn: str, x, out):
    check_f32(fn, "x", x)
    return check_out(fn, out, np.shape(x))


def tanh(x, out=None):
    return np.tanh(x, out=_unary("tanh", x, out))


def sqrt(x, out=None):
    return np.sqrt(x, out=_unary("sqrt", x, out))


def exp(x, out=None):
    return np.exp(x, out=_unary("exp", x, out))


def neg(x, out=None):
    return np.negative(x, out=_unary("neg", x, out))


def abs_(x, out=None):
    return np.absolute(x, out=_unary("abs_", x, out))


def erf(x, out=None):
    """The error function in float32 (Abramowitz & Stegun 7.1.26; see _ERF_A)."""
    out = _unary("erf", x, out)
    ax = np.abs(x)
    t = np.float32(1) / (np.float32(1) + _ERF_P * ax)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    np.multiply(ax, ax, out=ax)
    np.negative(ax, out=ax)
    np.exp(ax, out=ax)
    ax *= poly
    y = np.float32(1) - ax
    np.copysign(y, x, out=out)
    return out


def gelu(x, *, approximate="none", out=None):
    """ONNX Gelu: x/2 (1 + erf(x/sqrt 2)), or its tanh approximation."""
    out = _unary("gelu", x, out)
    if approximate == "tanh":
        inner = np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
        np.tanh(inner, out=inner)
    elif approximate == "none":
        inner = erf(x * np.float32(1 / np.sqrt(2)))
    else:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    inner += np.float32(1)
    inner *= np.float32(0.5)
    return np.multiply(x, inner, out=out)


def hard_sigmoid(x, *, alpha=0.2, beta=0.5, out=None):
    """ONNX HardSigmoid: max(0, min(1, alpha x + beta))."""
    out = _unary("hard_sigmoid", x, out)
    np.multiply(x, np.float32(alpha), out=out)
    out += np.float32(beta)
    return np.clip(out, 0.0, 1.0, out=out)


def hard_swish(x, out=None):
    """ONNX HardSwish: x * max(0, min(1, x/6 + 1/2))."""
    out = _unary("hard_swish", x, out)
    gate = np.multiply(x, np.float32(1 / 6))
    gate += np.float32(0.5)
    np.clip(gate, 0.0, 1.0, out=gate)
    return np.multiply(x, gate, out=out)


def silu(x, out=None):
    """x * sigmoid(x) (what PyTorch's SiLU exports as Sigmoid then Mul), in one pass of temporaries."""
    out = _unary("silu", x, out)
    gate = np.negative(x)
    with np.errstate(over="ignore", under="ignore"):
        np.exp(gate, out=gate)
    gate += np.float32(1)
    return np.divide(x, gate, out=out)


def leaky_relu(x, *, alpha=0.01, out=None):
    out = _unary("leaky_relu", x, out)
    neg = np.minimum(x, np.float32(0))
    np.maximum(x, np.float32(0), out=out)
    neg *= np.float32(alpha)
    out += neg
    return out


def prelu(x, slope, out=None):
    """ONNX PRelu: x where x >= 0, slope * x elsewhere (slope broadcast to x)."""
    out = _unary("prelu", x, out)
    check_f32("prelu", "slope", slope)
    neg = np.minimum(x, np.float32(0))
    np.maximum(x, np.float32(0), out=out)
    neg *= slope
    out += neg
    return out
