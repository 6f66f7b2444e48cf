"""linear kernels: dense by BLAS, masked element-wise; both return executed MACs."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def linear_masked(x, w, b, skip, out):
    """Layout: x (N, F), w (O, F), skip (O,), out (N, O); loop n, o, f. A masked o is not computed."""
    n_n, f_n = x.shape
    o_n = w.shape[0]
    n_macs = 0
    for n in range(n_n):
        for o in range(o_n):
            if skip[o]:
                continue
            acc = b[o]
            for f in range(f_n):
                acc += w[o, f] * x[n, f]
            out[n, o] = acc
            n_macs += f_n
    return n_macs


def linear(x, w, b, skip, out):
    """out (N, O) = x (N, F) @ w (O, F).T + b; `skip` None (dense) or bool (O,). Returns MACs."""
    if skip is None:
        np.matmul(x, w.T, out=out)
        out += b
        return x.shape[0] * w.shape[0] * w.shape[1]
    return linear_masked(x, w, b, skip, out)
