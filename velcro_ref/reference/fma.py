"""float32 fused multiply-add in NumPy, rounded once as IEEE 754 defines it (the twins' `llvm.fma`).

A float32 product is exact in float64 (24 + 24 bits), but adding the addend in float64 rounds,
and rounding that float64 sum to float32 rounds again: the two roundings can differ from one
rounding of the exact sum when the float64 sum lands exactly halfway between two float32 numbers.
So the float64 sum s is kept with its rounding error e (s + e is the exact value, TwoSum), and
only in that halfway case does the sign of e choose the neighbour.
"""

from __future__ import annotations

import numpy as np

_TOP = 2.0**128  # the float32 number after the largest finite one, had the format one more exponent


def fma32(a, b, c):
    """a * b + c rounded once to float32, element-wise with NumPy broadcasting; float32 result."""
    c64 = np.asarray(c, np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
        s = p + c64
        back = s - p
        e = (p - (s - back)) + (c64 - back)  # exact: s + e == p + c
        r = s.astype(np.float32)  # round to nearest, ties to even
        lo = np.where(r.astype(np.float64) > s, np.nextafter(r, np.float32(-np.inf)), r)  # largest float32 <= s
        hi = np.nextafter(lo, np.float32(np.inf))
        lo64 = np.where(np.isneginf(lo), -_TOP, lo.astype(np.float64))
        hi64 = np.where(np.isposinf(hi), _TOP, hi.astype(np.float64))
        tie = np.isfinite(s) & (s == (lo64 + hi64) / 2) & (e != 0)
    return np.where(tie, np.where(e > 0, hi, lo), r).astype(np.float32)
