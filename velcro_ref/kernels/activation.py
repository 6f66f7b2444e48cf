"""Element-wise activation kernels beyond a clamp: SiLU and hard swish, over a whole batch or
only at a masked site's unmasked elements. Both compute each element on its own (no sums), so
every path gives the same bits. And softmax over the class axis.

Layout: x, out (N, E) a batch of flattened tensors; mask (E,) bool. Loop order (image, run of
PART elements) items in parallel, then elements.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import njit
from .overwrite import PART

# ONNX HardSwish: alpha = 1/6 (float32 nearest, from its bits: a conversion at import would round in
# the process's rounding mode, and the kernels' cache keep it), beta = 0.5
SIXTH = np.uint32(0x3E2AAAAB).view(np.float32)
SILU, HARDSWISH = 0, 1  # the function `_unmasked` computes


@njit(cache=True)
def silu_value(v):
    """x * sigmoid(x) = x / (1 + exp(-x)), in float64, rounded once to float32."""
    d = np.float64(v)
    return np.float32(d / (1.0 + math.exp(-d)))


@njit(cache=True)
def hardswish_value(v):
    """x * clamp(x / 6 + 1/2, 0, 1) in float32: the multiply by 1/6 and the add rounded as written."""
    t = v * SIXTH + np.float32(0.5)
    t = np.float32(0.0) if t <= np.float32(0.0) else t
    t = np.float32(1.0) if t > np.float32(1.0) else t
    return v * t


@njit(cache=True)
def _value(v, fn):
    return silu_value(v) if fn == SILU else hardswish_value(v)


@njit(cache=True, parallel=True)
def _unmasked(x, mask, out, fn):
    """out = function fn (SILU, HARDSWISH) of x where not mask (every element if mask is empty)."""
    n_parts = (x.shape[1] + PART - 1) // PART
    for item in prange(x.shape[0] * n_parts):
        n, e0 = item // n_parts, item % n_parts * PART
        for e in range(e0, min(e0 + PART, x.shape[1])):
            if mask.size == 0 or not mask[e]:
                out[n, e] = _value(x[n, e], fn)


@njit(cache=True)
def silu(x, mask, out):
    """out = silu(x) where not mask (every element if mask is empty); masked elements keep out."""
    _unmasked(x, mask, out, SILU)


@njit(cache=True)
def hardswish(x, mask, out):
    """out = hardswish(x) where not mask (every element if mask is empty); masked elements keep out."""
    _unmasked(x, mask, out, HARDSWISH)


@njit(cache=True, parallel=True)
def softmax(x, out):
    """Softmax over axis 1 of x (N, C, R) float32 into out, for each (image, r): z = x - the max
    over c (NaN if one is), e = exp(z) in float64 rounded once to float32 (as `silu_value`: the
    C library's exp, where NumPy's float32 exp is an approximation that depends on the CPU), the
    e summed in float64 in c order and rounded once to float32, each e divided by that sum.
    Loop order (image, r) items in parallel, then c."""
    n, c, r = x.shape
    for item in prange(n * r):
        i, k = item // r, item % r
        top = x[i, 0, k]
        for j in range(1, c):
            v = x[i, j, k]
            if v > top or v != v:
                top = v
        total = 0.0
        for j in range(c):
            e = np.float32(math.exp(np.float64(x[i, j, k] - top)))
            out[i, j, k] = e
            total += e
        s = np.float32(total)
        for j in range(c):
            out[i, j, k] = out[i, j, k] / s
