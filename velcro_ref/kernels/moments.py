"""Per-element moments of a batch: Welford's update over the images, in float64."""

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
    n_n, e_n = y.shape
    for e in range(e_n):
        mean[e] = 0.0
        m2[e] = 0.0
    for n in range(n_n):
        inv = 1.0 / (n + 1)
        for e in range(e_n):
            v = np.float64(y[n, e])
            d = v - shift[e]
            delta = d - mean[e]
            mean[e] += delta * inv
            m2[e] += delta * (d - mean[e])
            if v < lo[e]:
                lo[e] = v
            if v > hi[e]:
                hi[e] = v
