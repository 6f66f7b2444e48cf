"""Dense depthwise convolution (one input channel and one filter per group), its taps summed in
one chain in (fy, fx) order (docs/kernels.md): `conv_depth_bands` with 8 channels in SIMD
lanes (a multiple of 8 channels), `conv_depthwise` with rows of outputs in the lanes."""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import njit
from ..simd import FLOAT32_MAX, VEC, depth_pass, fma32, store_depth
from .dense import any_bits
from .geom import ConvGeom, one_chain
from .layouts import blocks_rows

LARGEST = np.float32(FLOAT32_MAX)  # the clamp of a relu with attribute max (act 3)


def is_depthwise(geom: ConvGeom) -> bool:
    """One input channel and one filter per group, the taps in one chain: `conv_depthwise` (on
    the ROWS planes) or `conv_depth_bands` (BLOCKS)."""
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
    zero = np.float32(0.0)
    top = np.float32(6.0) if act == 2 else LARGEST  # act 2 or 3
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
                    dst[ox] = v if (v < top) | (v != v) else top
    return n_n * k_n * oh * ow * kh * kw


# Output positions per band of `conv_depth_bands`, about: the band's input rows (its BLOCKS copy,
# 40 KiB for 8 channels of a 112-wide row band) stay in L2 between the copy and the taps.
BAND_POSITIONS = 1024


def band_rows(geom: ConvGeom) -> int:
    """Output rows per band of `conv_depth_bands`: the rows cut into bands of equal height (the
    last shorter) of about BAND_POSITIONS positions each."""
    bands = max(1, -(-geom.oh * geom.ow // BAND_POSITIONS))
    return -(-geom.oh // bands)


@njit(cache=True, parallel=True)
def conv_depth_bands(xf, cw, geom, band, res, has_res, act, out, bits):
    """Layout: xf (N * C * H * W,) the images, flat NCHW; out and res as `conv_depthwise`;
    cw.tiles block b's tap t of channel 8 b + c at [(b * taps + t) * 8 + c], cw.offs each tap's
    offset and cw.pbase each output position's in a BLOCKS plane (`to_blocks`); bits None
    (dense) or, masked, a uint8 (C / 8 * P,) array: bit c of byte b * P + p set where channel
    8 b + c needs position p (`schedule.lane_bits`). Returns the MACs of the outputs stored.

    Loop order: (image, block of 8 channels, band of `band` output rows) items in parallel; per
    item its input rows copied into the BLOCKS layout (`blocks_rows`, the item's own buffer),
    then tiles of 8 consecutive output positions of the band: `depth_pass` (the 8 channels in
    SIMD lanes, the taps in (fy, fx) order from +0), then bias, residual, activation
    (`store_depth`). A short last tile repeats its last position and stores the others only.
    Masked, an item whose band needs no output of its block and a tile that needs none are
    skipped; a tile stores only the outputs its bits name, the other lanes' values dropped and
    not counted.
    """
    c_n, oh, ow = geom.c_in, geom.oh, geom.ow
    p_n = oh * ow
    n_n = out.size // (c_n * p_n)
    taps = geom.kh * geom.kw
    n_b = c_n // VEC
    n_bands = (oh + band - 1) // band
    rows_in = (band - 1) * geom.sh + (geom.kh - 1) * geom.dh + 1
    line = cw.q * VEC  # floats per row of a block
    chw = (c_n, geom.h, geom.w)
    wts, offs, bias, pbase = cw.tiles, cw.offs, cw.b, cw.pbase  # see dense.conv_tiles
    n_done = 0
    for item in prange(n_n * n_b * n_bands):
        n, cb, bd = item // (n_b * n_bands), (item // n_bands) % n_b, item % n_bands
        oy0, oy1 = bd * band, min(oh, (bd + 1) * band)
        p_lo, p_hi = oy0 * ow, oy1 * ow
        kb = cb * p_n  # the block's bytes in bits
        if bits is not None and not any_bits(bits, kb + p_lo, kb + p_hi):
            continue
        r0 = oy0 * geom.sh
        buf = np.empty(rows_in * line, np.float32)
        blocks_rows(
            xf,
            chw,
            (n, cb, geom.pt, geom.pl, cw.q),
            r0,
            r0 + (oy1 - 1 - oy0) * geom.sh + (geom.kh - 1) * geom.dh + 1,
            buf,
            0,
        )
        parts = np.empty(VEC * VEC, np.float32)
        xb = -r0 * line
        w0 = cb * taps * VEC
        where_k = (cb * VEC, p_n, has_res, act)
        done = 0
        for p0 in range(p_lo, p_hi, VEC):
            p1 = min(p0 + VEC, p_hi)
            if bits is not None and not any_bits(bits, kb + p0, kb + p1):
                continue
            pb = (
                xb + pbase[p0],
                xb + pbase[min(p0 + 1, p_hi - 1)],
                xb + pbase[min(p0 + 2, p_hi - 1)],
                xb + pbase[min(p0 + 3, p_hi - 1)],
                xb + pbase[min(p0 + 4, p_hi - 1)],
                xb + pbase[min(p0 + 5, p_hi - 1)],
                xb + pbase[min(p0 + 6, p_hi - 1)],
                xb + pbase[min(p0 + 7, p_hi - 1)],
            )
            depth_pass(wts, w0, buf, pb, offs, (0, taps, 0), parts, 0)
            ob = n * c_n * p_n + p0
            if bits is None:
                done += store_depth(parts, bias, res, out, (*where_k, p1 - p0), ob, None)
            else:
                done += store_depth(parts, bias, res, out, (*where_k, p1 - p0), ob, (bits, kb + p0))
        n_done += done
    return n_done * taps
