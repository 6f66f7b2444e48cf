"""linear: out = x @ w.T + b, dense or with masked outputs skipped; returns executed MACs.

Every output sums its features in the order of docs/kernels.md (feature f in chain f mod 8,
each chain fused multiply-adds in increasing f, the chains combined by the fixed tree, then the
bias): the same bits whatever the batch, the threads or the other outputs masked.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit
from .simd import dot_taps

OUT_BLOCK = 4  # outputs per `dot_taps` block (each input vector feeds all of them)
ITEM_OUTPUTS = 64  # outputs per parallel work item


# MACs from which linear uses every thread: below it runs in the calling thread, without a
# parallel region to wake the other threads for. A classifier's weights come from memory (the
# layers before evict them), so the zoo's 1000-class layers at batch 1 (512K-1.3M MACs) read
# them on both threads: 0.115 against 0.18 ms for ResNet-18's (docs/kernels.md, "Measured").
PARALLEL_MIN = 1 << 18


def linear(x, w, b, skip, out):
    """Layout: x (N, F), w (O, F), b (O,), out (N, O) float32, C-contiguous; skip None (dense) or
    bool (O,). Masked outputs are not computed and keep what out holds. Returns the MACs."""
    keep = np.arange(w.shape[0], dtype=np.int64) if skip is None else np.flatnonzero(~skip)
    xf = np.ascontiguousarray(x).reshape(-1)
    n_items = out.shape[0] * -(-keep.size // ITEM_OUTPUTS)
    if out.shape[0] * keep.size * w.shape[1] < PARALLEL_MIN:
        linear_items(xf, w, b, keep, out, 0, n_items)
    else:
        linear_threads(xf, w, b, keep, out, n_items)
    return out.shape[0] * keep.size * w.shape[1]


@njit(cache=True, parallel=True)
def linear_threads(x, w, b, keep, out, n_items):
    """`linear_items` in parallel, one item at a time."""
    for item in prange(n_items):
        linear_items(x, w, b, keep, out, item, item + 1)


@njit(cache=True)
def linear_items(x, w, b, keep, out, i0, i1):
    """Layout: x (N * F,) the images' features, w (O, F), keep (M,) the outputs to compute in
    increasing order, out (N, O). Items i0 .. i1 - 1 of (image, run of ITEM_OUTPUTS kept
    outputs); in each, blocks of OUT_BLOCK outputs (`dot_taps`, the features a run of F floats
    with a masked-load tail), each sum then + b[o]."""
    f_n = w.shape[1]
    runs = (1, 0, 1, 0, f_n)
    m = keep.size
    per_image = (m + ITEM_OUTPUTS - 1) // ITEM_OUTPUTS
    for item in range(i0, i1):
        n, o0 = item // per_image, item % per_image * ITEM_OUTPUTS
        o1 = min(m, o0 + ITEM_OUTPUTS)
        base = n * f_n
        i = o0
        while o1 - i >= OUT_BLOCK:
            os = (keep[i], keep[i + 1], keep[i + 2], keep[i + 3])
            s = dot_taps(w, os, x, (base,), runs)
            for u in range(OUT_BLOCK):
                out[n, os[u]] = s[u] + b[os[u]]
            i += OUT_BLOCK
        for j in range(i, o1):
            s1 = dot_taps(w, (keep[j],), x, (base,), runs)
            out[n, keep[j]] = s1[0] + b[keep[j]]
