"""dot_taps and lanes_conv: the SIMD blocks behind the masked conv kernels."""

import numpy as np
import pytest
from numba import njit

from velcro_ref.kernels.simd import LANES, dot_taps


def _rows_geom(b):
    """dot_taps' view of a row-major matrix b (Q, J): one run of J floats per row, as im2col rows."""
    return b.reshape(-1), (1, 0, 1, 0, b.shape[1])


@njit
def _one_by_four(a, i, x, j_n, r, geom):
    return dot_taps(a, (i,), x, (r[0] * j_n, r[1] * j_n, r[2] * j_n, r[3] * j_n), geom)


@njit
def _two_by_two(a, i, x, j_n, r, geom):
    return dot_taps(a, (i, i + 1), x, (r[0] * j_n, r[1] * j_n), geom)


@njit
def _single(a, i, x, j_n, q, geom):
    return dot_taps(a, (i,), x, (q * j_n,), geom)[0]


@njit
def _taps_two_by_three(a, x, o, geom):
    return dot_taps(a, (0, 1), x, (o[0], o[1], o[2]), geom)


@pytest.mark.parametrize("c_n, dil", [(16, 1), (32, 1), (16, 2)])
def test_dot_taps_on_the_input_equals_dot_taps_on_im2col_rows(c_n, dil):
    """Taps read from a padded channels-last image, a filter row at a time or a tap at a time,
    sum to the same bits as the same taps copied into rows: what lets the masked kernels skip
    the im2col copy."""
    rng = np.random.default_rng(c_n + dil)
    h, w, k = 9, 8, 3
    x = rng.standard_normal((h, w, c_n), dtype=np.float32)
    a = rng.standard_normal((2, k * k * c_n), dtype=np.float32)
    ps = [(0, 0), (2, 3), (4, 1)]
    col = np.stack([x[oy : oy + dil * k : dil, ox : ox + dil * k : dil].reshape(-1) for oy, ox in ps])
    offs = np.array([(oy * w + ox) * c_n for oy, ox in ps])
    flat, geom = _rows_geom(col)
    want = _taps_two_by_three(a, flat, np.arange(3) * col.shape[1], geom)
    per_tap = _taps_two_by_three(a, x.reshape(-1), offs, (k, dil * w * c_n, k, dil * c_n, c_n))
    assert per_tap == want
    if dil == 1:  # a filter row's taps are one contiguous run
        assert _taps_two_by_three(a, x.reshape(-1), offs, (k, w * c_n, 1, 0, k * c_n)) == want
    exact = (a.astype(np.float64) @ col.astype(np.float64).T).ravel()
    bound = 1e-6 * (np.abs(a).astype(np.float64) @ np.abs(col).astype(np.float64).T).ravel()
    assert np.all(np.abs(np.array(want) - exact) <= bound)


@pytest.mark.parametrize("j_n", [LANES, 2 * LANES, 160, 576])
def test_dot_taps_equals_float64_dot(j_n):
    rng = np.random.default_rng(j_n)
    a = rng.standard_normal((3, j_n), dtype=np.float32)
    b = rng.standard_normal((9, j_n), dtype=np.float32)
    flat, geom = _rows_geom(b)
    rows = np.array([7, 0, 3, 3])
    got = np.array(_one_by_four(a, 1, flat, j_n, rows, geom))
    want = b[rows].astype(np.float64) @ a[1].astype(np.float64)
    bound = 1e-6 * j_n * np.abs(b[rows]).max() * np.abs(a[1]).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)
    got2 = np.array(_two_by_two(a, 1, flat, j_n, rows, geom)).reshape(2, 2)
    want2 = a[1:3].astype(np.float64) @ b[rows[:2]].astype(np.float64).T
    np.testing.assert_allclose(got2, want2, rtol=0, atol=2 * bound)


def test_dot_taps_sum_does_not_depend_on_the_block():
    """An element's value is the same whichever block computes it: the kernels rely on this for
    results that do not depend on masks of other elements, batch size or threads."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 576), dtype=np.float32)
    b = rng.standard_normal((6, 576), dtype=np.float32)
    flat, geom = _rows_geom(b)
    rows = np.array([5, 2, 0, 4])
    block = _one_by_four(a, 2, flat, 576, rows, geom)
    pair = _two_by_two(a, 2, flat, 576, rows, geom)
    for t, q in enumerate(rows):
        assert block[t] == _single(a, 2, flat, 576, q, geom)
    assert pair[0] == _single(a, 2, flat, 576, rows[0], geom) and pair[3] == _single(a, 3, flat, 576, rows[1], geom)


def test_dot_taps_order_is_lanes_then_halves():
    """The documented order, replayed in float32 NumPy: lane partial sums, then a tree of halves."""
    rng = np.random.default_rng(2)
    j_n = 3 * LANES
    a = rng.standard_normal((1, j_n), dtype=np.float32)
    b = rng.standard_normal((1, j_n), dtype=np.float32)
    lanes = np.zeros(LANES, np.float32)
    for j in range(0, j_n, LANES):
        lanes = lanes + a[0, j : j + LANES] * b[0, j : j + LANES]
    while lanes.size > 1:
        lanes = lanes[: lanes.size // 2] + lanes[lanes.size // 2 :]
    flat, geom = _rows_geom(b)
    assert _single(a, 0, flat, j_n, 0, geom) == lanes[0]


def test_lanes_conv_order_is_taps_then_bias_per_image():
    """A dense 3x3 conv on a full block of lanes, replayed in float32 NumPy in the documented
    order (taps in (fy, fx, c) order from 0, then the bias), one image per array element."""
    from velcro_ref.kernels import conv2d as kconv
    from velcro_ref.kernels.simd import BATCH_LANES

    rng = np.random.default_rng(3)
    n, c, h, k = BATCH_LANES, 3, 5, 2
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = rng.standard_normal((k, c, 3, 3), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    got = np.empty((n, k, h, h), np.float32)
    kconv.conv2d(x, w, b, 1, 1, 1, 1, 1, 1, 1, 1, 1, None, got)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for kk in range(k):
        for oy in range(h):
            for ox in range(h):
                acc = np.zeros(n, np.float32)
                for fy in range(3):
                    for fx in range(3):
                        for cc in range(c):
                            acc = acc + w[kk, cc, fy, fx] * xp[:, cc, oy + fy, ox + fx]
                np.testing.assert_array_equal(got[:, kk, oy, ox], acc + b[kk])
