"""Dense convolution: blocked direct kernels on a copy of the input (`planes_input`).

`conv_tiles` puts output positions in the SIMD lanes (`tile_pass` tiles of 4 filters by 3
segments of 8 outputs), `conv_lanes` filters (`lane_pass` tiles of 16 filters by 6 positions),
`conv_short_lanes` too, for filters whose chains are short (a tile's chains one after another),
`conv_direct` output positions again, 16 a vector, for 1x1 convs read in place.
All sum each output in the order of docs/kernels.md ("Order of summation"), chain after chain
in runs of taps whose weights stay in L1, and finish it with bias, optional residual and
activation (`store_tile`, `store_lanes`). The tile, item or thread that computes an output
never changes its value.
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.extending import register_jitable

from ..jit import njit
from ..simd import (
    CHAINS,
    DVEC,
    VEC,
    direct_tile,
    lane_pass,
    prefetch_write,
    store_lanes,
    store_tile,
    tile_pass,
    wide_vectors,
)
from .geom import group_taps, one_chain
from .layouts import BLOCKS, DIRECT, to_blocks, to_planes

SEG_TILE = 3  # segments of VEC outputs per register tile of `conv_tiles`
POS_TILE = 6  # output positions per register tile of `conv_lanes`
WIDE = POS_TILE + 1  # positions of the last tile of a plane of POS_TILE k + 1 (`lane_tiles`)
LANE_K = 16  # filters per register tile of `conv_lanes` (one 16-lane vector)
TILE_K = 4  # filters per register tile of `conv_tiles` (groups of fewer: one)
N_ACC = 12  # vector accumulators of either tile
LANE_ACC = 2 * WIDE  # room for the accumulators of a `conv_lanes` tile, wide or not
# Blocks of LANE_K filters a `conv_lanes` tile of CHAINS chains takes at once (`lane_blocks`),
# sharing each broadcast input value: 4 where vectors are 16 floats wide (AVX-512: 24 of 32
# registers hold the accumulators), else 1 (with 8-float vectors a block's 6 accumulators take 12
# of 16 registers). The kernels take any count from 1 to MAX_BLOCKS (`work_split` passes it).
LANE_BLOCKS = 4 if wide_vectors() else 1
MAX_BLOCKS = 4
# Bytes of weights per run of taps (of all the blocks a tile takes): a run stays in L1 (32 KiB)
# while the tiles of a work item go through it, their sums kept in memory between runs. 18 KiB is
# 72 taps of 4 blocks, a whole chain of a 3x3 conv on 64 channels (9 * 64 / 8 taps), or 288 of
# one block (16 KiB cut those chains into runs of 64 and 8 taps: 3 - 5% slower, docs/kernels.md).
RUN_BYTES = 18 << 10
SHORT_TAPS = 256  # taps of a group's filters, at most, for `conv_short_lanes` (a block's 16 KiB)
# `conv_direct`'s tile: DIRECT_M filters by DIRECT_V segments of DVEC positions, 24 accumulators
# of 32 AVX-512 registers. It takes dense 1x1 convs of stride 1 where vectors are 16 floats wide
# (DIRECT_TILES): with 8-float vectors its accumulators would not fit in the registers.
DIRECT_M = 8
DIRECT_V = 3
DIRECT_TILES = wide_vectors()
# Positions per plane from which `conv_direct` also takes 1x1 convs of CHAINS chains (each chain's
# sums in the stack, then the tree): faster than the filters-in-lanes kernels on 28x28 and 56x56
# planes, slower on 14x14 and 7x7 (docs/kernels.md, "Measured").
DIRECT_CHAINS_FROM = 28 * 28
# Tiles per work item, at most: their sums (3.5 KiB per tile and block a tile takes) stay in L2.
ITEM_TILES = 32
ITEMS_PER_THREAD = 4  # work items per thread, at least, for the load to even out


@register_jitable
def planes_input(x, geom, planes, plane_of, scratch, threads):
    """The images x (N, C, H, W) in the layout `planes` describes, flat: x itself when DIRECT,
    else its copy (`to_planes` or `to_blocks` on `threads` threads, `copy_threads`) in scratch
    (N * C * plane floats). Plain Python from Python, compiled into jitted callers
    (`dispatch.PLANES_RUNS`)."""
    if planes.kind == DIRECT:
        return np.ascontiguousarray(x).reshape(-1)
    xp = scratch[: x.shape[0] * geom.c_in * planes.plane].reshape(x.shape[0], -1)
    if planes.kind == BLOCKS:
        to_blocks(x, geom, planes, xp, threads)
    else:
        to_planes(x, geom, planes, plane_of, xp, threads)
    return xp.reshape(-1)


def planes_floats(planes, geom):
    """Floats of scratch `planes_input` needs per image."""
    return 0 if planes.kind == DIRECT else geom.c_in * planes.plane


def work_split(weights, geom, n_n, threads):
    """(tiles per item, blocks per item, blocks per tile) of the dense kernels for n_n images: an
    item takes a run of at most ITEM_TILES tiles (over the images' output planes, image after
    image) and a run of filter blocks, which its tiles take `lane_blocks` at a time. Numba's
    prange hands each thread one contiguous range of items, of equal count, up front (no work
    stealing), so the runs are of about one length and the items, where the blocks allow, a
    multiple of `threads` in number (else, where the tiles allow, by more runs of tiles): else one
    thread finishes while the other still has a whole item to go. A tile's blocks are as even as
    the group's blocks allow (6 as 3 + 3, not 4 + 2). Only speed depends on the split, never a
    value."""
    m = weights.tile_m
    per_plane = lane_tiles(geom.oh * geom.ow) if m == LANE_K else -(-weights.segs.shape[0] // SEG_TILE)
    n_blocks = -(-(geom.k_out // geom.groups) // m)
    unit = lane_blocks(weights.starts.size - 1) if m == LANE_K else 1  # blocks a tile takes at once
    assert 1 <= unit <= MAX_BLOCKS
    unit = -(-n_blocks // -(-n_blocks // unit))
    n_tiles = n_n * geom.groups * per_plane
    n_units = -(-n_blocks // unit)
    tiles = -(-n_tiles // -(-n_tiles // ITEM_TILES))  # runs of equal length
    n_tc = -(-n_tiles // tiles)
    top = -(-n_units // min(n_units, max(1, -(-ITEMS_PER_THREAD * threads // n_tc))))
    for per in range(top, 0, -1):  # the longest runs of equal length that give whole rounds
        if n_units % per == 0 and n_tc * (n_units // per) % threads == 0:
            return tiles, per * unit, unit
    n_bc = -(-n_units // top)
    for n_more in range(n_tc + 1, min(n_tiles, n_tc + threads) + 1):  # else more runs of tiles
        more = -(-n_tiles // n_more)
        if -(-n_tiles // more) * n_bc % threads == 0:
            return more, top * unit, unit
    return tiles, top * unit, unit


def lane_blocks(n_chains):
    """Blocks of filters a `conv_lanes` tile takes at once: LANE_BLOCKS for CHAINS chains; one
    for one chain, whose few taps make the tile's sums a round trip to memory (more blocks' sums
    leave L1: MobileNet-V2's 1x1 convs on 16 - 32 channels took 1.1 - 1.3x the time with 4)."""
    return LANE_BLOCKS if n_chains == CHAINS else 1


@njit(cache=True)
def lane_tiles(p_n):
    """Tiles of `conv_lanes` per plane of p_n output positions: POS_TILE positions each, the
    last one short (its last position repeated); on a plane of POS_TILE k + 1 positions (7 x 7:
    49) the last tile takes WIDE, for a short tile of one position would cost a whole one (9
    tiles for 49 positions, 8 with the wide one; a tile of WIDE runs at about 0.9 of the speed
    per output, measured on this machine, so it is kept for that case)."""
    if p_n > POS_TILE and p_n % POS_TILE == 1:
        return p_n // POS_TILE
    return -(-p_n // POS_TILE)


@njit(cache=True)
def _wide(t, n_t, p_n):
    """Whether tile t of a plane's n_t holds WIDE positions."""
    return t == n_t - 1 and p_n - t * POS_TILE == WIDE


@njit(cache=True)
def _positions(p0, p_n):
    """The WIDE positions from p0, the last repeated past the plane's end (a tile of POS_TILE
    takes the first POS_TILE)."""
    return (
        p0,
        min(p0 + 1, p_n - 1),
        min(p0 + 2, p_n - 1),
        min(p0 + 3, p_n - 1),
        min(p0 + 4, p_n - 1),
        min(p0 + 5, p_n - 1),
        min(p0 + 6, p_n - 1),
    )


@njit(cache=True)
def _offset(b, q):
    """b + q[i] for the WIDE positions q of `_positions`."""
    return (b + q[0], b + q[1], b + q[2], b + q[3], b + q[4], b + q[5], b + q[6])


@njit(cache=True)
def _shifted(b, t, q):
    """b + t[q[i]] for the WIDE positions q of `_positions`."""
    return (b + t[q[0]], b + t[q[1]], b + t[q[2]], b + t[q[3]], b + t[q[4]], b + t[q[5]], b + t[q[6]])


@njit(cache=True)
def chain_runs(starts, run):
    """The runs of taps the dense kernels go through, in order: rows (chain, first, end, more),
    each chain's taps starts[c]:starts[c + 1] cut into runs of at most `run`; more is 1 after the
    chain's first run (the run adds to the chain's sums). An empty chain is one empty run: it
    still writes its +0."""
    n_runs = 0
    for c in range(starts.size - 1):
        n_runs += max(1, (starts[c + 1] - starts[c] + run - 1) // run)
    rows = np.empty((n_runs, 4), np.int64)
    i = 0
    for c in range(starts.size - 1):
        c0, c1 = starts[c], starts[c + 1]
        for r0 in range(c0, max(c1, c0 + 1), run):
            rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 3] = c, r0, min(c1, r0 + run), 1 if r0 > c0 else 0
            i += 1
    return rows


@njit(cache=True)
def _segment_bases(t_lo, t_hi, n_t, groups, img, group_floats, segs, group_weights):
    """(tiles, SEG_TILE + 1) int64: for the tiles t_lo .. t_hi - 1 of a work item of
    `conv_tiles`, the input offsets of their SEG_TILE segments' tap (0, 0) (a short last tile
    repeating its last segment) and where their group's filter blocks begin in the packed
    weights; worked out once per item, not at every run of taps."""
    n_s = segs.shape[0]
    bases = np.empty((t_hi - t_lo, SEG_TILE + 1), np.int64)
    for ti in range(t_lo, t_hi):
        g, t, xb = _tile_origin(ti, n_t, groups, img, group_floats)
        i, a = ti - t_lo, t * SEG_TILE
        for v in range(SEG_TILE):
            bases[i, v] = xb + segs[min(a + v, n_s - 1), 0]
        bases[i, SEG_TILE] = g * group_weights
    return bases


@njit(cache=True)
def _lane_bases(t_lo, t_hi, n_t, groups, img, group_floats, pbase, p_n, group_weights):
    """(tiles, WIDE + 2) int64: for the tiles t_lo .. t_hi - 1 of a work item of `conv_lanes`,
    the input offsets of their WIDE positions' tap (0, 0), where their group's filter blocks
    begin in the packed weights (column WIDE) and whether the tile is wide (column WIDE + 1);
    worked out once per item, not at every run of taps."""
    bases = np.empty((t_hi - t_lo, WIDE + 2), np.int64)
    for ti in range(t_lo, t_hi):
        g, t, xb = _tile_origin(ti, n_t, groups, img, group_floats)
        i = ti - t_lo
        b = _shifted(xb, pbase, _positions(t * POS_TILE, p_n))
        bases[i, 0], bases[i, 1], bases[i, 2], bases[i, 3], bases[i, 4], bases[i, 5], bases[i, 6] = b
        bases[i, WIDE] = g * group_weights
        bases[i, WIDE + 1] = _wide(t, n_t, p_n)
    return bases


@njit(cache=True)
def _bases_of(bases, i):
    """The WIDE position bases of tile i of `_lane_bases`."""
    return (bases[i, 0], bases[i, 1], bases[i, 2], bases[i, 3], bases[i, 4], bases[i, 5], bases[i, 6])


@njit(cache=True, inline="always")
def _lane_tile_pass(wts, w0, nb, wstep, xp, bases, i, offs, span, parts, at):
    """`lane_pass` of tile i of `_lane_bases`, of POS_TILE positions or WIDE, for nb blocks of
    filters from w0, wstep floats apart, their sums from parts[at], LANE_ACC * VEC floats apart."""
    pb = _bases_of(bases, i)
    if bases[i, WIDE + 1]:
        _wide_pass(wts, w0, nb, wstep, xp, pb, offs, span, parts, at)
    else:
        _blocks_pass(wts, w0, nb, wstep, xp, pb[:POS_TILE], offs, span, parts, at)


@njit(cache=True, inline="always")
def _wide_pass(wts, w0, nb, wstep, xp, pb, offs, span, parts, at):
    """`_blocks_pass` of a WIDE tile: 4 blocks as two passes of 2 (their 28 accumulators and 4
    weight vectors would take every one of AVX-512's 32 registers)."""
    if nb == 4:
        _blocks_pass(wts, w0, 2, wstep, xp, pb, offs, span, parts, at)
        _blocks_pass(wts, w0 + 2 * wstep, 2, wstep, xp, pb, offs, span, parts, at + 2 * LANE_ACC * VEC)
    else:
        _blocks_pass(wts, w0, nb, wstep, xp, pb, offs, span, parts, at)


@njit(cache=True, inline="always")
def _blocks_pass(wts, w0, nb, wstep, xp, pb, offs, span, parts, at):
    """`lane_pass` of nb (at most MAX_BLOCKS) blocks of filters at once (see `_lane_tile_pass`)."""
    a = LANE_ACC * VEC
    if nb == 4:
        ws, ats = (w0, w0 + wstep, w0 + 2 * wstep, w0 + 3 * wstep), (at, at + a, at + 2 * a, at + 3 * a)
        lane_pass(wts, ws, xp, pb, offs, span, parts, ats)
    elif nb == 3:
        lane_pass(wts, (w0, w0 + wstep, w0 + 2 * wstep), xp, pb, offs, span, parts, (at, at + a, at + 2 * a))
    elif nb == 2:
        lane_pass(wts, (w0, w0 + wstep), xp, pb, offs, span, parts, (at, at + a))
    else:
        lane_pass(wts, w0, xp, pb, offs, span, parts, at)


@njit(cache=True)
def _tile_origin(ti, n_t, groups, img, group_floats):
    """(group, tile within its plane, offset of the image's group in the input) of work tile ti."""
    g = (ti // n_t) % groups
    return g, ti % n_t, (ti // (groups * n_t)) * img + g * group_floats


@njit(cache=True)
def _slots(u, d):
    """Where the CHAINS chains' sums of a tile lie in `parts`, from u, d floats apart."""
    return (u, u + d, u + 2 * d, u + 3 * d, u + 4 * d, u + 5 * d, u + 6 * d, u + 7 * d)


@njit(cache=True)
def _grid(cw, geom, out_size, split, n_t):
    """What a dense kernel call derives from its conv, n_t tiles per plane and split (`work_split`):
    (images, filters and channels per group, positions per plane, taps, filter blocks per group,
    tiles in all, runs of tiles, runs of blocks, floats per image and per plane of the input)."""
    n_n = out_size // (geom.k_out * geom.oh * geom.ow)
    kg, cg = geom.k_out // geom.groups, geom.c_in // geom.groups
    n_blocks = (kg + cw.tile_m - 1) // cw.tile_m
    n_all = n_n * geom.groups * n_t
    tpi, bpi = split[0], split[1]
    n_tc, n_bc = (n_all + tpi - 1) // tpi, (n_blocks + bpi - 1) // bpi
    taps = cg * geom.kh * geom.kw
    return n_n, kg, cg, geom.oh * geom.ow, taps, n_blocks, n_all, n_tc, n_bc, geom.c_in * cw.plane, cw.plane


@njit(cache=True, parallel=True)
def conv_tiles(xp, cw, geom, res, has_res, act, out, split):
    """Layout: xp the dense kernels' input of the images (flat, `planes_input`); out and res (N *
    K * OH * OW,) flat NCHW (res: the residual, or out itself when has_res is 0); cw a
    ConvWeights whose tiles hold blocks of cw.tile_m (TILE_K or 1) filters. Returns the MACs.

    Loop order: (run of split[0] tiles, run of split[1] filter blocks) items in parallel (tile i:
    image i // (groups * T), group, segments of tile i % T); then blocks; runs of RUN_BYTES of
    the chains' weights, chain after chain (`chain_runs`); tiles (`tile_pass`, each tile's sums
    in `parts` between runs); then each tile's chains combined, bias, residual, activation (`store_tile`). A short
    last tile repeats its last segment (same outputs, same bits).
    """
    k_n, groups, tile_m, segs = geom.k_out, geom.groups, cw.tile_m, cw.segs
    n_s = segs.shape[0]
    n_t = (n_s + SEG_TILE - 1) // SEG_TILE
    n_n, kg, cg, p_n, taps, n_blocks, n_all, n_tc, n_bc, img, plane = _grid(cw, geom, out.size, split, n_t)
    tpi, bpi = split[0], split[1]
    # the record's arrays taken out once: read inside the parallel loop, each would cost a
    # reference count per use, an atomic operation the threads contend for
    wts, offs, starts, bias = cw.tiles, cw.offs, cw.starts, cw.b
    n_chains, runs = starts.size - 1, chain_runs(starts, max(1, RUN_BYTES // (4 * tile_m)))
    step = n_chains * N_ACC * VEC  # floats of sums per tile
    for item in prange(n_tc * n_bc):
        bc, tc = item % n_bc, item // n_bc
        t_lo, t_hi = tc * tpi, min(n_all, (tc + 1) * tpi)
        parts = np.empty((t_hi - t_lo) * step, np.float32)
        bases = _segment_bases(t_lo, t_hi, n_t, groups, img, cg * plane, segs, n_blocks * taps * tile_m)
        for blk in range(bc * bpi, min(n_blocks, (bc + 1) * bpi)):
            w0 = (blk * taps) * tile_m  # the block within its group
            for r in range(runs.shape[0]):
                span = (runs[r, 1], runs[r, 2], runs[r, 3])
                at = runs[r, 0] * N_ACC * VEC  # the run's chain in the first tile's sums
                for i in range(t_hi - t_lo):
                    xs, wg = (bases[i, 0], bases[i, 1], bases[i, 2]), w0 + bases[i, SEG_TILE]
                    if tile_m == TILE_K:
                        tile_pass(wts, (wg, wg + 1, wg + 2, wg + 3), xp, xs, offs, span, parts, at)
                    else:
                        tile_pass(wts, (wg,), xp, xs, offs, span, parts, at)
                    at += step
            for ti in range(t_lo, t_hi):
                n, g, t = ti // (groups * n_t), (ti // n_t) % groups, ti % n_t
                a = t * SEG_TILE
                b, c = min(a + 1, n_s - 1), min(a + 2, n_s - 1)
                k0 = g * kg + blk * tile_m
                ob = (n * k_n + k0) * p_n
                obs = (ob + segs[a, 1], ob + segs[b, 1], ob + segs[c, 1])
                lanes = (segs[a, 2], segs[b, 2], segs[c, 2], segs[a, 3], segs[b, 3], segs[c, 3])
                where = (k0, min(tile_m, kg - blk * tile_m), p_n, has_res, act)
                u = (ti - t_lo) * step
                if n_chains == CHAINS:
                    store_tile(parts, _slots(u, N_ACC * VEC), bias, res, out, where, obs, lanes)
                else:
                    store_tile(parts, (u,), bias, res, out, where, obs, lanes)
    return n_n * k_n * p_n * taps


@njit(cache=True, parallel=True)
def conv_lanes(xp, cw, geom, res, has_res, act, out, split, bits):
    """Layout as `conv_tiles`; cw.tiles holds blocks of LANE_K filters (a multiple of LANE_K per
    group), cw.pbase (P,) the offset of tap (0, 0) of each output position in a channel's input
    plane; bits None (dense) or, masked, a uint16 (K / LANE_K * P,) array: bit j of element
    b * P + p set where filter LANE_K b + j needs position p (`schedule.lane_bits`). Returns the
    MACs of the outputs stored.

    Loop order as `conv_tiles`, a tile being POS_TILE consecutive output positions of a plane
    (`lane_pass`: the filters in SIMD lanes; `store_lanes`), WIDE for the last one of a plane of
    POS_TILE k + 1 (`lane_tiles`). A short last tile repeats its last position. Masked, a tile
    whose bits name no output is skipped, and a tile stores only the outputs its bits name, the
    other lanes' values dropped and not counted.
    """
    k_n, groups = geom.k_out, geom.groups
    n_t = lane_tiles(geom.oh * geom.ow)
    n_n, kg, cg, p_n, taps, n_blocks, n_all, n_tc, n_bc, img, plane = _grid(cw, geom, out.size, split, n_t)
    tpi, bpi, lb = split
    wts, offs, starts, bias, pbase = cw.tiles, cw.offs, cw.starts, cw.b, cw.pbase  # see conv_tiles
    n_chains, wstep, sums = starts.size - 1, taps * LANE_K, lb * LANE_ACC * VEC  # sums: a chain's
    runs, step = chain_runs(starts, max(1, RUN_BYTES // (4 * LANE_K * lb))), n_chains * sums  # step: a tile's
    n_done = 0
    for item in prange(n_tc * n_bc):
        bc, tc = item % n_bc, item // n_bc
        t_lo, t_hi = tc * tpi, min(n_all, (tc + 1) * tpi)
        parts = np.empty((t_hi - t_lo) * step, np.float32)
        bases = _lane_bases(t_lo, t_hi, n_t, groups, img, cg * plane, pbase, p_n, n_blocks * wstep)
        done = 0
        b_hi = min(n_blocks, (bc + 1) * bpi)
        kept = np.empty(t_hi - t_lo, np.int64)  # per tile, how many of the nb blocks store an output
        for b0 in range(bc * bpi, b_hi, lb):
            nb = min(lb, b_hi - b0)
            for i in range(t_hi - t_lo):
                kept[i] = nb if bits is None else _blocks_kept(bits, t_lo + i, n_t, groups, kg, b0, nb, p_n)
            for r in range(runs.shape[0]):
                span = (runs[r, 1], runs[r, 2], runs[r, 3])
                at = runs[r, 0] * sums  # the run's chain in the first tile's sums
                for i in range(t_hi - t_lo):
                    w0 = bases[i, WIDE] + b0 * wstep  # the tile's group's blocks
                    if kept[i] == nb:
                        _lane_tile_pass(wts, w0, nb, wstep, xp, bases, i, offs, span, parts, at)
                    elif bits is not None and kept[i]:  # masked: the blocks whose bits name an output
                        for h in range(nb):  # (testing bits lets Numba prune this in a dense call)
                            if _tile_kept(bits, t_lo + i, n_t, groups, kg, b0 + h, p_n):
                                a_h = at + h * LANE_ACC * VEC
                                _lane_tile_pass(wts, w0 + h * wstep, 1, 0, xp, bases, i, offs, span, parts, a_h)
                    at += step
            for h in range(nb):  # block after block: the stores go to LANE_K output planes at a time
                for ti in range(t_lo, t_hi):
                    n, g, t = ti // (groups * n_t), (ti // n_t) % groups, ti % n_t
                    where = (g * kg + (b0 + h) * LANE_K, p_n, has_res, act)
                    if bits is None or _tile_kept(bits, ti, n_t, groups, kg, b0 + h, p_n):
                        u = (ti - t_lo) * step + h * LANE_ACC * VEC
                        io, ob = (bias, res, out), n * k_n * p_n
                        done += _store_kept(parts, (u, sums), n_chains, io, where, ob, t, n_t, bits)
        n_done += done
    return n_done * taps


@njit(cache=True, inline="always")
def _store_kept(parts, u, n_chains, io, where, ob, t, n_t, bits):
    """`store_lanes` of tile t of a plane's n_t (where[1] positions), its sums (one chain or
    CHAINS) from parts[u[0]], u[1] floats apart, its image's outputs from ob: every output, or with bits
    (`conv_lanes`) those they name; POS_TILE positions, or WIDE (`lane_tiles`)."""
    p_n = where[1]
    q = _positions(t * POS_TILE, p_n)
    obs, kix = _offset(ob, q), _offset(where[0] // LANE_K * p_n, q)
    wide = _wide(t, n_t, p_n)
    if bits is None:
        if wide:
            return _store_chains(parts, u, n_chains, io, where, obs, None)
        return _store_chains(parts, u, n_chains, io, where, obs[:POS_TILE], None)
    if wide:
        return _store_chains(parts, u, n_chains, io, where, obs, (bits, kix))
    return _store_chains(parts, u, n_chains, io, where, obs[:POS_TILE], (bits, kix[:POS_TILE]))


@njit(cache=True, inline="always")
def _store_chains(parts, u, n_chains, io, where, obs, keep):
    """`store_lanes` of the tile whose sums start at parts[u[0]], u[1] floats apart, of one chain
    or CHAINS."""
    if n_chains == CHAINS:
        return store_lanes(parts, _slots(u[0], u[1]), io[0], io[1], io[2], where, obs, keep)
    return store_lanes(parts, (u[0],), io[0], io[1], io[2], where, obs, keep)


@njit(cache=True, inline="always")
def _tile_kept(bits, ti, n_t, groups, kg, blk, p_n):
    """Whether the bits (`conv_lanes`) name an output of work tile ti of filter block blk."""
    t, g = ti % n_t, (ti // n_t) % groups
    at = (g * kg + blk * LANE_K) // LANE_K * p_n
    return any_bits(bits, at + t * POS_TILE, at + (p_n if t == n_t - 1 else (t + 1) * POS_TILE))


@njit(cache=True, inline="always")
def _blocks_kept(bits, ti, n_t, groups, kg, b0, nb, p_n):
    """How many of the nb filter blocks from b0 have an output of work tile ti the bits name."""
    kept = 0
    for h in range(nb):
        kept += _tile_kept(bits, ti, n_t, groups, kg, b0 + h, p_n)
    return kept


@njit(cache=True, inline="always")
def any_bits(bits, lo, hi):
    """Whether an element of bits[lo:hi] is not zero (a `lane_bits` word naming an output)."""
    for i in range(lo, hi):
        if bits[i]:
            return True
    return False


@njit(cache=True, parallel=True)
def conv_short_lanes(xp, cw, geom, res, has_res, act, out, split, bits):
    """`conv_lanes` for filters of CHAINS chains and at most SHORT_TAPS taps
    (`short_chains`): the same tiles and sums, each tile's chains one after another, then its
    store, so that a tile's positions are worked out once and its sums stay in L1. bits as
    `conv_lanes` takes them (a tile whose bits name no output is skipped).
    """
    k_n, groups = geom.k_out, geom.groups
    n_t = lane_tiles(geom.oh * geom.ow)
    n_n, kg, cg, p_n, taps, n_blocks, n_all, n_tc, n_bc, img, plane = _grid(cw, geom, out.size, split, n_t)
    tpi, bpi, lb = split
    wts, offs, starts, bias, pbase = cw.tiles, cw.offs, cw.starts, cw.b, cw.pbase  # see conv_tiles
    wstep, sums = taps * LANE_K, lb * LANE_ACC * VEC  # sums: floats of a chain's sums of a tile
    n_done = 0
    for item in prange(n_tc * n_bc):
        bc, tc = item % n_bc, item // n_bc
        t_lo, t_hi = tc * tpi, min(n_all, (tc + 1) * tpi)
        parts = np.empty(CHAINS * sums, np.float32)
        bases = _lane_bases(t_lo, t_hi, n_t, groups, img, cg * plane, pbase, p_n, n_blocks * wstep)
        done = 0
        b_hi = min(n_blocks, (bc + 1) * bpi)
        for b0 in range(bc * bpi, b_hi, lb):
            nb = min(lb, b_hi - b0)
            for ti in range(t_lo, t_hi):
                i = ti - t_lo
                w0 = bases[i, WIDE] + b0 * wstep
                if bits is not None:
                    _prefetch_tile(out, ti, ti == t_lo, n_t, groups, kg, b0, nb, k_n, p_n)
                if bits is None or _blocks_kept(bits, ti, n_t, groups, kg, b0, nb, p_n) == nb:
                    _tile_chains(wts, w0, nb, wstep, xp, bases, i, offs, starts, parts, (0, sums))
                elif bits is not None:  # masked: the blocks whose bits name an output (see conv_lanes)
                    for h in range(nb):
                        if _tile_kept(bits, ti, n_t, groups, kg, b0 + h, p_n):
                            u = (h * LANE_ACC * VEC, sums)
                            _tile_chains(wts, w0 + h * wstep, 1, 0, xp, bases, i, offs, starts, parts, u)
                g, t = (ti // n_t) % groups, ti % n_t
                for h in range(nb):
                    if bits is None or _tile_kept(bits, ti, n_t, groups, kg, b0 + h, p_n):
                        where = (g * kg + (b0 + h) * LANE_K, p_n, has_res, act)
                        ob = (ti // (groups * n_t)) * k_n * p_n
                        u = (h * LANE_ACC * VEC, sums)
                        done += _store_kept(parts, u, CHAINS, (bias, res, out), where, ob, t, n_t, bits)
        n_done += done
    return n_done * taps


@njit(cache=True, inline="always")
def _prefetch_tile(out, ti, first, n_t, groups, kg, b0, nb, k_n, p_n):
    """Hints that the outputs of work tile ti's filter blocks b0 .. b0 + nb - 1 are about to be
    written (`prefetch_write`): the line of the tile's last position in each plane, and of its
    first where it is the first tile of its work item (later tiles find that line hinted as the
    previous tile's last). A masked tile stores by masked stores, which on lines missing from
    the caches waited on memory (docs/kernels.md, "Measured"). Changes no value."""
    g, t = (ti // n_t) % groups, ti % n_t
    last = p_n - 1 if t == n_t - 1 else (t + 1) * POS_TILE - 1  # a plane's last tile may be WIDE
    o = (ti // (groups * n_t)) * k_n * p_n + (g * kg + b0 * LANE_K) * p_n
    for f in range(nb * LANE_K):
        prefetch_write(out, o + f * p_n + last)
        if first:
            prefetch_write(out, o + f * p_n + t * POS_TILE)


@njit(cache=True, inline="always")
def _tile_chains(wts, w0, nb, wstep, xp, bases, i, offs, starts, parts, u):
    """Every chain of tile i of `_lane_bases` (POS_TILE positions or WIDE) for nb blocks of
    filters (`_lane_tile_pass`), chain c's sums at parts[u[0] + c * u[1]]: the tile's width is
    tested once, not at each chain."""
    pb = _bases_of(bases, i)
    if bases[i, WIDE + 1]:
        for c in range(CHAINS):
            _wide_pass(wts, w0, nb, wstep, xp, pb, offs, (starts[c], starts[c + 1], 0), parts, u[0] + c * u[1])
    else:
        for c in range(CHAINS):
            span = (starts[c], starts[c + 1], 0)
            _blocks_pass(wts, w0, nb, wstep, xp, pb[:POS_TILE], offs, span, parts, u[0] + c * u[1])


def short_chains(cw, geom) -> bool:
    """Whether `conv_short_lanes` takes the conv: filters in lanes, CHAINS chains, at most
    SHORT_TAPS taps (a block's weights within 16 KiB)."""
    return cw.tile_m == LANE_K and cw.starts.size - 1 == CHAINS and group_taps(geom) <= SHORT_TAPS


def direct_tiles(cw, geom) -> bool:
    """Whether a dense call without bits takes `conv_direct`: DIRECT_TILES, a 1x1 conv of stride
    1 read in place (DIRECT) of one group, filters packed in blocks of LANE_K, a plane of at least
    one segment, and one chain or a plane of DIRECT_CHAINS_FROM positions or more."""
    direct = cw.kind == DIRECT and geom.sh == geom.sw == 1 and geom.groups == 1
    p_n = geom.oh * geom.ow
    fits = cw.tile_m == LANE_K and (one_chain(geom) or p_n >= DIRECT_CHAINS_FROM) and p_n >= DVEC
    return DIRECT_TILES and direct and fits


def direct_split(geom, n_n, threads) -> int:
    """Tiles per work item of `conv_direct` on n_n images: ITEMS_PER_THREAD items per thread or
    more. Only speed depends on it."""
    n_s = -(-(geom.oh * geom.ow) // DVEC)  # segments per plane
    n_t = -(-n_s // DIRECT_V)
    return max(1, -(-(n_n * n_t) // (ITEMS_PER_THREAD * threads)))


@njit(cache=True)
def _segment(s, n_s, p_n):
    """(start, first lane stored) of segment s of a plane of p_n positions in n_s segments of
    DVEC: the last one starts DVEC before the plane's end (its lanes before the first stored
    were the segment before's); a segment past the last repeats it and stores nothing."""
    if s >= n_s:
        return p_n - DVEC, DVEC
    start = min(s * DVEC, p_n - DVEC)
    return start, s * DVEC - start


@njit(cache=True, parallel=True)
def conv_direct(x, cw, geom, res, has_res, act, out, tpi):
    """Layout: x (N * C * H * W,) the images as they are (DIRECT); res and out as `conv_tiles`
    takes them; cw packed in blocks of LANE_K filters (`direct_tiles` says which convs). Returns
    the MACs.

    Output positions in SIMD lanes: a tile is DIRECT_V segments of DVEC consecutive positions of
    a plane (`_segment`); for each tile, every DIRECT_M filters in turn (`direct_tile`: each
    chain of the filters from +0 over its taps, the chains combined, then bias, residual and
    activation, stored). Items of tpi tiles (image after image) in parallel; a tile's input
    stays in L1 while its filters go through it. Each output is computed and stored once."""
    k_n, p_n, taps = geom.k_out, geom.oh * geom.ow, geom.c_in
    n_s = (p_n + DVEC - 1) // DVEC
    n_t = (n_s + DIRECT_V - 1) // DIRECT_V
    n_all = out.size // (k_n * p_n) * n_t
    wts, offs, starts, bias = cw.tiles, cw.offs, cw.starts, cw.b  # see conv_tiles
    for item in prange((n_all + tpi - 1) // tpi):
        for ti in range(item * tpi, min(n_all, (item + 1) * tpi)):
            n, t = ti // n_t, ti % n_t
            a0, l0 = _segment(t * DIRECT_V, n_s, p_n)
            a1, l1 = _segment(t * DIRECT_V + 1, n_s, p_n)
            a2, l2 = _segment(t * DIRECT_V + 2, n_s, p_n)
            xi, oi = n * taps * p_n, n * k_n * p_n
            xb, los = (xi + a0, xi + a1, xi + a2), (l0, l1, l2)
            for k0 in range(0, k_n, DIRECT_M):
                w = (k0 // LANE_K) * taps * LANE_K + k0 % LANE_K  # filter k0's tap 0 in its block
                ws = (w, w + 1, w + 2, w + 3, w + 4, w + 5, w + 6, w + 7)
                ob = oi + k0 * p_n
                obs, where = (ob + a0, ob + a1, ob + a2), (k0, DIRECT_M, p_n, has_res, act)
                direct_tile(wts, ws, LANE_K, x, xb, offs, starts, bias, res, out, where, obs, los)
    return n_all // n_t * k_n * p_n * taps
