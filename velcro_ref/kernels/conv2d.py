"""conv2d kernels: dense (im2col + BLAS), masked (skips masked output elements), SIMD lanes of images, direct.

Every kernel takes arrays and ints only and returns the MACs it executed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .simd import BATCH_LANES, LANES, dot_taps, lanes_conv

# Spatial filters with fewer taps than this per output element (depthwise 3x3 has 9) run in the
# direct loop: an im2col copy per tap would cost more than the MACs it feeds.
DIRECT_MAX_TAPS = 16
# Floats of taps (im2col rows, or the input windows read in place) per tile of positions of the
# masked kernels: a tile stays in L2 (1 MiB) while every channel of a block visits it.
TILE_FLOATS = 1 << 18
# Channel pairs per work item of the masked kernels, so that small layers still split over threads.
PAIR_BLOCK = 8
# From this many images on, masked convs and dense ones with spatial filters put the images in
# SIMD lanes (measured 1.1-2.9x faster than im2col + BLAS on every 3x3 layer of the zoo at batch
# 128 and 1.7x on ResNet-18's 7x7 stem at batch 64; a dense 1x1 conv stays one BLAS GEMM on the
# input as it lies).
LANES_MIN = 48
# Images per im2col chunk: at most this many floats of scratch (32 MiB).
CHUNK_FLOATS = 1 << 23


@njit(cache=True)
def padded_size(n, pad, out_n, stride, taps, dil):
    """Length of one zero-padded input axis that holds the input after `pad` zeros and every tap
    of every one of out_n outputs (the far side gets what the output size implies)."""
    return max(n + pad, (out_n - 1) * stride + (taps - 1) * dil + 1)


@njit(cache=True, parallel=True)
def im2col_t(xh, c_n, c0, cg, kh, kw, sh, sw, dh, dw, oh, ow, need, col, q0):
    """Layout: xh (HP, WP*C) one zero-padded image, channels last (element (iy, ix, c) at
    [iy, ix*C + c]); col (>= q0 + OH*OW, J) with row q0 + p for p = (oy, ox) and column
    (fy, fx, c), the order of `taps_last` filters, then zeros up to J.

    Loop order: oy (in parallel), ox, fy, fx. Rows whose `need[p]` is False are left untouched
    (every channel masked there). Each tap copies cg contiguous channels; with cg = C and dw = 1
    a whole filter row is one contiguous copy.
    """
    whole_row = cg == c_n and dw == 1
    for oy in prange(oh):
        for ox in range(ow):
            p = oy * ow + ox
            if not need[p]:
                continue
            j = 0
            for fy in range(kh):
                src = xh[oy * sh + fy * dh]
                if whole_row:
                    a = ox * sw * c_n
                    col[q0 + p, j : j + kw * c_n] = src[a : a + kw * c_n]
                    j += kw * c_n
                    continue
                for fx in range(kw):
                    a = (ox * sw + fx * dw) * c_n + c0
                    col[q0 + p, j : j + cg] = src[a : a + cg]
                    j += cg
            col[q0 + p, j:] = 0.0  # the zero columns that pad a row to a multiple of LANES


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
def pair_schedule(sg, part, tile_p):
    """The unmasked positions of the channels `part` of sg (K, P), two channels at a time.

    Returns pairs (R, 2) (a lone last channel pairs with itself), bounds and plist: for pair r,
    tile t of tile_p positions and kind c (0: both channels need the position, 1: only the
    first, 2: only the second), the positions are plist[bounds[i] : bounds[i + 1]] with
    i = (r * n_tiles + t) * 3 + c, in increasing order. Worked out once per mask, so that the
    kernels neither scan masked positions nor branch on them.
    """
    p_n = sg.shape[1]
    n_pairs = (part.size + 1) // 2
    n_tiles = (p_n + tile_p - 1) // tile_p
    pairs = np.empty((n_pairs, 2), np.int64)
    bounds = np.empty(n_pairs * n_tiles * 3 + 1, np.int64)
    plist = np.empty(n_pairs * p_n, np.int32)
    kinds = np.empty(tile_p, np.int8)  # of the positions of one tile, 3: neither channel
    i = b = 0
    for r in range(n_pairs):
        k1 = part[2 * r]
        k2 = part[2 * r + 1] if 2 * r + 1 < part.size else k1
        pairs[r, 0], pairs[r, 1] = k1, k2
        for t in range(n_tiles):
            p0, p1 = t * tile_p, min((t + 1) * tile_p, p_n)
            for p in range(p0, p1):
                on1 = not sg[k1, p]
                on2 = k2 != k1 and not sg[k2, p]
                kinds[p - p0] = 0 if on1 and on2 else 1 if on1 else 2 if on2 else 3
            for c in range(3):
                bounds[b] = i
                b += 1
                for p in range(p0, p1):
                    if kinds[p - p0] == c:
                        plist[i] = p
                        i += 1
    bounds[b] = i
    return pairs, bounds, plist[:i].copy()


@njit(cache=True)
def _rows8(w, k, x, g, bias, pos, img, geom, out, n):
    """Channel k at the positions g of image n (taps from `img` + pos[p]), in groups of 8, then
    4, then 1."""
    i, m = 0, g.size
    while m - i >= 8:
        o = (
            img + pos[g[i]],
            img + pos[g[i + 1]],
            img + pos[g[i + 2]],
            img + pos[g[i + 3]],
            img + pos[g[i + 4]],
            img + pos[g[i + 5]],
            img + pos[g[i + 6]],
            img + pos[g[i + 7]],
        )
        s = dot_taps(w, (k,), x, o, geom)
        for t in range(8):
            out[n, k, g[i + t]] = s[t] + bias[k]
        i += 8
    if m - i >= 4:
        o4 = (img + pos[g[i]], img + pos[g[i + 1]], img + pos[g[i + 2]], img + pos[g[i + 3]])
        s4 = dot_taps(w, (k,), x, o4, geom)
        for t in range(4):
            out[n, k, g[i + t]] = s4[t] + bias[k]
        i += 4
    for t in range(i, m):
        s1 = dot_taps(w, (k,), x, (img + pos[g[t]],), geom)
        out[n, k, g[t]] = s1[0] + bias[k]


@njit(cache=True, parallel=True)
def gemm_sampled(w, x, bias, sched, pos, stride, geom, out):
    """Layout: w (K, J) filters in (fy, fx, c) order, x the flat input of N images (the taps of
    position p of image n start at n * stride + pos[p], laid out as `geom` says, see
    `dot_taps`), sched = (pairs, bounds, plist, n_tiles) from `pair_schedule`, out (N, K, P).
    Returns the outputs computed.

    Loop order: (image, tile of positions, block of PAIR_BLOCK pairs) items in parallel, pairs,
    positions. Positions both channels of a pair need go in blocks of 2 x 4 (`dot_taps` loads
    each filter and input vector once for 8 outputs), the others in groups of 8 positions of
    one channel. A masked (k, p) is never visited: no MAC, out left as is. Every element is one
    dot_taps sum plus its bias, whatever its block, item or thread.
    """
    pairs, bounds, plist, n_tiles = sched
    n_n, n_pairs = out.shape[0], pairs.shape[0]
    n_blocks = (n_pairs + PAIR_BLOCK - 1) // PAIR_BLOCK
    n_done = 0
    for item in prange(n_n * n_tiles * n_blocks):
        n = item // (n_tiles * n_blocks)
        t = (item // n_blocks) % n_tiles
        img = n * stride
        done = 0
        for r in range(item % n_blocks * PAIR_BLOCK, min((item % n_blocks + 1) * PAIR_BLOCK, n_pairs)):
            k1, k2 = pairs[r, 0], pairs[r, 1]
            i = (r * n_tiles + t) * 3
            gb, g1, g2 = (
                plist[bounds[i] : bounds[i + 1]],
                plist[bounds[i + 1] : bounds[i + 2]],
                plist[bounds[i + 2] : bounds[i + 3]],
            )
            done += 2 * gb.size + g1.size + g2.size
            j = 0
            while gb.size - j >= 4:
                o = (img + pos[gb[j]], img + pos[gb[j + 1]], img + pos[gb[j + 2]], img + pos[gb[j + 3]])
                s = dot_taps(w, (k1, k2), x, o, geom)
                for u in range(4):
                    out[n, k1, gb[j + u]] = s[u] + bias[k1]
                    out[n, k2, gb[j + u]] = s[4 + u] + bias[k2]
                j += 4
            for u in range(j, gb.size):
                s2 = dot_taps(w, (k1, k2), x, (img + pos[gb[u]],), geom)
                out[n, k1, gb[u]] = s2[0] + bias[k1]
                out[n, k2, gb[u]] = s2[1] + bias[k2]
            _rows8(w, k1, x, g1, bias, pos, img, geom, out, n)
            _rows8(w, k2, x, g2, bias, pos, img, geom, out, n)
        n_done += done
    return n_done


@njit(cache=True, parallel=True)
def gemm_images8(w, x, bias, sched, pos, stride, geom, n0, out):
    """Layout as `gemm_sampled`; only the 8 images n0 .. n0 + 7. Returns the outputs computed.

    Loop order: (tile of positions, block of PAIR_BLOCK pairs) items in parallel, pairs,
    positions. Masks are shared by the images, so an unmasked (k, p) is always one group of 8
    images at p, whatever the mask; a position both channels of a pair need is one 2 x 8 block.
    A masked (k, p) is never visited. Each element is the same dot_taps sum as in
    `gemm_sampled`.
    """
    pairs, bounds, plist, n_tiles = sched
    n_pairs = pairs.shape[0]
    n_blocks = (n_pairs + PAIR_BLOCK - 1) // PAIR_BLOCK
    d = stride
    n_done = 0
    for item in prange(n_tiles * n_blocks):
        t = item // n_blocks
        done = 0
        for r in range(item % n_blocks * PAIR_BLOCK, min((item % n_blocks + 1) * PAIR_BLOCK, n_pairs)):
            k1, k2 = pairs[r, 0], pairs[r, 1]
            i = (r * n_tiles + t) * 3
            for c in range(3):
                for p in plist[bounds[i + c] : bounds[i + c + 1]]:
                    q = n0 * d + pos[p]
                    g = (q, q + d, q + 2 * d, q + 3 * d, q + 4 * d, q + 5 * d, q + 6 * d, q + 7 * d)
                    if c == 0:
                        s = dot_taps(w, (k1, k2), x, g, geom)
                        for u in range(8):
                            out[n0 + u, k1, p] = s[u] + bias[k1]
                            out[n0 + u, k2, p] = s[8 + u] + bias[k2]
                    else:
                        k = k1 if c == 1 else k2
                        s1 = dot_taps(w, (k,), x, g, geom)
                        for u in range(8):
                            out[n0 + u, k, p] = s1[u] + bias[k]
            done += 2 * (bounds[i + 1] - bounds[i]) + bounds[i + 3] - bounds[i + 1]
        n_done += done
    return n_done * 8


@njit(cache=True, parallel=True)
def conv_lanes(w, xb, bias, skip, kg, geom, c_n, sh, sw, wp, ow, outb):
    """Layout: w (K, J) filters in (fy, fx, c) order, xb (HP*WP*C, BATCH_LANES) padded images
    side by side (row (iy*WP + ix)*C + c), skip (K, P), outb (K, P, BATCH_LANES); geom = (kh,
    kw, rows per fy step, rows per fx step, C/groups).

    Loop order: positions in parallel, then the channels unmasked there, up to four of one group
    at a time in one `lanes_conv` call (each input vector feeds all of them).
    A masked (k, p) is never visited. Returns the MACs per image.
    """
    k_n, p_n = skip.shape
    cg = geom[4]
    n_done = 0
    for p in prange(p_n):
        oy = p // ow
        base = (oy * sh * wp + (p - oy * ow) * sw) * c_n
        ks = np.empty(k_n, np.int64)
        m = 0
        for k in range(k_n):  # branch-free list of the channels unmasked at p
            ks[m] = k
            m += not skip[k, p]
        i = 0
        while i < m:
            k = ks[i]
            r0 = base + (k // kg) * cg
            if i + 4 <= m and ks[i + 3] // kg == k // kg:
                lanes_conv(w, (k, ks[i + 1], ks[i + 2], ks[i + 3]), xb, r0, geom, bias, outb, p)
                i += 4
            elif i + 3 <= m and ks[i + 2] // kg == k // kg:
                lanes_conv(w, (k, ks[i + 1], ks[i + 2]), xb, r0, geom, bias, outb, p)
                i += 3
            elif i + 2 <= m and ks[i + 1] // kg == k // kg:
                lanes_conv(w, (k, ks[i + 1]), xb, r0, geom, bias, outb, p)
                i += 2
            else:
                lanes_conv(w, (k,), xb, r0, geom, bias, outb, p)
                i += 1
        n_done += m
    return n_done * cg * geom[0] * geom[1]


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
    hp = padded_size(h, pt, oh, sh, kh, dh)
    wp = padded_size(wd, pl, ow, sw, kw, dw)
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


def taps_last(w):
    """Filters (K, C/groups, KH, KW) as (K, J) rows in (fy, fx, c) order, the column order of
    `im2col_t`, with zero columns up to J = the taps rounded up to a multiple of LANES, so that
    every `dot_taps` run is whole vectors; the masked paths multiply by these."""
    k_n, cg, kh, kw = w.shape
    taps = cg * kh * kw
    out = aligned_floats(k_n * padded_taps(taps)).reshape(k_n, -1)
    out[:, taps:] = 0.0
    out[:, :taps] = w.transpose(0, 2, 3, 1).reshape(k_n, taps)
    return out


def padded_taps(taps):
    """Row length of `taps_last` filters and im2col_t rows: taps rounded up to a multiple of LANES."""
    return -(-taps // LANES) * LANES


class SkipPlan(NamedTuple):
    """A conv's mask with what the masked path derives from it, worked out once per mask (the
    engine keeps one per MaskSet): skip (K, OH, OW) bool, and per group of channels (skip
    (K/groups, P), positions some channel needs, the `pair_schedule` of the channels not fully
    masked with its number of tiles)."""

    skip: np.ndarray
    groups: tuple


def plan_skip(skip, groups, taps) -> SkipPlan:
    """The SkipPlan of a bool (K, OH, OW) mask of a conv with `groups` groups and `taps` taps
    (C/groups * KH * KW) per output."""
    k_n = skip.shape[0]
    kg, p_n = k_n // groups, skip.shape[1] * skip.shape[2]
    tile_p = max(8, min(512, TILE_FLOATS // taps))
    per_group = []
    for g in range(groups):
        sg = np.ascontiguousarray(skip[g * kg : (g + 1) * kg].reshape(kg, p_n))
        masked = sg.sum(axis=1)
        some = np.flatnonzero(masked < p_n)
        some = _pair_order(some[np.argsort(masked[some], kind="stable")])
        sched = (*pair_schedule(sg, some, tile_p), (p_n + tile_p - 1) // tile_p)
        per_group.append((sg, ~sg.all(axis=0), sched))
    return SkipPlan(skip, tuple(per_group))


def _pair_order(ks):
    """Channels ks sorted by density, reordered so that `pair_schedule` pairs neighbours in that
    order (channels that need about as many positions mostly need the same ones, so more
    positions go in blocks of both channels) and the pairs alternate sparse, dense, sparse, ...
    (the kernels' work items take consecutive pairs, and threads consecutive work items)."""
    m = ks.size // 2
    zigzag = np.empty(m, np.int64)
    zigzag[0::2], zigzag[1::2] = np.arange((m + 1) // 2), np.arange(m - 1, (m - 1) // 2, -1)
    return np.concatenate([ks[: 2 * m].reshape(m, 2)[zigzag].reshape(-1), ks[2 * m :]])


def aligned_floats(n):
    """An empty float32 array of n elements that starts on a 64-byte boundary, so that rows of
    a multiple of 16 floats start on a cache line and no vector load straddles two lines."""
    buf = np.empty(n + 16, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    return buf[start : start + n]


def conv2d(x, w, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, out, col=None, w_taps=None):
    """Convolution of x (N, C, H, W) float32 into out (N, K, OH, OW); returns executed MACs.

    `skip` is None (dense), a bool (K, OH, OW) array or its `plan_skip`: masked output elements
    are not computed and keep whatever `out` held. `col` is an optional float32 scratch buffer,
    `w_taps` the optional `taps_last(w)`; pb, pr are implied by out's shape. The path (SIMD
    lanes of images, direct, im2col + BLAS, sampled GEMM) depends on the batch, the filter and
    the mask, as docs/kernels.md lists; an image's result differs between paths only by float32
    rounding.
    """
    n_n = x.shape[0]
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    taps = cg * kh * kw
    b = np.ascontiguousarray(b, np.float32)  # the SIMD intrinsics read raw contiguous data
    sk = skip.skip if isinstance(skip, SkipPlan) else skip
    if n_n >= LANES_MIN and (skip is not None or kh * kw > 1):
        conv = (cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
        return _lanes(x, _filter_rows(w, w_taps), b, conv, k_n // groups, sk, out)
    if taps < DIRECT_MAX_TAPS and kh * kw > 1:
        sk = np.zeros((k_n, oh, ow), np.bool_) if skip is None else sk
        return conv2d_direct(x, w, b, sh, sw, pt, pl, dh, dw, groups, sk, out)
    p_n = oh * ow
    kg = k_n // groups
    conv = (cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
    if skip is None:
        w2 = w.reshape(k_n, taps)
        pointwise = kh == kw == 1 and sh == sw == 1 and pt == pl == pb == pr == 0
        chunk = max(1, min(n_n, CHUNK_FLOATS // (p_n * taps)))
        if col is None or col.size < chunk * p_n * taps:
            col = aligned_floats(chunk * p_n * taps)
    else:
        plan = skip if isinstance(skip, SkipPlan) else plan_skip(skip, groups, taps)
        c_n = x.shape[1]
        if kh == kw == 1 and pt == pl == 0:  # a strided 1x1 conv reads only every sh-th row, sw-th column
            x, conv = x[:, :, : oh * sh : sh, : ow * sw : sw], (cg, 1, 1, 1, 1, 0, 0, dh, dw, oh, ow)
        in_place = _in_place(conv, c_n)
        s2d = None if groups > 1 or in_place else _space_to_depth(x, w, conv)
        if s2d is None:
            xh, w2 = _pad_channels_last(x, conv), _filter_rows(w, w_taps)
        else:  # its rows are whole vectors: read in place
            xh, w2, conv = s2d
            c_n, in_place = conv[0], True
        if in_place:  # no im2col scratch, all images in one chunk
            chunk = n_n
        else:
            chunk = max(1, min(n_n, CHUNK_FLOATS // (p_n * w2.shape[1])))
            if col is None or col.size < chunk * p_n * w2.shape[1]:
                col = aligned_floats(chunk * p_n * w2.shape[1])
    n_macs = 0
    for g in range(groups):
        wg, bg = w2[g * kg : (g + 1) * kg], b[g * kg : (g + 1) * kg]
        for n0 in range(0, n_n, chunk):
            og = out[n0 : n0 + chunk, g * kg : (g + 1) * kg].reshape(-1, kg, p_n)
            if skip is None:
                n_macs += _dense(x[n0 : n0 + chunk], g * cg, conv, wg, bg, og, col, pointwise)
            else:
                n_macs += taps * _masked(
                    xh[n0 : n0 + chunk], c_n, g * cg, conv, in_place, wg, bg, plan.groups[g], og, col
                )
    return n_macs


def _filter_rows(w, w_taps):
    """`w_taps` checked to be `taps_last(w)`'s shape (the SIMD kernels step through its rows by
    its width), or `taps_last(w)` when it is None."""
    if w_taps is None:
        return taps_last(w)
    want = (w.shape[0], padded_taps(w.shape[1] * w.shape[2] * w.shape[3]))
    if w_taps.shape != want:
        raise ValueError(f"w_taps must be taps_last(w), shape {want}; found {w_taps.shape}")
    return np.ascontiguousarray(w_taps, np.float32)


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


def _pad_channels_last(x, conv):
    """x (N, C, H, W) as (N, HP, WP*C): zero-padded, channels last, every tap of every output
    inside, so that im2col_t copies without bounds checks."""
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    n_n, c_n, h, w = x.shape
    hp = padded_size(h, pt, oh, sh, kh, dh)
    wp = padded_size(w, pl, ow, sw, kw, dw)
    xh = np.empty((n_n, hp, wp * c_n), np.float32)
    channels_last(x, pt, pl, xh)
    return xh


@njit(cache=True, parallel=True)
def channels_last(x, pt, pl, xh):
    """Layout: x (N, C, H, W); xh (N, HP, WP*C) with element (n, iy, ix*C + c) = x[n, c, iy -
    pt, ix - pl], 0 outside x. Loop order (n, iy) in parallel, ix, c: a row's C x W source
    floats stay in L1 while its destination row is written in order. Against NumPy's
    transposed copy into np.zeros, 1.15-1.5x faster on ResNet-18's conv inputs at batch 1
    and 8 each on its own, and 1.6 against 1.8 ms for the 19 copies of a masked run at batch 1.

    This is `blocks_as_channels` with 1 x 1 blocks, in the loop order that suits many channels
    (contiguous writes); that one suits the stem's 3 (contiguous reads). Measured: it is 1.5-2x
    slower on these inputs, and a single kernel writing every block in order, with a bounds test
    per pixel, was 1.3x slower here and 2x slower on the stem."""
    n_n, c_n, h, w = x.shape
    hp = xh.shape[1]
    for item in prange(n_n * hp):
        n, iy = item // hp, item % hp
        row = xh[n, iy]
        if iy < pt or iy >= pt + h:
            row[:] = 0.0
            continue
        row[: pl * c_n] = 0.0
        row[(pl + w) * c_n :] = 0.0
        src = x[n, :, iy - pt]
        for ix in range(w):
            d = (ix + pl) * c_n
            for c in range(c_n):
                row[d + c] = src[c, ix]


def _in_place(conv, c_n):
    """Whether the sampled kernels can read a conv's taps from the padded channels-last input:
    every tap's C/groups channels, or every whole filter row (KW adjacent pixels, all C
    channels), must be a whole number of LANES-float vectors."""
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    return cg % LANES == 0 or (cg == c_n and dw == 1 and kw * cg % LANES == 0)


def _space_to_depth(x, w, conv):
    """A strided conv with one group and unit dilation as the equivalent stride-1 conv over the
    input's sh x sw blocks of pixels, the sh * sw * C values of a block stacked as channels,
    when that makes its filter rows whole vectors (`_in_place`). ResNet-18's 7x7 stride-2 stem:
    3 channels become 12 and a filter 4 x 4, so each output reads 4 runs of 48 floats where
    they lie instead of 147 taps copied into an im2col row.

    Returns (xh, w2, conv) of that conv: xh (N, HP', WP' * C') zero-padded channels last, w2
    (K, J') its filter rows (the filter zero-padded to whole blocks), conv its geometry. None
    when it does not apply, or when the zero-padded filter taps would meet a NaN/Inf of x
    (0 * Inf is NaN).
    """
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    kh2, kw2, c2 = -(-kh // sh), -(-kw // sw), sh * sw * cg
    if sh == sw == 1 or dh != 1 or dw != 1 or kw2 * c2 % LANES:
        return None
    if (kh % sh or kw % sw) and not np.isfinite(x).all():
        return None
    xh = np.empty((x.shape[0], oh - 1 + kh2, (ow - 1 + kw2) * c2), np.float32)  # every tap of every output
    blocks_as_channels(x, sh, sw, pt, pl, xh)
    wz = np.zeros((w.shape[0], cg, kh2 * sh, kw2 * sw), np.float32)
    wz[:, :, :kh, :kw] = w
    w2 = aligned_floats(w.shape[0] * kh2 * kw2 * c2).reshape(w.shape[0], -1)
    w2[...] = wz.reshape(-1, cg, kh2, sh, kw2, sw).transpose(0, 2, 4, 3, 5, 1).reshape(w.shape[0], -1)
    return xh, w2, (c2, kh2, kw2, 1, 1, 0, 0, 1, 1, oh, ow)


@njit(cache=True, parallel=True)
def blocks_as_channels(x, sh, sw, pt, pl, xh):
    """Layout: x (N, C, H, W); xh (N, HB, WB * sh * sw * C) with element (n, by, bx, (u, v, c))
    = x[n, c, by * sh + u - pt, bx * sw + v - pl], 0 outside x. Loop order (n, by) in
    parallel, u, v, c, then the blocks bx whose pixel lies inside x."""
    n_n, c_n, h, w = x.shape
    hb, wb = xh.shape[1], xh.shape[2] // (sh * sw * c_n)
    for item in prange(n_n * hb):
        n, by = item // hb, item % hb
        row = xh[n, by]
        row[:] = 0.0
        for u in range(sh):
            iy = by * sh + u - pt
            if iy < 0 or iy >= h:
                continue
            for v in range(sw):
                bx0 = max(0, (pl - v + sw - 1) // sw)  # the blocks whose column bx * sw + v - pl is in x
                bx1 = min(wb, (w - 1 + pl - v) // sw + 1)
                for c in range(c_n):
                    src, at = x[n, c, iy], (u * sw + v) * c_n + c
                    for bx in range(bx0, bx1):
                        row[bx * sh * sw * c_n + at] = src[bx * sw + v - pl]


def _masked(xh, c_n, c0, conv, in_place, wg, bg, plan, og, col):
    """The channels not fully masked in `gemm_images8` / `gemm_sampled`; returns the outputs
    computed. `in_place` (see `_in_place`): they read the taps from the padded channels-last
    input itself; otherwise from im2col rows, where positions masked in every channel are not
    even copied.

    Channels with nothing masked go the same way: measured on ResNet-18 at batch 1 and R = 0.3,
    sending them to one BLAS GEMM instead (with the im2col copy that needs) made the masked run
    1.3x slower end to end.
    """
    sg, need, sched = plan
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    n_n, kg, p_n = og.shape
    row = wg.shape[1]
    if in_place:
        src, stride = xh.reshape(-1), xh[0].size
        pos = _tap_offsets(xh.shape[2], c_n, c0, sh, sw, oh, ow)
        whole = cg == c_n and dw == 1  # a filter row's taps are one contiguous run
        geom = (kh, dh * xh.shape[2], 1, 0, kw * cg) if whole else (kh, dh * xh.shape[2], kw, dw * c_n, cg)
    else:
        rows = col[: n_n * p_n * row].reshape(n_n * p_n, row)
        for i in range(n_n):
            im2col_t(xh[i], c_n, c0, cg, kh, kw, sh, sw, dh, dw, oh, ow, need, rows, i * p_n)
        src, stride = rows.reshape(-1), p_n * row
        pos = np.arange(p_n, dtype=np.int64) * row
        geom = (1, 0, 1, 0, row)
    n_done = 0
    n8 = n_n - n_n % 8
    for n0 in range(0, n8, 8):  # images in eights: every unmasked element is a full block
        n_done += gemm_images8(wg, src, bg, sched, pos, stride, geom, n0, og)
    if n8 < n_n:
        n_done += gemm_sampled(wg, src[n8 * stride :], bg, sched, pos, stride, geom, og[n8:])
    return n_done


@functools.lru_cache(maxsize=256)
def _tap_offsets(wpc, c_n, c0, sh, sw, oh, ow):
    """Offset of tap (0, 0), channel c0, of every output position in one padded channels-last
    image (HP, WP*C), position p = (oy, ox). Kept per geometry (4-14 us a call, 0.15 ms of a
    masked ResNet-18 run at batch 1); callers must not write into it."""
    oy, ox = np.divmod(np.arange(oh * ow, dtype=np.int64), ow)
    return oy * (sh * wpc) + ox * (sw * c_n) + c0


def _lanes(x, w2, b, conv, kg, skip, out):
    """Batches of BATCH_LANES images through `conv_lanes`: masks are shared by the images, so
    every unmasked element is computed for all of them at once, one image per SIMD lane. The
    lanes past the last image of a partial batch are computed and dropped; the MACs returned
    are those of the batch's images, the count DESIGN.md defines."""
    cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = conv
    n_n, c_n, h, w = x.shape
    k_n, p_n = w2.shape[0], oh * ow
    hp = padded_size(h, pt, oh, sh, kh, dh)
    wp = padded_size(w, pl, ow, sw, kw, dw)
    xb = aligned_floats(hp * wp * c_n * BATCH_LANES).reshape(hp, wp, c_n, BATCH_LANES)
    xb[...] = 0.0  # the border stays zero; the interior is rewritten for every batch
    outb = aligned_floats(k_n * p_n * BATCH_LANES).reshape(k_n, p_n, BATCH_LANES)
    sk = np.zeros((k_n, p_n), np.bool_) if skip is None else skip.reshape(k_n, p_n)
    geom = (kh, kw, dh * wp * c_n, dw * c_n, cg)
    n_macs = 0
    for n0 in range(0, n_n, BATCH_LANES):
        nb = min(BATCH_LANES, n_n - n0)
        to_lanes(x, n0, nb, pt, pl, xb)
        per_image = conv_lanes(w2, xb.reshape(-1, BATCH_LANES), b, sk, kg, geom, c_n, sh, sw, wp, ow, outb)
        n_macs += nb * per_image
        from_lanes(outb, sk, n0, nb, out.reshape(n_n, k_n, p_n))
    return n_macs


@njit(cache=True, parallel=True)
def to_lanes(x, n0, nb, pt, pl, xb):
    """x[n0 : n0 + nb] (N, C, H, W) into the interior of xb (HP, WP, C, BATCH_LANES), image n in
    lane n - n0; lanes from nb on keep what they held (their results are never read). Loop
    order iy, ix, c, n: contiguous writes."""
    _, c_n, h, w = x.shape
    for iy in prange(h):
        for ix in range(w):
            for c in range(c_n):
                for n in range(nb):
                    xb[iy + pt, ix + pl, c, n] = x[n0 + n, c, iy, ix]


@njit(cache=True, parallel=True)
def from_lanes(outb, skip, n0, nb, out):
    """The unmasked elements of outb (K, P, BATCH_LANES) into out[n0 : n0 + nb] (N, K, P);
    masked elements of out keep what they held. Loop order k, n, p: contiguous writes."""
    k_n, p_n = skip.shape
    for k in prange(k_n):
        for n in range(nb):
            for p in range(p_n):
                if not skip[k, p]:
                    out[n0 + n, k, p] = outb[k, p, n]
