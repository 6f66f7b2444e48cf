"""conv2d kernels: dense (im2col + BLAS), masked (skips masked output elements), direct (small filters).

Every kernel takes arrays and ints only and returns the MACs it executed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Filters with fewer taps than this per output element (depthwise 3x3 has 9) run in the direct
# loop: an im2col copy per tap would cost more than the MACs it feeds.
DIRECT_MAX_TAPS = 16
# Positions per tile of the masked kernel: 128 rows of im2col stay in L2 (at most 128 x 4608
# floats) while every channel visits the tile.
TILE_P = 128
# Runs of unmasked positions at least this long go to one matrix-vector product.
RUN_MIN = 4


@njit(cache=True)
def im2col_t(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, need, col):
    """Layout: x (C, H, W) one image; col (OH*OW, cg*kh*kw), row p = (oy, ox), column (c, fy, fx).

    Rows whose `need[p]` is False are left untouched (every channel masked there); padding is 0.
    """
    h, w = x.shape[1], x.shape[2]
    for oy in range(oh):
        for ox in range(ow):
            p = oy * ow + ox
            if not need[p]:
                continue
            j = 0
            for c in range(cg):
                for fy in range(kh):
                    iy = oy * sh - pt + fy * dh
                    for fx in range(kw):
                        ix = ox * sw - pl + fx * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            col[p, j] = x[c0 + c, iy, ix]
                        else:
                            col[p, j] = 0.0
                        j += 1


@njit(cache=True)
def im2col(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col):
    """Layout: x (C, H, W) one image; col (cg*kh*kw, OH*OW), row j = (c, fy, fx), column p = (oy, ox).

    Loop order c, fy, fx, oy, then a run of ox that stays inside the input (a strided copy);
    padding is written as 0.
    """
    h, w = x.shape[1], x.shape[2]
    j = 0
    for c in range(cg):
        for fy in range(kh):
            for fx in range(kw):
                off = fx * dw - pl
                # ox range whose ix = ox*sw + off lies in [0, w)
                lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
                hi = max(lo, min(ow, (w - 1 - off) // sw + 1)) if w - 1 - off >= 0 else lo
                for oy in range(oh):
                    iy = oy * sh - pt + fy * dh
                    base = oy * ow
                    if iy < 0 or iy >= h:
                        for ox in range(ow):
                            col[j, base + ox] = 0.0
                        continue
                    for ox in range(lo):
                        col[j, base + ox] = 0.0
                    for ox in range(lo, hi):
                        col[j, base + ox] = x[c0 + c, iy, ox * sw + off]
                    for ox in range(hi, ow):
                        col[j, base + ox] = 0.0
                j += 1


@njit(cache=True)
def gemm_masked(w, col, bias, skip, rows, out):
    """Layout: w (K, J) filters, col (P, J) im2col rows, skip and out (K, P); only channels `rows`.

    Loop order: position tiles, channels, runs of unmasked positions. A run of at least RUN_MIN
    positions is one BLAS matrix-vector product (col[run] @ w[k]), a shorter one a BLAS dot per
    element: BLAS vectorises the reduction, which a loop here may not without fastmath.
    A masked (k, p) is never visited: no MAC, out left as is.
    """
    j_n = w.shape[1]
    p_n = col.shape[0]
    n_macs = 0
    for p0 in range(0, p_n, TILE_P):
        p1 = min(p0 + TILE_P, p_n)
        for k in rows:
            wk = w[k]
            p = p0
            while p < p1:
                if skip[k, p]:
                    p += 1
                    continue
                start = p
                while p < p1 and not skip[k, p]:
                    p += 1
                if p - start >= RUN_MIN:
                    out[k, start:p] = np.dot(col[start:p], wk) + bias[k]
                else:
                    for q in range(start, p):
                        out[k, q] = np.dot(col[q], wk) + bias[k]
                n_macs += (p - start) * j_n
    return n_macs


@njit(cache=True)
def conv2d_direct(x, w, b, sh, sw, pt, pl, dh, dw, groups, skip, out):
    """Layout: x (N, C, H, W), w (K, C/groups, KH, KW), skip (K, OH, OW), out (N, K, OH, OW).

    Loop order n, k, oy, ox, then the filter taps. A masked (k, oy, ox) skips its taps entirely.
    """
    n_n, _, h, wd = x.shape
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_n // groups
    n_macs = 0
    for n in range(n_n):
        for k in range(k_n):
            c0 = (k // kg) * cg
            for oy in range(oh):
                for ox in range(ow):
                    if skip[k, oy, ox]:
                        continue
                    acc = b[k]
                    for c in range(cg):
                        for fy in range(kh):
                            iy = oy * sh - pt + fy * dh
                            if iy < 0 or iy >= h:
                                continue
                            for fx in range(kw):
                                ix = ox * sw - pl + fx * dw
                                if 0 <= ix < wd:
                                    acc += w[k, c, fy, fx] * x[n, c0 + c, iy, ix]
                    out[n, k, oy, ox] = acc
                    # padding taps count: the dense cost per element is (C/groups) * KH * KW
                    n_macs += cg * kh * kw
    return n_macs


def conv2d(x, w, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, out, col=None):
    """Convolution of x (N, C, H, W) float32 into out (N, K, OH, OW); returns executed MACs.

    `skip` is None (dense: im2col + BLAS GEMM) or a bool (K, OH, OW) array: masked output
    elements are not computed and keep whatever `out` held. `col` is an optional float32
    scratch buffer of at least OH*OW*(C/groups)*KH*KW elements. pb, pr are implied by out's shape.
    """
    n_n = x.shape[0]
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    taps = cg * kh * kw
    if taps < DIRECT_MAX_TAPS:
        if skip is None:
            skip = np.zeros((k_n, oh, ow), np.bool_)
        return conv2d_direct(x, w, b, sh, sw, pt, pl, dh, dw, groups, skip, out)
    p_n = oh * ow
    kg = k_n // groups
    if col is None or col.size < p_n * taps:
        col = np.empty(p_n * taps, np.float32)
    w2 = w.reshape(k_n, taps)
    pointwise = kh == kw == 1 and sh == sw == 1 and pt == pl == pb == pr == 0
    n_macs = 0
    for n in range(n_n):
        for g in range(groups):
            wg, bg = w2[g * kg : (g + 1) * kg], b[g * kg : (g + 1) * kg]
            og = out[n, g * kg : (g + 1) * kg].reshape(kg, p_n)
            if skip is None:
                if pointwise:  # a 1x1 stride-1 conv is a GEMM on the input as it lies
                    cols = x[n, g * cg : (g + 1) * cg].reshape(cg, p_n)
                else:
                    cols = col[: p_n * taps].reshape(taps, p_n)
                    im2col(x[n], g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols)
                np.matmul(wg, cols, out=og)
                og += bg[:, None]
                n_macs += kg * p_n * taps
                continue
            sg = skip[g * kg : (g + 1) * kg].reshape(kg, p_n)
            colv = col[: p_n * taps].reshape(p_n, taps)
            im2col_t(x[n], g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, ~sg.all(axis=0), colv)
            # Channels with no masked element go to BLAS together; channels with some masked
            # elements go to the element-wise kernel; fully masked channels cost nothing.
            n_masked = sg.sum(axis=1)
            full = np.flatnonzero(n_masked == 0)
            part = np.flatnonzero((n_masked > 0) & (n_masked < p_n))
            if full.size == kg:
                n_macs += gemm_rows(wg, colv, bg, og)
            elif full.size:
                sub = np.empty((full.size, p_n), np.float32)
                n_macs += gemm_rows(wg[full], colv, bg[full], sub)
                og[full] = sub
            if part.size:
                n_macs += gemm_masked(wg, colv, bg, sg, part, og)
    return n_macs


def gemm_rows(w, col, bias, out):
    """out (K, P) = w (K, J) @ col (P, J).T + bias, by BLAS; returns its MACs."""
    np.matmul(w, col.T, out=out)
    out += bias[:, None]
    return w.shape[0] * col.shape[0] * w.shape[1]
