"""int8 pooling kernels: max pool (exact), average pool (QLinearAveragePool) and global average pool
(QLinearGlobalAveragePool). No MACs."""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import njit
from .requant import round_small


@njit(cache=True)
def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW) uint8/int8;
    the window clipped to the input (padding and ceil_mode overhang ignored: a window holds at
    least one input value, so padding with the dtype's smallest value gives the same maxima). Per plane (n, c) two
    passes: the maxima of every input row over each output column's window (rows (H, OW), from
    a padded copy of the row), then per output row the maxima of its window's rows; unsigned
    indices throughout (no negative-index test), so the loops along a row vectorise."""
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    wp = max(pl + w, (ow - 1) * sw + kw)
    pad = np.full(wp, np.iinfo(x.dtype).min, x.dtype)
    rows = np.empty(h * ow, x.dtype)
    line = np.empty(ow, x.dtype)
    upl = np.uint64(pl)
    for q in range(n_n * c_n):
        n, c = q // c_n, q % c_n
        for iy in range(h):
            for ix in range(w):
                pad[upl + np.uint64(ix)] = x[n, c, iy, ix]
            b = np.uint64(iy * ow)
            if sw == 2:  # a constant stride: LLVM vectorises the strided loads
                for ox in range(ow):
                    line[ox] = pad[np.uint64(2 * ox)]
                for fx in range(1, kw):
                    for ox in range(ow):
                        line[ox] = max(line[ox], pad[np.uint64(2 * ox + fx)])
            else:
                for ox in range(ow):
                    line[ox] = pad[np.uint64(ox * sw)]
                for fx in range(1, kw):
                    for ox in range(ow):
                        line[ox] = max(line[ox], pad[np.uint64(ox * sw + fx)])
            for ox in range(ow):
                rows[b + np.uint64(ox)] = line[ox]
        for oy in range(oh):
            y0, y1 = max(oy * sh - pt, 0), min(oy * sh - pt + kh, h)
            b = np.uint64(y0 * ow)
            for ox in range(ow):
                line[ox] = rows[b + np.uint64(ox)]
            for iy in range(y0 + 1, y1):
                b = np.uint64(iy * ow)
                for ox in range(ow):
                    line[ox] = max(line[ox], rows[b + np.uint64(ox)])
            for ox in range(ow):
                out[n, c, oy, ox] = line[ox]


@njit(cache=True)
def global_avg_pool(x, x_zero_point, scale, y_zero_point, qmin, qmax, out):
    """Layout: x (N, C, H, W), out (N, C, 1, 1) uint8/int8; loop planes (n, c).
    acc = sum(x) - x_zero_point * H*W (exact), then float32(acc) * scale clamped to
    [qmin - zp_y, qmax - zp_y], rounded half to even, + zp_y (MLAS's requantization), scale
    from qprepare.global_avg_pool_scale."""
    n_n, c_n, h, w = x.shape
    s = np.float32(scale)
    lo, hi = np.float32(qmin - y_zero_point), np.float32(qmax - y_zero_point)
    for q in range(n_n * c_n):
        plane = x[q // c_n, q % c_n]
        acc = 0
        for iy in range(h):
            for ix in range(w):
                acc += np.int64(plane[iy, ix])
        acc -= np.int64(x_zero_point) * h * w
        v = min(max(np.float32(np.float32(acc) * s), lo), hi)
        out[q // c_n, q % c_n, 0, 0] = np.int64(round_small(v)) + y_zero_point


@njit(cache=True, parallel=True)
def avg_pool(x, deq, offset, kh, kw, sh, sw, pt, pl, count_include_pad, y_scale, y_zero_point, qmin, qmax, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW) uint8/int8; planes (n, c) in parallel. onnxruntime's
    QLinearAveragePool: each input value dequantized (deq[value + offset], float32 x_scale * (q -
    x_zero_point)), the window's values inside the input summed in float32 row by row, the sum
    divided (float32) by kh * kw with count_include_pad, else by the values summed; then divided
    by y_scale, y_zero_point added (float32), rounded half to even and clamped to [qmin, qmax]; a
    NaN (a window summing inf and -inf) to qmin, as onnxruntime's clamp takes it."""
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ys, yz = np.float32(y_scale), np.float32(y_zero_point)
    lo, hi = np.float32(qmin), np.float32(qmax)
    for q in prange(n_n * c_n):
        n, c = q // c_n, q % c_n
        for oy in range(oh):
            y0 = oy * sh - pt
            y1 = min(y0 + kh, h)
            y0 = max(y0, 0)
            for ox in range(ow):
                x0 = ox * sw - pl
                x1 = min(x0 + kw, w)
                x0 = max(x0, 0)
                acc = np.float32(0.0)
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc = np.float32(acc + deq[np.int64(x[n, c, iy, ix]) + offset])
                count = kh * kw if count_include_pad else (y1 - y0) * (x1 - x0)
                v = np.float32(np.float32(np.float32(acc / np.float32(count)) / ys) + yz)
                out[n, c, oy, ox] = np.int64(round_small(lo if v != v else min(max(v, lo), hi)))
