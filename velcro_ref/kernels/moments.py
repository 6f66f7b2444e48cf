"""Per-element moments in float64: Welford's update over the images of a batch, Chan's
combination of two partial results, and both fused for a profiling run."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def welford(y, shift, mean, m2, lo, hi):
    """Layout: y (N, E) float32, one row per image; shift, mean, m2, lo, hi (E,) float64.

    Loop order n, e (elements inner, independent, so the loop vectorises). Values are taken
    relative to `shift` (the first image) so the running mean stays small; Welford's update
    then needs no cancellation-prone sums. mean and m2 are overwritten, lo/hi updated.
    """
    _welford_range(y, 0, y.shape[1], shift, mean, m2, lo, hi)


@njit(cache=True)
def _welford_range(y, e0, e1, shift, mean, m2, lo, hi):
    """`welford` over the elements e0 .. e1 - 1 of y, their moments at 0 .. e1 - e0 - 1."""
    n_n, k = y.shape[0], e1 - e0
    for i in range(k):
        mean[i] = 0.0
        m2[i] = 0.0
    for n in range(n_n):
        inv = 1.0 / (n + 1)
        row = y[n, e0:e1]
        for i in range(k):
            v = np.float64(row[i])
            d = v - shift[i]
            delta = d - mean[i]
            mean[i] += delta * inv
            m2[i] += delta * (d - mean[i])
            if v < lo[i]:
                lo[i] = v
            if v > hi[i]:
                hi[i] = v


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


# Elements per block of `welford_add`: its batch moments stay in L1 until combined.
BLOCK = 512


@njit(cache=True)
def welford_add(y, count, shift, mean, m2, lo, hi):
    """Layout: y (N, E) float32 or float64, one row per image; count, shift, mean, m2, lo, hi (E,)
    float64, running moments updated in place.

    Loop order: blocks of BLOCK elements, then `welford` over the block (shifted by its first
    image), then each element's batch moments combined with its running ones by `chan`; an
    element with count 0 takes the batch's as they are. The same arithmetic as `welford` on the
    whole batch followed by `chan_arrays`, without a pass over E-element temporaries.
    """
    n_n, e_n = y.shape
    bs, bm, bm2 = np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK)
    blo, bhi = np.empty(BLOCK), np.empty(BLOCK)
    for e0 in range(0, e_n, BLOCK):
        k = min(BLOCK, e_n - e0)
        for i in range(k):
            bs[i], blo[i], bhi[i] = y[0, e0 + i], np.inf, -np.inf
        _welford_range(y, e0, e0 + k, bs, bm, bm2, blo, bhi)
        for i in range(k):
            e = e0 + i
            if count[e] == 0.0:
                count[e], shift[e], mean[e], m2[e], lo[e], hi[e] = n_n, bs[i], bm[i], bm2[i], blo[i], bhi[i]
                continue
            count[e], mean[e], m2[e] = chan(count[e], shift[e], mean[e], m2[e], n_n, bs[i], bm[i], bm2[i])
            lo[e] = min(lo[e], blo[i])
            hi[e] = max(hi[e], bhi[i])
