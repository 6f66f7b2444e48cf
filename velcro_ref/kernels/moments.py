"""Per-element moments in float64: Welford's update over the images of a batch, Chan's
combination of two partial results, and both fused for a profiling run (with a relu / relu6
computed in the same pass where a site is one); and the range (min, max) of a whole tensor in
one pass."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .jit import njit
from .simd import CLAMP_IMAGES, DVEC, VEC, clamp_moment_rows, range_lanes

# Images per pass of `_welford_range` over a block's moments: one element's moments stay in
# registers for ROWS images, so the block's arrays are loaded and stored once per ROWS images.
# The update of an element is the same sequence of operations as one image at a time.
ROWS = 4


@njit(cache=True)
def welford(y, shift, mean, m2, lo, hi):
    """Layout: y (N, E) float32, one row per image; shift, mean, m2, lo, hi (E,) float64.

    Loop order n, e (elements inner, independent, so the loop vectorises). Values are taken
    relative to `shift` (the first image) so the running mean stays small; Welford's update
    then needs no cancellation-prone sums. mean and m2 are overwritten, lo/hi updated.
    """
    _welford_range(y, 0, y.shape[1], shift, mean, m2, lo, hi)


@njit(cache=True)
def _moments(v, s, mean, m2, inv):
    """Welford's update of one element's mean and m2 by v (relative to the shift s), inv = 1 / (n + 1)."""
    d = v - s
    delta = d - mean
    mean = mean + delta * inv
    m2 = m2 + delta * (d - mean)
    return mean, m2


@njit(cache=True)
def _step(v, s, mean, m2, lo, hi, inv):
    """Welford's update of one element's (mean, m2, lo, hi) by the value v of image n, with
    inv = 1 / (n + 1) and v taken relative to the shift s. min and max as selects (a NaN value
    changes neither), so the loop vectorises without masked stores."""
    mean, m2 = _moments(v, s, mean, m2, inv)
    lo = v if v < lo else lo
    hi = v if v > hi else hi
    return mean, m2, lo, hi


@njit(cache=True)
def _welford_range(y, e0, e1, shift, mean, m2, lo, hi):
    """`welford` over the elements e0 .. e1 - 1 of y, their moments at 0 .. e1 - e0 - 1.
    Images ROWS at a time (each element's moments in registers meanwhile), then one at a time;
    each element sees its images in order 0 .. N - 1."""
    n_n, k = y.shape[0], e1 - e0
    for i in range(k):
        mean[i] = 0.0
        m2[i] = 0.0
    n = 0
    while n + ROWS <= n_n:
        i0, i1, i2, i3 = 1.0 / (n + 1), 1.0 / (n + 2), 1.0 / (n + 3), 1.0 / (n + 4)
        r0, r1, r2, r3 = y[n, e0:e1], y[n + 1, e0:e1], y[n + 2, e0:e1], y[n + 3, e0:e1]
        for i in range(k):
            s, mu, q, a, b = shift[i], mean[i], m2[i], lo[i], hi[i]
            mu, q, a, b = _step(np.float64(r0[i]), s, mu, q, a, b, i0)
            mu, q, a, b = _step(np.float64(r1[i]), s, mu, q, a, b, i1)
            mu, q, a, b = _step(np.float64(r2[i]), s, mu, q, a, b, i2)
            mu, q, a, b = _step(np.float64(r3[i]), s, mu, q, a, b, i3)
            mean[i], m2[i], lo[i], hi[i] = mu, q, a, b
        n += ROWS
    while n < n_n:
        inv = 1.0 / (n + 1)
        row = y[n, e0:e1]
        for i in range(k):
            mean[i], m2[i], lo[i], hi[i] = _step(np.float64(row[i]), shift[i], mean[i], m2[i], lo[i], hi[i], inv)
        n += 1


@njit(cache=True)
def chan(ca, sa, ma, m2a, cb, sb, mb, m2b):
    """Chan et al.'s combination of two partial results of one element (count, shift, shifted
    mean, M2), in the first one's shift: returns (count, shifted mean, M2). The shifts are
    subtracted first: close values, so exact (Sterbenz), where the means may be large."""
    n = ca + cb
    delta = (mb + (sb - sa)) - ma
    return n, ma + delta * (cb / n), m2a + m2b + delta * delta * (ca * cb / n)


@njit(cache=True)
def chan_arrays(ca, sa, ma, m2a, cb, sb, mb, m2b, n, mean, m2):
    """`chan` for every element of flat float64 arrays, into n, mean, m2."""
    for e in range(ca.size):
        n[e], mean[e], m2[e] = chan(ca[e], sa[e], ma[e], m2a[e], cb[e], sb[e], mb[e], m2b[e])


# Elements per block of `welford_add` and `clamp_welford_add`, at most (`block_elements`). Blocks
# are the parallel work items; an image's part of a block is a run of floats read (and written)
# in order, long enough for the hardware prefetcher: with runs of 512 the loads of a profiling
# pass waited on memory (docs/kernels.md, "Measured").
BLOCK_MAX = 2048


@njit(cache=True)
def block_elements(e_n, threads):
    """Elements per block for e_n elements per image: BLOCK_MAX at most, blocks of about one size
    whose count is a multiple of `threads` (an even split), a multiple of VEC. Only speed depends
    on it: each element's moments take the same operations in any block."""
    n_blocks = threads * max(1, -(-e_n // (threads * BLOCK_MAX)))
    per_block = -(-e_n // n_blocks)
    return max(VEC, -(-per_block // VEC) * VEC)


def welford_add(y, count, shift, mean, m2, lo, hi):
    """Layout: y (N, E) float32 or float64, one row per image; count, shift, mean, m2, lo, hi (E,)
    float64, running moments updated in place.

    Loop order: blocks of `block_elements` in parallel; per block, `welford` over the block
    (shifted by its first image), then each element's batch moments combined with its running
    ones by `chan`; an element with count 0 takes the batch's as they are. The same arithmetic as
    `welford` on the whole batch followed by `chan_arrays`, without a pass over E-element
    temporaries; each element is computed by one thread, so the thread count changes no bit.
    """
    _welford_blocks(y, count, shift, mean, m2, lo, hi, block_elements(y.shape[1], numba.get_num_threads()))


@njit(cache=True, parallel=True)
def _welford_blocks(y, count, shift, mean, m2, lo, hi, blk):
    """`welford_add` in blocks of blk elements."""
    e_n = y.shape[1]
    for b in prange((e_n + blk - 1) // blk):
        e0 = b * blk
        k = min(blk, e_n - e0)
        bs, bm, bm2 = np.empty(blk), np.empty(blk), np.empty(blk)
        blo, bhi = np.empty(blk), np.empty(blk)
        for i in range(k):
            bs[i], blo[i], bhi[i] = y[0, e0 + i], np.inf, -np.inf
        _welford_range(y, e0, e0 + k, bs, bm, bm2, blo, bhi)
        _combine(e0, k, y.shape[0], bs, bm, bm2, blo, bhi, count, shift, mean, m2, lo, hi)


@njit(cache=True)
def _combine(e0, k, n_n, bs, bm, bm2, blo, bhi, count, shift, mean, m2, lo, hi):
    """The batch moments of n_n images of the k elements from e0 (bs .. bhi) merged into the
    running ones by `chan`; an element with count 0 takes the batch's as they are."""
    for i in range(k):
        e = e0 + i
        if count[e] == 0.0:
            count[e], shift[e], mean[e], m2[e], lo[e], hi[e] = n_n, bs[i], bm[i], bm2[i], blo[i], bhi[i]
            continue
        count[e], mean[e], m2[e] = chan(count[e], shift[e], mean[e], m2[e], n_n, bs[i], bm[i], bm2[i])
        lo[e] = min(lo[e], blo[i])
        hi[e] = max(hi[e], bhi[i])


def clamp_welford_add(x, top, out, count, shift, mean, m2, lo, hi) -> tuple[float, float]:
    """Layout: x, out (N, E) float32 C-contiguous; top float32; count .. hi (E,) float64 running
    moments of out, updated in place. A profiled relu / relu6 site in one pass: out = x clamped
    to [0, top] (`overwrite.clamp`'s bits), `welford_add(out, ...)`'s moments, and returns x's
    (min, max) as `value_range(x)` gives them. out may be x itself (the site written over its
    input); any other overlap of the two, or an out of another shape, raises ValueError.

    Loop order as `welford_add`: blocks of `block_elements` in parallel; per block, images
    CLAMP_ROWS at a time with each element's mean, M2 and the min and max of its x in registers.
    Each element's mean and M2 take the same operations in the same order as in `welford_add`;
    its min and max of out are those of x clamped (the clamp is monotonic), and x's range is the
    min and max of its elements' (a zero extreme as +0.0, as `value_range` gives it). A block
    whose batch mean came out NaN (x holds a NaN or an infinity) takes its moments again from
    out by `_welford_range`, and is searched for a NaN in out (where x has one: the clamp keeps
    it), which makes x's range NaN.
    """
    if out.shape != x.shape:
        raise ValueError(f"clamp_welford_add: out of shape {out.shape} for x of shape {x.shape}")
    if out is not x and np.may_share_memory(x, out):
        raise ValueError("clamp_welford_add: out overlaps x without being x")
    blk = block_elements(x.shape[1], numba.get_num_threads())
    n_blocks = (x.shape[1] + blk - 1) // blk
    x_lo, x_hi = np.empty(n_blocks, np.float32), np.empty(n_blocks, np.float32)
    has_nan = _clamp_welford_blocks(x, top, None if out is x else out, count, shift, mean, m2, lo, hi, x_lo, x_hi, blk)
    if has_nan:
        return np.nan, np.nan
    return float(x_lo.min()) + 0.0, float(x_hi.max()) + 0.0


# Images per step of `_clamp_welford_range` (each element's state in registers meanwhile): the
# intrinsic's (`simd.clamp_moment_rows`) and the rows its loop over the last elements takes. 8
# rather than 4: a site's moments are read and written half as often (MobileNet-V2's 96-channel
# 14 x 14 site at batch 256: 0.92 - 0.95 against 0.96 - 1.01 ms, docs/kernels.md).
CLAMP_ROWS = 8
if CLAMP_IMAGES != CLAMP_ROWS:  # else the last elements would miss images, with no error
    raise ImportError(f"simd.CLAMP_IMAGES is {CLAMP_IMAGES}, _clamp_welford_range takes {CLAMP_ROWS} rows")


@njit(cache=True, parallel=True)
def _clamp_welford_blocks(x, top, out, count, shift, mean, m2, lo, hi, x_lo, x_hi, blk):
    """`clamp_welford_add` but for the range, in blocks of blk elements, out None for x itself:
    x_lo[b], x_hi[b] the min and max of block b's elements of x. Returns True if x holds a NaN."""
    e_n = x.shape[1]
    n_blocks = x_lo.size
    nan = np.zeros(n_blocks, np.bool_)
    for b in prange(n_blocks):
        e0 = b * blk
        k = min(blk, e_n - e0)
        bs, bm, bm2 = np.empty(blk), np.empty(blk), np.empty(blk)
        blo, bhi = np.empty(blk), np.empty(blk)
        xl, xh = np.empty(blk, np.float32), np.empty(blk, np.float32)
        for i in range(k):
            bs[i] = _clamp(x[0, e0 + i], top)
        _clamp_welford_range(x, top, out, e0, e0 + k, bs, bm, bm2, xl, xh)
        r_lo, r_hi = xl[0], xh[0]
        bad = False
        for i in range(k):
            r_lo = _lower(xl[i], r_lo)
            r_hi = _higher(xh[i], r_hi)
            bad |= bm[i] != bm[i]
        if bad:  # a NaN or infinity: the block's moments as `welford_add` takes them from out
            y = x if out is None else out
            for i in range(k):
                blo[i], bhi[i] = np.inf, -np.inf
            _welford_range(y, e0, e0 + k, bs, bm, bm2, blo, bhi)
            for n in range(y.shape[0]):
                for i in range(e0, e0 + k):
                    nan[b] |= y[n, i] != y[n, i]
        else:
            for i in range(k):
                blo[i], bhi[i] = _clamp(xl[i], top), _clamp(xh[i], top)
        x_lo[b], x_hi[b] = r_lo, r_hi
        _combine(e0, k, x.shape[0], bs, bm, bm2, blo, bhi, count, shift, mean, m2, lo, hi)
    return nan.any()


@njit(cache=True)
def _clamp(v, top):
    """relu / relu6 of a float32 v, as `overwrite.clamp` computes it (NaN stays, -0.0 gives 0.0)."""
    zero = np.float32(0.0)
    v = zero if v <= zero else v
    return top if v > top else v


@njit(cache=True)
def _clamp_welford_range(x, top, out, e0, e1, shift, mean, m2, xl, xh):
    """Over the elements e0 .. e1 - 1 of x: out = clamp(x) (out None: into x itself); mean and m2
    of out as `_welford_range` computes them; xl, xh (float32) the min and max of each element's
    x (NaN skipped, +inf and -inf if every value is NaN). Images CLAMP_ROWS at a time, the
    elements in vectors of 16 (`simd.clamp_moment_rows`, each lane this loop's operations) and
    the last fewer than 16 here; then one image at a time. Written over x, each value is read
    before its clamp is stored, and the loop over one array vectorises as over two (the
    compiler's checks for two overlapping arrays fail when they are one, and leave the loop
    scalar)."""
    n_n, k = x.shape[0], e1 - e0
    for i in range(k):
        mean[i], m2[i] = 0.0, 0.0
        xl[i], xh[i] = np.float32(np.inf), np.float32(-np.inf)
    k16 = k // DVEC * DVEC
    n = 0
    while n + CLAMP_ROWS <= n_n:
        clamp_moment_rows(x, x if out is None else out, n, e0, k16, top, shift, mean, m2, xl, xh)
        y = x if out is None else out
        for i in range(e0 + k16, e1):  # the last elements, each its images in order
            a, b, s, mu, q = xl[i - e0], xh[i - e0], shift[i - e0], mean[i - e0], m2[i - e0]
            for r in range(n, n + CLAMP_ROWS):
                v = x[r, i]
                a, b = _lower(v, a), _higher(v, b)
                c = _clamp(v, top)
                y[r, i] = c
                mu, q = _moments(np.float64(c), s, mu, q, 1.0 / (r + 1))
            xl[i - e0], xh[i - e0], mean[i - e0], m2[i - e0] = a, b, mu, q
        n += CLAMP_ROWS
    while n < n_n:
        inv = 1.0 / (n + 1)
        row = x[n, e0:e1]
        orow = row if out is None else out[n, e0:e1]
        for i in range(k):
            a0 = row[i]
            xl[i], xh[i] = _lower(a0, xl[i]), _higher(a0, xh[i])
            v = _clamp(a0, top)
            orow[i] = v
            mean[i], m2[i] = _moments(np.float64(v), shift[i], mean[i], m2[i], inv)
        n += 1


# Elements per work item of `value_range`, and the size from which its items run in parallel.
RANGE_PART = 1 << 15
RANGE_PARALLEL_MIN = 1 << 16


def value_range(y) -> tuple[float, float]:
    """(min, max) of a non-empty float32 array, in one pass (NumPy's min and max take one each),
    as Python floats; NaN for both if y holds a NaN, as NumPy's. Work items of RANGE_PART
    elements, in parallel from RANGE_PARALLEL_MIN elements on, then their results in order.
    A zero extreme is returned as +0.0, whether the array holds 0.0 or -0.0 there (which of the
    two the selects keep depends on positions; the sum with +0.0 leaves only +0.0)."""
    flat = np.ascontiguousarray(y, np.float32).reshape(-1)
    n_parts = (flat.size + RANGE_PART - 1) // RANGE_PART
    los, his = np.empty(n_parts, np.float32), np.empty(n_parts, np.float32)
    (_range_threads if flat.size >= RANGE_PARALLEL_MIN else _range_serial)(flat, los, his)
    lo, hi = _range_part(los, 0, n_parts), _range_part(his, 0, n_parts)
    return float(lo[0]) + 0.0, float(hi[1]) + 0.0


@njit(cache=True, parallel=True)
def _range_threads(flat, los, his):
    """Per work item of RANGE_PART elements, in parallel: its min into los, its max into his."""
    for item in prange(los.size):
        los[item], his[item] = _range_part(flat, item * RANGE_PART, min(flat.size, (item + 1) * RANGE_PART))


@njit(cache=True)
def _range_serial(flat, los, his):
    """`_range_threads` in the calling thread."""
    for item in range(los.size):
        los[item], his[item] = _range_part(flat, item * RANGE_PART, min(flat.size, (item + 1) * RANGE_PART))


@njit(cache=True)
def _range_part(flat, e0, e1):
    """(min, max) of flat[e0:e1] (e1 > e0) as float64, NaN if any value is NaN: per lane of
    `simd.range_lanes` over whole vectors, the lanes combined in order, then the tail of fewer
    than 8 values, all by selects from flat[e0] (of equal extremes, 0.0 and -0.0, the first in
    that order stays: it depends on positions only, never on the thread count). flat float32."""
    m = e0 + (e1 - e0) // VEC * VEC
    lo = hi = flat[e0]
    bad = False
    if m > e0:
        lanes = np.empty(3 * VEC, np.float32)
        range_lanes(flat, e0, m, lanes)
        for j in range(VEC):
            lo = _lower(lanes[j], lo)
            hi = _higher(lanes[VEC + j], hi)
            bad |= lanes[2 * VEC + j] != 0
    for e in range(m, e1):
        lo, hi = _lower(flat[e], lo), _higher(flat[e], hi)
        bad |= flat[e] != flat[e]
    if bad:
        return np.nan, np.nan
    return np.float64(lo), np.float64(hi)


@njit(cache=True)
def _lower(v, lo):
    return v if v < lo else lo


@njit(cache=True)
def _higher(v, hi):
    return v if v > hi else hi
