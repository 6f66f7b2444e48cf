"""The SIMD blocks follow the order of summation docs/kernels.md defines, replayed here one
float32 operation at a time (the fused multiply-add emulated exactly, tests/unit/test_fma.py)."""

import numpy as np
import pytest
from numba import njit

from velcro_ref.kernels.conv.layouts import chain_order
from velcro_ref.kernels.simd import VEC, dot_taps, lane_pass, store_lanes, store_tile, tile_pass
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


@njit
def _three_by_three(a, x, j_n, r, runs):
    return dot_taps(a, (0, 1, 2), x, (r[0] * j_n, r[1] * j_n, r[2] * j_n), runs)


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
    # with 16-float vectors: two filters share one, then two positions of the third, then one alone
    got3 = _three_by_three(a, flat, j_n, rows, runs)
    assert list(got3) == [_replay(a[i], b[r]) for i in range(3) for r in rows[:3]]


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
def _tile_runs(wp, x, xb, offs, starts, run, parts, out):
    """Every chain of a 4 x 3 tile in runs of `run` taps, then combined with a zero bias into out
    (4 filters' planes of 24 floats, the 3 segments side by side)."""
    n_chains = starts.size - 1
    for c in range(n_chains):
        for r0 in range(starts[c], max(starts[c + 1], starts[c] + 1), run):
            span = (r0, min(starts[c + 1], r0 + run), 1 if r0 > starts[c] else 0)
            tile_pass(wp, (0, 1, 2, 3), x, (xb[0], xb[1], xb[2]), offs, span, parts, c * 12 * VEC)
    bias = np.zeros(4, np.float32)
    lanes = (0, 0, 0, VEC, VEC, VEC)
    if n_chains == 8:
        slots = (0, 96, 192, 288, 384, 480, 576, 672)
        store_tile(parts, slots, bias, out, out, (0, 4, 24, 0, 0), (0, VEC, 2 * VEC), lanes)
    else:
        store_tile(parts, (0,), bias, out, out, (0, 4, 24, 0, 0), (0, VEC, 2 * VEC), lanes)


@njit
def _lane_runs(wp, x, pb, offs, starts, run, parts, out):
    """`_tile_runs` for a 16 x 6 `lane_pass` tile into out (16 filters' planes of 6 floats)."""
    n_chains = starts.size - 1
    for c in range(n_chains):
        for r0 in range(starts[c], max(starts[c + 1], starts[c] + 1), run):
            span = (r0, min(starts[c + 1], r0 + run), 1 if r0 > starts[c] else 0)
            lane_pass(wp, 0, x, (pb[0], pb[1], pb[2], pb[3], pb[4], pb[5]), offs, span, parts, c * 12 * VEC)
    bias = np.zeros(16, np.float32)
    if n_chains == 8:
        slots = (0, 96, 192, 288, 384, 480, 576, 672)
        store_lanes(parts, slots, bias, out, out, (0, 6, 0, 0), (0, 1, 2, 3, 4, 5), None)
    else:
        store_lanes(parts, (0,), bias, out, out, (0, 6, 0, 0), (0, 1, 2, 3, 4, 5), None)


@pytest.mark.parametrize("run", [1, 5, 1000])
@pytest.mark.parametrize("n_chains", [8, 1])
@pytest.mark.parametrize("taps", [5, 9, 70])
def test_tile_and_lane_passes_follow_the_documented_order(n_chains, taps, run):
    """Tiles of 4 filters by 3 segments of 8 outputs (`tile_pass`) and of 16 filters by 6
    positions (`lane_pass`), their chains in runs of `run` taps carried over in memory: each
    output is the replayed sum of its filter's weights against the input floats its tap
    offsets point at."""
    rng = np.random.default_rng(taps + n_chains + run)
    x = rng.standard_normal(6000, dtype=np.float32)
    natural = rng.integers(0, 3000, taps)  # tap j's offset
    order, starts = chain_order(taps, n_chains)
    replay = _replay if n_chains == 8 else _replay_one_chain
    parts = np.full(8 * 12 * VEC, np.nan, np.float32)
    w = rng.standard_normal((4, taps), dtype=np.float32)
    wp = np.ascontiguousarray(w[:, order].T).reshape(-1)  # tap t (summation order) of filter m at t * 4 + m
    xb = np.array([0, 17, 903])
    out = np.empty(4 * 24, np.float32)
    _tile_runs(wp, x, xb, np.ascontiguousarray(natural[order]), starts, run, parts, out)
    for m in range(4):
        for v in range(3):
            for i in range(VEC):
                assert out[m * 24 + v * VEC + i] == replay(w[m], x[xb[v] + natural + i])
    w16 = rng.standard_normal((16, taps), dtype=np.float32)
    wp16 = np.ascontiguousarray(w16[:, order].T).reshape(-1)
    pb = np.array([3, 40, 41, 700, 2, 1999])
    out16 = np.empty(16 * 6, np.float32)
    _lane_runs(wp16, x, pb, np.ascontiguousarray(natural[order]), starts, run, parts, out16)
    for j in range(16):
        for p in range(6):
            assert out16[j * 6 + p] == replay(w16[j], x[pb[p] + natural])


@njit
def _store(sums, bias, res, out, where, ob, nv):
    store_tile(sums, (0,), bias, res, out, where, (ob[0], ob[1]), (nv[0], nv[1], nv[2], nv[3]))


@pytest.mark.parametrize("has_res", [0, 1])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_store_tile_applies_bias_residual_and_activation_as_numpy_does(act, has_res):
    """(sum + bias), + residual, then np.maximum(y, 0) / np.minimum(y, 6): NaN stays NaN, -0.0
    becomes +0.0; a partial segment writes its lanes lo .. hi - 1 only."""
    rng = np.random.default_rng(act + 3 * has_res)
    sums = (4 * rng.standard_normal(3 * 2 * VEC)).astype(np.float32)
    sums[[1, 5, 9]] = [np.nan, -0.0, 7.5]
    bias = np.array([0.0, -0.0, 1.5, 2.0], np.float32)  # filter m is channel 1 + m
    res = rng.standard_normal(4 * 20, dtype=np.float32)
    out = np.full(4 * 20, 99.0, np.float32)
    lanes = np.array([0, 3, 8, 7])  # segment 0: lanes 0 .. 7, segment 1: lanes 3 .. 6
    _store(sums, bias, res if has_res else out, out, (1, 3, 20, has_res, act), np.array([22, 28]), lanes)
    want = np.full(4 * 20, 99.0, np.float32)
    for m in range(3):
        for v, (ob, lo, hi) in enumerate(((22, 0, 8), (28, 3, 7))):
            y = sums[(m * 2 + v) * VEC + lo : (m * 2 + v) * VEC + hi] + bias[1 + m]
            at = slice(ob + m * 20 + lo, ob + m * 20 + hi)
            if has_res:
                y = y + res[at]
            if act >= 1:
                y = np.maximum(y, np.float32(0))
            if act == 2:
                y = np.minimum(y, np.float32(6))
            want[at] = y
    assert out.tobytes() == want.tobytes()
