"""NumPy twins of kernels.moments' batch updates: Welford's update image by image over whole
rows, Chan's combination with the running moments, and the relu / relu6 pass that does both."""

from __future__ import annotations

import numpy as np


def welford_add(y, count, shift, mean, m2, lo, hi):
    """y (N, E) float32 or float64; count .. hi (E,) float64 running moments, updated in place.
    NaN and infinite values give NaN moments, as the kernel's."""
    with np.errstate(invalid="ignore", over="ignore"):
        _welford_add(np.asarray(y, np.float64), count, shift, mean, m2, lo, hi)


def _welford_add(v, count, shift, mean, m2, lo, hi):
    n_n = v.shape[0]
    bs = v[0].copy()
    bm, bm2 = np.zeros_like(bs), np.zeros_like(bs)
    blo, bhi = np.full_like(bs, np.inf), np.full_like(bs, -np.inf)
    for n in range(n_n):
        inv = 1.0 / (n + 1)
        d = v[n] - bs
        delta = d - bm
        bm = bm + delta * inv
        bm2 = bm2 + delta * (d - bm)
        blo = np.where(v[n] < blo, v[n], blo)
        bhi = np.where(v[n] > bhi, v[n], bhi)
    new = count == 0.0
    total = count + n_n
    delta = (bm + (bs - shift)) - mean
    merged_mean = mean + delta * (n_n / total)
    merged_m2 = m2 + bm2 + delta * delta * (count * n_n / total)
    merged_lo = np.where(blo < lo, blo, lo)
    merged_hi = np.where(bhi > hi, bhi, hi)
    shift[new] = bs[new]
    for a, merged, batch in ((mean, merged_mean, bm), (m2, merged_m2, bm2), (lo, merged_lo, blo), (hi, merged_hi, bhi)):
        a[...] = np.where(new, batch, merged)
    count[...] = total


def clamp_welford_add(x, top, out, count, shift, mean, m2, lo, hi) -> tuple[float, float]:
    """x, out (N, E) float32; out = x clamped to [0, top], its moments merged into count .. hi;
    returns x's (min, max) as floats (NaN for both if x holds a NaN)."""
    np.minimum(np.maximum(x, 0), top, out=out)
    welford_add(out, count, shift, mean, m2, lo, hi)
    return float(np.min(x)), float(np.max(x))
