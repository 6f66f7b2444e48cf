"""The parts of the documented order of summation (docs/kernels.md) shared by the twins."""

from __future__ import annotations

import numpy as np


def combine_chains(acc):
    """acc (chains, ...) float32 chain sums combined as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) +
    (s3 + s7)); one chain is its own sum."""
    if len(acc) == 1:
        return acc[0]
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN as the kernels give them
        return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


def apply_epilogue(y, ep):
    """y (N, K, ...) float32 after the bias, then ep's residual added and its activation (act
    1: ReLU, 2: ReLU6, 3: ReLU to float32's largest value) as the engine's unfused ops compute
    them; ep None: y as it is."""
    if ep is None:
        return y
    if ep.residual is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            y = y + ep.residual
    if ep.act >= 1:
        y = np.maximum(y, np.float32(0))
    if ep.act == 2:
        y = np.minimum(y, np.float32(6))
    if ep.act == 3:
        y = np.minimum(y, np.finfo(np.float32).max)
    return y
