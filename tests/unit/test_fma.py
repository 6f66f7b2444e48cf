"""The twins' float32 fused multiply-add: one rounding of the exact a * b + c, as the hardware's."""

from fractions import Fraction

import numpy as np
import pytest
from numba import njit

from velcro_ref.kernels.simd import fma32 as hw_fma32
from velcro_ref.reference.fma import fma32


def _round_f32(v: Fraction) -> np.float32:
    """The float32 nearest to the exact rational v, ties to even: the candidates around the
    float64 estimate compared by their exact distances (no float rounding involved)."""
    f = np.float32(float(v))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    cands = [c for c in cands if np.isfinite(c)]
    best = min(abs(Fraction(float(c)) - v) for c in cands)
    near = [c for c in cands if abs(Fraction(float(c)) - v) == best]
    return min(near, key=lambda c: int(np.float32(c).view(np.uint32)) & 1)  # a tie: the even one


@njit
def _hardware(a, b, c, out):
    for i in range(a.size):
        out[i] = hw_fma32(a[i], b[i], c[i])


def _with_last_bit(v, bit):
    return np.array((np.float32(v).view(np.uint32) & ~np.uint32(1)) | np.uint32(bit), np.uint32).view(np.float32)[()]


def _double_rounding_cases():
    """a, b, c whose exact a * b + c lies a hair (2^-36 of the gap) off the midpoint between c
    and a float32 neighbour, closer than float64 can tell: float64 rounds the sum onto the
    midpoint, and the float32 rounding of that tie (to the even one, chosen here to be the
    wrong one) goes the other way than the exact sum."""
    rng = np.random.default_rng(5)
    a, b, c = [], [], []
    for i in range(400):
        up, past = i % 2 == 0, i % 4 < 2  # the neighbour above c or below; the sum past the midpoint or short of it
        big = np.float32(rng.uniform(1, 2) * 2.0 ** rng.integers(-20, 20))
        big = _with_last_bit(big, 0 if past else 1)  # ties go to the even one: c when past, the neighbour when short
        half = abs(float(np.nextafter(big, np.float32(np.inf if up else 0))) - float(big)) / 2
        # (2^36 + 1) = 1774001 * 38737 and (2^36 - 1) = 262143 * 262145: a * b = half * (1 +- 2^-36)
        fa, fb = (1774001, 38737) if past else (262143, 262145)
        a.append(np.float32(fa * half * 2.0**-36 * (1 if up else -1)))
        b.append(np.float32(fb))
        c.append(big)
    return np.array(a, np.float32), np.array(b, np.float32), np.array(c, np.float32)


def _random_cases(n=3000):
    rng = np.random.default_rng(6)
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    c = -(a.astype(np.float64) * b).astype(np.float32) * rng.uniform(0.5, 1.5, n).astype(np.float32)  # cancellation
    c[::3] = rng.standard_normal(n)[::3].astype(np.float32)
    return a, b, c


@pytest.mark.parametrize("cases", [_double_rounding_cases, _random_cases], ids=["double-rounding", "random"])
def test_fma32_is_the_exact_sum_rounded_once(cases):
    a, b, c = cases()
    exact = [Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)) for x, y, z in zip(a, b, c, strict=True)]
    want = np.array([_round_f32(v) for v in exact])
    got = fma32(a, b, c)
    assert got.tobytes() == want.astype(np.float32).tobytes()
    hw = np.empty_like(a)
    _hardware(a, b, c, hw)
    assert hw.tobytes() == got.tobytes()


def test_float64_product_sum_rounds_twice_on_those_cases():
    """What the emulation guards against: a float64 product-sum rounded to float32 is wrong
    on every case of `_double_rounding_cases`."""
    a, b, c = _double_rounding_cases()
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert np.all(naive != fma32(a, b, c))


def test_fma32_edge_values_equal_the_hardware():
    """Infinities, NaN, signed zeros, subnormal results, overflow past the largest float32."""
    big = np.finfo(np.float32).max
    tiny = np.finfo(np.float32).smallest_subnormal
    vals = np.array(
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, big, -big, tiny, 3e-39, 1e-45, 2.0**-75], np.float32
    )
    a, b, c = (g.ravel() for g in np.meshgrid(vals, vals, vals, indexing="ij"))
    hw = np.empty_like(a)
    _hardware(a, b, c, hw)
    got = fma32(a, b, c)
    assert np.array_equal(np.isnan(got), np.isnan(hw))
    ok = ~np.isnan(hw)
    assert got[ok].tobytes() == hw[ok].tobytes()
