"""overwrite: write fixed values at fixed flat positions of every image of a batch.

The engine uses it to put a site's constants (and 0 at skipped conv outputs) in place; a loop
over the masked positions costs a fraction of a masked copy over every element.
"""

from __future__ import annotations

from numba import njit, prange


@njit(cache=True, parallel=True)
def overwrite(out, idx, values):
    """Layout: out (N, E) a batch of flattened tensors, idx (M,) flat positions, values (M,);
    loop n (in parallel), then positions: out[n, idx[i]] = values[i]."""
    for n in prange(out.shape[0]):
        row = out[n]
        for i in range(idx.size):
            row[idx[i]] = values[i]
