"""Quantization arithmetic, as onnxruntime computes it: parameters from a calibrated range,
QuantizeLinear and DequantizeLinear, int8 weights and int32 biases, and the two ways to
requantize an int32 accumulator (`ort`: float32 multiply; `fixed_point`: int32 multiplier and
shift, gemmlowp/TFLite style). Plain NumPy; the kernels in kernels/int8 use the same rules.

A quantized tensor holds q with real = (q - zero_point) * scale. The facts each function follows
(onnxruntime 1.32's quantization tool and CPU kernels, TFLite's QuantizeMultiplier) are listed
in docs/int8.md.
"""

from __future__ import annotations

import numpy as np

QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
# Symmetric int8 (weights, and activations with ActivationSymmetric) leaves out -128.
SYMMETRIC_INT8 = (-127, 127)
REQUANT_MODES = ("ort", "fixed_point")
REQUANT_ORT, REQUANT_FIXED_POINT = 0, 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# onnxruntime raises a weight scale whose bias scale (x_scale * w_scale) would not fit the bias
# in int32, to this margin above the smallest scale that does.
BIAS_SCALE_MARGIN = 1.0001


def qrange(dtype) -> tuple[int, int]:
    """(qmin, qmax) of "uint8" or "int8" (a NumPy dtype is accepted). Raises ValueError."""
    name = np.dtype(dtype).name
    if name not in QRANGE:
        raise ValueError(f"quantized type must be uint8 or int8, got {name}")
    return QRANGE[name]


def scale_zero_point(rmin, rmax, dtype="uint8", symmetric=False):
    """Scale and zero point of a range, as onnxruntime's compute_scale_zp (quant_utils.py).

    rmin, rmax: float32 (scalars, or arrays for one range per channel). The range is widened to
    hold 0; symmetric makes it [-m, m] with m = max(|rmin|, |rmax|) and, for int8, the quantized
    range [-127, 127]. scale = (rmax - rmin) / (qmax - qmin) in float64, stored as float32;
    zero_point = round_half_even(qmin - rmin / scale) with that float64 scale, or the middle of
    the quantized range when symmetric (0 for int8, 128 for uint8). A float64 scale below the
    smallest normal float32 gives scale 1 and zero point 0.
    Returns (scale float32, zero_point int32), shaped like rmin.
    """
    qmin, qmax = qrange(dtype)
    lo = np.minimum(np.asarray(rmin, np.float32), np.float32(0))
    hi = np.maximum(np.asarray(rmax, np.float32), np.float32(0))
    if symmetric:
        if np.dtype(dtype) == np.int8:
            qmin, qmax = SYMMETRIC_INT8
        m = np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = -m, m
    scale = (hi.astype(np.float64) - lo.astype(np.float64)) / np.float64(qmax - qmin)
    tiny = scale < np.finfo(np.float32).tiny
    scale = np.where(tiny, 1.0, scale)
    if symmetric:
        zp = np.full(scale.shape, np.round((qmin + qmax) / 2.0))
    else:
        zp = np.round(np.float64(qmin) - lo.astype(np.float64) / scale)
    return scale.astype(np.float32), np.where(tiny, 0, zp).astype(np.int32)


def weight_scale(w, per_channel=False, axis=0):
    """The float32 scale of symmetric int8 weights (zero point 0, values in [-127, 127]): one
    per tensor, or one per slice along `axis` (the output channels of a conv weight (K, C, kh,
    kw) and of a Gemm weight (O, F) with transB = 1)."""
    w = np.asarray(w, np.float32)
    if per_channel:
        others = tuple(i for i in range(w.ndim) if i != axis)
        return scale_zero_point(w.min(axis=others), w.max(axis=others), "int8", symmetric=True)[0]
    return scale_zero_point(w.min(), w.max(), "int8", symmetric=True)[0]


def along_axis(scale, ndim, axis):
    """A per-channel scale shaped to broadcast along `axis` of an ndim array."""
    s = np.asarray(scale)
    if s.ndim == 0:
        return s
    shape = [1] * ndim
    shape[axis] = s.size
    return s.reshape(shape)


def quantize_weight(w, scale, axis=0):
    """int8 weights: round_half_even(w / scale) in float32 (a true division), clipped to
    [-128, 127]; `scale` a scalar or one per slice along `axis`."""
    w = np.asarray(w, np.float32)
    q = np.round(w / along_axis(np.asarray(scale, np.float32), w.ndim, axis))
    return np.clip(q, -128, 127).astype(np.int8)


def bias_scale(x_scale, w_scale):
    """float32 x_scale * w_scale, the scale of an int32 bias (zero point 0); inf beyond float32, without
    NumPy's warning."""
    with np.errstate(over="ignore"):
        return (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)


def quantize_bias(b, x_scale, w_scale):
    """int32 bias: round_half_even(b / (x_scale * w_scale)) in float64 (the scale product in
    float32), clipped to the int32 range."""
    q = np.round(np.asarray(b, np.float64) / bias_scale(x_scale, w_scale).astype(np.float64))
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


def adjust_weight_scale_for_bias(x_scale, w_scale, b, per_channel):
    """The weight scale onnxruntime's quantizer uses when x_scale * w_scale is too small for the
    bias to fit in int32 (both formats, int8 weights with zero point 0): raised to
    BIAS_SCALE_MARGIN * 2 * |b| / (2^32 - 2) over x_scale, per tensor (|b| the largest
    magnitude, the bound in float64) or per channel (1.0001 * 2 * |b[i]| rounded to float32
    before the float64 division, as the tool does); otherwise unchanged. Returns float32.
    """
    ws = np.array(w_scale, np.float32, copy=True)
    b = np.asarray(b, np.float32).reshape(-1)
    qrange_i32 = np.float64(INT32_MAX) - np.float64(INT32_MIN + 1)
    xs = np.float64(np.float32(x_scale))
    if not per_channel:
        absmax = max(abs(min(float(b.min()), 0.0)), abs(max(float(b.max()), 0.0)))
        smallest = BIAS_SCALE_MARGIN * (2.0 * absmax) / qrange_i32
        candidate = xs * np.float64(ws.reshape(-1)[0])
        if 0.0 < candidate < smallest:
            ws = np.array(np.float64(ws.reshape(-1)[0]) * (smallest / candidate), np.float32).reshape(ws.shape)
        return ws
    flat = ws.reshape(-1)
    for i in range(flat.size):
        doubled = np.float32(np.float32(BIAS_SCALE_MARGIN) * np.float32(2.0 * np.abs(b[i])))
        smallest = np.float64(doubled) / qrange_i32
        candidate = xs * np.float64(flat[i])
        if 0.0 < candidate < smallest:
            flat[i] = np.float32(np.float64(flat[i]) * (smallest / candidate))
    return ws


def fma_f32(x, y, z):
    """float32 x * y + z with one rounding (a fused multiply-add), elementwise.

    The product of two float32 values is exact in float64; the float64 sum may round, and then
    rounding to float32 is wrong only when that sum lands exactly halfway between two float32
    values while the exact sum does not: the TwoSum error term decides that case."""
    x, y, z = (np.asarray(v, np.float32) for v in (x, y, z))
    p = x.astype(np.float64) * y.astype(np.float64)
    zz = z.astype(np.float64)
    s = p + zz
    bp = s - zz
    err = (p - bp) + (zz - (s - bp))  # p + zz == s + err exactly
    r = s.astype(np.float32)
    toward = np.nextafter(r, np.where(s > r.astype(np.float64), np.float32(np.inf), np.float32(-np.inf)))
    halfway = (s != r.astype(np.float64)) & (s == (r.astype(np.float64) + toward.astype(np.float64)) / 2)
    up = np.maximum(r, toward)
    down = np.minimum(r, toward)
    return np.where(halfway & (err > 0), up, np.where(halfway & (err < 0), down, r)).astype(np.float32)


def quantize_linear(x, scale, zero_point, dtype):
    """QuantizeLinear (onnxruntime's MLAS kernel): saturate(round_half_even(x / scale) +
    zero_point), the division in float32; NaN goes to qmin, as MLAS's clamp (MAXPS) takes it, and
    a quotient beyond float32 saturates (without NumPy's warning). `scale` and `zero_point`
    scalars or arrays broadcasting against x."""
    qmin, qmax = qrange(dtype)
    zp = np.asarray(zero_point, np.int32)
    with np.errstate(over="ignore"):
        v = np.asarray(x, np.float32) / np.asarray(scale, np.float32)
    lo, hi = (qmin - zp).astype(np.float32), (qmax - zp).astype(np.float32)
    v = np.where(np.isnan(v), lo, np.minimum(np.maximum(v, lo), hi))
    return (np.rint(v).astype(np.int32) + zp).astype(dtype)


def dequantize_linear(q, scale, zero_point):
    """DequantizeLinear: float32(q - zero_point) * scale, one float32 rounding."""
    d = (np.asarray(q).astype(np.int32) - np.asarray(zero_point, np.int32)).astype(np.float32)
    return d * np.asarray(scale, np.float32)


def ort_multiplier(x_scale, w_scale, y_scale):
    """onnxruntime's requantization scale of a conv or Gemm: float32(x_scale * w_scale) /
    y_scale, both steps rounded to float32 (a product beyond float32 inf, as onnxruntime's is, without
    NumPy's warning). One value per weight scale."""
    with np.errstate(over="ignore"):
        prod = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
        return (prod / np.float32(y_scale)).astype(np.float32)


def real_multiplier(x_scale, w_scale, y_scale):
    """The float64 real multiplier x_scale * w_scale / y_scale of the fixed-point mode (the
    float32 scales widened first, as TFLite computes it)."""
    return (
        np.float64(np.float32(x_scale))
        * np.asarray(w_scale, np.float32).astype(np.float64)
        / np.float64(np.float32(y_scale))
    )


def fixed_point_multiplier(real):
    """TFLite's QuantizeMultiplier: real = M * 2^(shift - 31) with M an int32 in [2^30, 2^31).

    frexp(real) = (q, e), q in [0.5, 1); M = round_half_away(q * 2^31), and M = 2^31 becomes 2^30
    with e + 1; shift = e. A real whose shift comes out below -31 (below 2^-32, but for one just
    below it that the carry takes to shift -31) becomes M = 0, shift = 0; real 0 gives (0, 0).
    Returns (multiplier int32, shift int32) arrays shaped like real. Raises ValueError for a
    negative, non-finite or too large (shift > 30) multiplier.
    """
    r = np.asarray(real, np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("requantization multipliers must be finite and non-negative")
    q, e = np.frexp(r)
    m = np.floor(q * 2.0**31 + 0.5).astype(np.int64)  # q > 0: half away from zero is half up
    carry = m == 2**31
    m = np.where(carry, m // 2, m)
    e = np.where(carry, e + 1, e).astype(np.int64)
    if np.any(e > 30):
        raise ValueError(f"requantization multiplier too large for the fixed-point mode: {float(r.max()):g}")
    flush = (e < -31) | (r == 0)
    return np.where(flush, 0, m).astype(np.int32), np.where(flush, 0, e).astype(np.int32)


def requantize_ort(acc, scale, zero_point, dtype):
    """`ort` requantization (MLAS MlasRequantizeOutput): float32(acc) * scale in float32,
    clamped to [qmin - zp, qmax - zp] (NaN, 0 times a scale of inf, to qmin - zp, as MLAS's
    MAXPS takes it), round_half_even, + zp. acc: int32 accumulators (bias included); scale
    float32 broadcasting against acc."""
    qmin, qmax = qrange(dtype)
    zp = int(zero_point)
    with np.errstate(invalid="ignore"):
        v = np.asarray(acc, np.int64).astype(np.float32) * np.asarray(scale, np.float32)
    lo = np.float32(qmin - zp)
    v = np.where(np.isnan(v), lo, np.minimum(np.maximum(v, lo), np.float32(qmax - zp)))
    return (np.rint(v).astype(np.int32) + zp).astype(dtype)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values (int64 arrays in, int64 out):
    (a * b + nudge) / 2^31 truncated toward zero, nudge 2^30 (or 1 - 2^30 for a negative
    product): round(a * b / 2^31) with ties up (+0.5 -> 1, -0.5 -> 0); INT32_MIN * INT32_MIN
    saturates to INT32_MAX."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.where(t >= 0, t >> 31, -((-t) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero
    (exponent in [0, 31]); int64 arrays holding int32 values."""
    x, e = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def requantize_fixed_point(acc, multiplier, shift, zero_point, dtype):
    """`fixed_point` requantization (TFLite MultiplyByQuantizedMultiplier, then + zp and
    saturate): x = acc << max(shift, 0), saturated to int32 (gemmlowp's saturating left shift;
    TFLite leaves an overflow undefined), then RoundingDivideByPOT(SRDHM(x, M), max(-shift, 0))."""
    qmin, qmax = qrange(dtype)
    s = np.asarray(shift, np.int64)
    x = np.clip(np.asarray(acc, np.int64) << np.maximum(s, 0), INT32_MIN, INT32_MAX)
    y = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), np.maximum(-s, 0))
    return np.clip(y + int(zero_point), qmin, qmax).astype(dtype)


def accumulator_bound(w, w_zero_point, x_zero_point, x_dtype, bias=None):
    """The largest |sum (x - x_zp)(w - w_zp) + bias| any input of type x_dtype can give, per
    output channel: sum over the channel's taps of |w - w_zp| * max(x_zp - qmin, qmax - x_zp),
    plus |bias|. w (K, ...) integer weights; returns int64 (K,)."""
    qmin, qmax = qrange(x_dtype)
    w = np.asarray(w).astype(np.int64)
    wz = along_axis(np.asarray(w_zero_point, np.int64), w.ndim, 0)
    dx = max(int(x_zero_point) - qmin, qmax - int(x_zero_point))
    bound = np.abs(w - wz).reshape(w.shape[0], -1).sum(axis=1) * dx
    if bias is not None:
        bound = bound + np.abs(np.asarray(bias, np.int64))
    return bound
