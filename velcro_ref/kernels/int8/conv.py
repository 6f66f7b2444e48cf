"""int8 conv2d kernels: exact int32 accumulation, requantization fused, masked variants.

The input is first copied channels-last as int16 with its zero point subtracted (`pack_input`,
zero padding is then exactly the zero point, as onnxruntime pads), so every product is an exact
int16 x int16 one and the weights need no zero-point correction. Paths:

- tiles (`conv_tiles`, `conv_tiles_masked`): groups with more than one input channel; blocks of
  TILE_P positions of an output row x TILE_K output channels by simd.conv_tile.
- depthwise (`conv_depthwise`, `conv_depthwise_masked`): one input channel per group; each
  position's taps along the channels, which LLVM vectorises (integer sums need no fastmath).

A masked output element (skip[k, oy, ox]) is never computed and out keeps what it holds; a tile
that mixes masked and unmasked elements computes its unmasked ones one at a time. Every kernel
returns the MACs of the elements it computed: (C / groups) * kh * kw each, the zero taps that
pad channels to an even count or a tile to TILE_P positions and TILE_K channels not counted.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .requant import requant_value
from .simd import TILE_K, TILE_P, conv_tile


def padded_size(n, pad, out_n, stride, taps, dil):
    """Length of one zero-padded input axis holding every tap of every one of out_n outputs."""
    return max(n + pad, (out_n - 1) * stride + (taps - 1) * dil + 1)


@njit(cache=True, parallel=True)
def pack_input(x, x_zero_point, pt, pl, groups, cgp, xp):
    """Layout: x (N, C, H, W) uint8/int8; xp (N, HP, WP, groups * cgp) int16, written whole:
    xp[n, pt + iy, pl + ix, g * cgp + c] = x[n, g * Cg + c, iy, ix] - x_zero_point, zeros
    elsewhere (padding, and channels past Cg in a group). Loop (n, padded row) in parallel."""
    n_n, c_n, h, w = x.shape
    hp = xp.shape[1]
    cg = c_n // groups
    for item in prange(n_n * hp):
        n, r = item // hp, item % hp
        row = xp[n, r]
        row[:, :] = 0
        iy = r - pt
        if iy < 0 or iy >= h:
            continue
        for g in range(groups):
            for c in range(cg):
                src = x[n, g * cg + c, iy]
                for ix in range(w):
                    row[pl + ix, g * cgp + c] = np.int16(np.int32(src[ix]) - x_zero_point)


@njit(cache=True)
def _tile_offsets(row0, ox0, ow, step_x):
    """Offsets of the TILE_P positions ox0.. of an output row (past the row end: the last one)."""
    return (
        row0 + ox0 * step_x,
        row0 + min(ox0 + 1, ow - 1) * step_x,
        row0 + min(ox0 + 2, ow - 1) * step_x,
        row0 + min(ox0 + 3, ow - 1) * step_x,
    )


@njit(cache=True)
def _dot(xf, base, row, kh, step_y, kw, step_x, cgp):
    """Exact sum over taps (fy, fx) and channels c of xf[base + fy*step_y + fx*step_x + c] *
    row[(fy*kw + fx)*cgp + c]; the channel loop vectorises."""
    s = 0
    for fy in range(kh):
        for fx in range(kw):
            b = base + fy * step_y + fx * step_x
            r = (fy * kw + fx) * cgp
            for c in range(cgp):
                s += np.int32(xf[b + c]) * np.int32(row[r + c])
    return np.int32(s)  # exact: the accumulator bound was checked when the layer was prepared


@njit(cache=True, parallel=True)
def conv_tiles(xp, pc, geom, rq, out):
    """Layout: xp (N, HP, WP, G*cgp) from pack_input, out (N, K, OH, OW); loop (n, g, block of
    TILE_K channels, oy) in parallel, then tiles of TILE_P positions along ox, each tile summed
    by simd.conv_tile (taps (fy, fx, channel pair)) and requantized with its bias. Returns the
    number of output elements."""
    n_n, hp, wp, ct = xp.shape
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups, cgp = geom.groups, pc.cgp
    kg = k_n // groups
    n_blocks = (kg + TILE_K - 1) // TILE_K
    tgeom = (geom.kh, geom.dh * wp * ct, geom.kw, geom.dw * ct, cgp // 2)
    block_len = geom.kh * geom.kw * cgp * TILE_K
    xf = xp.reshape(-1)
    for item in prange(n_n * groups * n_blocks * oh):
        oy = item % oh
        blk = item // oh
        kb, g, n = blk % n_blocks, (blk // n_blocks) % groups, blk // (n_blocks * groups)
        acc = np.empty(TILE_P * TILE_K, np.int32)
        row0 = n * hp * wp * ct + oy * geom.sh * wp * ct + g * cgp
        k0 = g * kg + kb * TILE_K
        k_count = min(TILE_K, kg - kb * TILE_K)
        w0 = (g * n_blocks + kb) * block_len
        for ox0 in range(0, ow, TILE_P):
            conv_tile(pc.tiles, w0, xf, _tile_offsets(row0, ox0, ow, geom.sw * ct), tgeom, acc)
            for p in range(min(TILE_P, ow - ox0)):
                for c in range(k_count):
                    k = k0 + c
                    out[n, k, oy, ox0 + p] = requant_value(np.int64(acc[p * TILE_K + c]) + pc.bias[k], k, rq)
    return n_n * k_n * oh * ow


@njit(cache=True, parallel=True)
def conv_tiles_masked(xp, pc, geom, rq, skip, out):
    """`conv_tiles` that skips masked elements (skip (K, OH, OW) bool): a tile with every
    element unmasked goes through simd.conv_tile, a tile with some masked computes its
    unmasked elements one by one (filter rows, taps in (fy, fx, c) order), a fully masked one
    is skipped. Returns the number of elements computed."""
    n_n, hp, wp, ct = xp.shape
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups, cgp = geom.groups, pc.cgp
    kg = k_n // groups
    n_blocks = (kg + TILE_K - 1) // TILE_K
    step_y, step_x = geom.dh * wp * ct, geom.dw * ct
    tgeom = (geom.kh, step_y, geom.kw, step_x, cgp // 2)
    block_len = geom.kh * geom.kw * cgp * TILE_K
    xf = xp.reshape(-1)
    n_items = n_n * groups * n_blocks * oh
    done = np.zeros(n_items, np.int64)
    for item in prange(n_items):
        oy = item % oh
        blk = item // oh
        kb, g, n = blk % n_blocks, (blk // n_blocks) % groups, blk // (n_blocks * groups)
        acc = np.empty(TILE_P * TILE_K, np.int32)
        row0 = n * hp * wp * ct + oy * geom.sh * wp * ct + g * cgp
        k0 = g * kg + kb * TILE_K
        k_count = min(TILE_K, kg - kb * TILE_K)
        w0 = (g * n_blocks + kb) * block_len
        count = 0
        for ox0 in range(0, ow, TILE_P):
            p_count = min(TILE_P, ow - ox0)
            live = 0
            for p in range(p_count):
                for c in range(k_count):
                    live += not skip[k0 + c, oy, ox0 + p]
            if live == 0:
                continue
            count += live
            if live == p_count * k_count:
                conv_tile(pc.tiles, w0, xf, _tile_offsets(row0, ox0, ow, geom.sw * ct), tgeom, acc)
                for p in range(p_count):
                    for c in range(k_count):
                        k = k0 + c
                        out[n, k, oy, ox0 + p] = requant_value(np.int64(acc[p * TILE_K + c]) + pc.bias[k], k, rq)
                continue
            for p in range(p_count):
                base = row0 + (ox0 + p) * geom.sw * ct
                for c in range(k_count):
                    k = k0 + c
                    if skip[k, oy, ox0 + p]:
                        continue
                    s = _dot(xf, base, pc.rows[k], geom.kh, step_y, geom.kw, step_x, cgp)
                    out[n, k, oy, ox0 + p] = requant_value(s + pc.bias[k], k, rq)
        done[item] = count
    return done.sum()


@njit(cache=True, parallel=True)
def conv_depthwise(xp, pc, geom, rq, out):
    """Layout: xp (N, HP, WP, C) from pack_input (cgp = 1), out (N, K, OH, OW) with K = C * m;
    loop (n, oy) in parallel, then ox, taps (fy, fx), channels (vectorised); filters tap-major
    in pc.tiles (kh * kw, K). Output channel k reads input channel k // m. Returns the number of
    output elements."""
    n_n, hp, wp, c_n = xp.shape
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    mult = k_n // c_n
    taps = geom.kh * geom.kw
    xf = xp.reshape(-1)
    for item in prange(n_n * oh):
        n, oy = item // oh, item % oh
        acc = np.empty(k_n, np.int32)
        for ox in range(ow):
            acc[:] = 0
            for t in range(taps):
                fy, fx = t // geom.kw, t % geom.kw
                base = ((n * hp + oy * geom.sh + fy * geom.dh) * wp + ox * geom.sw + fx * geom.dw) * c_n
                wt = pc.tiles[t * k_n : (t + 1) * k_n]
                if mult == 1:
                    for k in range(k_n):
                        acc[k] += np.int32(xf[base + k]) * np.int32(wt[k])
                else:
                    for k in range(k_n):
                        acc[k] += np.int32(xf[base + k // mult]) * np.int32(wt[k])
            for k in range(k_n):
                out[n, k, oy, ox] = requant_value(np.int64(acc[k]) + pc.bias[k], k, rq)
    return n_n * k_n * oh * ow


@njit(cache=True, parallel=True)
def conv_depthwise_masked(xp, pc, geom, rq, skip, out):
    """`conv_depthwise` that computes unmasked elements only (skip (K, OH, OW)), each by itself.
    Returns the number of elements computed."""
    n_n, hp, wp, c_n = xp.shape
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    mult = k_n // c_n
    taps = geom.kh * geom.kw
    xf = xp.reshape(-1)
    done = np.zeros(n_n * oh, np.int64)
    for item in prange(n_n * oh):
        n, oy = item // oh, item % oh
        count = 0
        for ox in range(ow):
            for k in range(k_n):
                if skip[k, oy, ox]:
                    continue
                s = 0
                for t in range(taps):
                    fy, fx = t // geom.kw, t % geom.kw
                    base = ((n * hp + oy * geom.sh + fy * geom.dh) * wp + ox * geom.sw + fx * geom.dw) * c_n
                    s += np.int32(xf[base + k // mult]) * np.int32(pc.tiles[t * k_n + k])
                out[n, k, oy, ox] = requant_value(s + pc.bias[k], k, rq)
                count += 1
        done[item] = count
    return done.sum()


def conv2d(x, x_zero_point, pc, geom, rq, skip, out):
    """int8 conv2d. x (N, C, H, W) uint8/int8 with x_zero_point; pc a qprepare.PackedConv;
    geom a qprepare.ConvGeom; rq a qprepare.Requant; skip None (dense) or bool (K, OH, OW);
    out (N, K, OH, OW) uint8/int8, masked elements left as they are. Returns executed MACs."""
    n_n, c_n, h, w = x.shape
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    if n_n == 0 or k_n == 0 or oh == 0 or ow == 0:
        return 0
    hp = padded_size(h, geom.pt, oh, geom.sh, geom.kh, geom.dh)
    wp = padded_size(w, geom.pl, ow, geom.sw, geom.kw, geom.dw)
    cg = c_n // geom.groups
    xp = np.empty((n_n, hp, wp, geom.groups * pc.cgp), np.int16)
    pack_input(x, x_zero_point, geom.pt, geom.pl, geom.groups, pc.cgp, xp)
    macs_each = cg * geom.kh * geom.kw
    if pc.depthwise:
        if skip is None:
            conv_depthwise(xp, pc, geom, rq, out)
            return n_n * k_n * oh * ow * macs_each
        return int(conv_depthwise_masked(xp, pc, geom, rq, skip, out)) * macs_each
    if skip is None:
        conv_tiles(xp, pc, geom, rq, out)
        return n_n * k_n * oh * ow * macs_each
    return int(conv_tiles_masked(xp, pc, geom, rq, skip, out)) * macs_each
