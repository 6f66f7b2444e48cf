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
ITEM_IMAGES = 64  # images per parallel work item: a block's weights serve each in turn from L1


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
    n_items = work_items(out.shape[0], keep.size)
    if out.shape[0] * keep.size * w.shape[1] < PARALLEL_MIN:
        linear_items(xf, w, b, keep, out, 0, n_items)
    else:
        linear_threads(xf, w, b, keep, out, n_items)
    return out.shape[0] * keep.size * w.shape[1]


def work_items(n_images, n_kept) -> int:
    """Work items of a call: runs of ITEM_OUTPUTS kept outputs by runs of ITEM_IMAGES images."""
    return -(-n_kept // ITEM_OUTPUTS) * -(-n_images // ITEM_IMAGES)


@njit(cache=True, parallel=True)
def linear_threads(x, w, b, keep, out, n_items):
    """`linear_items` in parallel, one item at a time."""
    for item in prange(n_items):
        linear_items(x, w, b, keep, out, item, item + 1)


@njit(cache=True)
def linear_items(x, w, b, keep, out, i0, i1):
    """Layout: x (N * F,) the images' features, w (O, F), keep (M,) the outputs to compute in
    increasing order, out (N, O). Items i0 .. i1 - 1 of (run of ITEM_OUTPUTS kept outputs, run
    of ITEM_IMAGES images), the images inner: a thread's items share their weights, which are
    read from memory once a call. In each, blocks of OUT_BLOCK outputs, each block's weights
    taken by every image of the run in turn, two images at a time (`dot_taps`, the features a
    run of F floats with a masked-load tail), each sum then + b[o]."""
    n_n, f_n = out.shape[0], w.shape[1]
    runs = (1, 0, 1, 0, f_n)
    m = keep.size
    per_run = (n_n + ITEM_IMAGES - 1) // ITEM_IMAGES
    for item in range(i0, i1):
        o0, n0 = item // per_run * ITEM_OUTPUTS, item % per_run * ITEM_IMAGES
        o1, n1 = min(m, o0 + ITEM_OUTPUTS), min(n_n, n0 + ITEM_IMAGES)
        i = o0
        while o1 - i >= OUT_BLOCK:
            os = (keep[i], keep[i + 1], keep[i + 2], keep[i + 3])
            n = n0
            while n1 - n >= 2:
                s = dot_taps(w, os, x, (n * f_n, (n + 1) * f_n), runs)
                for u in range(OUT_BLOCK):
                    out[n, os[u]] = s[2 * u] + b[os[u]]
                    out[n + 1, os[u]] = s[2 * u + 1] + b[os[u]]
                n += 2
            if n < n1:
                s1 = dot_taps(w, os, x, (n * f_n,), runs)
                for u in range(OUT_BLOCK):
                    out[n, os[u]] = s1[u] + b[os[u]]
            i += OUT_BLOCK
        for j in range(i, o1):
            for n in range(n0, n1):
                s0 = dot_taps(w, (keep[j],), x, (n * f_n,), runs)
                out[n, keep[j]] = s0[0] + b[keep[j]]
