"""The quantized activation sites' kernel: a clamp of 8-bit values, over a whole batch or only at a
masked site's unmasked elements.

Layout: x, out (N, E) flattened uint8/int8 batches; mask (E,) bool (empty: every element). Loop
order n, e; masked elements keep what out holds (their constants).
"""

from __future__ import annotations

from ..jit import njit


@njit(cache=True)
def clamp(x, lo, hi, mask, out):
    """out = min(max(x, lo), hi) where not mask. Without a mask the loop has no branch on the
    mask, so LLVM vectorises it."""
    if mask.size == 0:
        for n in range(x.shape[0]):
            for e in range(x.shape[1]):
                out[n, e] = min(max(x[n, e], lo), hi)
        return
    for n in range(x.shape[0]):
        for e in range(x.shape[1]):
            if not mask[e]:
                out[n, e] = min(max(x[n, e], lo), hi)
