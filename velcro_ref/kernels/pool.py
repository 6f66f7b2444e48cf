"""Pooling kernels. Pooling performs no MACs (docs/design.md, "Executed MACs"), so these return None."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Input elements from which max_pool uses every thread, and planes per parallel work item
# (docs/kernels.md, "Measured").
PARALLEL_MIN = 1 << 16
PLANES = 8


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Layout: x (N, C, H, W), out (N, C, OH, OW). Loop order: planes (n, c), in parallel from
    PARALLEL_MIN input elements on, then oy, the max over the window's input rows into a row
    buffer (ix inner), then the max over each output's columns of that buffer (fx, then ox
    inner): both inner loops are selects, so they vectorise.

    Taps outside the input (padding, ceil_mode overhang) are -inf in the row buffer, so ignored,
    and a NaN wins as in np.maximum and PyTorch.
    """
    n_items = (x.shape[0] * x.shape[1] + PLANES - 1) // PLANES
    if x.size >= PARALLEL_MIN:
        _max_pool_threads(x, kh, kw, sh, sw, pt, pl, out, n_items)
    else:
        _max_pool_planes(x, kh, kw, sh, sw, pt, pl, out, 0, x.shape[0] * x.shape[1])


@njit(cache=True, parallel=True)
def _max_pool_threads(x, kh, kw, sh, sw, pt, pl, out, n_items):
    """`max_pool` with items of PLANES planes in parallel."""
    n_planes = x.shape[0] * x.shape[1]
    for item in prange(n_items):
        _max_pool_planes(x, kh, kw, sh, sw, pt, pl, out, item * PLANES, min((item + 1) * PLANES, n_planes))


@njit(cache=True)
def _max_pool_planes(x, kh, kw, sh, sw, pt, pl, out, q0, q1):
    """`max_pool` of the planes q0 .. q1 - 1 (plane q = (q // C, q % C)), one row buffer for all."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    rows = np.full(max(pl + w, (ow - 1) * sw + kw), -np.inf, np.float32)  # padded columns stay -inf
    r = rows[pl : pl + w]
    for q in range(q0, q1):
        plane, o = x[q // c_n, q % c_n], out[q // c_n, q % c_n]
        for oy in range(oh):
            y0, y1 = max(oy * sh - pt, 0), min(oy * sh - pt + kh, h)
            if y0 >= y1:
                r[:] = -np.inf
            else:
                r[:] = plane[y0]
            for iy in range(y0 + 1, y1):
                src = plane[iy]
                for ix in range(w):
                    v, m = src[ix], r[ix]
                    r[ix] = v if (v > m) | (v != v) else m
            orow = o[oy]
            if sw == 1:  # contiguous columns: the loops vectorise
                orow[:] = rows[:ow]
                for fx in range(1, kw):
                    cols = rows[fx : fx + ow]
                    for ox in range(ow):
                        v, m = cols[ox], orow[ox]
                        orow[ox] = v if (v > m) | (v != v) else m
                continue
            for ox in range(ow):
                orow[ox] = rows[ox * sw]
            for fx in range(1, kw):
                for ox in range(ow):
                    v, m = rows[ox * sw + fx], orow[ox]
                    orow[ox] = v if (v > m) | (v != v) else m


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
