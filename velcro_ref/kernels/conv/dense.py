"""Dense convolution: blocked direct kernels, output positions in SIMD lanes.

Each output element is summed in the order of docs/kernels.md ("Order of summation") by
`chain_sums` tiles of a few filters by 3 segments of 8 outputs, read from the `to_planes` copy
of the input; `store_tile` adds the bias, the optional residual and activation, and writes the
NCHW output. The tile, item or thread that computes an element never changes its value.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..simd import VEC, chain_sums, store_tile

SEG_TILE = 3  # segments of VEC outputs per register tile
TILES_PER_ITEM = 4  # tiles (of segments) per parallel work item
BLOCKS_PER_ITEM = 8  # blocks of filters per parallel work item


@njit(cache=True)
def _tile(xp, cw, at, ep, out, sums, v_n):
    """One tile: the block of cw.tile_m filters at at = (xb, s0, w0, k0, m_n, ob, p_n) (input
    planes of the image and group from xb, segments from s0, weights from w0 in cw.tiles,
    output channels k0 .. k0 + m_n - 1 at ob, planes of p_n outputs) by v_n segments; ep =
    (res, has_res, act) as `store_tile` takes them."""
    xb, s0, w0, k0, m_n, ob, p_n = at
    segs, res, where = cw.segs, ep[0], (k0, m_n, p_n, ep[1], ep[2])
    ws = (w0, w0 + 1, w0 + 2, w0 + 3) if cw.tile_m == 4 else (w0, w0, w0, w0)
    if v_n == 3:
        xs = (xb + segs[s0, 0], xb + segs[s0 + 1, 0], xb + segs[s0 + 2, 0])
        obs = (ob + segs[s0, 1], ob + segs[s0 + 1, 1], ob + segs[s0 + 2, 1])
        nv = (segs[s0, 2], segs[s0 + 1, 2], segs[s0 + 2, 2])
        if cw.tile_m == 4:
            chain_sums(cw.tiles, ws, xp, xs, cw.offs, cw.starts, sums)
        else:
            chain_sums(cw.tiles, (w0,), xp, xs, cw.offs, cw.starts, sums)
        store_tile(sums, cw.b, res, out, where, obs, nv)
    elif v_n == 2:
        xs2 = (xb + segs[s0, 0], xb + segs[s0 + 1, 0])
        if cw.tile_m == 4:
            chain_sums(cw.tiles, ws, xp, xs2, cw.offs, cw.starts, sums)
        else:
            chain_sums(cw.tiles, (w0,), xp, xs2, cw.offs, cw.starts, sums)
        store_tile(
            sums, cw.b, res, out, where, (ob + segs[s0, 1], ob + segs[s0 + 1, 1]), (segs[s0, 2], segs[s0 + 1, 2])
        )
    else:
        if cw.tile_m == 4:
            chain_sums(cw.tiles, ws, xp, (xb + segs[s0, 0],), cw.offs, cw.starts, sums)
        else:
            chain_sums(cw.tiles, (w0,), xp, (xb + segs[s0, 0],), cw.offs, cw.starts, sums)
        store_tile(sums, cw.b, res, out, where, (ob + segs[s0, 1],), (segs[s0, 2],))


@njit(cache=True, parallel=True)
def conv_tiles(xp, cw, geom, res, has_res, act, out):
    """Layout: xp (N * C * plane,) the `to_planes` copy of the input; out and res (N * K * OH *
    OW,) flat NCHW (res: the residual, or out itself when has_res is 0); cw a ConvWeights whose
    tiles hold blocks of cw.tile_m filters. Returns the MACs of the outputs.

    Loop order: (image, group, run of TILES_PER_ITEM tiles of segments, run of BLOCKS_PER_ITEM
    blocks of filters) items in parallel, then tiles, then blocks: a tile's input stays in
    cache while every block of the item visits it. Each element: `chain_sums` (its taps in
    chains), then bias, residual, activation (`store_tile`).
    """
    k_n, groups = geom.k_out, geom.groups
    n_n = out.size // (k_n * geom.oh * geom.ow)
    kg, cg, p_n = k_n // groups, geom.c_in // groups, geom.oh * geom.ow
    taps = cg * geom.kh * geom.kw
    tile_m = cw.tile_m
    n_blocks = (kg + tile_m - 1) // tile_m
    segs = cw.segs
    n_s = segs.shape[0]
    n_t = (n_s + SEG_TILE - 1) // SEG_TILE
    n_tc = (n_t + TILES_PER_ITEM - 1) // TILES_PER_ITEM
    n_bc = (n_blocks + BLOCKS_PER_ITEM - 1) // BLOCKS_PER_ITEM
    img = geom.c_in * cw.plane
    for item in prange(n_n * groups * n_tc * n_bc):
        bc = item % n_bc
        tc = (item // n_bc) % n_tc
        g = (item // (n_bc * n_tc)) % groups
        n = item // (n_bc * n_tc * groups)
        sums = np.empty(tile_m * SEG_TILE * VEC, np.float32)
        xb = n * img + g * cg * cw.plane
        for t in range(tc * TILES_PER_ITEM, min(n_t, (tc + 1) * TILES_PER_ITEM)):
            s0 = t * SEG_TILE
            v_n = min(SEG_TILE, n_s - s0)
            for blk in range(bc * BLOCKS_PER_ITEM, min(n_blocks, (bc + 1) * BLOCKS_PER_ITEM)):
                k0 = g * kg + blk * tile_m
                w0 = (g * n_blocks + blk) * taps * tile_m
                ob = (n * k_n + k0) * p_n
                at = (xb, s0, w0, k0, min(tile_m, kg - blk * tile_m), ob, p_n)
                _tile(xp, cw, at, (res, has_res, act), out, sums, v_n)
    return n_n * k_n * p_n * taps
