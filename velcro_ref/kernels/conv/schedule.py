"""What the masked kernels derive from a conv's mask, once per mask (the engine keeps one per
MaskSet): which outputs to compute, in which blocks, in which order."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..jit import njit
from ..simd import VEC
from .dense import LANE_BLOCKS, LANE_K, POS_TILE, lane_tiles, short_chains
from .geom import ConvGeom, group_taps, in_place, one_chain
from .layouts import BLOCKS, DIRECT, ROWS, padded_taps, plane_order, planes_of, tap_offsets

# Floats of taps per tile of positions of the sampled kernels (of all the images a kernel call
# reads at a position: 1 or 8): a tile stays in L2 (512 KiB) while the pairs of filters of a
# thread's run visit it.
TILE_FLOATS = 1 << 18
TILE_POSITIONS = 512  # positions per tile, at most
# `eight_images`: filters (`taps_last` rows) of at most ONE_IMAGE_BYTES are read again for every
# image (from L2 or L3, not from memory); a plane of fewer than ONE_IMAGE_POSITIONS positions
# leaves one image too few positions per pair for whole blocks; L1_BYTES is the L1 data cache.
ONE_IMAGE_BYTES = 4 << 20
ONE_IMAGE_POSITIONS = 128
L1_BYTES = 32 << 10
# Time of the sampled kernels per output they compute, in units of the dense filters-in-lanes
# kernel's per output (`dense_cheaper`), by output positions per plane: measured on ResNet-18
# 224x224 with masks of uniform ratio R (docs/kernels.md, "Measured"). Where the dense tiles take
# 4 blocks of filters (AVX-512): 1.7 - 1.9 on planes of 28 x 28 and more, 2.1 on 14 x 14, 2.4 -
# 2.7 on 7 x 7 (the dense tiles reuse a filter's taps over fewer positions there, the sampled
# kernels none the less read them for each); about 1.2 where they take one (the same machine
# before those tiles).
SAMPLED_COST = 1.8 if LANE_BLOCKS > 1 else 1.2
SAMPLED_COST_SMALL = ((196, 2.1), (49, 2.6)) if LANE_BLOCKS > 1 else ()  # (positions at most, cost)


def sampled_cost(p_n) -> float:
    """SAMPLED_COST, or where the plane has at most as many positions as an entry of
    SAMPLED_COST_SMALL, the cost of the smallest such entry."""
    cost = SAMPLED_COST
    for positions, small in SAMPLED_COST_SMALL:
        if p_n <= positions:
            cost = max(cost, small)
    return cost


class SkipPlan(NamedTuple):
    """A conv's mask with its schedule: skip (K, OH, OW) bool; for a `lane_bits_kernel` conv,
    groups (), runs None and bits its `lane_bits`; for another conv summed in chains, per
    group of filters (skip (K/groups, P), positions some filter needs, the `pair_schedule` of
    the filters not fully masked with its number of tiles, in tiles for one image, then the
    same in tiles for 8 images, None for a conv that runs image by image, `eight_images`),
    runs None; for another conv summed in one chain, groups () and runs = (segs, bounds, offs,
    planes, plane_of): the `run_segments` of every filter and the input layout they read
    (`Planes`, tap offsets). bits is None but for a `lane_bits_kernel` conv and one whose mask
    `dense_cheaper` sends to the dense kernel (groups () and runs None)."""

    skip: np.ndarray
    groups: tuple
    runs: tuple | None
    bits: np.ndarray | None = None


def tile_positions(geom: ConvGeom, images) -> int:
    """Positions per tile of the pair schedule for kernels reading `images` images at a
    position, at most: the tiles of a schedule are of about one size, ceil(P / n_tiles) with
    n_tiles = ceil(P / tile_positions)."""
    return max(8, min(TILE_POSITIONS, TILE_FLOATS // (images * group_taps(geom))))


def eight_images(geom: ConvGeom) -> bool:
    """Whether batches of a masked conv summed in chains run 8 images at a time (`conv_images8`:
    every unmasked output in a block of 8 images, a filter's taps loaded once for them) rather
    than one image at a time (`conv_sampled`): all convs read in place but those where one
    image's blocks of 8 positions of a row find most of their taps in L1 and 8 images' would
    not (neighbouring positions share taps, kw >= 2 sw, and 8 images' taps of 8 positions
    exceed L1_BYTES), on planes of at least ONE_IMAGE_POSITIONS, with filters of at most
    ONE_IMAGE_BYTES. Only speed depends on it, never a value."""
    if not in_place(geom):
        return False
    span = 7 * geom.sw + (geom.kw - 1) * geom.dw + 1  # pixels of a row 8 neighbouring positions read
    block = geom.kh * span * (geom.c_in // geom.groups) * 4  # one image's taps of them, bytes
    one_image = (
        geom.kw >= 2 * geom.sw
        and 8 * block > L1_BYTES
        and geom.oh * geom.ow >= ONE_IMAGE_POSITIONS
        and geom.k_out * padded_taps(group_taps(geom)) * 4 <= ONE_IMAGE_BYTES
    )
    return not one_image


def lane_bits_kernel(weights, geom: ConvGeom) -> bool:
    """Whether every masked call of a conv runs its dense kernel storing only the outputs of its
    `lane_bits` (docs/kernels.md, "Masked lanes"; `dense_cheaper` sends others there per mask):
    channels or filters in SIMD lanes and one chain
    (`depthwise.conv_depth_bands`, `dense.conv_lanes`), or filters in lanes and short chains
    (`dense.conv_short_lanes`) where the sampled kernels would read their taps without reuse
    between neighbouring positions (a 1x1 conv, or im2col rows). Only speed depends on it."""
    if weights.kind == BLOCKS:  # depthwise, fewer than FEW_TAPS taps: one chain
        return True
    if weights.tile_m != LANE_K:
        return False
    return one_chain(geom) or (short_chains(weights, geom) and (geom.kh * geom.kw == 1 or not in_place(geom)))


def dense_cheaper(sk, weights, geom: ConvGeom) -> bool:
    """Whether a masked conv summed in CHAINS chains with filters in lanes is cheaper as its dense
    kernel storing the unmasked outputs (`lane_bits`) than in the sampled kernels: whether its
    tiles of POS_TILE positions by LANE_K filters that hold an unmasked output, which the dense
    kernel computes whole, are at most `sampled_cost` times the unmasked outputs, each of which
    the sampled kernels compute alone (sk (K, P) bool, true: masked). Activation masks leave a
    filter's unmasked outputs spread, so at ratios below about 1 - 1 / that cost nearly every
    tile holds one and the dense kernel is the faster. Only speed depends on it."""
    if weights.tile_m != LANE_K or one_chain(geom):
        return False
    k_n, p_n = sk.shape
    unmasked = sk.size - np.count_nonzero(sk)
    starts = np.arange(lane_tiles(p_n)) * POS_TILE  # the kernel's tiles (the last may be wide)
    sizes = np.diff(np.append(starts, p_n)) * LANE_K
    need = ~sk.reshape(k_n // LANE_K, LANE_K, p_n).all(axis=1)
    kept = np.logical_or.reduceat(need, starts, axis=1) @ sizes  # outputs of the tiles computed
    return unmasked > 0 and int(kept.sum()) <= sampled_cost(p_n) * unmasked


def lane_bits(sk, lanes):
    """The outputs a `lane_bits_kernel` conv stores: sk (K, P) bool (true: masked) as one
    unsigned integer of `lanes` (8 or 16) bits per block of filters and position, (K / lanes *
    P,): bit j of element b * P + p set where filter lanes * b + j needs position p."""
    k_n, p_n = sk.shape
    dtype = np.uint8 if lanes == 8 else np.uint16
    need = ~sk.reshape(k_n // lanes, lanes, p_n)
    weights = (1 << np.arange(lanes, dtype=dtype)).reshape(1, lanes, 1)
    return np.ascontiguousarray((need * weights).sum(axis=1, dtype=dtype).reshape(-1))


def plan_skip(skip, weights, geom: ConvGeom) -> SkipPlan:
    """The SkipPlan of a bool (K, OH, OW) mask of a conv (weights: its ConvWeights, for the
    layout of the input copy the one-chain kernels read)."""
    skip = np.ascontiguousarray(skip, np.bool_)
    k_n, p_n = geom.k_out, geom.oh * geom.ow
    if lane_bits_kernel(weights, geom) or dense_cheaper(skip.reshape(k_n, p_n), weights, geom):
        return SkipPlan(skip, (), None, lane_bits(skip.reshape(k_n, p_n), VEC if weights.kind == BLOCKS else LANE_K))
    if one_chain(geom):  # the runs read the planes of the ROWS kind (or FLAT, DIRECT)
        planes = planes_of(geom)
        plane_of = plane_order(geom.c_in // geom.groups, planes.kind)
        offs, _ = tap_offsets(geom, planes, plane_of)
        row = geom.sh * planes.phases * planes.q
        segs, bounds = run_segments(skip.reshape(k_n, p_n), geom.ow, row, planes.kind)
        return SkipPlan(skip, (), (segs, bounds, offs, planes, plane_of))
    kg = k_n // geom.groups
    per_group = []
    for g in range(geom.groups):
        sg = np.ascontiguousarray(skip[g * kg : (g + 1) * kg].reshape(kg, p_n))
        masked = sg.sum(axis=1)
        some = np.flatnonzero(masked < p_n)
        some = _pair_order(some[np.argsort(masked[some], kind="stable")])
        eights = _tiled_schedule(sg, some, geom, 8) if eight_images(geom) else None  # `conv_images8`
        per_group.append((sg, ~sg.all(axis=0), _tiled_schedule(sg, some, geom, 1), eights))
    return SkipPlan(skip, tuple(per_group), None)


def _tiled_schedule(sg, some, geom, images):
    """The `pair_schedule` of the filters `some` with its number of tiles, tiles of about one
    size whose taps of `images` images stay in L2."""
    p_n = sg.shape[1]
    n_tiles = -(-p_n // tile_positions(geom, images))
    return (*pair_schedule(sg, some, -(-p_n // n_tiles)), n_tiles)


@njit(cache=True)
def run_segments(sk, ow, row, kind):
    """Runs of unmasked outputs of every filter of sk (K, P), cut into segments of at most VEC
    consecutive outputs of one row (of the whole plane unless the input is in ROWS): (segs (S,
    4), bounds (K + 1,)) with filter k's segments at segs[bounds[k] : bounds[k + 1]], in the
    form of `segments`: (input offset of lane 0, output offset of lane 0, lo, hi), the outputs
    in lanes lo .. hi - 1. Input offsets are `segments`' for an output (oy, ox): oy * row + ox
    in ROWS; a DIRECT read starts at most VEC outputs before the plane's end."""
    k_n, p_n = sk.shape
    segs = np.empty((k_n * p_n, 4), np.int64)
    bounds = np.empty(k_n + 1, np.int64)
    i = 0
    for k in range(k_n):
        bounds[k] = i
        p = 0
        while p < p_n:
            if sk[k, p]:
                p += 1
                continue
            end = (p // ow + 1) * ow if kind == ROWS else p_n  # a segment stays in its row
            q = p
            while q < end and q - p < VEC and not sk[k, q]:
                q += 1
            start = min(p, p_n - VEC) if kind == DIRECT else p
            segs[i, 0] = (p // ow) * row + p % ow if kind == ROWS else start
            segs[i, 1], segs[i, 2], segs[i, 3] = start, p - start, q - start
            i += 1
            p = q
    bounds[k_n] = i
    return segs[:i].copy(), bounds


@njit(cache=True)
def pair_schedule(sg, part, tile_p):
    """The unmasked positions of the filters `part` of sg (K, P), two filters at a time.

    Returns pairs (R, 2) (a lone last filter pairs with itself), bounds and plist: for pair r,
    tile t of tile_p positions and kind c (0: both filters need the position, 1: only the
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
    kinds = np.empty(tile_p, np.int8)  # of the positions of one tile, 3: neither filter
    counts, at = np.empty(4, np.int64), np.empty(3, np.int64)  # per kind: positions, where the next goes
    i = b = 0
    for r in range(n_pairs):
        k1 = part[2 * r]
        k2 = part[2 * r + 1] if 2 * r + 1 < part.size else k1
        pairs[r, 0], pairs[r, 1] = k1, k2
        for t in range(n_tiles):
            p0, p1 = t * tile_p, min((t + 1) * tile_p, p_n)
            counts[:] = 0
            for p in range(p0, p1):
                on1 = not sg[k1, p]
                on2 = k2 != k1 and not sg[k2, p]
                c = 0 if on1 and on2 else 1 if on1 else 2 if on2 else 3
                kinds[p - p0] = c
                counts[c] += 1
            at[0], at[1], at[2] = i, i + counts[0], i + counts[0] + counts[1]
            bounds[b], bounds[b + 1], bounds[b + 2] = at[0], at[1], at[2]
            b += 3
            i = at[2] + counts[2]
            for p in range(p0, p1):
                c = kinds[p - p0]
                if c < 3:
                    plist[at[c]] = p
                    at[c] += 1
    bounds[b] = i
    return pairs, bounds, plist[:i].copy()


def _pair_order(ks):
    """Filters ks sorted by density, reordered so that `pair_schedule` pairs neighbours in that
    order (filters that need about as many positions mostly need the same ones, so more
    positions go in blocks of both filters) and the pairs alternate sparse, dense, sparse, ...
    (the threads' runs of units, `masked.unit_cuts`, are of equal work whatever the order)."""
    m = ks.size // 2
    zigzag = np.empty(m, np.int64)
    zigzag[0::2], zigzag[1::2] = np.arange((m + 1) // 2), np.arange(m - 1, (m - 1) // 2, -1)
    return np.concatenate([ks[: 2 * m].reshape(m, 2)[zigzag].reshape(-1), ks[2 * m :]])
