"""NumPy twins of kernels.activation: the same formulas on whole arrays."""

from __future__ import annotations

import math

import numpy as np

_EXP = np.frompyfunc(math.exp, 1, 1)


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


def softmax(x, out):
    """x, out (N, C, R): the kernel's formula over axis 1, the C library's exp (Python's math.exp),
    the sum in c order in float64."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in the kernel
        z = x - np.max(x, axis=1, keepdims=True)
        e = _EXP(z.astype(np.float64)).astype(np.float64).astype(np.float32)
        total = np.zeros((x.shape[0], x.shape[2]))
        for j in range(x.shape[1]):
            total += e[:, j]
        np.divide(e, total.astype(np.float32)[:, None], out=out)
