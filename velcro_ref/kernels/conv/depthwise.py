"""Dense depthwise convolution (one input channel and one filter per group), its taps summed in
one chain in (fy, fx) order (docs/kernels.md): `conv_depth_blocks` with 8 channels in SIMD
lanes (a multiple of 8 channels), `conv_depthwise` with rows of outputs in the lanes."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..simd import VEC, depth_pass, fma32, store_depth
from .geom import ConvGeom, one_chain


def is_depthwise(geom: ConvGeom) -> bool:
    """One input channel and one filter per group, the taps in one chain: `conv_depthwise` (on
    the ROWS planes) or `conv_depth_blocks` (BLOCKS)."""
    return geom.c_in == geom.groups == geom.k_out and one_chain(geom)


@njit(cache=True, parallel=True)
def conv_depthwise(xp, cw, geom, res, has_res, act, out):
    """Layout: xp the ROWS input planes of the images (flat, `to_planes`); out and res (N * K *
    OH * OW,) flat NCHW (res: the residual, or out itself when has_res is 0); cw.rows[k] filter
    k's taps in (fy, fx) order. Returns the MACs of the outputs.

    Loop order: (image, channel) items in parallel, then output rows; for each row the taps in
    (fy, fx) order, each a fused multiply-add over the whole row of outputs (`fma32`, which LLVM
    vectorises across the outputs: each output's own sum stays in tap order), from +0; then
    bias, residual and activation, as `store_tile` does.
    """
    k_n, oh, ow = geom.k_out, geom.oh, geom.ow
    n_n = out.size // (k_n * oh * ow)
    kh, kw, sh, sw, dh, dw = geom.kh, geom.kw, geom.sh, geom.sw, geom.dh, geom.dw
    q, plane = cw.q, cw.plane
    rows, bias = cw.rows, cw.b  # taken out of the record once (see dense.conv_tiles)
    zero, six = np.float32(0.0), np.float32(6.0)
    for item in prange(n_n * k_n):
        n, k = item // k_n, item % k_n
        base = (n * geom.c_in + k) * plane
        bk = bias[k]
        acc = np.empty(ow, np.float32)
        for oy in range(oh):
            acc[:] = zero
            for fy in range(kh):
                row = base + (oy * sh + fy * dh) * sw * q
                for fx in range(kw):
                    at_x = row + (fx * dw) % sw * q + fx * dw // sw
                    wv = rows[k, fy * kw + fx]
                    for ox in range(ow):
                        acc[ox] = fma32(wv, xp[at_x + ox], acc[ox])
            at = ((n * k_n + k) * oh + oy) * ow
            dst = out[at : at + ow]
            if has_res:
                r = res[at : at + ow]
                for ox in range(ow):
                    acc[ox] = (acc[ox] + bk) + r[ox]
            else:
                for ox in range(ow):
                    acc[ox] = acc[ox] + bk
            if act == 0:
                dst[:] = acc
            elif act == 1:
                for ox in range(ow):
                    v = acc[ox]
                    dst[ox] = v if (v > zero) | (v != v) else zero
            else:
                for ox in range(ow):
                    v = acc[ox]
                    v = v if (v > zero) | (v != v) else zero
                    dst[ox] = v if (v < six) | (v != v) else six
    return n_n * k_n * oh * ow * kh * kw


DEPTH_TILES = 16  # tiles of VEC positions per work item of `conv_depth_blocks`


@njit(cache=True, parallel=True)
def conv_depth_blocks(xp, cw, geom, res, has_res, act, out):
    """Layout: xp the BLOCKS input of the images (flat, `to_blocks`); out and res as
    `conv_depthwise`; cw.tiles block b's tap t of channel 8 b + c at [(b * taps + t) * 8 + c],
    cw.offs each tap's offset and cw.pbase each output position's in a block. Returns the MACs.

    Loop order: (image, block of 8 channels, run of DEPTH_TILES tiles) items in parallel, then
    tiles of 8 consecutive output positions: `depth_pass` (the 8 channels in SIMD lanes, the
    taps in (fy, fx) order from +0), then bias, residual, activation (`store_depth`). A short
    last tile repeats its last position and stores the others only.
    """
    c_n, p_n = geom.c_in, geom.oh * geom.ow
    n_n = out.size // (c_n * p_n)
    taps = geom.kh * geom.kw
    n_b = c_n // VEC
    n_t = (p_n + VEC - 1) // VEC
    n_tc = (n_t + DEPTH_TILES - 1) // DEPTH_TILES
    wts, offs, bias, pbase, plane = cw.tiles, cw.offs, cw.b, cw.pbase, cw.plane  # see dense.conv_tiles
    for item in prange(n_n * n_b * n_tc):
        n, cb, tc = item // (n_b * n_tc), (item // n_tc) % n_b, item % n_tc
        parts = np.empty(VEC * VEC, np.float32)
        xb = (n * n_b + cb) * VEC * plane
        w0 = cb * taps * VEC
        where_k = (cb * VEC, p_n, has_res, act)
        for t in range(tc * DEPTH_TILES, min(n_t, (tc + 1) * DEPTH_TILES)):
            p0 = t * VEC
            pb = (
                xb + pbase[p0],
                xb + pbase[min(p0 + 1, p_n - 1)],
                xb + pbase[min(p0 + 2, p_n - 1)],
                xb + pbase[min(p0 + 3, p_n - 1)],
                xb + pbase[min(p0 + 4, p_n - 1)],
                xb + pbase[min(p0 + 5, p_n - 1)],
                xb + pbase[min(p0 + 6, p_n - 1)],
                xb + pbase[min(p0 + 7, p_n - 1)],
            )
            depth_pass(wts, w0, xp, pb, offs, (0, taps, 0), parts, 0)
            store_depth(parts, bias, res, out, (*where_k, min(VEC, p_n - p0)), n * c_n * p_n + p0)
    return n_n * c_n * p_n * taps
