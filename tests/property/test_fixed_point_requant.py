"""`fixed_point` requantization (the int8 kernels' and quant.py's) equals the gemmlowp formulas,
transcribed below from their published definitions with Python integers.

gemmlowp (fixedpoint.h):
  SaturatingRoundingDoublingHighMul(a, b): INT32_MAX if a == b == INT32_MIN, else
      (a * b + nudge) / 2^31 truncated toward zero, nudge = 2^30 if a * b >= 0 else 1 - 2^30.
  RoundingDivideByPOT(x, e): mask = 2^e - 1, remainder = x & mask,
      threshold = (mask >> 1) + (1 if x < 0 else 0); (x >> e) + (1 if remainder > threshold else 0).
TFLite MultiplyByQuantizedMultiplier(x, M, shift):
  RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^max(shift, 0), M), max(-shift, 0)),
  the left shift saturated to int32 here (TFLite leaves its overflow undefined; gemmlowp's
  saturating multiply by a power of two saturates). Then + zero point, clamped to [qmin, qmax].
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref import quant
from velcro_ref.kernels.int8.requant import requantize
from velcro_ref.qprepare import Requant

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def trunc_div(a, b):
    q = abs(a) // b
    return -q if a < 0 else q


def srdhm(a, b):
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return trunc_div(ab + nudge, 1 << 31)


def rdbpot(x, e):
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def multiply_by_quantized_multiplier(x, m, shift):
    left, right = max(shift, 0), max(-shift, 0)
    x = min(max(x * (1 << left), I32_MIN), I32_MAX)
    return rdbpot(srdhm(x, m), right)


def transcribed(acc, m, shift, zp, qmin, qmax):
    return min(max(multiply_by_quantized_multiplier(acc, m, shift) + zp, qmin), qmax)


int32s = st.one_of(
    st.integers(I32_MIN, I32_MAX),
    st.integers(-(2**20), 2**20),
    st.sampled_from([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX]),
)
multipliers = st.one_of(
    st.integers(2**30, I32_MAX),  # what QuantizeMultiplier makes
    st.integers(I32_MAX - 64, I32_MAX),  # near 2^31
    st.sampled_from([0, 1, 2**30, I32_MIN, I32_MAX]),
    st.integers(I32_MIN, I32_MAX),
)
shifts = st.one_of(st.integers(-31, 0), st.integers(1, 30), st.sampled_from([-31, -1, 0, 1, 30]))


@st.composite
def ties(draw):
    """Accumulators on a rounding tie: of SRDHM (M = 2^30, acc odd: acc * 2^30 + 2^30 over 2^31)
    or of the right shift (M = 2^30 with an even acc whose half is k * 2^e + 2^(e-1))."""
    e = draw(st.integers(1, 20))
    k = draw(st.integers(-(2**9), 2**9))
    if draw(st.booleans()):
        return 2 * k + 1, 2**30, 0
    return 2 * (k * 2**e + 2 ** (e - 1)), 2**30, -e


def kernel_requant(acc, m, shift, zp, dtype):
    qmin, qmax = quant.qrange(dtype)
    k = len(acc)
    rq = Requant(
        quant.REQUANT_FIXED_POINT,
        np.zeros(k, np.float32),
        np.asarray(m, np.int32),
        np.asarray(shift, np.int32),
        zp,
        qmin,
        qmax,
    )
    out = np.zeros((1, k, 1), dtype)
    requantize(np.asarray(acc, np.int32).reshape(1, k, 1), rq, out)
    return out.reshape(-1)


@given(
    st.lists(st.tuples(int32s, multipliers, shifts), min_size=1, max_size=24),
    st.sampled_from([np.uint8, np.int8]),
    st.integers(-128, 255),
)
def test_fixed_point_requantization_equals_gemmlowp(triples, dtype, zp):
    qmin, qmax = quant.qrange(dtype)
    zp = min(max(zp, qmin), qmax)
    acc, m, shift = (list(t) for t in zip(*triples, strict=True))
    want = [transcribed(a, mm, s, zp, qmin, qmax) for a, mm, s in triples]
    assert list(kernel_requant(acc, m, shift, zp, dtype)) == want
    got = quant.requantize_fixed_point(np.array(acc), np.array(m), np.array(shift), zp, dtype)
    assert list(got) == want


@given(st.lists(ties(), min_size=1, max_size=16), st.sampled_from([np.uint8, np.int8]))
def test_fixed_point_ties_round_as_gemmlowp(cases, dtype):
    qmin, qmax = quant.qrange(dtype)
    acc, m, shift = (list(t) for t in zip(*cases, strict=True))
    want = [transcribed(a, mm, s, 0, qmin, qmax) for a, mm, s in cases]
    assert list(kernel_requant(acc, m, shift, 0, dtype)) == want
    # SRDHM rounds a tie up (-0.5 -> 0: the nudge 1 - 2^30 and the truncation), RoundingDivideByPOT
    # away from zero
    for a, mm, s in cases:
        exact = a * mm / 2.0 ** (31 - s)
        want = np.floor(exact + 0.5) if s == 0 else np.sign(exact) * np.floor(abs(exact) + 0.5)
        assert multiply_by_quantized_multiplier(a, mm, s) == int(want)


@given(st.lists(st.floats(2.0**-40, 2.0**29, allow_nan=False), min_size=1, max_size=16), int32s)
def test_quantized_multiplier_approximates_the_real_one(reals, acc):
    # M * 2^(shift - 31) is the real multiplier within half a unit of M (2^-31 relative), and
    # applying it gives the real product to within one unit, plus what saturation clips
    m, shift = quant.fixed_point_multiplier(np.array(reals))
    for r, mm, s in zip(reals, m.tolist(), shift.tolist(), strict=True):
        if mm == 0:
            assert r < 2.0**-31 and s == 0
            continue
        assert 2**30 <= mm < 2**31
        assert abs(mm * 2.0 ** (s - 31) - r) <= r * 2.0**-31
        exact = acc * mm * 2.0 ** (s - 31)
        got = multiply_by_quantized_multiplier(acc, mm, s)
        if s <= 0 and abs(exact) < 2**30:
            assert abs(got - exact) <= 1.0


def test_multipliers_beyond_the_fixed_point_range_are_refused():
    for bad in (2.0**30, np.inf, -0.5, np.nan):
        with pytest.raises(ValueError):
            quant.fixed_point_multiplier(np.array([0.5, bad]))
