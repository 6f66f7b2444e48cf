"""The RTL tests' oracle: a NumPy int8 conv and gemmlowp/TFLite fixed-point requantization, and the
random conv layers the tests stream through the array.

Independent of the RTL and of velcro_ref.rtl_vectors: the conv is written as a sum over shifted
slices of the zero-padded (x - zero point) tensor, and the requantization transcribes gemmlowp's
SaturatingRoundingDoublingHighMul and RoundingDivideByPOT (gemmlowp fixedpoint.h) and TFLite's
MultiplyByQuantizedMultiplier and QuantizeMultiplier (tensorflow/lite/kernels/internal/common.h,
quantization_util.cc).
"""

from __future__ import annotations

import math

import numpy as np

from velcro_ref.rtl_vectors import QConvLayer

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def wrap32(v):
    """Two's-complement int32 wrap of int64 values."""
    v = np.asarray(v, np.int64)
    return ((v + 2**31) % 2**32) - 2**31


def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul of int32 arrays: (a*b + nudge) / 2^31, the
    division truncating toward zero as C's does; INT32_MIN * INT32_MIN saturates to INT32_MAX."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b  # |a*b| <= 2^62 fits in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    v = ab + nudge
    q = np.where(v >= 0, v >> 31, -((-v) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def rdbp(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero."""
    x, e = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize(acc, multiplier, shift, zero_point, lo, hi):
    """TFLite MultiplyByQuantizedMultiplier(acc, M, shift) + zero point, clamped to [lo, hi].
    acc (int32, bias included) broadcasts against per-channel multiplier/shift."""
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = wrap32(np.asarray(acc, np.int64) << left)  # int32 arithmetic, as TFLite's x * (1 << left)
    y = rdbp(srdhm(x, multiplier), right) + zero_point
    return np.clip(y, lo, hi)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = M * 2^(shift - 31), M in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    m = int(math.floor(q * 2**31 + 0.5))  # std::round, half away from zero (q > 0)
    if m == 2**31:
        m //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return m, shift


def conv_acc(x, w, bias, zx, stride, pads, dilation, groups):
    """int32 accumulators bias + sum((x - zx) * w), (K, OH, OW), computed in int64 and checked to fit."""
    c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = stride, dilation, pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xc = np.zeros((c, h + pt + pb, wd + pl + pr), np.int64)
    xc[:, pt : pt + h, pl : pl + wd] = x.astype(np.int64) - zx  # padding is real 0 = (zx - zx)
    kg = k // groups
    acc = np.zeros((k, oh, ow), np.int64) + bias.astype(np.int64)[:, None, None]
    for g in range(groups):
        xg = xc[g * cg : (g + 1) * cg]
        wg = w[g * kg : (g + 1) * kg].astype(np.int64)
        for fy in range(kh):
            for fx in range(kw):
                patch = xg[:, fy * dh : fy * dh + sh * (oh - 1) + 1 : sh, fx * dw : fx * dw + sw * (ow - 1) + 1 : sw]
                acc[g * kg : (g + 1) * kg] += np.einsum("chw,kc->khw", patch, wg[:, :, fy, fx])
    assert acc.min() >= INT32_MIN and acc.max() <= INT32_MAX
    return acc.astype(np.int32)


def make_layer(
    name,
    seed,
    c,
    hw,
    k,
    kernel,
    *,
    stride=1,
    pad=0,
    groups=1,
    in_dtype=np.int8,
    out_dtype=np.int8,
    mask_ratio=0.0,
    structured=False,
    relu=False,
    requant_edges=False,
):
    """A random int8 conv layer and its oracle results.

    mask_ratio: fraction of output elements masked, drawn element by element; with `structured`,
    whole (8-filter chunk, pixel) blocks are masked instead, as value locality tends to give.
    requant_edges: per-channel multipliers and shifts at the edges of the fixed-point arithmetic
    (M near 2^31 and at 2^30, left shifts, exponents down to -31) and biases across the int32 range.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.iinfo(in_dtype).min, np.iinfo(in_dtype).max
    x = rng.integers(lo, hi + 1, (c, hw, hw)).astype(in_dtype)
    zx = int(rng.integers(lo, hi + 1))
    w = rng.integers(-127, 128, (k, c // groups, kernel, kernel)).astype(np.int8)
    x_scale = 0.02
    w_scales = rng.uniform(0.002, 0.02, k)
    bias = rng.integers(-(2**12), 2**12, k).astype(np.int32)
    pads, strides = (pad, pad, pad, pad), (stride, stride)
    acc = conv_acc(x, w, bias, zx, strides, pads, (1, 1), groups)
    y_lo, y_hi = int(np.iinfo(out_dtype).min), int(np.iinfo(out_dtype).max)
    zy = int(rng.integers(-20, 21)) if out_dtype == np.int8 else int(rng.integers(0, 41))
    y_scale = float(x_scale * w_scales.mean() * acc.astype(np.float64).std() / 40.0)
    mults, shifts = zip(*(quantize_multiplier(x_scale * ws / y_scale) for ws in w_scales), strict=True)
    mult, shift = np.array(mults, np.int64), np.array(shifts, np.int64)
    if requant_edges:
        edge_m = [2**31 - 1, 2**30, 2**30 + 1, 1, 0, 2**31 - 2, 1234567890, 2**30]
        edge_s = [-31, -1, 0, 1, 2, -3, -2, -30]
        for i in range(k):
            mult[i], shift[i] = edge_m[i % 8], edge_s[(i // 8 + i) % 8]
        big = rng.integers(-(2**30), 2**30, k)
        bias = np.where(shift <= 0, big, bias).astype(np.int32)
        acc = conv_acc(x, w, bias, zx, strides, pads, (1, 1), groups)
    y_min = zy if relu else y_lo
    y = requantize(acc, mult[:, None, None], shift[:, None, None], zy, y_min, y_hi).astype(out_dtype)
    skip = constants = None
    if mask_ratio > 0:
        oh, ow = acc.shape[1:]
        if structured:
            chunks = -(-(k // groups) // 8)
            block = rng.random((groups, chunks, oh * ow)) < mask_ratio
            per_k = np.repeat(block, 8, axis=1)[:, : k // groups].reshape(k, oh, ow)
            skip = per_k
        else:
            skip = rng.random((k, oh, ow)) < mask_ratio
        constants = rng.integers(y_min, y_hi + 1, (k, oh, ow)).astype(out_dtype)
        y = np.where(skip, constants, y)
    return QConvLayer(
        name=name,
        x=x,
        weight=w,
        bias=bias,
        x_zero_point=zx,
        x_scale=x_scale,
        y_zero_point=zy,
        y_scale=y_scale,
        multiplier=mult.astype(np.int32),
        shift=shift,
        acc=acc,
        y=y,
        stride=strides,
        pads=pads,
        groups=groups,
        w_scales=w_scales,
        skip=skip,
        constants=constants,
        y_min=y_min,
        y_max=y_hi,
    )
