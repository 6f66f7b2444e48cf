"""Layouts of a conv's data: the copies of its input the kernels read, and its filters packed.

Input copies (written at every call, borders zeroed, so a scratch buffer can be shared):
- `to_planes`: the dense kernels' input, one zero-padded plane per channel (docs/kernels.md,
  "Layouts"): in rows, each row split into sw phases of q floats (column ix of the padded row
  is float ix // sw of phase ix % sw), so that 8 outputs of a row at stride sw read 8
  consecutive floats; flat (a 1x1 conv without padding), the plane holds the pixels the
  outputs read, in output order. Planes are `plane` floats apart, an odd number of 64-byte
  lines, and in `plane_of` order, so that the taps a chain reads one after another do not map
  to the same L1 cache sets.
- `channels_last`: the masked kernels' input, zero-padded and channels last, so that the taps
  of an output are runs of consecutive floats.
- `im2col_rows`: those runs copied into one row per output position, when they are not
  whole vectors in place.

Filters: `chain_order` numbers a filter's taps in the order they are summed; `pack_tiles` packs
blocks of filters in that order, `taps_last` one row per filter in (fy, fx, c) order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..simd import CHAINS, VEC
from .geom import ConvGeom, one_chain

LINE_FLOATS = 16  # floats per 64-byte cache line


class Planes(NamedTuple):
    """Shape of the dense kernels' input copy of one image: channel c's plane starts at
    plane_of[c] * plane (within its group's planes). flat = 1: a plane holds oh * ow pixels in
    output order; flat = 0: hp rows of sw phases of q floats."""

    flat: int
    hp: int
    q: int
    plane: int


def is_flat(g: ConvGeom) -> bool:
    """A 1x1 conv without padding reads one pixel per output: its copy is flat."""
    return g.kh == g.kw == 1 and g.pt == g.pl == g.pb == g.pr == 0


def padded_size(n, pad, out_n, stride, taps, dil):
    """Length of one zero-padded input axis that holds the input after `pad` zeros and every tap
    of every one of out_n outputs (the far side gets what the output size implies)."""
    return max(n + pad, (out_n - 1) * stride + (taps - 1) * dil + 1)


def _odd_lines(floats):
    """floats rounded up to a whole, odd number of cache lines."""
    lines = -(-floats // LINE_FLOATS)
    return (lines + 1 - lines % 2) * LINE_FLOATS


def planes_of(g: ConvGeom) -> Planes:
    """The Planes of a conv. A row phase has room for a vector read from any output column:
    q >= ow + VEC - 1 + the largest tap shift (fx * dw) // sw."""
    if is_flat(g):
        return Planes(1, 1, 0, _odd_lines(g.oh * g.ow + VEC - 1))
    hp = padded_size(g.h, g.pt, g.oh, g.sh, g.kh, g.dh)
    q = max(g.ow + VEC - 1 + (g.kw - 1) * g.dw // g.sw, -(-(g.pl + g.w) // g.sw))
    q = -(-q // LINE_FLOATS) * LINE_FLOATS
    return Planes(0, hp, q, _odd_lines(hp * g.sw * q))


def plane_order(cg):
    """plane_of (cg,): the plane of each channel of a group. With a multiple of CHAINS channels
    the channels of one chain (c mod CHAINS) are neighbours: plane (c % CHAINS) * cg / CHAINS +
    c // CHAINS."""
    c = np.arange(cg, dtype=np.int64)
    if cg % CHAINS:
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
    offs = plane_of[c] * planes.plane
    if not planes.flat:
        shift = fx * g.dw
        offs = offs + fy * g.dh * g.sw * planes.q + (shift % g.sw) * planes.q + shift // g.sw
    return np.ascontiguousarray(offs, np.int64), starts


def segments(g: ConvGeom, planes: Planes):
    """(S, 3) int64: the output segments of one output plane, VEC consecutive outputs of one row
    (or of the flat plane): the offset of tap (0, 0) of the first one in a channel's input plane,
    the offset of the first one in an output plane, and how many outputs the segment holds."""
    if planes.flat:
        p = np.arange(0, g.oh * g.ow, VEC, dtype=np.int64)
        return np.stack([p, p, np.minimum(VEC, g.oh * g.ow - p)], axis=1)
    oy, ox = np.divmod(np.arange(g.oh * -(-g.ow // VEC), dtype=np.int64), -(-g.ow // VEC))
    ox = ox * VEC
    return np.stack([oy * g.sh * g.sw * planes.q + ox, oy * g.ow + ox, np.minimum(VEC, g.ow - ox)], axis=1)


@njit(cache=True, parallel=True)
def to_planes(x, geom, planes, plane_of, xp):
    """Layout: x (N, C, H, W); xp (N, C * plane) as `Planes` says, every float written (padding
    0). Loop order (image, channel) in parallel, then rows, phases, columns."""
    n_n, c_n, h, w = x.shape
    cg = c_n // geom.groups
    pl_n = planes.plane
    for item in prange(n_n * c_n):
        n, c = item // c_n, item % c_n
        dst = xp[n, ((c // cg) * cg + plane_of[c % cg]) * pl_n : ((c // cg) * cg + plane_of[c % cg] + 1) * pl_n]
        src = x[n, c]
        if planes.flat:
            ow = geom.ow
            for p in range(geom.oh * ow):
                dst[p] = src[(p // ow) * geom.sh, (p % ow) * geom.sw]
            dst[geom.oh * ow :] = 0.0
            continue
        sw, q = geom.sw, planes.q
        for r in range(planes.hp):
            iy = r - geom.pt
            row = dst[r * sw * q : (r + 1) * sw * q]
            if iy < 0 or iy >= h:
                row[:] = 0.0
                continue
            for ph in range(sw):
                seg = row[ph * q : (ph + 1) * q]
                for j in range(q):
                    ix = j * sw + ph - geom.pl
                    seg[j] = src[iy, ix] if 0 <= ix < w else np.float32(0.0)
        dst[planes.hp * sw * q :] = 0.0


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
    `im2col_rows`, with zero columns up to J = the taps rounded up to a multiple of VEC, so that
    every `dot_taps` run is whole vectors (a zero tap adds +0 to a chain: no change)."""
    k_n, cg, kh, kw = w.shape
    taps = cg * kh * kw
    out = aligned_floats(k_n * padded_taps(taps)).reshape(k_n, -1)
    out[:, taps:] = 0.0
    out[:, :taps] = w.transpose(0, 2, 3, 1).reshape(k_n, taps)
    return out


def aligned_floats(n):
    """An empty float32 array of n elements that starts on a 64-byte boundary, so that rows of
    a multiple of 16 floats start on a cache line."""
    buf = np.empty(n + LINE_FLOATS, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    return buf[start : start + n]


@njit(cache=True, parallel=True)
def channels_last(x, pt, pl, xh):
    """Layout: x (N, C, H, W); xh (N, HP, WP*C) with element (n, iy, ix*C + c) = x[n, c, iy -
    pt, ix - pl], 0 outside x. Loop order (n, iy) in parallel, ix, c: a row's C x W source
    floats stay in L1 while its destination row is written in order."""
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


@njit(cache=True, parallel=True)
def im2col_rows(xh, c0, geom, need, col, q0):
    """Layout: xh (HP, WP*C) one zero-padded image, channels last (element (iy, ix, c) at
    [iy, ix*C + c]); col (>= q0 + OH*OW, J) with row q0 + p for p = (oy, ox) and column
    (fy, fx, c) of the channels c0 .. c0 + C/groups - 1, then zeros up to J.

    Loop order: oy (in parallel), ox, fy, fx. Rows whose `need[p]` is False are left untouched
    (every filter masked there). Each tap copies C/groups contiguous channels; with one group
    and dw = 1 a whole filter row is one contiguous copy.
    """
    c_n = geom.c_in
    cg = c_n // geom.groups
    kh, kw, sh, sw, dh, dw = geom.kh, geom.kw, geom.sh, geom.sw, geom.dh, geom.dw
    whole_row = cg == c_n and dw == 1
    for oy in prange(geom.oh):
        for ox in range(geom.ow):
            p = oy * geom.ow + ox
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
            col[q0 + p, j:] = 0.0
