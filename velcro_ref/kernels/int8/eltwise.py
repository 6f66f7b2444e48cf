"""int8 element-wise kernels: add (QLinearAdd) and concat (QLinearConcat). They perform no MACs.

Memory-bound passes, in the calling thread (a thread pool's start costs more than it saves on a
batch-1 tensor; see kernels/int8/workers.py for the conv's)."""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .requant import round_small
from .simd import fma32

_INDEFINITE = -(2**31)  # what x86's float -> int32 conversion gives out of range (and for NaN)


@njit(cache=True, inline="always")
def add_value(a, b, prm):
    """QLinearAdd of two quantized values as onnxruntime's AVX2 kernel computes it:
    fma(a, a_ratio, fma(b, b_ratio, offset)) in float32, rounded half to even (out of the int32
    range: INT32_MIN, as cvtps2dq gives), saturated to [qmin, qmax] (the packs that follow)."""
    v = fma32(np.float32(a), prm.a_ratio, fma32(np.float32(b), prm.b_ratio, prm.offset))
    if not -2147483648.0 <= v < 2147483648.0:
        return max(_INDEFINITE, prm.qmin)
    # saturating before rounding gives the same as after: the bounds are integers
    return np.int64(round_small(min(max(v, np.float32(prm.qmin)), np.float32(prm.qmax))))


@njit(cache=True)
def add_dense(a, b, prm, out):
    """Layout: a, b, out (N, E) flattened batches (uint8/int8); loop n, e. `add_value` with the
    out-of-range case as a select instead of a branch and unsigned indices (no negative-index
    test), so that the loop vectorises."""
    a_ratio, b_ratio, offset = prm.a_ratio, prm.b_ratio, prm.offset
    low = np.int32(max(_INDEFINITE, prm.qmin))
    lo, hi = np.float32(prm.qmin), np.float32(prm.qmax)
    for n in range(out.shape[0]):
        ra, rb, ro = a[n], b[n], out[n]
        for e in range(out.shape[1]):
            ue = np.uint64(e)
            v = fma32(np.float32(ra[ue]), a_ratio, fma32(np.float32(rb[ue]), b_ratio, offset))
            r = np.int32(round_small(min(max(v, lo), hi)))  # int32: AVX2 converts floats to int32 only
            # out of the int32 range (or NaN): INT32_MIN from cvtps2dq, saturated to qmin
            ro[ue] = r if -2147483648.0 <= v < 2147483648.0 else low


@njit(cache=True)
def add_masked(a, b, prm, skip, out):
    """`add_dense` at the elements where skip (E,) is False; the others keep what out holds."""
    for n in range(out.shape[0]):
        for e in range(out.shape[1]):
            if not skip[e]:
                out[n, e] = add_value(a[n, e], b[n, e], prm)


def add(a, b, prm, skip, out):
    """int8 add: a, b, out (N, C, H, W) uint8/int8 of one type, prm a qprepare.AddParams, skip
    None or bool (C, H, W) (masked elements keep what out holds)."""
    n_n = out.shape[0]
    a2, b2, o2 = a.reshape(n_n, -1), b.reshape(n_n, -1), out.reshape(n_n, -1)
    if skip is None:
        add_dense(a2, b2, prm, o2)
    else:
        add_masked(a2, b2, prm, skip.reshape(-1), o2)


@njit(cache=True)
def concat_part(x, table, c0, out):
    """Layout: x (N, Ci, H, W), out (N, C, H, W) uint8/int8; out[:, c0:c0 + Ci] = table[x's
    byte] (table (256,) of out's type, the input's requantization), or a copy of x when table
    is empty. Loop (n, c)."""
    n_n, ci = x.shape[0], x.shape[1]
    for item in range(n_n * ci):
        n, c = item // ci, item % ci
        src, dst = x[n, c], out[n, c0 + c]
        if table.size == 0:
            dst[:, :] = src
            continue
        for iy in range(src.shape[0]):
            for ix in range(src.shape[1]):
                dst[iy, ix] = table[np.uint8(src[iy, ix])]


def concat(xs, tables, out):
    """int8 concat along channels: xs the inputs (N, Ci, H, W), tables per input a (256,) table
    (qprepare.concat_table) or None for a plain copy; out (N, sum Ci, H, W)."""
    empty = np.zeros(0, out.dtype)
    c0 = 0
    for x, t in zip(xs, tables, strict=True):
        concat_part(x, empty if t is None else t, c0, out)
        c0 += x.shape[1]
