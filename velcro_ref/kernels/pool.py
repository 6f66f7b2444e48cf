"""Pooling kernels. Pooling performs no MACs under DESIGN.md's definition, so these return None."""

from __future__ import annotations

import numpy as np
from numba import njit

from .conv2d import padded_size


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW); a max over window columns, then over window
    rows, each a few whole-batch np.maximum calls on strided views of a -inf padded copy.

    The one pooling op written in NumPy rather than a Numba loop: on the small planes of the zoo
    (7x7 at batch 128) a per-plane loop runs a few elements per trip, and the separable maxima
    were measured 2.8x faster. Taps outside the input (padding, ceil_mode overhang) are -inf, so
    ignored, and np.maximum lets a NaN win, both as in PyTorch.
    """
    n_n, c_n, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    hp = padded_size(h, pt, oh, sh, kh, 1)
    wp = padded_size(w, pl, ow, sw, kw, 1)
    xp = np.full((n_n, c_n, hp, wp), -np.inf, np.float32)
    xp[:, :, pt : pt + h, pl : pl + w] = x
    cols = xp[:, :, :, 0 : (ow - 1) * sw + 1 : sw].copy()
    for fx in range(1, kw):
        np.maximum(cols, xp[:, :, :, fx : fx + (ow - 1) * sw + 1 : sw], out=cols)
    out[...] = cols[:, :, 0 : (oh - 1) * sh + 1 : sh]
    for fy in range(1, kh):
        np.maximum(out, cols[:, :, fy : fy + (oh - 1) * sh + 1 : sh], out=out)


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
