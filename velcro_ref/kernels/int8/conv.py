"""int8 conv2d kernels: exact int32 accumulation, requantization fused, masked variants.

The input is first copied channels-last as int16 with the zero point subtracted (`_pack_rows`,
once per call, the rows shared by the threads; padding is then exactly the zero point, as
onnxruntime pads), so every product is an exact int16 x int16 one and the weights need no
zero-point correction. Work items are then one block of TILE_K output channels of a band of
output rows (image, group, rows oy0..); an item takes the band's positions in tiles of TILE_P
(which may span output rows), each summed by simd.conv_tile over runs of values: per tap (fy, fx)
a pair-padded run of channels, or with one group and no horizontal dilation a whole filter row
(kw taps x channels) as one run. A depthwise conv (one input channel per group) goes plane by
plane instead, along the output row (which LLVM vectorises: integer sums need no fastmath).

A masked output element (skip[k, oy, ox]) is never computed and out keeps what it holds; a tile
that mixes masked and unmasked elements computes its unmasked ones one at a time, a fully masked
tile is skipped. Items are shared by the calling thread and helper threads (kernels/int8/
workers.py). The kernels return the number of output elements they computed; the wrapper turns
it into MACs, (C / groups) * kh * kw each (the zero taps padding a run to an even length, or a
tile to TILE_P positions and TILE_K channels, are not counted).
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads

from ..conv.geom import subsampled
from ..conv.layouts import padded_size
from ..jit import njit
from . import workers
from .requant import REQUANT_ORT, requant_value, round_small
from .simd import TILE_K, TILE_P, conv_tile

# Below this many MACs a conv runs in the calling thread alone: handing out items costs more
# than it saves on a small layer.
PARALLEL_MIN_MACS = 1 << 21


@njit(cache=True)
def pack_row(x, x_zero_point, n, c0, cg, iy, pl, xf, base, wp, cp):
    """One padded row of the channels-last copy: xf[base + (pl + ix) * cp + c] = x[n, c0 + c, iy,
    ix] - x_zero_point for c < cg, zeros elsewhere in xf[base : base + wp * cp] (padding columns,
    channels cg..cp, the whole row if iy is outside the input). Flat indexing, no views (a view
    costs reference counting)."""
    h, w = x.shape[2], x.shape[3]
    if iy < 0 or iy >= h:
        for j in range(wp * cp):
            xf[base + j] = 0
        return
    for j in range(pl * cp):
        xf[base + j] = 0
    for j in range((pl + w) * cp, wp * cp):
        xf[base + j] = 0
    if cg < cp:
        for ix in range(w):
            for c in range(cg, cp):
                xf[base + (pl + ix) * cp + c] = 0
    for c in range(cg):
        b = base + pl * cp + c
        for ix in range(w):
            xf[b + ix * cp] = np.int16(np.int32(x[n, c0 + c, iy, ix]) - x_zero_point)


@njit(cache=True)
def _pack_rows(x, x_zero_point, xf, geom, groups, hp, wp, cp, i0, i1):
    """Rows i0 .. i1 - 1 of the packed input, row i = (n * groups + g) * hp + r the padded row r
    (input row r - pt) of image n's group g."""
    cg = x.shape[1] // groups
    for i in range(i0, i1):
        r, ng = i % hp, i // hp
        n, g = ng // groups, ng % groups
        pack_row(x, x_zero_point, n, g * cg, cg, r - geom.pt, geom.pl, xf, i * wp * cp, wp, cp)
    return 0


@njit(cache=True)
def _dot(xf, base, rows, k, kh, step_y, kw, step_x, run):
    """Exact sum over runs (fy, fx) and their values c of xf[base + fy*step_y + fx*step_x + c] *
    rows[k, (fy*kw + fx)*run + c]; the inner loop vectorises."""
    s = 0
    for fy in range(kh):
        for fx in range(kw):
            b = np.uint64(base + fy * step_y + fx * step_x)
            r = np.uint64((fy * kw + fx) * run)
            for c in range(run):  # unsigned indices: no negative-index test, so it vectorises
                s += np.int32(xf[b + np.uint64(c)]) * np.int32(rows[k, r + np.uint64(c)])
    return np.int32(s)  # exact: the accumulator bound was checked when the layer was prepared


@njit(cache=True)
def _tile_rows(xf, x_zero_point, pc, geom, rq, skip, masked, out, out_f, band, n_chunks, i0, i1):
    """Items i0 .. i1 - 1 of the tile path: item = ((n * groups + g) * n_bands + b) * n_chunks +
    chunk, band b the output rows b * band .. (b + 1) * band - 1, chunk a run of blocks of
    TILE_K output channels; xf the packed input (`_pack_rows`), out_f the values of out (C order)
    flattened. Loop blocks, then the band's positions in tiles of TILE_P (which may span output
    rows; positions tracked without divisions): a block's filters stay in the cache for the whole
    band. Returns the number of output elements computed."""
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups, cpp, run = geom.groups, pc.cpp, pc.run
    kg = k_n // groups
    n_blocks = (kg + TILE_K - 1) // TILE_K
    n_bands = (oh + band - 1) // band
    per_chunk = (n_blocks + n_chunks - 1) // n_chunks
    hp = padded_size(geom.h, geom.pt, oh, geom.sh, geom.kh, geom.dh)
    wp = padded_size(geom.w, geom.pl, ow, geom.sw, geom.kw, geom.dw)
    acc = np.empty(TILE_P * TILE_K, np.int32)
    q = np.empty(TILE_K, np.int32)
    py, px = np.empty(TILE_P, np.intp), np.empty(TILE_P, np.intp)
    offs_a = np.empty(TILE_P, np.intp)
    plane = oh * ow
    row_step = geom.sh * wp * cpp
    step_y, step_x, pos_x = geom.dh * wp * cpp, geom.dw * cpp, geom.sw * cpp
    kw_runs = 1 if pc.row_mode else geom.kw
    tgeom = (geom.kh, step_y, kw_runs, step_x, run // 2)
    block_len = geom.kh * kw_runs * run * TILE_K
    tiles, bias, scales = pc.tiles, pc.bias, rq.scale  # hoisted: each access of a field counts a reference
    ort = rq.mode == REQUANT_ORT
    # bias and scale padded to whole blocks, so a block's requantization runs over TILE_K lanes
    bias_t = np.zeros(groups * n_blocks * TILE_K + k_n, np.int32)
    scale_t = np.zeros(groups * n_blocks * TILE_K + k_n, np.float32)
    bias_t[:k_n] = bias
    if ort:
        scale_t[:k_n] = scales
    zp = rq.zero_point
    lo, hi = np.float32(rq.qmin - zp), np.float32(rq.qmax - zp)
    count = 0
    for item in range(i0, i1):
        chunk = item % n_chunks
        band_id = item // n_chunks
        b, g, n = band_id % n_bands, (band_id // n_bands) % groups, band_id // (n_bands * groups)
        image0 = (n * groups + g) * hp * wp * cpp
        # the band's positions oy * ow + ox in tiles of TILE_P, which may span output rows
        t_first, t_end = b * band * ow, min((b + 1) * band, oh) * ow
        for kb in range(chunk * per_chunk, min((chunk + 1) * per_chunk, n_blocks)):
            k0 = g * kg + kb * TILE_K
            k_count = min(TILE_K, kg - kb * TILE_K)
            out0 = (n * k_n + k0) * plane  # flat index of out[n, k0, 0, 0]
            w0 = (g * n_blocks + kb) * block_len
            ty, tx = b * band, 0  # the tile's first position
            for t0 in range(t_first, t_end, TILE_P):
                p_count = min(TILE_P, t_end - t0)
                y, x = ty, tx
                for p in range(TILE_P):  # positions past the band repeat the last one
                    py[p], px[p] = y, x
                    offs_a[p] = image0 + y * row_step + x * pos_x
                    if p < p_count - 1:
                        x += 1
                        if x == ow:
                            x, y = 0, y + 1
                ty, tx = y, x + 1
                if tx == ow:
                    ty, tx = ty + 1, 0
                live = p_count * k_count
                if masked:
                    live = 0
                    for p in range(p_count):
                        for c in range(k_count):
                            live += not skip[k0 + c, py[p], px[p]]
                    if live == 0:
                        continue
                count += live
                if live == p_count * k_count:
                    offs = (offs_a[0], offs_a[1], offs_a[2], offs_a[3])
                    conv_tile(tiles, w0, xf, offs, tgeom, acc)
                    if ort:  # inline, on hoisted arrays: a call passing rq costs reference counting
                        uk = np.uint64(k0)
                        for p in range(p_count):
                            up = np.uint64(p * TILE_K)
                            for c in range(TILE_K):  # unsigned indices: no negative-index test, so it vectorises
                                uc = np.uint64(c)
                                a = np.int32(acc[up + uc] + bias_t[uk + uc])
                                v = np.float32(np.float32(a) * scale_t[uk + uc])
                                q[c] = np.int32(round_small(lo if v != v else min(max(v, lo), hi))) + zp
                            o = np.uint64(out0 + py[p] * ow + px[p])
                            for c in range(k_count):
                                out_f[o + np.uint64(c * plane)] = q[c]
                        continue
                    for p in range(p_count):  # fixed_point
                        for c in range(k_count):
                            k = k0 + c
                            out[n, k, py[p], px[p]] = requant_value(np.int64(acc[p * TILE_K + c]) + bias[k], k, rq)
                    continue
                for p in range(p_count):
                    base = offs_a[p]
                    for c in range(k_count):
                        k = k0 + c
                        if skip[k, py[p], px[p]]:
                            continue
                        s = _dot(xf, base, pc.rows, k, geom.kh, step_y, kw_runs, step_x, run)
                        out[n, k, py[p], px[p]] = requant_value(np.int64(s) + bias[k], k, rq)
    return count


@njit(cache=True)
def _depthwise_planes(x, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks, i0, i1):
    """Items i0 .. i1 - 1 of the depthwise path: item = n * K + k, one output plane, computed
    from a zero-padded int16 copy of its input plane (channel k // m, K = C * m) split into sw
    phases of columns (column j of phase f is padded column j * sw + f), so that every tap
    reads consecutive values; loop oy, taps, ox (vectorised). Filters tap-major in pc.tiles
    (kh * kw, K). Flat indexing throughout (no views). Returns the elements computed."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    mult = k_n // c_n
    sw, kh, kw = geom.sw, geom.kh, geom.kw
    hp = padded_size(h, geom.pt, oh, geom.sh, kh, geom.dh)
    wp = padded_size(w, geom.pl, ow, sw, kw, geom.dw)
    wf = (wp + sw - 1) // sw  # columns per phase
    pf = np.zeros(sw * hp * wf, np.int16)
    acc = np.empty(ow, np.int32)
    lo, hi = np.float32(rq.qmin - rq.zero_point), np.float32(rq.qmax - rq.zero_point)
    zp = rq.zero_point
    tiles, biases, scales = pc.tiles, pc.bias, rq.scale  # hoisted: each access of a field counts a reference
    count = 0
    for item in range(i0, i1):
        n, k = item // k_n, item % k_n
        c = k // mult
        if sw == 2:  # both phases in one loop: LLVM vectorises the pair of strided loads
            f0, pl = geom.pl % 2, geom.pl
            for iy in range(h):
                b0 = (f0 * hp + geom.pt + iy) * wf + pl // 2
                b1 = ((1 - f0) * hp + geom.pt + iy) * wf + (pl + 1) // 2
                for t in range(w // 2):
                    pf[b0 + t] = np.int16(np.int32(x[n, c, iy, 2 * t]) - x_zero_point)
                    pf[b1 + t] = np.int16(np.int32(x[n, c, iy, 2 * t + 1]) - x_zero_point)
                if w % 2:
                    pf[b0 + w // 2] = np.int16(np.int32(x[n, c, iy, w - 1]) - x_zero_point)
        else:
            for f in range(sw):
                ix0 = (f - geom.pl) % sw  # the first input column of phase f
                j0 = (geom.pl + ix0) // sw
                for iy in range(h):
                    base = (f * hp + geom.pt + iy) * wf + j0
                    for t in range((w - ix0 + sw - 1) // sw):
                        pf[base + t] = np.int16(np.int32(x[n, c, iy, ix0 + t * sw]) - x_zero_point)
        bias = biases[k]
        for oy in range(oh):
            if masked:
                for ox in range(ow):
                    if skip[k, oy, ox]:
                        continue
                    s = 0
                    for fy in range(kh):
                        for fx in range(kw):
                            j = ox * sw + fx * geom.dw
                            v = pf[((j % sw) * hp + oy * geom.sh + fy * geom.dh) * wf + j // sw]
                            s += np.int32(v) * np.int32(tiles[(fy * kw + fx) * k_n + k])
                    out[n, k, oy, ox] = requant_value(np.int64(s) + bias, k, rq)
                    count += 1
                continue
            for ox in range(ow):
                acc[ox] = bias
            for fy in range(kh):
                iy = oy * geom.sh + fy * geom.dh
                for fx in range(kw):
                    wt = np.int32(tiles[(fy * kw + fx) * k_n + k])
                    f = fx * geom.dw
                    base = np.uint64(((f % sw) * hp + iy) * wf + f // sw)
                    for ox in range(ow):  # unsigned indices: no negative-index test, so it vectorises
                        acc[ox] += np.int32(pf[base + np.uint64(ox)]) * wt
            if rq.mode == 0:
                scale = scales[k]
                for ox in range(ow):
                    v = np.float32(np.float32(acc[ox]) * scale)
                    out[n, k, oy, ox] = np.int32(round_small(lo if v != v else min(max(v, lo), hi))) + zp
            else:
                for ox in range(ow):
                    out[n, k, oy, ox] = requant_value(np.int64(acc[ox]), k, rq)
            count += ow
    return count


@njit(cache=True)
def _items(x, xf, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks, i0, i1):
    if pc.depthwise:
        return _depthwise_planes(x, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks, i0, i1)
    return _tile_rows(xf, x_zero_point, pc, geom, rq, skip, masked, out, out.reshape(-1), band, n_chunks, i0, i1)


@njit(cache=True, nogil=True)
def _grab(counters, n_items, per, x, xf, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks):
    """Runs of `per` items taken from counters until none is left (kernels/int8/workers.py)."""
    total = 0
    while True:
        i0 = workers.atomic_add(counters, workers.NEXT, per)
        if i0 >= n_items:
            break
        i1 = min(i0 + per, n_items)
        done = _items(x, xf, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks, i0, i1)
        total += done
        workers.atomic_add(counters, workers.DONE, done)
        workers.atomic_add(counters, workers.FINISHED, i1 - i0)
    return total


@njit(cache=True, nogil=True)
def _grab_packing(
    counters,
    n_runs,
    one,
    x,
    xf,
    x_zero_point,
    pc,
    geom,
    rq,
    skip,
    masked,
    out,
    band,
    n_chunks,
    n_pack,
    rows,
    hp,
    wp,
    per,
    n_items,
):
    """`_grab` over runs that first pack the input, then compute: run r < n_pack packs the
    rows r * rows // n_pack .. (r + 1) * rows // n_pack - 1 (`_pack_rows`) and counts itself
    in counters[READY]; run r >= n_pack waits until all are packed, then computes the items
    (r - n_pack) * per .. (one hand-over to the threads for both phases). Runs are taken in
    order, so every packing run has been taken by a thread that does not wait when a thread
    waits."""
    total = 0
    while True:
        r = workers.atomic_add(counters, workers.NEXT, one)
        if r >= n_runs:
            break
        if r < n_pack:
            _pack_rows(
                x, x_zero_point, xf, geom, geom.groups, hp, wp, pc.cpp, r * rows // n_pack, (r + 1) * rows // n_pack
            )
            workers.atomic_add(counters, workers.READY, 1)
        else:
            workers.wait_count(counters, workers.READY, n_pack)
            i0 = (r - n_pack) * per
            done = _items(
                x, xf, x_zero_point, pc, geom, rq, skip, masked, out, band, n_chunks, i0, min(i0 + per, n_items)
            )
            total += done
            workers.atomic_add(counters, workers.DONE, done)
        workers.atomic_add(counters, workers.FINISHED, 1)
    return total


_NO_SKIP = np.zeros((1, 1, 1), np.bool_)
_NO_PACK = np.zeros(2, np.int16)
# Items per thread to aim at: enough for the threads to end together.
ITEMS_PER_THREAD = 8


def packed_size(n_n, pc, geom):
    """int16 values of the packed input of a conv on n_n images (0 for a depthwise conv, which
    packs plane by plane)."""
    if pc.depthwise:
        return 0
    geom = subsampled(geom)
    hp = padded_size(geom.h, geom.pt, geom.oh, geom.sh, geom.kh, geom.dh)
    wp = padded_size(geom.w, geom.pl, geom.ow, geom.sw, geom.kw, geom.dw)
    # the last pair of a filter row may read one value past it (times a zero weight)
    return n_n * geom.groups * hp * wp * pc.cpp + 2


def conv2d(x, x_zero_point, pc, geom, rq, skip, out, scratch=None):
    """int8 conv2d. x (N, C, H, W) uint8/int8 with x_zero_point; pc a qprepare.PackedConv;
    geom a kernels.conv.geom.ConvGeom; rq a qprepare.Requant; skip None (dense) or bool (K, OH, OW);
    out (N, K, OH, OW) uint8/int8, masked elements left as they are; scratch None or a 1-D int16
    array of at least `packed_size` values for the packed input. Returns executed MACs."""
    n_n, c_n = x.shape[0], x.shape[1]
    k_n, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    if n_n == 0 or k_n == 0 or oh == 0 or ow == 0:
        return 0
    if not out.flags.c_contiguous:  # the kernels write out through a flat view
        tmp = np.ascontiguousarray(out)
        macs = conv2d(x, x_zero_point, pc, geom, rq, skip, tmp, scratch)
        out[...] = tmp
        return macs
    macs_each = (c_n // geom.groups) * geom.kh * geom.kw
    sub = subsampled(geom)
    if sub is not geom:
        x, geom = x[:, :, : (oh - 1) * geom.sh + 1 : geom.sh, : (ow - 1) * geom.sw + 1 : geom.sw], sub
    masked = skip is not None
    skip_arr = skip if masked else _NO_SKIP
    threads = get_num_threads()
    parallel = n_n * k_n * oh * ow * macs_each >= PARALLEL_MIN_MACS and threads > 1
    target = ITEMS_PER_THREAD * threads if parallel else 1
    if pc.depthwise:
        xf, band, n_chunks, n_items = _NO_PACK, 1, 1, n_n * k_n
    else:
        need = packed_size(n_n, pc, geom)
        xf = np.empty(need, np.int16) if scratch is None or scratch.size < need else scratch
        hp = padded_size(geom.h, geom.pt, oh, geom.sh, geom.kh, geom.dh)
        wp = padded_size(geom.w, geom.pl, ow, geom.sw, geom.kw, geom.dw)
        rows = n_n * geom.groups * hp
        # one block per item where the blocks alone give enough items, else bands of rows too
        n_blocks = (k_n // geom.groups + TILE_K - 1) // TILE_K
        n_chunks = n_blocks
        images = n_n * geom.groups
        bands_each = max(1, min(oh, -(-target // (images * n_blocks))))
        band = -(-oh // bands_each)
        n_items = images * -(-oh // band) * n_chunks
        if parallel:
            per = max(1, n_items // target)
            n_pack = min(rows, target)
            n_runs = n_pack + -(-n_items // per)
            args = (x, xf, x_zero_point, pc, geom, rq, skip_arr, masked, out, band, n_chunks)
            done = workers.run(_grab_packing, (*args, n_pack, rows, hp, wp, per, n_items), n_runs, 1)
            return int(done) * macs_each
        _pack_rows(x, x_zero_point, xf, geom, geom.groups, hp, wp, pc.cpp, 0, rows)
    if not parallel:
        done = _items(x, xf, x_zero_point, pc, geom, rq, skip_arr, masked, out, band, n_chunks, 0, n_items)
    else:
        per = max(1, n_items // target)
        args = (x, xf, x_zero_point, pc, geom, rq, skip_arr, masked, out, band, n_chunks)
        done = workers.run(_grab, args, n_items, per)
    return int(done) * macs_each
