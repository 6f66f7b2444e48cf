"""Pooling kernels. Pooling performs no MACs under DESIGN.md's definition, so these return None."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW); loop n, c, oy, ox, window.

    Window taps outside the input (padding, ceil_mode overhang) are ignored, as in PyTorch.
    """
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_n):
        for c in range(c_n):
            for oy in range(oh):
                y0 = max(oy * sh - pt, 0)
                y1 = min(oy * sh - pt + kh, h)
                for ox in range(ow):
                    x0 = max(ox * sw - pl, 0)
                    x1 = min(ox * sw - pl + kw, w)
                    m = -np.inf
                    for iy in range(y0, y1):
                        for ix in range(x0, x1):
                            v = x[n, c, iy, ix]
                            if v > m or v != v:
                                m = v
                    out[n, c, oy, ox] = m


@njit(cache=True)
def avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, count_include_pad, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW); loop n, c, oy, ox, window.

    Divisor as PyTorch: the window clipped to the padded input if count_include_pad, else
    clipped to the input itself.
    """
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_n):
        for c in range(c_n):
            for oy in range(oh):
                ys = oy * sh - pt
                ye = min(ys + kh, h + pb)
                y0, y1 = max(ys, 0), min(ye, h)
                for ox in range(ow):
                    xs = ox * sw - pl
                    xe = min(xs + kw, w + pr)
                    x0, x1 = max(xs, 0), min(xe, w)
                    if count_include_pad:
                        div = (ye - ys) * (xe - xs)
                    else:
                        div = (y1 - y0) * (x1 - x0)
                    s = np.float32(0.0)
                    for iy in range(y0, y1):
                        for ix in range(x0, x1):
                            s += x[n, c, iy, ix]
                    out[n, c, oy, ox] = s / np.float32(div)


@njit(cache=True)
def global_avg_pool(x, out):
    """Layout: x (N, C, H, W), out (N, C, 1, 1); float32 sum in row order, then one divide."""
    n_n, c_n, h, w = x.shape
    for n in range(n_n):
        for c in range(c_n):
            s = np.float32(0.0)
            for iy in range(h):
                for ix in range(w):
                    s += x[n, c, iy, ix]
            out[n, c, 0, 0] = s / np.float32(h * w)
