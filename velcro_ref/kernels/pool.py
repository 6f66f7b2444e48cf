"""Pooling kernels. Pooling performs no MACs (docs/design.md, "Executed MACs"), so these return None."""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit
from .pool_simd import PLANE_KW, ROW_KW, max_plane, max_row

# Input elements from which `max_pool` (and `global_avg_pool`) runs its planes in parallel: two
# threads were the faster from 12K elements on (one image, 3x3 windows: 256 x 7 x 7 12.6 -> 9.5
# us, 512 x 7 x 7 25.1 -> 15.9), one thread below 6.3K (128 x 7 x 7 7.0 against 8.2 us;
# docs/kernels.md, "Measured"). PLANES: planes per parallel work item of `max_pool`.
PARALLEL_MIN = 1 << 13
PLANES = 8


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW), float32. Loop order: planes (n, c), in parallel
    from PARALLEL_MIN input elements on, then the plane's outputs 8 at a time in SIMD lanes
    (`kernels/pool_simd.py`): a plane as one flat run where a stride-1 pool keeps the row width
    (`max_plane`), else row by row (`max_row`, strides 1 and 2), else one output at a time.

    Every path folds an output's taps in one order: each window column's taps over the window
    rows in increasing order, then those column maxima in increasing column order, a tap
    replacing the running value where it is greater or NaN. So a NaN wins as in np.maximum and
    PyTorch, and of equal values (-0.0, +0.0) the first folded stays. Taps outside the input
    (padding, ceil_mode overhang) are ignored.
    """
    n_planes = x.shape[0] * x.shape[1]
    h, w, oh, ow = x.shape[2], x.shape[3], out.shape[2], out.shape[3]
    geom = (h, w, oh, ow, kh, kw, sh, sw, pt, pl)
    xf = np.ascontiguousarray(x).reshape(-1)
    of = out.reshape(-1) if out.flags.c_contiguous else np.empty(out.size, np.float32)
    if x.size >= PARALLEL_MIN:
        _max_pool_threads(xf, of, geom, (n_planes + PLANES - 1) // PLANES)
    else:
        _max_pool_planes(xf, of, geom, 0, n_planes)
    if not out.flags.c_contiguous:
        out[...] = of.reshape(out.shape)


@njit(cache=True, parallel=True)
def _max_pool_threads(xf, of, geom, n_items):
    """`max_pool` with items of PLANES planes in parallel."""
    n_planes = xf.size // (geom[0] * geom[1])
    for item in prange(n_items):
        _max_pool_planes(xf, of, geom, item * PLANES, min((item + 1) * PLANES, n_planes))


@njit(cache=True)
def _max_pool_planes(xf, of, geom, q0, q1):
    """`max_pool` of the planes q0 .. q1 - 1 of the flat input xf and output of."""
    h, w, oh, ow, kh, kw, sh, sw, pt, pl = geom
    flat = sh == 1 and sw == 1 and ow == w and kw <= PLANE_KW
    rows = (sw == 1 and kw <= ROW_KW[0]) or (sw == 2 and kw <= ROW_KW[1])
    end = q1 * oh * ow  # the SIMD blocks may store whole vectors up to here: the rest is written after
    for q in range(q0, q1):
        xb, ob = q * h * w, q * oh * ow
        if flat:
            max_plane(xf, of, (xb, ob, end - ob), (h, w, oh, kh, kw, pt, pl))
            continue
        for oy in range(oh):
            y0, y1 = max(oy * sh - pt, 0), min(oy * sh - pt + kh, h)
            o = ob + oy * ow
            if y0 >= y1:
                of[o : o + ow] = -np.inf
            elif rows:
                max_row(xf, of, (xb + y0 * w, o, end - o), (w, y1 - y0, -pl, sw, kw, ow))
            else:
                _max_row_taps(xf, of, xb + y0 * w, o, w, y1 - y0, -pl, sw, kw, ow)


@njit(cache=True)
def _max_row_taps(xf, of, xa, oa, w, n_rows, col0, sw, kw, ow):
    """`max_row` one output and one tap at a time, for the strides and windows it does not take."""
    for ox in range(ow):
        m = np.float32(-np.inf)
        for fx in range(kw):
            ix = col0 + ox * sw + fx
            if ix < 0 or ix >= w:
                continue
            v = xf[xa + ix]
            for r in range(1, n_rows):
                t = xf[xa + r * w + ix]
                v = t if (t > v) | (t != t) else v
            m = v if (v > m) | (v != v) else m
        of[oa + ox] = m


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


def global_avg_pool(x, out):
    """Layout: x (N, C, H, W), out (N, C, 1, 1); per plane a float32 sum in row order, then one
    divide. Planes in parallel from PARALLEL_MIN input elements on, each plane's sum by one
    thread (the thread count changes no bit)."""
    n_n, c_n, h, w = x.shape
    xf = np.ascontiguousarray(x).reshape(n_n * c_n, h * w)
    of = out.reshape(-1) if out.flags.c_contiguous else np.empty(n_n * c_n, np.float32)
    (_plane_means_threads if x.size >= PARALLEL_MIN else _plane_means)(xf, of)
    if not out.flags.c_contiguous:
        out[...] = of.reshape(out.shape)


@njit(cache=True)
def _plane_means(xf, of):
    """of[i] = the float32 sum of xf[i] in order, divided by its length."""
    div = np.float32(xf.shape[1])
    for i in range(xf.shape[0]):
        of[i] = _plane_sum(xf, i) / div


@njit(cache=True, parallel=True)
def _plane_means_threads(xf, of):
    """`_plane_means` with the planes in parallel."""
    div = np.float32(xf.shape[1])
    for i in prange(xf.shape[0]):
        of[i] = _plane_sum(xf, i) / div


@njit(cache=True)
def _plane_sum(xf, i):
    s = np.float32(0.0)
    for j in range(xf.shape[1]):
        s += xf[i, j]
    return s
