"""Paired accuracy changes: exact McNemar p-values and Clopper-Pearson intervals against published and
hand-worked values."""

import math

import numpy as np
import pytest

from velcro_ref.intervals import clopper_pearson, mcnemar_p, paired_change


def tail_at_least(x, n, p):
    """P(X >= x), X ~ Binomial(n, p), summed directly."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(x, n + 1))


def tail_at_most(x, n, p):
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, x + 1))


@pytest.mark.parametrize(
    "x, n, lo, hi",
    [
        (5, 10, 0.1870860, 0.8129140),  # R 4.x binom.test(5, 10)$conf.int
        (1, 10, 0.002528579, 0.4450161),  # R 4.x binom.test(1, 10)$conf.int
    ],
)
def test_clopper_pearson_matches_published_intervals(x, n, lo, hi):
    got = clopper_pearson(x, n)
    assert got == pytest.approx((lo, hi), abs=1e-7)


@pytest.mark.parametrize("n", [1, 3, 7, 40])
def test_clopper_pearson_closed_forms_at_the_ends(n):
    # x = 0: upper end 1 - (alpha/2)^(1/n); x = n: lower end (alpha/2)^(1/n)
    assert clopper_pearson(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), abs=1e-10)
    assert clopper_pearson(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), abs=1e-10)


@pytest.mark.parametrize("x, n", [(2, 9), (13, 30), (57, 120)])
def test_clopper_pearson_ends_leave_two_and_a_half_percent_in_each_tail(x, n):
    lo, hi = clopper_pearson(x, n)
    assert tail_at_least(x, n, lo) == pytest.approx(0.025, abs=1e-9)
    assert tail_at_most(x, n, hi) == pytest.approx(0.025, abs=1e-9)


def test_exact_mcnemar_p_values_by_hand():
    assert mcnemar_p(6, 0) == pytest.approx(2 / 2**6)  # both tails of 6 of 6
    assert mcnemar_p(1, 3) == pytest.approx(2 * 5 / 16)  # P(X <= 1 | 4, 1/2) = 5/16, doubled
    assert mcnemar_p(2, 2) == 1.0
    assert mcnemar_p(0, 0) == 1.0


def pairs(n, won, lost, both_wrong=0):
    """Bool arrays (dense, compressed) of n images with the given discordant counts."""
    base = np.ones(n, bool)
    new = np.ones(n, bool)
    new[:lost] = False  # right only dense
    base[lost : lost + won] = False  # right only compressed
    base[n - both_wrong :] = new[n - both_wrong :] = False
    return base, new


def test_paired_change_counts_and_interval_by_hand():
    base, new = pairs(500, won=6, lost=0, both_wrong=10)
    ch = paired_change(base, new)
    assert (ch["n_images"], ch["won"], ch["lost"], ch["change_images"]) == (500, 6, 0, 6)
    assert ch["change"] == pytest.approx(6 / 500)
    # P(won | changed) in [0.025^(1/6), 1]: the change in [6/500 (2 x 0.025^(1/6) - 1), 6/500]
    assert ch["ci"] == pytest.approx([6 / 500 * (2 * 0.025 ** (1 / 6) - 1), 6 / 500], abs=1e-12)
    assert ch["ci"][0] > 0 and ch["p_value"] == pytest.approx(1 / 32)


def test_a_gain_of_five_of_five_changed_images_is_not_significant():
    ch = paired_change(*pairs(500, won=5, lost=0))
    # 0.025^(1/5) = 0.478 < 1/2: the interval reaches below 0, as the exact test (p = 1/16) says
    assert ch["ci"][0] < 0 < ch["ci"][1] and ch["p_value"] == pytest.approx(1 / 16)


def test_no_changed_prediction_gives_the_point_zero():
    ch = paired_change(*pairs(200, won=0, lost=0, both_wrong=7))
    assert ch["change_images"] == 0 and ch["ci"] == [0.0, 0.0] and ch["p_value"] == 1.0


def test_paired_change_refuses_arrays_of_different_images():
    with pytest.raises(ValueError):
        paired_change(np.ones(3, bool), np.ones(4, bool))
