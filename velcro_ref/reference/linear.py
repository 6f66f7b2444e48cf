"""NumPy twin of kernels.linear.linear: every output in the documented order of summation."""

from __future__ import annotations

import numpy as np

from .fma import fma32
from .order import combine_chains

CHAINS = 8


def linear(x, w, b, skip, out):
    """Same arguments and result as the kernel: feature f of an output in chain f mod 8, each
    chain fused multiply-adds in increasing f from +0, the chains combined, then the bias."""
    n_n, f_n = x.shape
    acc = np.zeros((CHAINS, n_n, w.shape[0]), np.float32)
    for f in range(f_n):
        acc[f % CHAINS] = fma32(x[:, f, None], w[None, :, f], acc[f % CHAINS])
    y = combine_chains(acc) + b
    keep = np.ones(w.shape[0], bool) if skip is None else ~skip
    out[:, keep] = y[:, keep]
    return int(keep.sum()) * n_n * f_n
