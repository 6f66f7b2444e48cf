"""What an int8 layer computes once, when its model loads: weights with their zero point
subtracted and packed for the kernels, int32 biases, requantization multipliers, lookup
tables, and the refusal of an int32 accumulator that could overflow.

The records here are NamedTuples of arrays and ints: the kernels in kernels/int8 take them
as they are (Numba accepts them), and their NumPy twins in reference/int8.py read the same
fields. docs/int8.md describes the arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import quant
from .errors import AccumulatorOverflowError
from .kernels.int8.simd import TILE_K

if TYPE_CHECKING:
    from .ops.base import QParams


class Requant(NamedTuple):
    """How an int32 accumulator (bias included) becomes an output value of output channel k:
    mode quant.REQUANT_ORT uses scale[k] (float32), quant.REQUANT_FIXED_POINT uses
    multiplier[k] (int32) and shift[k]; then + zero_point, saturated to [qmin, qmax]."""

    mode: int
    scale: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    zero_point: int
    qmin: int
    qmax: int


class PackedConv(NamedTuple):
    """An int8 conv's constants, for kernels.int8.conv and its NumPy twin.

    weight (K, Cg, kh, kw) int16 is w - w_zero_point (the layout the twin reads). The kernels
    read the input channels-last, `cpp` channels per pixel, and sum each filter over runs of
    `run` consecutive values: per tap (fy, fx) the Cg channels padded to an even cpp (tap mode),
    or, with one group and no horizontal dilation (row mode), a whole filter row, kw * Cg values
    of the input row padded to an even length. rows (K, n_runs * run): each filter's runs, zeros
    in the padding. tiles: the same values for kernels.int8.simd.conv_tile, per group and block
    of TILE_K output channels, per run and pair of values, the block's channels with the pair
    interleaved (channels past K are zero). A depthwise conv (one input channel per group) keeps
    its filters tap-major in tiles instead, (kh * kw, K) flattened. bias (K,) int32."""

    weight: np.ndarray
    tiles: np.ndarray
    rows: np.ndarray
    bias: np.ndarray
    cpp: int
    run: int
    row_mode: int
    depthwise: int


class PackedLinear(NamedTuple):
    """An int8 linear layer's constants: weight (O, F) int16 = w - w_zero_point, bias (O,) int32."""

    weight: np.ndarray
    bias: np.ndarray


class AddParams(NamedTuple):
    """QLinearAdd as onnxruntime's x86 AVX2 kernel computes it, in float32: a_ratio = a_scale /
    y_scale, b_ratio = b_scale / y_scale, offset = y_zp - fma(a_ratio, a_zp, b_ratio * b_zp);
    an output is round_half_even(fma(a, a_ratio, fma(b, b_ratio, offset))) saturated to
    [qmin, qmax] (fma: multiply-add rounded once)."""

    a_ratio: np.float32
    b_ratio: np.float32
    offset: np.float32
    qmin: int
    qmax: int


def requant_params(mode, x_scale, w_scale, y_scale, y_zero_point, y_dtype, n_channels) -> Requant:
    """The Requant record of a conv or linear layer with n_channels outputs; w_scale a scalar or
    one per channel. mode "ort" or "fixed_point" (the ort scales are always filled; multipliers
    and shifts in fixed-point mode only). Raises ValueError for an unknown mode or a multiplier
    the fixed-point mode cannot hold."""
    if mode not in quant.REQUANT_MODES:
        raise ValueError(f"requantization mode must be one of {', '.join(quant.REQUANT_MODES)}, got {mode!r}")
    ws = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (n_channels,))
    scale = quant.ort_multiplier(x_scale, ws, y_scale)
    if mode == "fixed_point":
        mult, shift = quant.fixed_point_multiplier(quant.real_multiplier(x_scale, ws, y_scale))
    else:
        mult, shift = np.zeros(n_channels, np.int32), np.zeros(n_channels, np.int32)
    qmin, qmax = quant.qrange(y_dtype)
    return Requant(
        quant.REQUANT_MODES.index(mode),
        np.ascontiguousarray(scale, np.float32),
        np.ascontiguousarray(mult, np.int32),
        np.ascontiguousarray(shift, np.int32),
        int(y_zero_point),
        qmin,
        qmax,
    )


def check_accumulator(name, bound) -> None:
    """Refuse a layer whose worst-case |accumulator| (quant.accumulator_bound) exceeds int32.

    Raises AccumulatorOverflowError naming the layer."""
    worst = int(np.max(bound)) if np.size(bound) else 0
    if worst > quant.INT32_MAX:
        k = int(np.argmax(bound))
        raise AccumulatorOverflowError(
            f"node '{name}': int32 accumulator can overflow: worst case |acc| = {worst} > {quant.INT32_MAX} "
            f"(output channel {k})"
        )


def _zero_point_along(w_zero_point, n):
    return np.broadcast_to(np.asarray(w_zero_point, np.int32).reshape(-1), (n,))


def prepare_conv(name, w, w_zero_point, bias, x_zero_point, x_dtype, geom) -> PackedConv:
    """Pack an int8 (or uint8) conv weight (K, Cg, kh, kw) with its zero point (scalar or per
    output channel) and int32 bias (or None) for the conv of `geom` (kernels.conv.geom.ConvGeom). The worst-case
    accumulator for inputs of x_dtype with x_zero_point is checked: raises
    AccumulatorOverflowError naming the layer."""
    w = np.asarray(w)
    k_n, cg, kh, kw = w.shape
    groups = geom.groups
    wz = _zero_point_along(w_zero_point, k_n)
    b = np.zeros(k_n, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(k_n)
    check_accumulator(name, quant.accumulator_bound(w, wz, x_zero_point, x_dtype, b))
    weight = (w.astype(np.int32) - wz[:, None, None, None]).astype(np.int16)
    taps_last = weight.transpose(0, 2, 3, 1)  # (K, kh, kw, Cg)
    if cg == 1:
        tiles = np.ascontiguousarray(taps_last.reshape(k_n, kh * kw).T).reshape(-1)
        rows = np.ascontiguousarray(taps_last.reshape(k_n, -1))
        return PackedConv(weight, tiles, rows, np.ascontiguousarray(b), 1, 1, 0, 1)
    row_mode = int(groups == 1 and geom.dw == 1)
    if row_mode:
        cpp, length = cg, kw * cg
        run = length + length % 2
        runs = np.zeros((k_n, kh, run), np.int16)
        runs[..., :length] = taps_last.reshape(k_n, kh, length)
    else:
        cpp = run = cg + cg % 2
        runs = np.zeros((k_n, kh * kw, run), np.int16)
        runs[..., :cg] = taps_last.reshape(k_n, kh * kw, cg)
    n_runs = runs.shape[1]
    kg = k_n // groups
    n_blocks = (kg + TILE_K - 1) // TILE_K
    blocks = np.zeros((groups, n_blocks * TILE_K, n_runs, run), np.int16)
    blocks[:, :kg] = runs.reshape(groups, kg, n_runs, run)
    # (g, block, k, run, pair, 2) -> (g, block, run, pair, k, 2)
    t = blocks.reshape(groups, n_blocks, TILE_K, n_runs, run // 2, 2).transpose(0, 1, 3, 4, 2, 5)
    tiles = np.ascontiguousarray(t).reshape(-1)
    rows = np.ascontiguousarray(runs.reshape(k_n, -1))
    return PackedConv(weight, tiles, rows, np.ascontiguousarray(b), cpp, run, row_mode, 0)


def prepare_linear(name, w, w_zero_point, bias, x_zero_point, x_dtype) -> PackedLinear:
    """An int8 linear layer (weight (O, F), zero point scalar or per output, bias int32 or
    None), its accumulator checked as in prepare_conv (raises AccumulatorOverflowError)."""
    w = np.asarray(w)
    o_n = w.shape[0]
    wz = _zero_point_along(w_zero_point, o_n)
    b = np.zeros(o_n, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(o_n)
    check_accumulator(name, quant.accumulator_bound(w, wz, x_zero_point, x_dtype, b))
    weight = (w.astype(np.int32) - wz[:, None]).astype(np.int16)
    return PackedLinear(np.ascontiguousarray(weight), np.ascontiguousarray(b))


def add_params(a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, y_dtype) -> AddParams:
    """The AddParams record of a QLinearAdd. The offset's expression is contracted to one fused
    multiply-add as the compiler of onnxruntime's x86 build does (docs/int8.md)."""
    f32 = np.float32
    a_ratio, b_ratio = f32(f32(a_scale) / f32(y_scale)), f32(f32(b_scale) / f32(y_scale))
    zero_part = quant.fma_f32(a_ratio, f32(a_zero_point), f32(b_ratio * f32(b_zero_point)))
    qmin, qmax = quant.qrange(y_dtype)
    return AddParams(a_ratio, b_ratio, f32(f32(y_zero_point) - zero_part), qmin, qmax)


def concat_table(x: QParams, y: QParams):
    """The requantization table of one QLinearConcat input, indexed by the input's byte (its
    uint8 view): table[b] = QuantizeLinear(x_scale * float32(x - x_zp), y_scale, y_zp), x the
    byte read as the input's type, the code of the output's. None when the input has the
    output's type, scale and zero point (onnxruntime then copies)."""
    same_type = np.dtype(x.dtype) == np.dtype(y.dtype)
    if same_type and np.float32(x.scale) == np.float32(y.scale) and int(x.zero_point) == int(y.zero_point):
        return None
    codes = np.arange(256, dtype=np.uint8).view(np.dtype(x.dtype))
    real = quant.dequantize_linear(codes, x.scale, x.zero_point)
    return quant.quantize_linear(real, y.scale, y.zero_point, y.dtype)


# QLinearGlobalAveragePool's accepted range of x_scale / (y_scale * H*W) and of H*W (MLAS).
GAP_SCALE_MIN, GAP_SCALE_MAX, GAP_MAX_IMAGE = 2.0**-32, 256.0, 1 << 24


def global_avg_pool_scale(x_scale, y_scale, image_size) -> np.float32:
    """QLinearGlobalAveragePool's scale: x_scale / (y_scale * float32(H*W)), in float32.
    Raises ValueError outside the range onnxruntime computes (scale in [2^-32, 256), H*W < 2^24)."""
    s = np.float32(np.float32(x_scale) / np.float32(np.float32(y_scale) * np.float32(image_size)))
    if image_size >= GAP_MAX_IMAGE or not GAP_SCALE_MIN <= s < GAP_SCALE_MAX:
        raise ValueError(f"global average pool scale {float(s):g} or image size {image_size} out of range")
    return s
