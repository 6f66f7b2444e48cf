"""int8 pooling kernels: max pool (exact) and global average pool (QLinearGlobalAveragePool). No MACs."""

from __future__ import annotations

import numpy as np
from numba import njit

from .requant import round_small


@njit(cache=True)
def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW) uint8/int8; loop planes (n, c),
    then oy, ox, the window clipped to the input (padding and ceil_mode overhang ignored)."""
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for q in range(n_n * c_n):
        plane, o = x[q // c_n, q % c_n], out[q // c_n, q % c_n]
        for oy in range(oh):
            y0, y1 = max(oy * sh - pt, 0), min(oy * sh - pt + kh, h)
            for ox in range(ow):
                x0, x1 = max(ox * sw - pl, 0), min(ox * sw - pl + kw, w)
                m = plane[y0, x0]
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        if plane[iy, ix] > m:
                            m = plane[iy, ix]
                o[oy, ox] = m


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
