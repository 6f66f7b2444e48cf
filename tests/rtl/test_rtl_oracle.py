"""The RTL tests' oracle against values worked by hand from gemmlowp's and TFLite's formulas."""

import numpy as np
import rtl_oracle as o

M_HALF = 2**30  # 0.5 in Q31


def test_srdhm_rounds_as_gemmlowp_and_saturates():
    # (a*b + nudge) / 2^31 truncated: 3*0.5 = 1.5 -> 2; -3*0.5: (-3*2^30 + 1 - 2^30) / 2^31 -> -1;
    # -5*0.5: (-5*2^30 + 1 - 2^30) / 2^31 = -2.99.. -> -2; (2^31-1)^2 / 2^31 = 2^31 - 2 + 2^-31 -> 2^31 - 2.
    assert o.srdhm(3, M_HALF) == 2
    assert o.srdhm(-3, M_HALF) == -1
    assert o.srdhm(-5, M_HALF) == -2
    assert o.srdhm(2**31 - 1, 2**31 - 1) == 2**31 - 2
    assert o.srdhm(o.INT32_MIN, o.INT32_MIN) == o.INT32_MAX
    assert o.srdhm(o.INT32_MIN, o.INT32_MAX) == -(2**31) + 1


def test_rounding_divide_by_pot_rounds_ties_away_from_zero():
    assert [int(o.rdbp(x, 1)) for x in (5, -5, 4, -4)] == [3, -3, 2, -2]
    assert [int(o.rdbp(x, 2)) for x in (7, 6, -6, -7, 5)] == [2, 2, -2, -2, 1]
    assert int(o.rdbp(-(2**31), 31)) == -1 and int(o.rdbp(123, 0)) == 123


def test_requantize_shifts_adds_the_zero_point_and_clamps():
    # 1000 * 0.5 / 4 = 125, + 3 = 128 -> 127; 100 << 1 = 200, * 0.5 = 100, + 3 = 103;
    # -1000 * 0.5 / 4 - 5 = -130 -> -128.
    got = o.requantize(np.array([1000, 100, -1000]), M_HALF, np.array([-2, 1, -2]), np.array([3, 3, -5]), -128, 127)
    assert got.tolist() == [127, 103, -128]
    assert o.requantize(np.array([-7]), M_HALF, 0, 10, 10, 127).tolist() == [10]  # clamp at a fused ReLU


def test_quantize_multiplier_is_tflites():
    assert o.quantize_multiplier(0.25) == (2**30, -1)
    assert o.quantize_multiplier(1.0) == (2**30, 1)
    assert o.quantize_multiplier(0.0) == (0, 0)
    m, s = o.quantize_multiplier(0.0123)
    assert 2**30 <= m < 2**31 and abs(m * 2.0 ** (s - 31) - 0.0123) < 1e-11


def test_conv_acc_by_hand():
    # One channel 2x2, zero point 1, a 2x2 filter, pad 1 on the left only: a 1x2 output. The first
    # output sees the pad column (real 0) and x[:, 0]: (3-1)*2 + (5-1)*4 = 20, plus bias 7.
    x = np.array([[[3, 4], [5, 6]]], np.int8)
    w = np.array([[[[1, 2], [3, 4]]]], np.int8)
    acc = o.conv_acc(x, w, np.array([7], np.int32), 1, (1, 1), (0, 1, 0, 0), (1, 1), 1)
    assert acc.shape == (1, 1, 2)
    assert acc[0, 0].tolist() == [20 + 7, (3 - 1) * 1 + (4 - 1) * 2 + (5 - 1) * 3 + (6 - 1) * 4 + 7]
