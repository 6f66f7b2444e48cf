"""int8 linear (Gemm with transB = 1, QGemm) kernels: exact int32 sums, requantization fused."""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .requant import requant_value


@njit(cache=True)
def _row(x, x_zero_point, xd):
    """xd (F,) int16 = x (F,) - x_zero_point."""
    for f in range(x.size):
        xd[f] = np.int16(np.int32(x[f]) - x_zero_point)


@njit(cache=True)
def _dot(xd, w):
    s = 0
    for f in range(xd.size):
        s += np.int32(xd[f]) * np.int32(w[f])
    return np.int32(s)  # exact: the accumulator bound was checked when the layer was prepared


@njit(cache=True)
def linear_dense(x, x_zero_point, pl, rq, out):
    """Layout: x (N, F) uint8/int8, pl.weight (O, F) int16, out (N, O); loop images, then
    outputs, then features (a vectorised exact dot product). Returns outputs."""
    n_n, f_n = x.shape
    o_n = out.shape[1]
    for n in range(n_n):
        xd = np.empty(f_n, np.int16)
        _row(x[n], x_zero_point, xd)
        for o in range(o_n):
            out[n, o] = requant_value(np.int64(_dot(xd, pl.weight[o])) + pl.bias[o], o, rq)
    return n_n * o_n


@njit(cache=True)
def linear_masked(x, x_zero_point, pl, rq, skip, out):
    """`linear_dense` that skips the masked outputs (skip (O,) bool): no MACs, out left as is.
    Returns the number of outputs computed."""
    n_n, f_n = x.shape
    o_n = out.shape[1]
    done = np.zeros(n_n, np.int64)
    for n in range(n_n):
        xd = np.empty(f_n, np.int16)
        _row(x[n], x_zero_point, xd)
        for o in range(o_n):
            if skip[o]:
                continue
            out[n, o] = requant_value(np.int64(_dot(xd, pl.weight[o])) + pl.bias[o], o, rq)
            done[n] += 1
    return done.sum()


def linear(x, x_zero_point, pl, rq, skip, out):
    """int8 linear: x (N, F) uint8/int8 with x_zero_point; pl a qprepare.PackedLinear; rq a
    qprepare.Requant; skip None or bool (O,); out (N, O). Returns executed MACs (F per output)."""
    if skip is None:
        return int(linear_dense(x, x_zero_point, pl, rq, out)) * x.shape[1]
    return int(linear_masked(x, x_zero_point, pl, rq, skip, out)) * x.shape[1]
