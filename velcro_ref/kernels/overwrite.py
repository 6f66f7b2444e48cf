"""Writing a mask's values into a batch.

- put_at: fixed values at fixed flat positions of every image: the engine's skipped conv
  outputs (0) and a masked site's constants, written once per MaskSet and kept while it runs;
  a loop over the masked positions costs a fraction of a masked copy over every element.
- clamp: ReLU / ReLU6 of a whole batch in one pass (NumPy's maximum and minimum take one each,
  in one thread), for the runs that keep the activation apart from its conv.
- clamp_unmasked: a masked site's activation at its unmasked elements only, the constants
  already in place in the output (a select that stores masked elements back as they are, so
  the loop vectorises; docs/kernels.md, "Measured", gives why this layout).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit

# Positions per work item: small batches still split over threads.
PART = 1 << 15
NO_MASK = np.zeros(0, np.bool_)  # a mask of no element: every element computed
# Elements from which clamp_unmasked uses both threads (docs/kernels.md, "Measured").
PARALLEL_MIN = 1 << 16


@njit(cache=True, parallel=True)
def put_at(out, idx, values):
    """Layout: out (N, E) a batch of flattened tensors, idx (M,) flat positions, values (M,);
    loop (image, run of PART positions) items in parallel, then positions: out[n, idx[i]] =
    values[i]."""
    n_parts = (idx.size + PART - 1) // PART
    for item in prange(out.shape[0] * n_parts):
        row = out[item // n_parts]
        i0 = item % n_parts * PART
        for i in range(i0, min(i0 + PART, idx.size)):
            row[idx[i]] = values[i]


def clamp(x, hi, out):
    """Layout: x, out (N, E) a batch of flattened tensors: out = x clamped to [0, hi] (relu: hi =
    inf, relu6: hi = 6), as np.minimum(np.maximum(x, 0), hi): `clamp_unmasked` with no mask."""
    clamp_unmasked(x, hi, NO_MASK, out)


def clamp_unmasked(x, hi, mask, out):
    """Layout: x, out (N, E) a batch of flattened tensors, mask (E,) bool or empty (`NO_MASK`:
    every element): out[n, e] = x[n, e] clamped to [0, hi] where not mask[e] (relu: hi = inf,
    relu6: hi = 6); masked elements keep what out holds. As np.maximum and np.minimum: NaN
    stays NaN and -0.0 becomes 0.0. Below PARALLEL_MIN elements in one thread: the pass is
    memory-bound, and a second thread saves less than it costs to start."""
    (_clamp_unmasked_threads if x.size >= PARALLEL_MIN else _clamp_unmasked_serial)(x, hi, mask, out)


@njit(cache=True, parallel=True)
def _clamp_unmasked_threads(x, hi, mask, out):
    """`clamp_unmasked` with (image, run of PART elements) items in parallel."""
    n_parts = (x.shape[1] + PART - 1) // PART
    for item in prange(out.shape[0] * n_parts):
        _clamp_unmasked_part(x, hi, mask, out, item, n_parts)


@njit(cache=True)
def _clamp_unmasked_serial(x, hi, mask, out):
    """`clamp_unmasked` in the calling thread, the same items in order."""
    n_parts = (x.shape[1] + PART - 1) // PART
    for item in range(out.shape[0] * n_parts):
        _clamp_unmasked_part(x, hi, mask, out, item, n_parts)


@njit(cache=True)
def _clamp_unmasked_part(x, hi, mask, out, item, n_parts):
    """Item `item` of `clamp_unmasked`: image item // n_parts, elements of run item % n_parts."""
    zero = np.float32(0.0)
    e0 = item % n_parts * PART
    e1 = min(e0 + PART, x.shape[1])
    xs, os = x[item // n_parts, e0:e1], out[item // n_parts, e0:e1]
    if mask.size == 0:
        for e in range(xs.size):  # from 0, on slices: selects, not branches, and the loop vectorises
            v = xs[e]
            v = zero if v <= zero else v
            os[e] = hi if v > hi else v
        return
    ms = mask[e0:e1]
    for e in range(ms.size):
        v = xs[e]
        v = zero if v <= zero else v
        v = hi if v > hi else v
        os[e] = os[e] if ms[e] else v
