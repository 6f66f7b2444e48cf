"""Layouts of a conv's data: the copies of its input the kernels read, and its filters packed.

Input copies (written at every call, borders zeroed, so a scratch buffer can be shared):
- `to_planes`: the dense kernels' input, one zero-padded plane per channel (docs/kernels.md,
  "Layouts"): in rows, for the kernels that read vectors of outputs each row split into sw
  phases of q floats (column ix of the padded row is float ix // sw of phase ix % sw), so that
  8 outputs of a row at stride sw read 8 consecutive floats, for those with filters in lanes
  the padded rows as they are; flat (a strided 1x1 conv without padding, or a plane of fewer
  than 8 outputs, read by `conv_tiles`), the plane holds the pixels the outputs read, in output
  order. Planes are `plane` floats apart, an odd number of 64-byte lines, and in `plane_of`
  order, so that the taps a chain reads one after another do not map to the same L1 cache
  sets. A 1x1 conv without padding at stride 1, or at any stride with filters in lanes, reads
  its input as it lies (DIRECT): no copy.
- `channels_last`: the masked kernels' input, zero-padded and channels last, so that the taps
  of an output are runs of consecutive floats.
- `im2col_range`: those runs copied into one row per output position, when they are not
  whole vectors in place.

Filters: `chain_order` numbers a filter's taps in the order they are summed; `pack_tiles` packs
blocks of filters in that order, `taps_last` one row per filter in (fy, fx, c) order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange
from numba.extending import register_jitable

from ..jit import njit
from ..simd import CHAINS, VEC, copy_floats, interleave8, pad_copy, zero_floats
from .geom import FEW_TAPS, ConvGeom, one_chain

LINE_FLOATS = 16  # floats per 64-byte cache line
# Floats of a copy from which it uses every thread, and items (planes or rows) per work item.
# Below, a copy runs in the calling thread. The conv that follows a copy wakes the threads
# anyway, and they still spin after the conv before, so from 8K floats (every input copy of
# ResNet-18's convs at batch 1) two threads copy faster (docs/kernels.md, "Measured").
PARALLEL_MIN = 1 << 13
PART_ITEMS = 8


ROWS, FLAT, DIRECT, BLOCKS = 0, 1, 2, 3  # kinds of the dense kernels' input (`Planes.kind`)


class Planes(NamedTuple):
    """Shape of the dense kernels' input of one image: channel c's plane starts at plane_of[c]
    * plane (within its group's planes). kind ROWS: hp rows of `phases` phases of q floats
    (column ix of a padded row is float ix // phases of phase ix % phases); FLAT: the
    oh * ow pixels the outputs read, in output order; DIRECT: the input as it lies (h * w);
    BLOCKS (a depthwise conv on a multiple of 8 channels): blocks of 8 channels, each hp rows of
    q pixels of 8 floats (the block's channels side by side), `plane` floats per channel."""

    kind: int
    hp: int
    q: int
    plane: int
    phases: int = 1


def input_kind(g: ConvGeom) -> int:
    """A 1x1 conv without padding reads one pixel per output: DIRECT at stride 1 (with a plane
    of at least one segment), else FLAT; a depthwise conv on a multiple of 8 channels BLOCKS;
    every other conv ROWS."""
    if g.c_in == g.groups == g.k_out and g.c_in % VEC == 0 and g.kh * g.kw < FEW_TAPS:
        return BLOCKS
    if g.kh != 1 or g.kw != 1 or g.pt or g.pl or g.pb or g.pr:
        return ROWS
    return DIRECT if g.sh == g.sw == 1 and g.h * g.w >= VEC else FLAT


@njit(cache=True)
def padded_size(n, pad, out_n, stride, taps, dil):
    """Length of one zero-padded input axis that holds the input after `pad` zeros and every tap
    of every one of out_n outputs (the far side gets what the output size implies)."""
    return max(n + pad, (out_n - 1) * stride + (taps - 1) * dil + 1)


def _odd_lines(floats):
    """floats rounded up to a whole, odd number of cache lines."""
    lines = -(-floats // LINE_FLOATS)
    return (lines + 1 - lines % 2) * LINE_FLOATS


def planes_of(g: ConvGeom, kind=None, lanes=False) -> Planes:
    """The Planes of a conv, of `input_kind` unless kind is given. ROWS: for kernels that read
    vectors of 8 consecutive outputs, rows of sw phases, each with room for a vector read from
    any output column (q >= ow + VEC - 1 + the largest tap shift (fx * dw) // sw); for kernels
    that read one input value at a time (lanes: filters in SIMD lanes), plain zero-padded rows
    of one phase, copied a row at a time. Those kernels read a 1x1 conv without padding in
    place (DIRECT) at any stride and plane size."""
    kind = input_kind(g) if kind is None else kind
    if lanes and kind == FLAT:
        kind = DIRECT
    if kind == BLOCKS:
        hp = padded_size(g.h, g.pt, g.oh, g.sh, g.kh, g.dh)
        q = padded_size(g.w, g.pl, g.ow, g.sw, g.kw, g.dw)
        return Planes(BLOCKS, hp, q, hp * q)
    if kind == DIRECT:
        return Planes(DIRECT, 1, 0, g.h * g.w)
    if kind == FLAT:
        return Planes(FLAT, 1, 0, _odd_lines(g.oh * g.ow + VEC - 1))
    hp = padded_size(g.h, g.pt, g.oh, g.sh, g.kh, g.dh)
    if lanes:
        q = padded_size(g.w, g.pl, g.ow, g.sw, g.kw, g.dw)
        return Planes(ROWS, hp, q, _odd_lines(hp * q), 1)
    q = max(g.ow + VEC - 1 + (g.kw - 1) * g.dw // g.sw, -(-(g.pl + g.w) // g.sw))
    q = -(-q // LINE_FLOATS) * LINE_FLOATS
    return Planes(ROWS, hp, q, _odd_lines(hp * g.sw * q), g.sw)


def plane_order(cg, kind):
    """plane_of (cg,): the plane of each channel of a group. With a multiple of CHAINS channels
    copied, the channels of one chain (c mod CHAINS) are neighbours: plane (c % CHAINS) * cg /
    CHAINS + c // CHAINS."""
    c = np.arange(cg, dtype=np.int64)
    if cg % CHAINS or kind == DIRECT:
        return c
    return (c % CHAINS) * (cg // CHAINS) + c // CHAINS


def chain_order(taps, n_chains):
    """(order, starts): the taps 0 .. taps - 1 of a filter in the order the kernels sum them,
    chain after chain (tap j in chain j mod n_chains, increasing j within a chain), and the
    n_chains + 1 indices of `order` where each chain begins and the last ends."""
    order = np.concatenate([np.arange(c, taps, n_chains) for c in range(n_chains)]).astype(np.int64)
    starts = np.zeros(n_chains + 1, np.int64)
    starts[1:] = np.cumsum([len(range(c, taps, n_chains)) for c in range(n_chains)])
    return order, starts


def n_chains(g: ConvGeom) -> int:
    return 1 if one_chain(g) else CHAINS


def tap_offsets(g: ConvGeom, planes: Planes, plane_of):
    """(offs, starts): the offset of every tap of a filter, in summation order, in one group's
    planes relative to an output's segment base (see `segments`)."""
    cg = g.c_in // g.groups
    order, starts = chain_order(cg * g.kh * g.kw, n_chains(g))
    fy, rem = np.divmod(order, g.kw * cg)
    fx, c = np.divmod(rem, cg)
    if planes.kind == BLOCKS:
        return np.ascontiguousarray((fy * g.dh * planes.q + fx * g.dw) * VEC, np.int64), starts
    offs = plane_of[c] * planes.plane
    if planes.kind == ROWS:
        shift, ph = fx * g.dw, planes.phases
        offs = offs + fy * g.dh * ph * planes.q + (shift % ph) * planes.q + shift // ph
    return np.ascontiguousarray(offs, np.int64), starts


def position_bases(g: ConvGeom, planes: Planes):
    """(P,) int64: the offset of tap (0, 0) of every output position p = (oy, ox) in a channel's
    input plane (the base `tap_offsets` are relative to)."""
    p = np.arange(g.oh * g.ow, dtype=np.int64)
    if planes.kind == BLOCKS:
        return ((p // g.ow) * g.sh * planes.q + p % g.ow * g.sw) * VEC
    if planes.kind == DIRECT:
        return (p // g.ow) * g.sh * g.w + p % g.ow * g.sw
    if planes.kind != ROWS:
        return p
    col, ph = p % g.ow * g.sw, planes.phases
    return (p // g.ow) * g.sh * ph * planes.q + (col % ph) * planes.q + col // ph


def segments(g: ConvGeom, planes: Planes):
    """(S, 4) int64: the output segments of one output plane, VEC consecutive outputs of one row
    (or of the flat plane): the offset of tap (0, 0) of lane 0 in a channel's input plane, the
    offset of lane 0 in an output plane, and the lanes lo .. hi - 1 that are outputs of this
    segment. DIRECT reads stop at the plane's end: the last segment starts VEC outputs before
    it, its lanes from lo on new. None (0 rows) on rows of one phase at a stride above 1 and on
    a DIRECT input that is not `input_kind`'s (both read by the kernels with filters in lanes
    only): 8 outputs do not lie in 8 consecutive floats."""
    p_n = g.oh * g.ow
    if (planes.kind == ROWS and planes.phases != g.sw) or (planes.kind == DIRECT and input_kind(g) != DIRECT):
        return np.zeros((0, 4), np.int64)
    if planes.kind != ROWS:
        p = np.arange(0, p_n, VEC, dtype=np.int64)
        start = np.minimum(p, p_n - VEC) if planes.kind == DIRECT else p
        return np.stack([start, start, p - start, np.minimum(VEC, p_n - start)], axis=1)
    oy, ox = np.divmod(np.arange(g.oh * -(-g.ow // VEC), dtype=np.int64), -(-g.ow // VEC))
    ox = ox * VEC
    zero = np.zeros_like(ox)
    return np.stack([oy * g.sh * g.sw * planes.q + ox, oy * g.ow + ox, zero, np.minimum(VEC, g.ow - ox)], axis=1)


def copy_threads(floats, threads):
    """Threads an input copy of `floats` floats takes: `threads` from PARALLEL_MIN floats on,
    else 1 (the calling thread)."""
    return threads if floats >= PARALLEL_MIN else 1


@register_jitable
def to_planes(x, geom, planes, plane_of, xp, threads):
    """Layout: x (N, C, H, W); xp (N, C * plane) as `Planes` says, every float written (padding
    0). Loop order (image, channel), on `threads` threads (`copy_threads`; 1: in the calling
    thread), then rows, phases, runs of columns. Plain Python from Python, compiled into jitted
    callers (which cannot be cached where they ask Numba for its thread count themselves)."""
    n_items = x.shape[0] * x.shape[1]
    xf, xq = np.ascontiguousarray(x).reshape(-1), xp.reshape(-1)
    if threads <= 1:
        _planes_items(xf, x.shape, geom, planes, plane_of, xq, 0, n_items, 0, _rows(geom, planes))
    else:
        _planes_threads(xf, x.shape, geom, planes, plane_of, xq, n_items, threads)


@register_jitable
def _rows(geom, planes):
    """Rows of one plane `_planes_items` writes: the output rows (FLAT) or the padded rows. Plain
    Python when `to_planes` calls it (a jitted function taking two records cost 1.8 us a call
    from Python, the dispatcher typing them), compiled into the jitted callers."""
    return geom.oh if planes.kind == FLAT else planes.hp


@njit(cache=True, parallel=True)
def _planes_threads(xf, shape, geom, planes, plane_of, xq, n_items, threads):
    """`_planes_items` in parallel: a multiple of `threads` parts of about equal size, each about
    PART_ITEMS planes, or bands of rows of the planes where there are fewer planes than 2 *
    threads (an image's 3 channels). prange gives each thread an equal number of parts."""
    n_rows = _rows(geom, planes)
    bands = min(n_rows, max(1, -(-2 * threads // n_items)))
    units = n_items * bands
    n_parts = threads * max(1, -(-units // (PART_ITEMS * threads)))
    for part in prange(n_parts):
        for u in range(part * units // n_parts, (part + 1) * units // n_parts):
            i, band = u // bands, u % bands
            r0, r1 = band * n_rows // bands, (band + 1) * n_rows // bands
            _planes_items(xf, shape, geom, planes, plane_of, xq, i, i + 1, r0, r1)


@njit(cache=True)
def _planes_items(xf, shape, geom, planes, plane_of, xq, i0, i1, r0, r1):
    """`to_planes` of the (image, channel) items i0 .. i1 - 1, their rows r0 .. r1 - 1 (of
    `_rows`); the one that writes the last row also zeroes the plane's tail. xf the images
    (flat, of `shape`), xq the copy (flat). Rows of one phase are written whole with their pads,
    in vectors (`pad_copy`); a vector that reaches past a row writes zeros into the next row,
    which this call writes later, or into the plane's tail; never past the rows it writes."""
    n_n, c_n, h, w = shape
    cg = c_n // geom.groups
    pl_n, ph_n, q = planes.plane, planes.phases, planes.q
    cc = i0 % cg  # item i0's channel in its group (c_n is a multiple of cg)
    for item in range(i0, i1):
        at = (item - cc + plane_of[cc]) * pl_n  # the plane in xq (item - cc: its group's first plane)
        src = item * h * w  # the channel in xf
        cc = cc + 1 if cc + 1 < cg else 0  # no division per plane
        if planes.kind == FLAT:
            ow = geom.ow
            for oy in range(r0, r1):
                row, d = src + oy * geom.sh * w, at + oy * ow
                for ox in range(ow):
                    xq[d + ox] = xf[row + ox * geom.sw]
            if r1 == geom.oh:
                zero_floats(xq, at + geom.oh * ow, pl_n - geom.oh * ow)
            continue
        if ph_n == 1:  # each padded row written whole, its pads with it, in vectors (`pad_copy`)
            lo, hi = min(q, geom.pl), min(q, geom.pl + w)
            for r in range(r0, r1):
                iy = r - geom.pt
                inside = 0 <= iy < h
                m = pl_n - r * q if r == planes.hp - 1 else q  # the plane's last row with its tail
                lo_r, hi_r = (lo, hi) if inside else (0, 0)
                pad_copy(xf, src + iy * w - geom.pl, lo_r, hi_r, xq, at + r * q, m, (r1 - 1 - r) * q)
            continue
        for r in range(r0, r1):  # rows of several phases, their pads zeroed
            iy, d = r - geom.pt, at + r * ph_n * q
            if iy < 0 or iy >= h:
                zero_floats(xq, d, ph_n * q)
                continue
            for ph in range(ph_n):
                # column j of phase ph holds input column j * ph_n + ph - pl: inside x for j0 <= j < j1
                j0 = min(q, max(0, (geom.pl - ph + ph_n - 1) // ph_n))
                j1 = max(j0, min(q, (w - 1 + geom.pl - ph) // ph_n + 1))
                seg, ix = d + ph * q, src + iy * w + j0 * ph_n + ph - geom.pl
                zero_floats(xq, seg, j0)
                for j in range(j1 - j0):
                    xq[seg + j0 + j] = xf[ix + j * ph_n]
                zero_floats(xq, seg + j1, q - j1)
        if r1 == planes.hp:
            zero_floats(xq, at + planes.hp * ph_n * q, pl_n - planes.hp * ph_n * q)


def pack_tiles(w, geom: ConvGeom, tile_m):
    """Filters (K, C/groups, KH, KW) as blocks of tile_m filters of one group (a group's last
    block padded with zero filters): block b's tap t (summation order, `chain_order`) of filter
    m at [(b * taps + t) * tile_m + m], blocks of group 0 first."""
    k_n, cg, kh, kw = w.shape
    kg, taps = k_n // geom.groups, cg * kh * kw
    order, _ = chain_order(taps, n_chains(geom))
    blocks = -(-kg // tile_m)
    rows = np.zeros((geom.groups, blocks * tile_m, taps), np.float32)
    rows[:, :kg] = w.transpose(0, 2, 3, 1).reshape(geom.groups, kg, taps)[:, :, order]
    packed = rows.reshape(geom.groups * blocks, tile_m, taps).transpose(0, 2, 1)
    out = aligned_floats(packed.size)
    out[:] = packed.reshape(-1)
    return out


def padded_taps(taps):
    """Row length of `taps_last` filters and im2col rows: taps rounded up to a multiple of VEC."""
    return -(-taps // VEC) * VEC


def taps_last(w):
    """Filters (K, C/groups, KH, KW) as (K, J) rows in (fy, fx, c) order, the column order of
    `im2col_range`, with -0 columns up to J = the taps rounded up to a multiple of VEC, so that
    every `dot_taps` run is whole vectors: such a tap times the +0 of an im2col row's padding
    adds -0 to its chain, which changes no sum (a +0 tap would turn a chain sum of -0 into +0)."""
    k_n, cg, kh, kw = w.shape
    taps = cg * kh * kw
    out = aligned_floats(k_n * padded_taps(taps)).reshape(k_n, -1)
    out[:, taps:] = -0.0
    out[:, :taps] = w.transpose(0, 2, 3, 1).reshape(k_n, taps)
    return out


def aligned_floats(n):
    """An empty float32 array of n elements that starts on a 64-byte boundary, so that rows of
    a multiple of 16 floats start on a cache line."""
    buf = np.empty(n + LINE_FLOATS, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    return buf[start : start + n]


def channels_last(x, pt, pl, xh):
    """Layout: x (N, C, H, W); xh (N, HP, WP*C) with element (n, iy, ix*C + c) = x[n, c, iy -
    pt, ix - pl], 0 outside x: `_interleave` with one block of all C channels."""
    c_n = x.shape[1]
    _interleave(x, c_n, pt, pl, xh.shape[1], xh.shape[2] // c_n, xh.reshape(xh.shape[0], -1))


@njit(cache=True)
def im2col_range(xh, c0, geom, need, col, p0, p1, q0):
    """Layout: xh (HP, WP*C) one zero-padded image, channels last (element (iy, ix, c) at
    [iy, ix*C + c]); col (>= q0 + p1 - p0, J) with row q0 + p - p0 for position p = (oy, ox),
    p0 <= p < p1, and column (fy, fx, c) of the channels c0 .. c0 + C/groups - 1, then zeros up
    to J.

    Loop order: positions, fy, fx. Rows whose `need[p]` is False are left untouched (every
    filter masked there). Each tap's C/groups contiguous channels are one `copy_floats`; with one
    group and dw = 1 a whole filter row is one.
    """
    c_n = geom.c_in
    cg = c_n // geom.groups
    kh, kw, sh, sw, dh, dw = geom.kh, geom.kw, geom.sh, geom.sw, geom.dh, geom.dw
    whole_row = cg == c_n and dw == 1
    xf, cf, row, j_n = xh.reshape(-1), col.reshape(-1), xh.shape[1], col.shape[1]
    for p in range(p0, p1):
        if not need[p]:
            continue
        oy, ox = p // geom.ow, p % geom.ow
        d = (q0 + p - p0) * j_n
        j = 0
        for fy in range(kh):
            src = (oy * sh + fy * dh) * row
            if whole_row:
                copy_floats(xf, src + ox * sw * c_n, cf, d + j, kw * c_n)
                j += kw * c_n
                continue
            for fx in range(kw):
                copy_floats(xf, src + (ox * sw + fx * dw) * c_n + c0, cf, d + j, cg)
                j += cg
        zero_floats(cf, d + j, j_n - j)


@register_jitable
def to_blocks(x, geom, planes, xp, threads):
    """Layout: x (N, C, H, W), C a multiple of VEC; xp (N, C * plane) as BLOCKS `Planes`: pixel
    (iy, ix) of channel c at [n, (c // VEC) * VEC * plane + (iy * q + ix) * VEC + c % VEC],
    zero padded (pt rows above, pl columns left): `blocks_rows` of every block's hp rows,
    (image, block) items in parallel where `threads` (`copy_threads`) is more than 1. The
    depthwise kernel copies the rows of a band of outputs at a time instead
    (`depthwise.conv_depth_bands`)."""
    xf = np.ascontiguousarray(x).reshape(-1)
    n_items = x.shape[0] * (x.shape[1] // VEC)
    if threads <= 1:
        _blocks_items(xf, x.shape, geom.pt, geom.pl, planes, xp.reshape(-1), 0, n_items)
    else:
        _blocks_threads(xf, x.shape, geom.pt, geom.pl, planes, xp.reshape(-1), n_items)


@njit(cache=True, parallel=True)
def _blocks_threads(xf, shape, pt, pl, planes, xp, n_items):
    """`_blocks_items` in parallel, one (image, block) item at a time."""
    for item in prange(n_items):
        _blocks_items(xf, shape, pt, pl, planes, xp, item, item + 1)


@njit(cache=True)
def _blocks_items(xf, shape, pt, pl, planes, xp, i0, i1):
    """`to_blocks` of the (image, block) items i0 .. i1 - 1."""
    c_n, h, w = shape[1], shape[2], shape[3]
    n_b = c_n // VEC
    for item in range(i0, i1):
        blocks_rows(
            xf, (c_n, h, w), (item // n_b, item % n_b, pt, pl, planes.q), 0, planes.hp, xp, item * VEC * planes.plane
        )


@njit(cache=True)
def blocks_rows(xf, chw, where, r0, r1, dst, d0):
    """Layout: xf (N * C * H * W,) the input, chw = (C, H, W); where = (n, cb, pt, pl, q): rows r0
    .. r1 - 1 of block cb of image n in the BLOCKS layout (padded row r, q pixels of the block's
    VEC channels side by side, pl zero pixels left, rows above pt zero) into dst from d0, row r
    at d0 + (r - r0) * q * VEC. 8 pixels at a time by `interleave8`, the rest one by one."""
    c_n, h, w = chw
    n, cb, pt, pl, q = where
    hw = h * w
    for r in range(r0, r1):
        row = d0 + (r - r0) * q * VEC
        iy = r - pt
        if iy < 0 or iy >= h:
            dst[row : row + q * VEC] = 0.0
            continue
        dst[row : row + pl * VEC] = 0.0
        dst[row + (pl + w) * VEC : row + q * VEC] = 0.0
        s0 = ((n * c_n + cb * VEC) * h + iy) * w
        ix = 0
        while ix + VEC <= w:
            interleave8(xf, s0 + ix, hw, dst, row + (pl + ix) * VEC, VEC)
            ix += VEC
        for j in range(ix, w):
            for c in range(VEC):
                dst[row + (pl + j) * VEC + c] = xf[s0 + c * hw + j]


def _interleave(x, b, pt, pl, hp, q, xp):
    """Layout: x (N, C, H, W), C a multiple of b; xp (N, C * hp * q) in blocks of b channels,
    each hp rows of q pixels of b floats (the block's channels side by side): channel c's pixel
    (iy, ix) at [n, ((c // b) * hp + iy + pt) * q * b + (ix + pl) * b + c % b], 0 around x.
    Loop order (image, block, row), in parallel from PARALLEL_MIN floats on, then columns,
    channels: a row's b x W source floats stay in L1 while its destination row is written in
    order. With b a multiple of VEC and x C-contiguous, 8 pixels of 8 channels at a time
    (`interleave8`)."""
    n_items = x.shape[0] * (x.shape[1] // b) * hp
    xf = x.reshape(-1) if x.flags.c_contiguous and b % VEC == 0 else np.empty(0, np.float32)
    if xp.size < PARALLEL_MIN:
        _interleave_items(x, xf, b, pt, pl, hp, q, xp, 0, n_items)
    else:
        _interleave_threads(x, xf, b, pt, pl, hp, q, xp, n_items)


@njit(cache=True, parallel=True)
def _interleave_threads(x, xf, b, pt, pl, hp, q, xp, n_items):
    """`_interleave_items` in parallel, PART_ITEMS items at a time."""
    for part in prange((n_items + PART_ITEMS - 1) // PART_ITEMS):
        _interleave_items(x, xf, b, pt, pl, hp, q, xp, part * PART_ITEMS, min(n_items, (part + 1) * PART_ITEMS))


@njit(cache=True)
def _interleave_items(x, xf, b, pt, pl, hp, q, xp, i0, i1):
    """`_interleave` of the (image, block, row) items i0 .. i1 - 1; xf: x flat, or empty when
    x is not C-contiguous or b not a multiple of VEC."""
    n_n, c_n, h, w = x.shape
    n_b = c_n // b
    flat = xp.reshape(-1)
    for item in range(i0, i1):
        n, cb, r = item // (n_b * hp), (item // hp) % n_b, item % hp
        start = n * xp.shape[1] + (cb * hp + r) * q * b
        row = flat[start : start + q * b]
        iy = r - pt
        if iy < 0 or iy >= h:
            row[:] = 0.0
            continue
        row[: pl * b] = 0.0
        row[(pl + w) * b :] = 0.0
        src = x[n, cb * b : (cb + 1) * b, iy]
        ix = 0
        if xf.size:
            s0 = ((n * c_n + cb * b) * h + iy) * w
            while ix + VEC <= w:
                for c in range(0, b, VEC):
                    interleave8(xf, s0 + c * h * w + ix, h * w, flat, start + (pl + ix) * b + c, b)
                ix += VEC
        for j in range(ix, w):
            d = (pl + j) * b
            if b == VEC:  # a constant count: the copy unrolled, about 1.5x as fast
                for c in range(VEC):
                    row[d + c] = src[c, j]
            else:
                for c in range(b):
                    row[d + c] = src[c, j]
