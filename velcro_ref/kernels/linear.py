"""linear: out = x @ w.T + b, dense or with masked outputs skipped; returns executed MACs.

Every output sums its features in the order of docs/kernels.md (feature f in chain f mod 8,
each chain fused multiply-adds in increasing f, the chains combined by the fixed tree, then the
bias): the same bits whatever the batch, the threads or the other outputs masked.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import dot_taps

OUT_BLOCK = 4  # outputs per `dot_taps` block (each input vector feeds all of them)
ITEM_OUTPUTS = 64  # outputs per parallel work item


def linear(x, w, b, skip, out):
    """Layout: x (N, F), w (O, F), b (O,), out (N, O) float32, C-contiguous; skip None (dense) or
    bool (O,). Masked outputs are not computed and keep what out holds. Returns the MACs."""
    keep = np.arange(w.shape[0], dtype=np.int64) if skip is None else np.flatnonzero(~skip)
    return linear_rows(np.ascontiguousarray(x).reshape(-1), w, b, keep, out)


@njit(cache=True, parallel=True)
def linear_rows(x, w, b, keep, out):
    """Layout: x (N * F,) the images' features, w (O, F), keep (M,) the outputs to compute in
    increasing order, out (N, O). Loop order: (image, run of ITEM_OUTPUTS kept outputs) items in
    parallel, then blocks of OUT_BLOCK outputs (`dot_taps`, the features a run of F floats with a
    masked-load tail), each sum then + b[o]. Returns the MACs."""
    n_n, o_n = out.shape
    f_n = w.shape[1]
    runs = (1, 0, 1, 0, f_n)
    m = keep.size
    n_items = (m + ITEM_OUTPUTS - 1) // ITEM_OUTPUTS
    for item in prange(n_n * n_items):
        n, i0 = item // n_items, item % n_items * ITEM_OUTPUTS
        i1 = min(m, i0 + ITEM_OUTPUTS)
        base = n * f_n
        i = i0
        while i1 - i >= OUT_BLOCK:
            os = (keep[i], keep[i + 1], keep[i + 2], keep[i + 3])
            s = dot_taps(w, os, x, (base,), runs)
            for u in range(OUT_BLOCK):
                out[n, os[u]] = s[u] + b[os[u]]
            i += OUT_BLOCK
        for j in range(i, i1):
            s1 = dot_taps(w, (keep[j],), x, (base,), runs)
            out[n, keep[j]] = s1[0] + b[keep[j]]
    return n_n * m * f_n
