"""The SIMD blocks follow the order of summation docs/kernels.md defines, replayed here one
float32 operation at a time (the fused multiply-add emulated exactly, tests/unit/test_fma.py)."""

import numpy as np
import pytest
from numba import njit

from velcro_ref.kernels.conv.layouts import chain_order
from velcro_ref.kernels.simd import VEC, chain_sums, dot_taps, store_tile
from velcro_ref.reference.fma import fma32


def _replay(a, b):
    """a . b in the documented order: tap j in chain j mod 8, each chain fused multiply-adds from
    +0 in increasing j, then ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))."""
    s = [np.float32(0.0)] * 8
    for j in range(a.size):
        s[j % 8] = fma32(a[j], b[j], s[j % 8])[()]
    f = np.float32
    return f(f(f(s[0] + s[4]) + f(s[2] + s[6])) + f(f(s[1] + s[5]) + f(s[3] + s[7])))


def _replay_one_chain(a, b):
    acc = np.float32(0.0)
    for j in range(a.size):
        acc = fma32(a[j], b[j], acc)[()]
    return acc


def _rows_runs(b):
    """dot_taps' view of a row-major matrix b (Q, J): one run of J floats per row, as im2col rows."""
    return b.reshape(-1), (1, 0, 1, 0, b.shape[1])


@njit
def _one_by_four(a, i, x, j_n, r, runs):
    return dot_taps(a, (i,), x, (r[0] * j_n, r[1] * j_n, r[2] * j_n, r[3] * j_n), runs)


@njit
def _two_by_two(a, i, x, j_n, r, runs):
    return dot_taps(a, (i, i + 1), x, (r[0] * j_n, r[1] * j_n), runs)


@njit
def _single(a, i, x, j_n, q, runs):
    return dot_taps(a, (i,), x, (q * j_n,), runs)[0]


@njit
def _taps_two_by_three(a, x, o, runs):
    return dot_taps(a, (0, 1), x, (o[0], o[1], o[2]), runs)


@pytest.mark.parametrize("j_n", [1, 5, VEC, 3 * VEC, 37, 576])
def test_dot_taps_follows_the_documented_order(j_n):
    """Whole vectors and a partial last one (a linear layer's rows of any length)."""
    rng = np.random.default_rng(j_n)
    a = rng.standard_normal((3, j_n), dtype=np.float32)
    b = rng.standard_normal((9, j_n), dtype=np.float32)
    flat, runs = _rows_runs(b)
    rows = np.array([7, 0, 3, 3])
    got = _one_by_four(a, 1, flat, j_n, rows, runs)
    assert list(got) == [_replay(a[1], b[r]) for r in rows]
    got2 = _two_by_two(a, 1, flat, j_n, rows, runs)
    assert list(got2) == [_replay(a[i], b[r]) for i in (1, 2) for r in rows[:2]]


@pytest.mark.parametrize("c_n, dil", [(8, 1), (16, 1), (8, 2)])
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
    flat, runs = _rows_runs(col)
    want = _taps_two_by_three(a, flat, np.arange(3) * col.shape[1], runs)
    assert list(want) == [_replay(a[i], col[p]) for i in range(2) for p in range(3)]
    per_tap = _taps_two_by_three(a, x.reshape(-1), offs, (k, dil * w * c_n, k, dil * c_n, c_n))
    assert per_tap == want
    if dil == 1:  # a filter row's taps are one contiguous run
        assert _taps_two_by_three(a, x.reshape(-1), offs, (k, w * c_n, 1, 0, k * c_n)) == want


def test_dot_taps_sum_does_not_depend_on_the_block():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 576), dtype=np.float32)
    b = rng.standard_normal((6, 576), dtype=np.float32)
    flat, runs = _rows_runs(b)
    rows = np.array([5, 2, 0, 4])
    block = _one_by_four(a, 2, flat, 576, rows, runs)
    pair = _two_by_two(a, 2, flat, 576, rows, runs)
    for t, q in enumerate(rows):
        assert block[t] == _single(a, 2, flat, 576, q, runs)
    assert pair[0] == _single(a, 2, flat, 576, rows[0], runs) and pair[3] == _single(a, 3, flat, 576, rows[1], runs)


@njit
def _tile(wp, x, xb, offs, starts, sums):
    chain_sums(wp, (0, 1, 2, 3), x, (xb[0], xb[1], xb[2]), offs, starts, sums)


@pytest.mark.parametrize("n_chains", [8, 1])
@pytest.mark.parametrize("taps", [5, 9, 70])
def test_chain_sums_lanes_follow_the_documented_order(n_chains, taps):
    """A tile of 4 filters by 3 segments: lane i of segment v of filter m is the replayed sum of
    that filter's weights against the input floats its tap offsets point at."""
    rng = np.random.default_rng(taps + n_chains)
    x = rng.standard_normal(4000, dtype=np.float32)
    w = rng.standard_normal((4, taps), dtype=np.float32)
    natural = rng.integers(0, 3000, taps)  # tap j's offset
    order, starts = chain_order(taps, n_chains)
    wp = np.ascontiguousarray(w[:, order].T).reshape(-1)  # tap t (summation order) of filter m at t * 4 + m
    xb = np.array([0, 17, 903])
    sums = np.empty(4 * 3 * VEC, np.float32)
    _tile(wp, x, xb, np.ascontiguousarray(natural[order]), starts, sums)
    replay = _replay if n_chains == 8 else _replay_one_chain
    for m in range(4):
        for v in range(3):
            for i in range(VEC):
                want = replay(w[m], x[xb[v] + natural + i])
                assert sums[(m * 3 + v) * VEC + i] == want


@njit
def _store(sums, bias, res, out, where, ob, nv):
    store_tile(sums, bias, res, out, where, (ob[0], ob[1]), (nv[0], nv[1]))


@pytest.mark.parametrize("has_res", [0, 1])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_store_tile_applies_bias_residual_and_activation_as_numpy_does(act, has_res):
    """(sum + bias), + residual, then np.maximum(y, 0) / np.minimum(y, 6): NaN stays NaN, -0.0
    becomes +0.0; a partial segment writes its first lanes only."""
    rng = np.random.default_rng(act + 3 * has_res)
    sums = (4 * rng.standard_normal(3 * 2 * VEC)).astype(np.float32)
    sums[[1, 5, 9]] = [np.nan, -0.0, 7.5]
    bias = np.array([0.0, -0.0, 1.5, 2.0], np.float32)  # filter m is channel 1 + m
    res = rng.standard_normal(4 * 20, dtype=np.float32)
    out = np.full(4 * 20, 99.0, np.float32)
    _store(
        sums,
        bias,
        res if has_res else out,
        out,
        (1, 3, 20, has_res, act),
        np.array([20 + 2, 20 + 11]),
        np.array([8, 5]),
    )
    want = np.full(4 * 20, 99.0, np.float32)
    for m in range(3):
        for v, (ob, nv) in enumerate(((20 + 2, 8), (20 + 11, 5))):
            y = sums[(m * 2 + v) * VEC : (m * 2 + v) * VEC + nv] + bias[1 + m]
            at = slice(ob + m * 20, ob + m * 20 + nv)
            if has_res:
                y = y + res[at]
            if act >= 1:
                y = np.maximum(y, np.float32(0))
            if act == 2:
                y = np.minimum(y, np.float32(6))
            want[at] = y
    assert out.tobytes() == want.tobytes()
