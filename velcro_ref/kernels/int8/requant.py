"""Requantization of int32 accumulators, QuantizeLinear and DequantizeLinear.

Every float32 step is rounded to float32 on its own (np.float32 around each operation), so the
result does not depend on whether Numba computes it in float32 or float64: a single +, *, / of
float32 operands computed in float64 and rounded once is the correctly rounded float32 result.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

REQUANT_ORT = 0  # quant.REQUANT_ORT
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# 1.5 * 2^23: adding it to a float32 of magnitude below 2^22 leaves no fraction bits, so the sum
# is rounded to an integer in the current mode (nearest, ties to even); subtracting it back is
# exact. Unlike np.rint (a call to the C library here) the two adds vectorise.
_ROUNDER = np.float32(12582912.0)


@njit(cache=True, inline="always")
def round_small(v):
    """round_half_even(v) of a float32 with |v| < 2^22, as a float32."""
    return np.float32(np.float32(v + _ROUNDER) - _ROUNDER)


@njit(cache=True, inline="always")
def srdhm(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul of two int32 values (as int64)."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    t = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return t >> 31 if t >= 0 else -((-t) >> 31)


@njit(cache=True, inline="always")
def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent, ties away from zero (exponent 0..31)."""
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if (x & mask) > threshold else 0)


@njit(cache=True, inline="always")
def requant_value(acc, k, rq):
    """Output value of accumulator acc (bias included) of output channel k under the Requant
    record rq: `ort` float32(acc) * scale[k], clamped (NaN, an accumulator of 0 times a scale
    of inf, to qmin, as MLAS's clamp takes it), rounded half to even, + zero point;
    `fixed_point` saturating left shift, SRDHM by multiplier[k], rounding right shift, + zero
    point, saturated."""
    zp = rq.zero_point
    if rq.mode == REQUANT_ORT:
        v = np.float32(np.float32(acc) * rq.scale[k])
        lo = np.float32(rq.qmin - zp)
        v = lo if v != v else min(max(v, lo), np.float32(rq.qmax - zp))  # NaN (0 * inf) to qmin
        return np.int64(round_small(v)) + zp
    s = np.int64(rq.shift[k])
    x = np.int64(acc)
    if s > 0:
        x = min(max(x << s, INT32_MIN), INT32_MAX)
    y = rounding_divide_by_pot(srdhm(x, np.int64(rq.multiplier[k])), max(-s, 0)) + zp
    return min(max(y, rq.qmin), rq.qmax)


@njit(cache=True)
def requantize(acc, rq, out):
    """Layout: acc (N, K, P) int32 accumulators (bias included), out (N, K, P) uint8/int8;
    loop (n, k), then p."""
    n_n, k_n, p_n = acc.shape
    for item in range(n_n * k_n):
        n, k = item // k_n, item % k_n
        for p in range(p_n):
            out[n, k, p] = requant_value(np.int64(acc[n, k, p]), k, rq)


@njit(cache=True)
def quantize_linear(x, scale, zero_point, qmin, qmax, out):
    """Layout: x (E,) float32, out (E,) uint8/int8 (flat views); out = saturate(rint(x / scale)
    + zero_point), the division in float32, NaN to qmin (MLAS clamps with MAXPS, which returns
    the bound for a NaN)."""
    lo, hi = np.float32(qmin - zero_point), np.float32(qmax - zero_point)
    s = np.float32(scale)
    for i in range(x.size):
        v = np.float32(x[i] / s)
        v = lo if v != v else min(max(v, lo), hi)
        out[i] = np.int64(round_small(v)) + zero_point


@njit(cache=True)
def dequantize_linear(q, scale, zero_point, out):
    """Layout: q (E,) uint8/int8, out (E,) float32 (flat views); out = float32(q - zp) * scale."""
    s = np.float32(scale)
    for i in range(q.size):
        out[i] = np.float32(np.float32(np.int64(q[i]) - zero_point) * s)
