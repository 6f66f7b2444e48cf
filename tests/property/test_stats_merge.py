"""Stats of shards merged in any order equal the stats of the whole set and numpy's float64 mean/var."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref.errors import StatsError
from velcro_ref.stats import SiteStats, Stats


@given(
    st.integers(0, 2**31),
    st.lists(st.integers(1, 40), min_size=1, max_size=6),
    st.sampled_from([0.0, 1.0, 1e6]),
    st.sampled_from([1e-3, 1.0, 100.0]),
    st.randoms(use_true_random=False),
)
def test_merge_in_any_order_equals_whole_set_and_numpy(seed, sizes, offset, noise, rnd):
    rng = np.random.default_rng(seed)
    data = offset + noise * rng.standard_normal((sum(sizes), 3, 2))
    shards = np.split(data, np.cumsum(sizes)[:-1])
    parts = [SiteStats.of_batch(s) for s in shards]
    rnd.shuffle(parts)
    merged = SiteStats.empty((3, 2))
    for p in parts:
        merged = merged.merge(p)
    whole = SiteStats.of_batch(data)
    np.testing.assert_array_equal(merged.count, len(data))
    np.testing.assert_allclose(merged.mean, data.mean(axis=0), rtol=1e-9, atol=0)
    np.testing.assert_allclose(merged.variance, data.var(axis=0), rtol=1e-9, atol=1e-12 * noise**2)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-9, atol=0)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-9, atol=1e-12 * noise**2)
    np.testing.assert_array_equal(merged.min, data.min(axis=0))
    np.testing.assert_array_equal(merged.max, data.max(axis=0))


def test_hand_worked_merge():
    # {1, 2} and {4}: mean 7/3, M2 = (16 + 1 + 25) / 9 = 42/9
    m = SiteStats.of_batch(np.array([[1.0], [2.0]])).merge(SiteStats.of_batch(np.array([[4.0]])))
    assert m.count[0] == 3 and np.isclose(m.mean[0], 7 / 3) and np.isclose(m.m2[0], 42 / 9)
    assert m.min[0] == 1 and m.max[0] == 4


@given(
    st.integers(0, 2**31),
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.integers(1, 1300),
    st.sampled_from([0.0, 1e6]),
    st.sampled_from([np.float32, np.float64]),
)
def test_add_batch_in_place_equals_merging_batch_stats(seed, sizes, elements, offset, dtype):
    """The profiling path's fused update (blocks of elements, more than one block from 513 on)
    gives the same numbers as merging each batch's stats, bit for bit."""
    rng = np.random.default_rng(seed)
    batches = [(offset + rng.standard_normal((n, elements))).astype(dtype) for n in sizes]
    fused, merged = SiteStats.empty((elements,)), SiteStats.empty((elements,))
    for y in batches:
        fused.add_batch(y)
        merged = merged.merge(SiteStats.of_batch(y))
    for name in ("count", "shift", "shifted_mean", "m2", "min", "max"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(merged, name), err_msg=name)


def test_stats_of_another_element_shape_are_refused_naming_the_site():
    """The merge kernel trusts its arrays' sizes: a shape mismatch must stop before it."""
    a = Stats("fp", {"relu": SiteStats.of_batch(np.ones((2, 4, 5)))}, (1,), 2, "a")
    b = Stats("fp", {"relu": SiteStats.of_batch(np.ones((2, 1, 5)))}, (1,), 2, "b")
    with pytest.raises(StatsError, match="site 'relu'.*\\(4, 5\\).*\\(1, 5\\)"):
        a.merge(b)
    with pytest.raises(StatsError, match="element shape"):
        a.sites["relu"].merge(b.sites["relu"])


def test_add_batch_changes_only_its_own_arrays():
    """Merged stats own their arrays (an in-place update of one leaves its inputs as they were),
    and arrays the update could not write in place are refused rather than silently copied."""
    rng = np.random.default_rng(2)
    first, second = SiteStats.of_batch(rng.standard_normal((3, 6))), SiteStats.of_batch(rng.standard_normal((2, 6)))
    kept = [first.copy(), second.copy()]
    for merged in (SiteStats.empty((6,)).merge(first), first.merge(second)):
        merged.add_batch(rng.standard_normal((4, 6)))
    for orig, now in zip(kept, (first, second), strict=True):
        for name in ("count", "shift", "shifted_mean", "m2", "min", "max"):
            np.testing.assert_array_equal(getattr(now, name), getattr(orig, name))
    fortran = SiteStats(*(np.asfortranarray(np.zeros((3, 4))) for _ in range(6)))
    with pytest.raises(ValueError, match="C-contiguous"):
        fortran.add_batch(np.ones((1, 3, 4)))


@given(st.integers(0, 2**31), st.sampled_from([1, 3, 4, 5, 9]), st.sampled_from([8 * 512 + 1, 2 * 8 * 512 + 77]))
def test_add_batch_over_several_work_items_equals_merging_batch_stats(seed, n, elements):
    """Several work items of welford_add (4 and 6 blocks on 2 threads, the last one shorter), so both threads
    take part, and image counts around its 4-image steps: the same numbers as merging each batch's
    stats."""
    rng = np.random.default_rng(seed)
    fused, merged = SiteStats.empty((elements,)), SiteStats.empty((elements,))
    for _ in range(2):
        y = (3 + rng.standard_normal((n, elements))).astype(np.float32)
        fused.add_batch(y)
        merged = merged.merge(SiteStats.of_batch(y))
    for name in ("count", "shift", "shifted_mean", "m2", "min", "max"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(merged, name), err_msg=name)


@given(
    st.integers(0, 2**31),
    st.sampled_from([1, 7, 8, 9, 100, 65536 + 13, 3 * 32768 + 5]),
    st.sampled_from(["none", "nan", "inf", "zeros", "nonpositive"]),
)
def test_value_range_equals_numpy_min_and_max(seed, size, special):
    """One pass of 8 lanes (and a tail), work items in parallel from 64K elements: NumPy's min and
    max, NaN for both when a value is NaN, a zero extreme as +0.0 wherever the array holds -0.0."""
    from velcro_ref.kernels.moments import value_range

    rng = np.random.default_rng(seed)
    y = (100 * rng.standard_normal(size)).astype(np.float32)
    at = rng.integers(size)
    if special == "nan":
        y[at] = np.nan
    elif special == "inf":
        y[at] = rng.choice([np.inf, -np.inf])
    elif special == "zeros":
        y = np.abs(y)
        y[at] = -0.0
    elif special == "nonpositive":
        y = -np.abs(y)
        y[rng.integers(size, size=3)] = rng.choice([0.0, -0.0], size=3)
    lo, hi = value_range(y.reshape(1, -1))
    if special == "nan":
        assert np.isnan(lo) and np.isnan(hi)
    else:
        assert (lo, hi) == (float(y.min()), float(y.max()))
        assert all(math.copysign(1.0, v) == 1.0 for v in (lo, hi) if v == 0.0)


def test_a_merge_keeps_every_parts_classes_and_only_the_ranges_both_parts_hold():
    """A merge kept the first part's classes only (a class-5 shard and a class-7 shard gave [5]), and
    kept a tensor's range that one part alone held, which quantization would then take as the
    range over every image."""
    site = SiteStats.of_batch(np.array([[1.0], [2.0]]))
    a = Stats("fp", {"s": site}, (5,), 2, ranges={"t": (0.0, 1.0), "u": (-1.0, 1.0)})
    b = Stats("fp", {"s": site}, (7, 2), 2, ranges={"t": (-3.0, 0.5)})
    merged = a.merge(b)
    assert merged.classes == (2, 5, 7)
    assert merged.ranges == {"t": (-3.0, 1.0)}
    assert b.merge(a).ranges == {"t": (-3.0, 1.0)}
