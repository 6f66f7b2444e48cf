"""NumPy twins of kernels.activation: the same formulas on whole arrays."""

from __future__ import annotations

import numpy as np


def silu(x, mask, out):
    d = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # exp overflows to inf; -inf / inf is NaN, as x * 0
        y = (d / (1.0 + np.exp(-d))).astype(np.float32)
    np.copyto(out, y, where=np.ones(x.shape[1], bool)[None, :] if mask.size == 0 else ~mask[None, :])


def hardswish(x, mask, out):
    t = x * np.float32(1.0 / 6.0) + np.float32(0.5)
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as the kernel gives it
        y = x * np.minimum(np.maximum(t, np.float32(0.0)), np.float32(1.0))
    np.copyto(out, y, where=np.ones(x.shape[1], bool)[None, :] if mask.size == 0 else ~mask[None, :])
