"""silu and hardswish kernels equal their NumPy twins, over a whole batch and at unmasked elements only;
the softmax kernel its twin."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref.kernels import activation as kact
from velcro_ref.kernels.overwrite import PART
from velcro_ref.reference import activation as ract

SPECIAL = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, -3.0, 3.0, 88.7, -88.8, -104.0], np.float32)


def batch(n, size, fraction, seed):
    rng = np.random.default_rng(seed)
    x = (6 * rng.standard_normal((n, size))).astype(np.float32)
    x.flat[rng.integers(x.size, size=min(x.size, 4))] = rng.choice(SPECIAL, min(x.size, 4))
    mask = rng.random(size) < fraction
    return x, mask, rng.standard_normal((n, size), dtype=np.float32)


@given(st.integers(1, 4), st.sampled_from([1, 7, 40, PART + 3]), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_hardswish_kernel_equals_numpy_twin_bit_for_bit(n, size, fraction, seed):
    x, mask, before = batch(n, size, fraction, seed)
    for m in (mask, np.zeros(0, bool)):  # masked, and every element
        got, want = before.copy(), before.copy()
        kact.hardswish(x, m, got)
        ract.hardswish(x, m, want)
        assert got.tobytes() == want.tobytes()  # NaN and the sign of zero included


@given(st.integers(1, 4), st.sampled_from([1, 7, 40, PART + 3]), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_silu_kernel_equals_numpy_twin_within_one_ulp(n, size, fraction, seed):
    """Both compute x / (1 + exp(-x)) in float64 and round once; the float64 exp of the C library and
    NumPy's may differ in the last bit, which can move the float32 result by one unit in the last place."""
    x, mask, before = batch(n, size, fraction, seed)
    for m in (mask, np.zeros(0, bool)):
        got, want = before.copy(), before.copy()
        kact.silu(x, m, got)
        ract.silu(x, m, want)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        ulps = np.abs(got[ok].view(np.int32).astype(np.int64) - want[ok].view(np.int32).astype(np.int64))
        assert ulps.max(initial=0) <= 1
        if m.size:
            assert np.array_equal(got[:, m], before[:, m])  # masked elements keep what they held


def test_activation_values_against_hand_worked_ones():
    x = np.array([[-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0]], np.float32)
    out = np.empty_like(x)
    kact.hardswish(x, np.zeros(0, bool), out)
    assert out.tolist() == [[-0.0, -0.0, -0.375, 0.0, 1.125, 3.0, 4.0]]  # x * clamp(x/6 + 1/2, 0, 1)
    kact.silu(x, np.zeros(0, bool), out)
    want = [v / (1 + np.exp(-v)) for v in (-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0)]
    np.testing.assert_allclose(out[0], want, rtol=1e-7)


@given(st.integers(1, 3), st.sampled_from([1, 2, 10, 1000]), st.sampled_from([1, 4, 9]), st.integers(0, 2**31))
def test_softmax_kernel_equals_numpy_twin_bit_for_bit(n, c, r, seed):
    rng = np.random.default_rng(seed)
    x = (8 * rng.standard_normal((n, c, r))).astype(np.float32)
    x.flat[rng.integers(x.size, size=min(x.size, 2))] = rng.choice(SPECIAL, min(x.size, 2))
    got, want = np.empty_like(x), np.empty_like(x)
    kact.softmax(x, got)
    ract.softmax(x, want)
    assert got.tobytes() == want.tobytes()


def test_the_softmax_op_takes_the_c_librarys_exps_rounded_once():
    """exp in float64 rounded to float32 (NumPy's float32 exp, which the op used, is an approximation
    that follows the CPU's vector units: on an AVX-512 machine it differed from this at 78,451 of
    200,000 values drawn in [-80, 80])."""
    import math

    from velcro_ref.engine import Model
    from velcro_ref.graph import INPUT, Graph, Node

    x = np.random.default_rng(3).uniform(-20, 0, (4, 300)).astype(np.float32)
    x[:, 0] = 0.0  # the row's max: z = x exactly
    got = Model(Graph((Node("s", "softmax", (INPUT,)),), (300,), "s", {})).run(x)
    for row, out in zip(x, got, strict=True):
        e = [np.float32(math.exp(float(v))) for v in row]
        total = np.float32(sum(float(v) for v in e))
        assert out.tolist() == [float(v / total) for v in e]
