"""Masked convolution: only the unmasked outputs are computed, each in the dense kernels' order.

- `conv_runs` (filters summed in one chain): runs of unmasked outputs of a row, up to 8 in the
  SIMD lanes of `tile_pass`, read from the dense kernels' row planes. A lane past the end of a
  run computes a value that is dropped and not counted.
- `conv_sampled` / `conv_images8` (filters summed in chains): `dot_store` blocks of a pair of
  filters by a few positions (taps in the lanes), following the mask's pair schedule, the taps
  read from a zero-padded channels-last copy of the input where they lie, or from im2col rows.
  A masked output is never visited.

A masked output is never stored or counted: out keeps what it held.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from ..jit import njit
from ..simd import VEC, dot_store, store_tile, tile_pass
from .dense import planes_floats, planes_input
from .geom import ConvGeom, group_taps, in_place, one_chain, subsampled
from .layouts import channels_last, copy_threads, im2col_range, padded_size, padded_taps, planes_of
from .schedule import lane_bits_kernel, tile_positions

# Cost of a unit of the sampled kernels besides its outputs, in outputs (`unit_cuts`).
UNIT_COST = 4
# Segments per work item of `conv_runs`.
RUN_BLOCK = 48
# Images per call of a kernel: at most this many floats of input copy.
CHUNK_FLOATS = 1 << 23


def _sampled_floats(geom, n_n):
    """(per image floats of the channels-last copy, floats of the threads' tiles of im2col rows,
    images per chunk)."""
    g = subsampled(geom)
    hp = padded_size(g.h, g.pt, g.oh, g.sh, g.kh, g.dh)
    wp = padded_size(g.w, g.pl, g.ow, g.sw, g.kw, g.dw)
    copy = hp * wp * g.c_in
    rows = 0 if in_place(g) else numba.get_num_threads() * _tile_floats(g)
    return copy, rows, max(1, min(n_n, CHUNK_FLOATS // copy))


def _tile_floats(g):
    """Floats of one thread's tile of im2col rows (`conv_sampled`, one image)."""
    return padded_taps(group_taps(g)) * tile_positions(g, 1)


def scratch_floats(geom: ConvGeom, n_n, weights) -> int:
    """Floats of scratch a masked call with n_n images needs in the masked kernels (a mask that
    `schedule.dense_cheaper` sends to the dense kernel needs that kernel's, which
    `dispatch.scratch_floats` takes as well)."""
    if lane_bits_kernel(weights, geom):  # the dense kernel's (`dispatch.scratch_floats`)
        return 0
    if one_chain(geom):  # the input planes of `conv_runs`
        per_image = planes_floats(planes_of(geom), geom)
        return 0 if per_image == 0 else max(1, min(n_n, CHUNK_FLOATS // per_image)) * per_image
    copy, rows, chunk = _sampled_floats(geom, n_n)
    return chunk * copy + rows


def conv_masked(x, weights, geom, plan, out, scratch, ep):
    """The masked conv of x into out (N, K, OH, OW) following `plan` (a SkipPlan); ep = (res,
    has_res, act). Returns the MACs executed."""
    if plan.runs is not None:
        return _runs(x, weights, geom, plan, out, scratch, ep)
    res, has_res, act = ep
    g = subsampled(geom)  # a strided 1x1 conv without padding: the stride-1 conv on the pixels it reads
    if g is not geom:
        x = x[:, :, : geom.oh * geom.sh : geom.sh, : geom.ow * geom.sw : geom.sw]
    n_n = x.shape[0]
    copy, rows, chunk = _sampled_floats(geom, n_n)
    kg, cg, p_n, j8 = g.k_out // g.groups, g.c_in // g.groups, g.oh * g.ow, weights.rows.shape[1]
    hp = padded_size(g.h, g.pt, g.oh, g.sh, g.kh, g.dh)
    wpc = padded_size(g.w, g.pl, g.ow, g.sw, g.kw, g.dw) * g.c_in
    whole = cg == g.c_in and g.dw == 1  # a filter row's taps are one contiguous run
    runs = (g.kh, g.dh * wpc, 1, 0, g.kw * cg) if whole else (g.kh, g.dh * wpc, g.kw, g.dw * g.c_in, cg)
    threads = numba.get_num_threads()
    n_done = 0
    for n0 in range(0, n_n, chunk):
        m = min(chunk, n_n - n0)
        xh = scratch[: m * copy].reshape(m, hp, wpc)
        channels_last(x[n0 : n0 + m], g.pt, g.pl, xh)
        o = out[n0 : n0 + m].reshape(-1)
        r = res[n0 : n0 + m].reshape(-1) if has_res else o
        for grp in range(g.groups):
            sg, need, sched, sched8 = plan.groups[grp]
            if in_place(g):
                src = (xh.reshape(-1), _tap_offsets(wpc, g.c_in, grp * cg, g.sh, g.sw, g.oh, g.ow), hp * wpc)
                runs_g, tiles = runs, None
            else:  # each thread copies the im2col rows of a tile into its part of `rows`
                part = _tile_floats(g)
                src = (scratch[m * copy : m * copy + threads * part], _row_offsets(p_n, j8), 0)
                runs_g, tiles = (1, 0, 1, 0, j8), (xh, grp * cg, need, part)
            done = 0
            n8 = 0 if sched8 is None else m - m % 8  # im2col tiles: image by image (docs/kernels.md)
            ep_k = (weights.b, r, has_res, act)
            if n8:
                cuts = unit_cuts(sched8[1], sched8[3], 1, threads)
            for i0 in range(0, n8, 8):  # images in eights: every unmasked element is a full block
                at = (grp * kg, i0, 8, g.k_out, p_n)
                done += conv_images8(weights.rows, src, runs_g, sched8, at, ep_k, o, cuts)
            if n8 < m:
                cuts = unit_cuts(sched[1], sched[3], m - n8, threads)
                at = (grp * kg, n8, m - n8, g.k_out, p_n)
                done += conv_sampled(weights.rows, src, runs_g, sched, at, ep_k, o, cuts, tiles, g)
            n_done += done * group_taps(g)
    return n_done


@functools.lru_cache(maxsize=256)
def _row_offsets(p_n, j8):
    """Offset of the im2col row of every position p in a tile starting at position 0 (rows of j8
    floats). Kept per size; callers must not write into it."""
    return np.arange(p_n, dtype=np.int64) * j8


@njit(cache=True)
def unit_cuts(bounds, n_tiles, n_n, parts):
    """The units of the sampled kernels, (image, tile, pair) for n_n images of a `pair_schedule`
    (bounds, n_tiles), numbered in that order, cut into `parts` runs of about equal work (a
    unit's outputs, both filters' counted, plus UNIT_COST): cuts (parts + 1,), run i being units
    cuts[i] .. cuts[i + 1] - 1. Numba's prange gives each thread one contiguous range of items,
    all of one count, up front (no thread takes work from another): with one run per thread,
    the threads get equal work whatever the densities of the pairs and the sizes of the tiles.
    Only speed depends on the cuts, never a value."""
    n_pairs = (bounds.size - 1) // (3 * n_tiles)
    n_units = n_tiles * n_pairs
    cum = np.zeros(n_n * n_units + 1, np.int64)
    for u in range(n_n * n_units):
        t, r = (u // n_pairs) % n_tiles, u % n_pairs
        i = (r * n_tiles + t) * 3
        cum[u + 1] = cum[u] + bounds[i + 1] - bounds[i] + bounds[i + 3] - bounds[i] + UNIT_COST
    cuts = np.empty(parts + 1, np.int64)
    for th in range(parts + 1):
        cuts[th] = np.searchsorted(cum, cum[-1] * th // parts)
    return cuts


@functools.lru_cache(maxsize=256)
def _tap_offsets(wpc, c_n, c0, sh, sw, oh, ow):
    """Offset of tap (0, 0), channel c0, of every output position in one padded channels-last
    image (HP, WP*C), position p = (oy, ox). Kept per geometry; callers must not write into it."""
    oy, ox = np.divmod(np.arange(oh * ow, dtype=np.int64), ow)
    return oy * (sh * wpc) + ox * (sw * c_n) + c0


@njit(cache=True, inline="always")
def _four(plist, j):
    """plist[j : j + 4] as a tuple (no slice: a view costs reference counting)."""
    return (plist[j], plist[j + 1], plist[j + 2], plist[j + 3])


@njit(cache=True, inline="always")
def _taps_at(base, pos, ps):
    """Where the taps of the 4 positions ps of the image at base start."""
    return (base + pos[ps[0]], base + pos[ps[1]], base + pos[ps[2]], base + pos[ps[3]])


@njit(cache=True, inline="always")
def _outs(row, ps):
    """The outputs of the 4 positions ps in the output row at row."""
    return (row + ps[0], row + ps[1], row + ps[2], row + ps[3])


@njit(cache=True, inline="always")
def _strided(a, step):
    """(a, a + step, a + 2 step, a + 3 step)."""
    return (a, a + step, a + 2 * step, a + 3 * step)


@njit(cache=True, inline="always")
def _copy_tile(tiles, geom, x, j8, th, n, p0, p1):
    """The im2col rows (j8 floats) of positions p0 .. p1 - 1 of image n (tiles = (xh, c0, need,
    part), `im2col_range`) into thread th's part of x, from its row th * part / j8 on."""
    xh, c0, need, part = tiles
    im2col_range(xh[n], c0, geom, need, x.reshape((x.size // j8, j8)), p0, p1, th * part // j8)


@njit(cache=True, parallel=True)
def conv_sampled(w, src, runs, sched, at, ep, out, cuts, tiles, geom):
    """Layout: w (K, J) `taps_last` filters, src = (x, pos, stride): the flat input of the
    images (the taps of position p of image n start at n * stride + pos[p], laid out as `runs`
    says, see `dot_taps`), sched = (pairs, bounds, plist, n_tiles) from `pair_schedule` (filters
    of one group, numbered from at[0]), at = (first filter of the group, first image, images, K,
    P), ep = (bias, res, has_res, act), out (N * K * P,) flat (res likewise), cuts the threads'
    runs of units (`unit_cuts`). Returns the outputs computed. With tiles = (xh, c0, need,
    part) instead of None (xh the images channels last, geom their conv's ConvGeom), x holds
    `part` floats per thread, and a thread copies the im2col rows of its unit's tile there
    (`_copy_tile`) when the tile changes; the taps of position p of that tile (first position
    p0) then start at th * part + pos[p - p0].

    Loop order: one run of units per thread in parallel, a unit being (image, tile of positions,
    pair), in that order; positions. Positions both filters of a pair need go in blocks of 2 x
    8, then 2 x 4 and 2 x 1 (`dot_store` loads each filter and input vector once per block),
    the others in blocks of 12, 8, 4, 1 positions of one filter. A masked (k, p) is never
    visited. Every element is one `dot_taps` sum, then bias, residual, activation, whatever its
    block, unit or thread.
    """
    pairs, bounds, plist, n_tiles = sched
    k_g, n0, n_n, k_n, p_n = at
    n_pairs = pairs.shape[0]
    tile_p = -(-p_n // n_tiles)
    n_done = 0
    for th in prange(cuts.size - 1):
        x, pos, stride = src
        io, where = (ep[0], ep[1], out), (ep[2], ep[3])
        done = 0
        copied = -1
        for u in range(cuts[th], cuts[th + 1]):
            n = n0 + u // (n_tiles * n_pairs)
            t = (u // n_pairs) % n_tiles
            r = u % n_pairs
            base = n * stride
            if tiles is not None:
                base = th * tiles[3] - t * tile_p * w.shape[1]
                if n * n_tiles + t != copied:
                    _copy_tile(tiles, geom, x, w.shape[1], th, n, t * tile_p, min(p_n, (t + 1) * tile_p))
                    copied = n * n_tiles + t
            k1, k2 = k_g + pairs[r, 0], k_g + pairs[r, 1]
            i = (r * n_tiles + t) * 3
            row1, row2 = (n * k_n + k1) * p_n, (n * k_n + k2) * p_n
            j, j1 = bounds[i], bounds[i + 1]
            done += 2 * (j1 - j) + bounds[i + 3] - j1
            while j1 - j >= 8:
                a, b = _four(plist, j), _four(plist, j + 4)
                o = _taps_at(base, pos, a) + _taps_at(base, pos, b)
                oi = _outs(row1, a) + _outs(row1, b) + _outs(row2, a) + _outs(row2, b)
                dot_store(w, (k1, k2), x, o, runs, io, where, oi)
                j += 8
            if j1 - j >= 4:
                a = _four(plist, j)
                dot_store(w, (k1, k2), x, _taps_at(base, pos, a), runs, io, where, _outs(row1, a) + _outs(row2, a))
                j += 4
            for v in range(j, j1):
                pu = plist[v]
                dot_store(w, (k1, k2), x, (base + pos[pu],), runs, io, where, (row1 + pu, row2 + pu))
            for c in range(2):  # the positions only the first, then only the second filter needs
                k, row = (k1, row1) if c == 0 else (k2, row2)
                j, j1 = bounds[i + 1 + c], bounds[i + 2 + c]
                while j1 - j >= 12:
                    a, b, e = _four(plist, j), _four(plist, j + 4), _four(plist, j + 8)
                    o = _taps_at(base, pos, a) + _taps_at(base, pos, b) + _taps_at(base, pos, e)
                    dot_store(w, (k,), x, o, runs, io, where, _outs(row, a) + _outs(row, b) + _outs(row, e))
                    j += 12
                if j1 - j >= 8:
                    a, b = _four(plist, j), _four(plist, j + 4)
                    o = _taps_at(base, pos, a) + _taps_at(base, pos, b)
                    dot_store(w, (k,), x, o, runs, io, where, _outs(row, a) + _outs(row, b))
                    j += 8
                if j1 - j >= 4:
                    a = _four(plist, j)
                    dot_store(w, (k,), x, _taps_at(base, pos, a), runs, io, where, _outs(row, a))
                    j += 4
                for v in range(j, j1):
                    dot_store(w, (k,), x, (base + pos[plist[v]],), runs, io, where, (row + plist[v],))
        n_done += done
    return n_done


@njit(cache=True, parallel=True)
def conv_images8(w, src, runs, sched, at, ep, out, cuts):
    """Layout as `conv_sampled` (taps read in place); only the 8 images from at[1], units
    (tile, pair). Returns the outputs computed.

    Loop order: one run of units per thread in parallel, positions. Masks are shared by the
    images, so an unmasked (k, p) is always one block of 8 images at p; a position both filters
    of a pair need is one block of 2 x 8. A masked (k, p) is never visited. Each element is the
    same sum as in `conv_sampled`.
    """
    pairs, bounds, plist, n_tiles = sched
    k_g, n0, _, k_n, p_n = at
    n_pairs = pairs.shape[0]
    s = k_n * p_n  # from one image to the next in out
    n_done = 0
    for th in prange(cuts.size - 1):
        x, pos, d = src
        io, where = (ep[0], ep[1], out), (ep[2], ep[3])
        done = 0
        for u in range(cuts[th], cuts[th + 1]):
            t, r = u // n_pairs, u % n_pairs
            k1, k2 = k_g + pairs[r, 0], k_g + pairs[r, 1]
            i = (r * n_tiles + t) * 3
            for c in range(3):
                for v in range(bounds[i + c], bounds[i + c + 1]):
                    p = plist[v]
                    q = n0 * d + pos[p]
                    g = _strided(q, d) + _strided(q + 4 * d, d)
                    r1, r2 = (n0 * k_n + k1) * p_n + p, (n0 * k_n + k2) * p_n + p
                    if c == 0:
                        oi = _strided(r1, s) + _strided(r1 + 4 * s, s) + _strided(r2, s) + _strided(r2 + 4 * s, s)
                        dot_store(w, (k1, k2), x, g, runs, io, where, oi)
                    else:
                        k, rk = (k1, r1) if c == 1 else (k2, r2)
                        dot_store(w, (k,), x, g, runs, io, where, _strided(rk, s) + _strided(rk + 4 * s, s))
            done += 2 * (bounds[i + 1] - bounds[i]) + bounds[i + 3] - bounds[i + 1]
        n_done += done
    return n_done * 8


def _runs(x, weights, geom, plan, out, scratch, ep):
    """One-chain filters: the unmasked runs of `plan.runs` through `conv_runs`, chunk by chunk
    of images, from the dense kernels' input copy."""
    res, has_res, act = ep
    n_n = x.shape[0]
    planes, plane_of = plan.runs[3], plan.runs[4]
    per_image = planes_floats(planes, geom)
    chunk = n_n if per_image == 0 else max(1, min(n_n, CHUNK_FLOATS // per_image))
    n_done = 0
    for n0 in range(0, n_n, chunk):
        m = min(chunk, n_n - n0)
        threads = copy_threads(m * per_image, numba.get_num_threads())
        xp = planes_input(x[n0 : n0 + m], geom, planes, plane_of, scratch, threads)
        o = out[n0 : n0 + m].reshape(-1)
        r = res[n0 : n0 + m].reshape(-1) if has_res else o
        runs = (plan.runs[0], plan.runs[1], plan.runs[2], planes.plane)
        n_done += conv_runs(xp, weights, geom, runs, (r, has_res, act), o)
    return n_done * group_taps(geom)


@njit(cache=True, parallel=True)
def conv_runs(xp, cw, geom, runs, ep, out):
    """Layout: xp the dense kernels' input of the images (flat, `to_planes`), out and res (in ep
    = (res, has_res, act)) flat NCHW, runs = (segs, bounds, offs, plane): the `run_segments`,
    the tap offsets in the input planes and their size. Returns the outputs computed.

    Loop order: (image, filter, block of RUN_BLOCK segments) items in parallel, then tiles of 3
    segments as in `dense.conv_tiles`, of the filter alone (its taps in one chain, its weights a
    row of cw.rows); `store_tile` writes a segment's outputs only; a short last tile repeats its
    last segment.
    """
    segs, bounds, offs, plane = runs
    k_n, p_n = geom.k_out, geom.oh * geom.ow
    n_n = out.size // (k_n * p_n)
    kg, cg = k_n // geom.groups, geom.c_in // geom.groups
    j8 = cw.rows.shape[1]
    img = geom.c_in * plane
    max_blocks = 1
    for k in range(k_n):
        max_blocks = max(max_blocks, (bounds[k + 1] - bounds[k] + RUN_BLOCK - 1) // RUN_BLOCK)
    wt, bias = cw.rows.reshape(-1), cw.b  # taken out of the record once (see dense.conv_tiles)
    n_done = 0
    for item in prange(n_n * k_n * max_blocks):
        blk = item % max_blocks
        k = (item // max_blocks) % k_n
        n = item // (max_blocks * k_n)
        s_lo = bounds[k] + blk * RUN_BLOCK
        s_hi = min(bounds[k + 1], s_lo + RUN_BLOCK)
        if s_lo >= s_hi:
            continue
        sums = np.empty(3 * VEC, np.float32)
        xb, ob = n * img + (k // kg) * cg * plane, (n * k_n + k) * p_n
        where = (k, 1, p_n, ep[1], ep[2])
        span = (0, offs.size, 0)  # one chain: every tap in one run
        done = 0
        for s0 in range(s_lo, s_hi, 3):
            a, b, c = s0, min(s0 + 1, s_hi - 1), min(s0 + 2, s_hi - 1)
            tile_pass(wt, (k * j8,), xp, (xb + segs[a, 0], xb + segs[b, 0], xb + segs[c, 0]), offs, span, sums, 0)
            obs = (ob + segs[a, 1], ob + segs[b, 1], ob + segs[c, 1])
            lanes = (segs[a, 2], segs[b, 2], segs[c, 2], segs[a, 3], segs[b, 3], segs[c, 3])
            store_tile(sums, (0,), bias, ep[0], out, where, obs, lanes)
        for s in range(s_lo, s_hi):
            done += segs[s, 3] - segs[s, 2]
        n_done += done
    return n_done
