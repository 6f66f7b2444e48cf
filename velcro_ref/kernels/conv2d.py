"""conv2d kernels: dense (im2col + BLAS), masked (skips masked output elements), direct (small filters).

Every kernel takes arrays and ints only and returns the MACs it executed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Spatial filters with fewer taps than this per output element (depthwise 3x3 has 9) run in the
# direct loop: an im2col copy per tap would cost more than the MACs it feeds.
DIRECT_MAX_TAPS = 16
# Positions per tile of the masked kernel: 128 rows of im2col stay in L2 (at most 128 x 4608
# floats) while every channel visits the tile.
TILE_P = 128
# Runs of unmasked positions at least this long go to one matrix-vector product.
RUN_MIN = 4
# Images per im2col chunk: at most this many floats of scratch (32 MiB).
CHUNK_FLOATS = 1 << 23
# From this many images on, a masked conv runs one GEMM per position over the batch.
BATCH_MIN = 4


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
def im2col(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col, p0):
    """Layout: x (C, H, W) one image; col (cg*kh*kw, >= p0 + OH*OW), row j = (c, fy, fx), column
    p0 + p with p = (oy, ox), so the images of a batch sit side by side.

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
                    base = p0 + oy * ow
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
def gemm_positions(w, colp, bias, skip, rows, out):
    """Layout: w (K, J) filters, colp (P, N, J) im2col of N images, skip (K, P), out (N, K, P);
    only channels `rows`.

    Loop order: positions, then one BLAS GEMM per position over the batch and the channels not
    masked there (N x J times J x m). Masks are shared by the images of a batch, so a position's
    unmasked channels form a dense product and a masked (k, p) is never computed for any image.
    """
    k_n, j_n = w.shape
    p_n, n_n = colp.shape[0], colp.shape[1]
    idx = np.empty(k_n, np.int64)
    wp = np.empty((k_n, j_n), np.float32)
    n_macs = 0
    for p in range(p_n):
        m = 0
        for k in rows:
            if not skip[k, p]:
                idx[m] = k
                m += 1
        if m == 0:
            continue
        for i in range(m):
            wp[i, :] = w[idx[i], :]
        r = np.dot(colp[p], wp[:m].T)
        for n in range(n_n):
            for i in range(m):
                out[n, idx[i], p] = r[n, i] + bias[idx[i]]
        n_macs += n_n * m * j_n
    return n_macs


@njit(cache=True)
def conv2d_direct(x, w, b, sh, sw, pt, pl, dh, dw, groups, skip, out):
    """Layout: x (N, C, H, W), w (K, C/groups, KH, KW), skip (K, OH, OW), out (N, K, OH, OW).

    Loop order n, k, oy, runs of unmasked ox, then the taps over a zero-padded copy of the
    filter's input channels, accumulating the run's ox together (vectorised). A masked element
    is never visited; every element sums its taps in the same order, masked run or not.
    """
    n_n, _, h, wd = x.shape
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_n // groups
    hp = max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl, (ow - 1) * sw + (kw - 1) * dw + 1)
    xp = np.zeros((cg, hp, wp), np.float32)
    acc = np.empty(ow, np.float32)
    n_macs = 0
    for n in range(n_n):
        for k in range(k_n):
            if k % kg == 0:  # a new group: copy its input channels (the zero border stays zero)
                c0 = (k // kg) * cg
                for c in range(cg):
                    for iy in range(h):
                        for ix in range(wd):
                            xp[c, iy + pt, ix + pl] = x[n, c0 + c, iy, ix]
            for oy in range(oh):
                ox = 0
                while ox < ow:  # one run of unmasked outputs at a time, its ox accumulated together
                    if skip[k, oy, ox]:
                        ox += 1
                        continue
                    start = ox
                    while ox < ow and not skip[k, oy, ox]:
                        ox += 1
                    for q in range(start, ox):
                        acc[q] = b[k]
                    for c in range(cg):
                        for fy in range(kh):
                            iy = oy * sh + fy * dh
                            for fx in range(kw):
                                wv = w[k, c, fy, fx]
                                off = fx * dw
                                if sw == 1:  # unit stride: the loop vectorises
                                    for q in range(start, ox):
                                        acc[q] += wv * xp[c, iy, q + off]
                                else:
                                    for q in range(start, ox):
                                        acc[q] += wv * xp[c, iy, q * sw + off]
                    for q in range(start, ox):
                        out[n, k, oy, q] = acc[q]
                    # padding taps count: the dense cost per element is (C/groups) * KH * KW
                    n_macs += (ox - start) * cg * kh * kw
    return n_macs


def conv2d(x, w, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, out, col=None):
    """Convolution of x (N, C, H, W) float32 into out (N, K, OH, OW); returns executed MACs.

    `skip` is None (dense: im2col + BLAS GEMM) or a bool (K, OH, OW) array: masked output
    elements are not computed and keep whatever `out` held. `col` is an optional float32
    scratch buffer; pb, pr are implied by out's shape.
    """
    n_n = x.shape[0]
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    taps = cg * kh * kw
    if taps < DIRECT_MAX_TAPS and kh * kw > 1:
        if skip is None:
            skip = np.zeros((k_n, oh, ow), np.bool_)
        return conv2d_direct(x, w, b, sh, sw, pt, pl, dh, dw, groups, skip, out)
    p_n = oh * ow
    kg = k_n // groups
    chunk = max(1, min(n_n, CHUNK_FLOATS // (p_n * taps)))
    if col is None or col.size < chunk * p_n * taps:
        col = np.empty(chunk * p_n * taps, np.float32)
    w2 = w.reshape(k_n, taps)
    conv = (cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
    pointwise = kh == kw == 1 and sh == sw == 1 and pt == pl == pb == pr == 0
    n_macs = 0
    for g in range(groups):
        wg, bg = w2[g * kg : (g + 1) * kg], b[g * kg : (g + 1) * kg]
        sg = None if skip is None else skip[g * kg : (g + 1) * kg].reshape(kg, p_n)
        for n0 in range(0, n_n, chunk):
            xs = x[n0 : n0 + chunk]
            og = out[n0 : n0 + chunk, g * kg : (g + 1) * kg].reshape(len(xs), kg, p_n)
            if sg is None:
                n_macs += _dense(xs, g * cg, conv, wg, bg, og, col, pointwise)
            elif len(xs) >= BATCH_MIN:
                n_macs += _masked_batch(xs, g * cg, conv, wg, bg, sg, og, col)
            else:
                for i in range(len(xs)):
                    n_macs += _masked_image(xs[i], g * cg, conv, wg, bg, sg, og[i], col)
    return n_macs


def _dense(xs, c0, conv, wg, bg, og, col, pointwise):
    """og (N, K, P) = wg @ im2col(xs) + bias, one GEMM for the whole chunk of images."""
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    n_n, kg, p_n = og.shape
    taps = wg.shape[1]
    if pointwise:  # a 1x1 stride-1 conv is a GEMM on the input as it lies
        np.matmul(wg, xs[:, c0 : c0 + cg].reshape(n_n, cg, p_n), out=og)
    else:
        cols = col[: taps * n_n * p_n].reshape(taps, n_n * p_n)
        for i in range(n_n):
            im2col(xs[i], c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, i * p_n)
        if n_n == 1:
            np.matmul(wg, cols, out=og[0])
        else:
            og[...] = (wg @ cols).reshape(kg, n_n, p_n).transpose(1, 0, 2)
    og += bg[:, None]
    return n_n * kg * p_n * taps


def _masked_batch(xs, c0, conv, wg, bg, sg, og, col):
    """A batch: channels with no masked element in one GEMM over all positions and images,
    channels with some in one GEMM per position, fully masked channels not at all."""
    n_n, kg, p_n = og.shape
    taps = wg.shape[1]
    colp = col[: p_n * n_n * taps].reshape(p_n, n_n, taps)
    need = ~sg.all(axis=0)
    for i in range(n_n):
        im2col_t(xs[i], c0, *conv, need, colp[:, i, :])
    n_masked = sg.sum(axis=1)
    full = np.flatnonzero(n_masked == 0)
    part = np.flatnonzero((n_masked > 0) & (n_masked < p_n))
    n_macs = 0
    if full.size:
        r = colp.reshape(p_n * n_n, taps) @ wg[full].T  # (P*N, F): every element of these channels
        og[:, full, :] = r.reshape(p_n, n_n, full.size).transpose(1, 2, 0) + bg[full][None, :, None]
        n_macs += p_n * n_n * full.size * taps
    if part.size:
        n_macs += gemm_positions(wg, colp, bg, sg, part, og)
    return n_macs


def _masked_image(x1, c0, conv, wg, bg, sg, og, col):
    """One image: channels with no masked element go to BLAS together, channels with some go to
    the run kernel, fully masked channels cost nothing."""
    kg, p_n = sg.shape
    taps = wg.shape[1]
    colv = col[: p_n * taps].reshape(p_n, taps)
    im2col_t(x1, c0, *conv, ~sg.all(axis=0), colv)
    n_masked = sg.sum(axis=1)
    full = np.flatnonzero(n_masked == 0)
    part = np.flatnonzero((n_masked > 0) & (n_masked < p_n))
    n_macs = 0
    if full.size == kg:
        return gemm_rows(wg, colv, bg, og)
    if full.size:
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
