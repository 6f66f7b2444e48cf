"""Every Numba kernel equals its NumPy twin over shapes, strides, padding, dilation, groups,
masks and batch sizes; the conv and linear kernels bit for bit (the twins follow the same order
of summation, docs/kernels.md)."""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref.kernels import conv as kc
from velcro_ref.kernels import linear as klin
from velcro_ref.kernels import overwrite as kover
from velcro_ref.kernels import pool as kpool
from velcro_ref.kernels.conv import dense, depthwise, dispatch, layouts, masked, schedule
from velcro_ref.kernels.conv.geom import one_chain
from velcro_ref.ops.base import window_out_size as pool_out_size
from velcro_ref.reference import conv2d as rconv
from velcro_ref.reference import linear as rlin
from velcro_ref.reference import overwrite as rover
from velcro_ref.reference import pool as rpool


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k // 2)) for k in (kh, kw, kh, kw)]
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 11))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 11))
    c = draw(st.sampled_from([3, 3, kpool.PARALLEL_MIN // (2 * h * w) + 1]))  # the last: max_pool in parallel
    return kh, kw, sh, sw, pads, h, w, c, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**31))


@given(pool_cases())
def test_pool_kernels_equal_numpy_twins(case):
    kh, kw, sh, sw, (pt, pl, pb, pr), h, w, c, ceil_mode, include_pad, seed = case
    x = np.random.default_rng(seed).standard_normal((2, c, h, w), dtype=np.float32)
    if seed % 3 == 0:  # a NaN wins every window it is in
        x.flat[seed % x.size] = np.nan
    oh = pool_out_size(h, kh, sh, pt, pb, ceil_mode)
    ow = pool_out_size(w, kw, sw, pl, pr, ceil_mode)
    got, want = np.empty((2, c, oh, ow), np.float32), np.empty((2, c, oh, ow), np.float32)
    kpool.max_pool(x, kh, kw, sh, sw, pt, pl, got)
    rpool.max_pool(x, kh, kw, sh, sw, pt, pl, want)
    np.testing.assert_array_equal(got, want)
    kpool.avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, include_pad, got)
    rpool.avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, include_pad, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g1, g2 = np.empty((2, c, 1, 1), np.float32), np.empty((2, c, 1, 1), np.float32)
    kpool.global_avg_pool(x, g1)
    rpool.global_avg_pool(x, g2)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


# Values with ties (-0.0 and +0.0, equal infinities) and NaNs of distinct payloads, so that an
# output's bits depend on the order its taps are folded in.
_TIE_VALUES = np.array([-0.0, 0.0, -np.inf, np.inf, 1.0, -1.0], np.float32)


@st.composite
def max_pool_tie_cases(draw):
    """Windows and planes for every path of kernels.pool.max_pool: whole planes (stride 1, rows as
    wide as the input's), rows at strides 1 and 2 (unrolled 3x3 and 2x2, loops up to the widest),
    one tap at a time (stride 3, wider windows), rows of several vectors; the widest windows of
    each path with vectors of 8 and of 16 floats (`pool_simd.PW`) and one more."""
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh = draw(st.integers(1, 5))
    kw = draw(st.sampled_from([1, 2, 3, 3, 4, 5, 9, 10, 17, 18, 33, 34]))
    pads = [draw(st.integers(0, k // 2)) for k in (kh, kw, kh, kw)]
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 40))
    return kh, kw, sh, sw, pads, h, w, draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**31))


@given(max_pool_tie_cases())
def test_max_pool_kernel_folds_ties_and_nans_as_numpy_twin(case):
    """Bit for bit, with ties of -0.0 and +0.0, infinities and NaNs whose payloads say which won."""
    kh, kw, sh, sw, (pt, pl, pb, pr), h, w, c, ceil_mode, seed = case
    rng = np.random.default_rng(seed)
    x = rng.choice(_TIE_VALUES, (2, c, h, w))
    nans = rng.random(x.shape) < 0.05
    x.view(np.uint32)[nans] = 0x7FC00000 | rng.integers(1, 1 << 22, int(nans.sum()), dtype=np.uint32)
    oh = pool_out_size(h, kh, sh, pt, pb, ceil_mode)
    ow = pool_out_size(w, kw, sw, pl, pr, ceil_mode)
    got, want = np.empty((2, c, oh, ow), np.float32), np.empty((2, c, oh, ow), np.float32)
    kpool.max_pool(x, kh, kw, sh, sw, pt, pl, got)
    rpool.max_pool(x, kh, kw, sh, sw, pt, pl, want)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_max_pool_folds_columns_of_rows():
    """Hand-worked 2x2 windows: the column x[:, 0] is folded before x[:, 1], so of the tie
    +0.0 at (0, 1) and -0.0 at (1, 0) the -0.0 stays, and of NaNs at those places the one at
    (0, 1) is the last folded and wins (row-major order would give +0.0 and the other NaN)."""
    x = np.array([[-np.inf, 0.0], [-0.0, -np.inf]], np.float32)
    nans = x.copy()
    nans.view(np.uint32)[0, 1], nans.view(np.uint32)[1, 0] = 0x7FC00001, 0x7FC00002
    for data, want in ((x, 0x80000000), (nans, 0x7FC00001)):
        for planes in (1, 9000):  # one plane, and enough for the threads
            xs = np.broadcast_to(data, (1, planes, 2, 2)).copy()
            for kh, kw, sh, sw, pt, pl in ((2, 2, 1, 1, 0, 0), (2, 2, 2, 2, 0, 0), (2, 2, 3, 3, 0, 0)):
                out = np.empty((1, planes, 1, 1), np.float32)
                kpool.max_pool(xs, kh, kw, sh, sw, pt, pl, out)
                assert (out.view(np.uint32) == want).all(), (kh, kw, sh, sw)
            out = np.empty((1, planes, 2, 2), np.float32)  # 2x2 stride 1 pad 1 (left/top): 2x2 outputs
            kpool.max_pool(xs, 2, 2, 1, 1, 1, 1, out)
            assert (out.view(np.uint32)[0, :, 1, 1] == want).all()


@given(st.integers(1, 5), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_put_at_kernel_equals_numpy_twin(n, size, fraction, seed):
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, size), dtype=np.float32)
    idx = np.flatnonzero(rng.random(size) < fraction)
    values = rng.standard_normal(idx.size, dtype=np.float32)
    got, want = out.copy(), out.copy()
    kover.put_at(got, idx, values)
    rover.put_at(want, idx, values)
    np.testing.assert_array_equal(got, want)


@given(
    st.integers(1, 5), st.integers(1, 40), st.floats(0.0, 1.0), st.sampled_from([np.inf, 6.0]), st.integers(0, 2**31)
)
def test_clamp_unmasked_kernel_equals_numpy_twin(n, size, fraction, hi, seed):
    """Unmasked elements get the clamped input, masked ones keep what the output held."""
    rng = np.random.default_rng(seed)
    x = (8 * rng.standard_normal((n, size))).astype(np.float32)
    x.flat[rng.integers(x.size, size=3)] = rng.choice(np.array([np.nan, -0.0, np.inf, -np.inf], np.float32), 3)
    mask = rng.random(size) < fraction
    before = rng.standard_normal((n, size), dtype=np.float32)
    want = before.copy()
    rover.clamp_unmasked(x, np.float32(hi), mask, want)
    for kernel in (kover.clamp_unmasked, kover._clamp_unmasked_threads, kover._clamp_unmasked_serial):
        got = before.copy()
        kernel(x, np.float32(hi), mask, got)
        assert got.tobytes() == want.tobytes()  # NaN and the sign of zero included


@given(
    st.integers(1, 5), st.sampled_from([1, 40, kover.PART + 3]), st.sampled_from([np.inf, 6.0]), st.integers(0, 2**31)
)
def test_clamp_kernel_equals_numpy_twin(n, size, hi, seed):
    """Every element clamped to [0, hi], in one thread and in both, as NumPy's maximum and minimum."""
    rng = np.random.default_rng(seed)
    x = (8 * rng.standard_normal((n, size))).astype(np.float32)
    x.flat[rng.integers(x.size, size=3)] = rng.choice(np.array([np.nan, -0.0, np.inf, -np.inf], np.float32), 3)
    want = np.empty_like(x)
    rover.clamp(x, np.float32(hi), want)
    for kernel in (
        kover.clamp,
        lambda x, hi, out: kover._clamp_unmasked_threads(x, hi, kover.NO_MASK, out),
        lambda x, hi, out: kover._clamp_unmasked_serial(x, hi, kover.NO_MASK, out),
    ):
        got = rng.standard_normal(x.shape, dtype=np.float32)
        kernel(x, np.float32(hi), got)
        assert got.tobytes() == want.tobytes()  # NaN and the sign of zero included


def test_clamp_unmasked_over_several_work_items_equals_numpy_twin():
    """Sites longer than one work item (PART elements), in one thread and in both."""
    rng = np.random.default_rng(5)
    size = 2 * kover.PART + 7
    x = (8 * rng.standard_normal((3, size))).astype(np.float32)
    mask, before = rng.random(size) < 0.6, rng.standard_normal((3, size), dtype=np.float32)
    want = before.copy()
    rover.clamp_unmasked(x, np.float32(6.0), mask, want)
    for kernel in (kover._clamp_unmasked_threads, kover._clamp_unmasked_serial):
        got = before.copy()
        kernel(x, np.float32(6.0), mask, got)
        assert got.tobytes() == want.tobytes()


@st.composite
def conv_cases(draw):
    """A conv, its input batch, mask and epilogue. The draws reach every path: dense tiles of 4
    filters and of 1, one chain (fewer than 16 taps) and 8 chains, the flat and row input
    copies, masked runs, masked sampled blocks read in place (a multiple of 8 channels per
    group, or whole filter rows) or from im2col rows, blocks of 8 images, strided 1x1 convs."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.one_of(st.integers(1, 6), st.sampled_from([8, 16, 24])))
    kg = draw(st.one_of(st.integers(1, 9), st.just(16)))  # 16: filters in SIMD lanes
    if draw(st.booleans()):  # depthwise-like; 8 or 16 groups of one: channels in SIMD lanes
        cg, kg, groups = 1, draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 5, 8, 16]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    if draw(st.integers(0, 3)) == 0:  # pointwise: the flat input copy, strided or not
        kh = kw = 1
        pads = (0, 0, 0, 0)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 13))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 21))  # rows of several segments
    geom = kc.conv_geom(cg * groups, h, w, kg * groups, (kh, kw), (sh, sw), pads, (dh, dw), groups)
    n = draw(st.sampled_from([1, 2, 9, 11]))  # 9, 11: blocks of eight images and the rest alone
    masked_ = draw(st.sampled_from([None, 0.0, 0.3, 0.8, 1.0]))
    act, residual = draw(st.sampled_from([0, 1, 2, 3])), draw(st.booleans())
    return geom, n, masked_, act, residual, draw(st.integers(0, 2**31)), draw(st.booleans())


def _conv_case(case):
    geom, n, masked_, act, residual, seed, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, geom.c_in, geom.h, geom.w), dtype=np.float32)
    if act == 3:  # a relu to float32's largest value: outputs that overflow to +inf (and -inf, NaN) for it to clamp
        x.reshape(-1)[::5] = np.copysign(np.float32(3e38), x.reshape(-1)[::5])
    w = rng.standard_normal((geom.k_out, geom.c_in // geom.groups, geom.kh, geom.kw), dtype=np.float32)
    b = rng.standard_normal(geom.k_out, dtype=np.float32)
    skip = None if masked_ is None else rng.random((geom.k_out, geom.oh, geom.ow)) < masked_
    out_shape = (n, geom.k_out, geom.oh, geom.ow)
    ep = kc.Epilogue(rng.standard_normal(out_shape, dtype=np.float32) if residual else None, act)
    return x, kc.prepare_conv(w, b, geom), skip, ep


def _assert_equals_twin(x, weights, geom, plan, skip, ep):
    """conv2d (plan: the SkipPlan of skip, or None) writes the NumPy twin's bits over an output
    filled with 7.0, masked outputs left so, and counts its MACs."""
    got = np.full((x.shape[0], geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, plan, got, None, ep) == rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert got.tobytes() == want.tobytes()


@given(conv_cases())
def test_conv2d_kernel_equals_numpy_twin_bit_for_bit(case):
    geom, n, masked_, _, _, _, small_scratch = case
    x, weights, skip, ep = _conv_case(case)
    got = np.full((n, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    plan = None if skip is None else kc.plan_skip(skip, weights, geom)
    saved = dispatch.CHUNK_FLOATS, masked.CHUNK_FLOATS, layouts.PARALLEL_MIN, depthwise.BAND_POSITIONS
    try:
        if small_scratch:  # one image per chunk, the input copies by every thread, depthwise bands of one row
            dispatch.CHUNK_FLOATS = masked.CHUNK_FLOATS = 1
            layouts.PARALLEL_MIN, depthwise.BAND_POSITIONS = 0, 1
        m_got = kc.conv2d(x, weights, geom, plan, got, None, ep)
    finally:
        dispatch.CHUNK_FLOATS, masked.CHUNK_FLOATS, layouts.PARALLEL_MIN, depthwise.BAND_POSITIONS = saved
    m_want = rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert m_got == m_want
    assert got.tobytes() == want.tobytes()
    if skip is not None:
        assert np.all(got[:, skip] == 7.0)  # masked elements are never written


@given(conv_cases())
def test_masked_conv_writes_the_dense_bits_at_unmasked_outputs(case):
    """Every path sums an output in the same order: a masked call equals the dense call at the
    outputs it computes, bit for bit."""
    geom, n, _, _, _, _, _ = case
    x, weights, skip, ep = _conv_case(case[:2] + (0.5,) + case[3:])
    dense = np.empty((n, geom.k_out, geom.oh, geom.ow), np.float32)
    kc.conv2d(x, weights, geom, None, dense, None, ep)
    got = np.full_like(dense, np.nan)
    kc.conv2d(x, weights, geom, skip, got, None, ep)
    assert got[:, ~skip].tobytes() == dense[:, ~skip].tobytes()


# One conv per dense kernel (the draws of `conv_cases` reach them only by chance): positions in
# lanes with tiles of 4 filters and of 1; filters in lanes with one chain, with 8 short chains (a
# block's weights within RUN_BYTES: the 7x7 stem on 3 channels, a 1x1 on 64, one with a 7 x 7
# output whose last tile is wide), with 8 chains in several runs each (RUN_BYTES // 64 taps a
# run; a 5 x 5 output, a wide last tile again).
PATH_GEOMS = [
    kc.conv_geom(8, 9, 13, 12, (3, 3), (1, 1), (1, 1, 1, 1)),
    kc.conv_geom(8, 9, 13, 3, (3, 3), (2, 1), (1, 0, 1, 2)),
    kc.conv_geom(24, 9, 11, 32, (1, 1)),
    kc.conv_geom(3, 17, 15, 16, (7, 7), (2, 2), (3, 3, 3, 3)),
    kc.conv_geom(64, 7, 10, 32, (1, 1), (2, 2)),
    kc.conv_geom(64, 6, 9, 16, (3, 3), (1, 2), (1, 1, 1, 1)),
    kc.conv_geom(320, 5, 5, 16, (3, 3), (1, 1), (1, 1, 1, 1)),
    kc.conv_geom(64, 13, 13, 32, (1, 1), (2, 2)),
]


def test_path_geoms_reach_every_dense_kernel():
    rng = np.random.default_rng(0)
    kernels, wide = set(), set()
    for g in PATH_GEOMS:
        w = rng.standard_normal((g.k_out, g.c_in // g.groups, g.kh, g.kw), dtype=np.float32)
        kernel = dispatch.dense_kernel(kc.prepare_conv(w, None, g), g)
        kernels.add(kernel)
        if (g.oh * g.ow) % dense.POS_TILE == 1:
            wide.add(kernel)
    assert kernels == {dense.conv_tiles, dense.conv_short_lanes, dense.conv_lanes}
    assert wide == {dense.conv_short_lanes, dense.conv_lanes}  # a wide last tile in each


def _channel_view(a, rng):
    """a's values in a view that is not C-contiguous: its channels between others of a larger
    array (garbage there)."""
    n, c = a.shape[:2]
    big = rng.standard_normal((n, c + 3, *a.shape[2:]), dtype=np.float32)
    view = big[:, 2 : 2 + c]
    view[...] = a
    return view


DEPTHWISE_GEOMS = [kc.conv_geom(16, 12, 11, 16, (3, 3), (1, 1), (1, 1, 1, 1), groups=16)]  # BLOCKS
DEPTHWISE_GEOMS.append(kc.conv_geom(6, 12, 11, 6, (3, 3), (2, 2), (1, 1, 1, 1), groups=6))  # ROWS


@pytest.mark.parametrize("geom", PATH_GEOMS + DEPTHWISE_GEOMS, ids=str)
@pytest.mark.parametrize("masked_", [None, 0.4])
def test_conv2d_of_views_equals_conv2d_of_contiguous_arrays(geom, masked_):
    """x, the residual and out as channel slices at batch 2 (not C-contiguous): the kernels
    read and write C-contiguous arrays, so conv2d goes through copies; the outputs outside out's
    slice are left as they were, the masked ones inside it too."""
    rng = np.random.default_rng(7)
    x, weights, skip, ep = _conv_case((geom, 2, masked_, 1, True, 7, False))
    want = np.full((2, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    m_want = kc.conv2d(x, weights, geom, skip, want, None, ep)
    out = _channel_view(np.full_like(want, 7.0), rng)
    around = out.base.copy()
    ep_view = kc.Epilogue(_channel_view(ep.residual, rng), ep.act)
    assert kc.conv2d(_channel_view(x, rng), weights, geom, skip, out, None, ep_view) == m_want
    assert out.tobytes() == want.tobytes()
    around[:, 2 : 2 + geom.k_out] = want
    assert out.base.tobytes() == around.tobytes()


SAME_SHAPE_GEOMS = [  # out of x's shape: 1x1 read in place (one chain, 8 chains), direct tiles, 3x3, depthwise
    kc.conv_geom(24, 9, 11, 24, (1, 1)),
    kc.conv_geom(64, 5, 7, 64, (1, 1)),
    kc.conv_geom(32, 14, 14, 32, (1, 1)),
    kc.conv_geom(8, 9, 13, 8, (3, 3), (1, 1), (1, 1, 1, 1)),
    kc.conv_geom(16, 12, 11, 16, (3, 3), (1, 1), (1, 1, 1, 1), groups=16),
]


@pytest.mark.parametrize("geom", SAME_SHAPE_GEOMS, ids=str)
@pytest.mark.parametrize("masked_", [None, 0.4])
@pytest.mark.parametrize("over", ["x", "residual"])
def test_conv2d_writing_over_its_input_or_residual_equals_a_separate_output(geom, masked_, over):
    """out may be the array the conv reads (the kernels read x in place, or the residual in the
    epilogue, while they store): the bits of the call with an out of its own."""
    x, weights, skip, ep = _conv_case((geom, 3, masked_, 1, True, 11, False))
    start = x if over == "x" else ep.residual
    want = start.copy()
    m_want = kc.conv2d(x.copy(), weights, geom, skip, want, None, kc.Epilogue(ep.residual.copy(), ep.act))
    assert kc.conv2d(x, weights, geom, skip, start, None, ep) == m_want  # start is out
    assert start.tobytes() == want.tobytes()


@given(st.integers(1, 400))
def test_lane_tiles_cover_a_plane_once(p_n):
    """The tiles of `conv_lanes` cover a plane's positions once each, in order: POS_TILE
    positions a tile, the last one short (fewer) or, on a plane of POS_TILE k + 1, wide."""
    n_t = dense.lane_tiles(p_n)
    sizes = [(p_n if t == n_t - 1 else (t + 1) * dense.POS_TILE) - t * dense.POS_TILE for t in range(n_t)]
    assert sum(sizes) == p_n
    assert all(size == dense.POS_TILE for size in sizes[:-1])
    assert sizes[-1] == dense.WIDE if dense._wide(n_t - 1, n_t, p_n) else 0 < sizes[-1] <= dense.POS_TILE
    assert dense._wide(n_t - 1, n_t, p_n) == (p_n > dense.POS_TILE and p_n % dense.POS_TILE == 1)


@given(
    st.sampled_from(PATH_GEOMS),
    st.sampled_from([1, 3]),
    st.sampled_from([0, 1, 2, 3]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_every_dense_kernel_equals_numpy_twin_bit_for_bit(geom, n, act, residual, seed):
    case = (geom, n, None, act, residual, seed, False)
    x, weights, _, ep = _conv_case(case)
    got = np.full((n, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, None, got, None, ep) == rconv.conv2d(x, weights, geom, None, want, None, ep)
    assert got.tobytes() == want.tobytes()
    assert act != 3 or not np.isposinf(got).any()  # clamped to float32's largest value


# One conv per way the sampled masked kernels read their taps (rare in `conv_cases`' draws):
# in place per tap (8 channels), in place by whole filter rows of whole vectors (4 channels by
# 2), from im2col rows (the 7x7 stem on 3 channels: rows of 21 taps; 5 channels by 4; a dilated
# filter), and one chain (`conv_runs`).
MASKED_GEOMS = [
    kc.conv_geom(8, 9, 10, 6, (3, 3), (1, 1), (1, 1, 1, 1)),
    kc.conv_geom(4, 12, 7, 5, (8, 2), (1, 2), (1, 0, 1, 1)),
    kc.conv_geom(3, 17, 15, 7, (7, 7), (2, 2), (3, 3, 3, 3)),
    kc.conv_geom(5, 9, 11, 3, (4, 4), (1, 1), (2, 1, 1, 2)),
    kc.conv_geom(3, 13, 13, 4, (5, 5), (1, 1), (2, 2, 2, 2), (1, 2)),
    kc.conv_geom(3, 9, 9, 5, (3, 3), (1, 1), (1, 1, 1, 1)),
]


def test_masked_geoms_reach_every_read():
    kinds = set()
    for g in MASKED_GEOMS:
        if one_chain(g):
            kinds.add("runs")
        elif not masked.in_place(g):
            kinds.add("im2col")
        elif g.c_in % 8 == 0:
            kinds.add("per tap")
        else:
            kinds.add("whole rows")
    assert kinds == {"runs", "im2col", "per tap", "whole rows"}


@given(
    st.sampled_from(MASKED_GEOMS),
    st.sampled_from([1, 9]),
    st.sampled_from([0.0, 0.4, 0.9]),
    st.sampled_from([0, 1, 2, 3]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_every_masked_read_equals_numpy_twin_bit_for_bit(geom, n, ratio, act, residual, seed):
    x, weights, skip, ep = _conv_case((geom, n, ratio, act, residual, seed, False))
    got = np.full((n, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, skip, got, None, ep) == rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("geom", [g for g in MASKED_GEOMS if not one_chain(g) and not masked.in_place(g)], ids=str)
@pytest.mark.parametrize("n", [1, 9])
def test_im2col_rows_copied_tile_by_tile_equal_numpy_twin(geom, n, monkeypatch):
    """With tiles of 8 positions each thread copies the im2col rows of many tiles, one after
    another, image after image: the outputs stay the twin's bits."""
    monkeypatch.setattr(schedule, "TILE_FLOATS", 8)
    x, weights, skip, ep = _conv_case((geom, n, 0.4, 1, True, 5, False))
    plan = kc.plan_skip(skip, weights, geom)
    assert all(grp[2][3] == -(-geom.oh * geom.ow // 8) for grp in plan.groups)  # tiles of the 1-image schedule
    got = np.full((n, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, plan, got, None, ep) == rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert got.tobytes() == want.tobytes()


# Masked convs that run their dense kernel and store the outputs `schedule.lane_bits` names
# (`lane_bits_kernel`): depthwise on blocks of 8 channels (two bands of rows at 40 x 37, a
# stride-2 one), 1x1 and 3x3 one-chain convs with 16 filters per group (`conv_lanes`), a 1x1
# conv and a 7x7 stem on 3 channels with short chains (`conv_short_lanes`); a 3x3 one-chain conv
# and a strided 1x1 conv on 7 x 7 outputs, whose last tile is wide (`dense.lane_tiles`).
LANE_BITS_GEOMS = [
    kc.conv_geom(16, 40, 37, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),
    kc.conv_geom(8, 19, 17, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 8),
    kc.conv_geom(8, 9, 13, 48, (1, 1)),
    kc.conv_geom(2, 7, 11, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    kc.conv_geom(64, 7, 10, 32, (1, 1), (2, 2)),
    kc.conv_geom(3, 17, 15, 16, (7, 7), (2, 2), (3, 3, 3, 3)),
    kc.conv_geom(2, 7, 7, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    kc.conv_geom(64, 13, 13, 32, (1, 1), (2, 2)),
]


def test_lane_bits_geoms_reach_every_lanes_kernel():
    rng = np.random.default_rng(0)
    kernels = set()
    for g in LANE_BITS_GEOMS:
        w = kc.prepare_conv(rng.standard_normal((g.k_out, g.c_in // g.groups, g.kh, g.kw), dtype=np.float32), None, g)
        assert schedule.lane_bits_kernel(w, g)
        kernels.add("depthwise" if depthwise.is_depthwise(g) else dispatch.dense_kernel(w, g))
    assert kernels == {"depthwise", dense.conv_lanes, dense.conv_short_lanes}


def _lane_bits_mask(geom, kind, rng):
    """A mask of one kind: random, whole tiles of lanes masked (every channel of the first
    block over the top rows, every filter at the first positions), or all / none masked."""
    skip = rng.random((geom.k_out, geom.oh, geom.ow)) < 0.5
    if kind == "tiles":
        skip[:8, : geom.oh // 2] = True
        skip[:, :1] = True
        skip[-1] = False
    return {"random": skip, "tiles": skip, "all": np.ones_like(skip), "none": np.zeros_like(skip)}[kind]


@pytest.mark.parametrize("kind", ["random", "tiles", "all", "none"])
@pytest.mark.parametrize("residual", [False, True], ids=["own", "residual"])
@pytest.mark.parametrize("geom", LANE_BITS_GEOMS, ids=str)
def test_masked_lanes_store_only_the_unmasked_outputs(geom, residual, kind, monkeypatch):
    """The lane-bits path (dense kernel, some outputs stored) equals the twin bit for bit and in
    MACs, and leaves every masked element's bits as they were (a NaN payload included): whole
    tiles and the tiles at a band's or plane's end, with and without a residual."""
    monkeypatch.setattr(depthwise, "BAND_POSITIONS", 256)  # several bands on the 40 x 37 plane
    rng = np.random.default_rng(sum(map(ord, kind)) + geom.k_out)
    x, weights, _, ep = _conv_case((geom, 9, None, 2, residual, 4, False))
    skip = _lane_bits_mask(geom, kind, rng)
    plan = kc.plan_skip(skip, weights, geom)
    assert plan.bits is not None and plan.runs is None  # the lane-bits path
    payload = np.array([0x7FC0BEEF], np.uint32).view(np.float32)[0]
    got = np.full((9, geom.k_out, geom.oh, geom.ow), payload, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, plan, got, None, ep) == rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert got.tobytes() == want.tobytes()
    assert np.all(got[:, skip].view(np.uint32) == 0x7FC0BEEF)


@pytest.mark.parametrize("geom", [LANE_BITS_GEOMS[0], LANE_BITS_GEOMS[2], LANE_BITS_GEOMS[4]], ids=str)
def test_masked_lanes_do_not_depend_on_threads_or_batch(geom, monkeypatch):
    """The lane-bits path stores the same bits and counts the same MACs in one thread and in two,
    image by image and in batches of 9 and 11 (work items split otherwise, depthwise bands of
    256 positions)."""
    monkeypatch.setattr(depthwise, "BAND_POSITIONS", 256)
    rng = np.random.default_rng(12)
    x, weights, _, ep = _conv_case((geom, 11, None, 1, False, 6, False))
    plan = kc.plan_skip(rng.random((geom.k_out, geom.oh, geom.ow)) < 0.5, weights, geom)
    runs, macs = [], []
    threads = numba.get_num_threads()
    try:
        for t, batch in ((1, 1), (threads, 1), (1, 9), (threads, 11)):
            numba.set_num_threads(t)
            out = np.full((11, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
            macs.append(
                sum(
                    kc.conv2d(x[i : i + batch], weights, geom, plan, out[i : i + batch], None, ep)
                    for i in range(0, 11, batch)
                )
            )
            runs.append(out.tobytes())
    finally:
        numba.set_num_threads(threads)
    assert all(r == runs[0] for r in runs)
    assert len(set(macs)) == 1


# Filters-in-lanes convs of 7 or 5 blocks of 16 filters per group, whose tiles take their blocks 1
# to dense.MAX_BLOCKS at a time (`dense.lane_blocks`: 4 on AVX-512, else 1; forced here, so that every
# count runs on any CPU): 8 chains in runs on a 7 x 7 output (wide last tiles, 4 blocks as two
# passes of 2), 8 short chains (1x1 on 64 channels, and on a 7 x 7 output), one chain; masked,
# each storing by lane bits (the first only where `schedule.dense_cheaper` says so, forced here).
LANE_BLOCK_GEOMS = [
    kc.conv_geom(64, 7, 7, 112, (3, 3), (1, 1), (1, 1, 1, 1)),
    kc.conv_geom(64, 9, 10, 112, (1, 1)),
    kc.conv_geom(64, 7, 7, 112, (1, 1)),
    kc.conv_geom(24, 9, 7, 80, (1, 1)),
    kc.conv_geom(16, 7, 7, 160, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),
]


@pytest.mark.parametrize(
    "geom, mask",
    [(g, m) for g in LANE_BLOCK_GEOMS for m in (None, "random", "blocks")],
    ids=str,
)
@pytest.mark.parametrize("blocks", range(1, dense.MAX_BLOCKS + 1))
def test_lane_blocks_equal_numpy_twin_bit_for_bit(geom, mask, blocks, monkeypatch):
    """Tiles that take 1 - 4 blocks of filters at once store the twin's bits and count its MACs,
    dense and masked (lane bits: random, and with whole blocks masked over whole tiles, so that a
    tile computes only some of its blocks), with a wide last tile where the output is 7 x 7."""
    monkeypatch.setattr(dense, "lane_blocks", lambda n_chains: blocks)
    monkeypatch.setattr(schedule, "SAMPLED_COST", float("inf"))  # lane bits wherever the kernel allows
    x, weights, _, ep = _conv_case((geom, 3, None, 2, True, blocks, False))
    kernel = dispatch.dense_kernel(weights, geom)
    assert kernel in (dense.conv_lanes, dense.conv_short_lanes)
    n_blk = geom.k_out // geom.groups // dense.LANE_K
    unit = dense.work_split(weights, geom, 3, 2)[2]  # as even as the blocks allow, no more passes
    assert unit <= blocks and -(-n_blk // unit) == -(-n_blk // blocks)
    skip, plan = None, None
    if mask is not None:
        rng = np.random.default_rng(blocks)
        skip = rng.random((geom.k_out, geom.oh, geom.ow)) < 0.5
        if mask == "blocks":
            skip[16:32] = True  # a whole block everywhere
            skip[48:64, : geom.oh // 2] = True  # and one over the top rows
        plan = kc.plan_skip(skip, weights, geom)
        assert plan.bits is not None
    _assert_equals_twin(x, weights, geom, plan, skip, ep)


def test_dense_cheaper_chooses_the_dense_kernel_for_dense_masks_only():
    """A conv summed in 8 chains with filters in lanes runs its dense kernel with lane bits when
    nearly every output is needed, and the sampled kernels when few are (on every CPU: 1% and
    95% masked lie either side of 1 - 1 / SAMPLED_COST); a conv of other filter counts never."""
    rng = np.random.default_rng(3)
    geom = LANE_BLOCK_GEOMS[0]
    _, weights, _, _ = _conv_case((geom, 1, None, 0, False, 3, False))
    shape = (geom.k_out, geom.oh, geom.ow)
    few = kc.plan_skip(rng.random(shape) < 0.01, weights, geom)
    many = kc.plan_skip(rng.random(shape) < 0.95, weights, geom)
    assert few.bits is not None and not few.groups
    assert many.bits is None and many.groups
    odd = kc.conv_geom(64, 7, 7, 24, (3, 3), (1, 1), (1, 1, 1, 1))  # 24 filters: tiles of 4
    _, w_odd, _, _ = _conv_case((odd, 1, None, 0, False, 3, False))
    assert kc.plan_skip(np.zeros((24, 7, 7), bool), w_odd, odd).bits is None


def test_dense_cheaper_weighs_the_sampled_kernels_by_plane_size(monkeypatch):
    """With the costs of 4-block tiles (1.8, 2.1 up to 196 positions, 2.6 up to 49), half the
    outputs masked: a 3x3 conv on 7 x 7 and one on 14 x 14 run their dense kernel with lane bits,
    the same conv on 28 x 28 the sampled kernels."""
    monkeypatch.setattr(schedule, "SAMPLED_COST", 1.8)
    monkeypatch.setattr(schedule, "SAMPLED_COST_SMALL", ((196, 2.1), (49, 2.6)))
    assert [schedule.sampled_cost(p) for p in (784, 197, 196, 50, 49)] == [1.8, 1.8, 2.1, 2.1, 2.6]
    rng = np.random.default_rng(5)
    for side, dense_bits in ((7, True), (14, True), (28, False)):
        geom = kc.conv_geom(64, side, side, 64, (3, 3), (1, 1), (1, 1, 1, 1))
        w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
        weights = kc.prepare_conv(w, None, geom)
        assert weights.tile_m == dense.LANE_K  # filters in lanes
        plan = kc.plan_skip(rng.random((64, side, side)) < 0.5, weights, geom)
        assert (plan.bits is not None) == dense_bits, side


# 1x1 convs of one chain on planes of one segment (16 positions), of two that overlap (17), of
# a tile less one position, a whole tile and a tile and one (47 - 49), of several tiles whose
# last segment overlaps (9 x 11, 14 x 14); 1 - 63 channels, 16 - 48 filters; and of 8 chains on
# planes from `DIRECT_CHAINS_FROM` positions on (28 x 28; 29 x 30, its last segment overlapping).
DIRECT_GEOMS = [
    kc.conv_geom(64, 28, 28, 32, (1, 1)),
    kc.conv_geom(72, 29, 30, 16, (1, 1)),
    kc.conv_geom(1, 4, 4, 16, (1, 1)),
    kc.conv_geom(3, 1, 17, 32, (1, 1)),
    kc.conv_geom(24, 1, 47, 16, (1, 1)),
    kc.conv_geom(16, 6, 8, 48, (1, 1)),
    kc.conv_geom(63, 7, 7, 32, (1, 1)),
    kc.conv_geom(24, 9, 11, 32, (1, 1)),
    kc.conv_geom(32, 14, 14, 16, (1, 1)),
]


@pytest.mark.parametrize("residual", [False, True], ids=["own", "residual"])
@pytest.mark.parametrize("geom", DIRECT_GEOMS, ids=str)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "lanes"])
def test_direct_tiles_equal_numpy_twin_bit_for_bit(geom, direct, residual, monkeypatch):
    """`conv_direct` (forced on or off, on any CPU) stores every output once with the twin's
    bits and counts its MACs, over tails of every length, batches of 1 - 3, no activation, ReLU
    and ReLU6; masked, the conv runs the lanes kernel with lane bits either way."""
    monkeypatch.setattr(dense, "DIRECT_TILES", direct)
    monkeypatch.setattr(dispatch, "_CALLS", {})
    _, weights, _, _ = _conv_case((geom, 1, None, 2, residual, 5, False))
    assert dense.direct_tiles(weights, geom) == direct
    for n, act in ((1, 2), (3, 0), (2, 1)):
        x, weights, _, ep = _conv_case((geom, n, None, act, residual, n, False))
        _assert_equals_twin(x, weights, geom, None, None, ep)
    skip = np.random.default_rng(2).random((geom.k_out, geom.oh, geom.ow)) < 0.5
    plan = kc.plan_skip(skip, weights, geom)
    assert plan.bits is not None
    _assert_equals_twin(x, weights, geom, plan, skip, ep)


def test_direct_tiles_take_only_dense_one_chain_1x1_convs_of_stride_1(monkeypatch):
    """Strided, padded, grouped, 8-chain or sub-segment convs, and filter counts off the lanes'
    blocks, keep the kernels they had."""
    monkeypatch.setattr(dense, "DIRECT_TILES", True)
    others = [
        kc.conv_geom(24, 9, 11, 32, (1, 1), (2, 2)),
        kc.conv_geom(24, 9, 11, 32, (1, 1), (1, 1), (1, 1, 1, 1)),
        kc.conv_geom(32, 9, 11, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),
        kc.conv_geom(64, 9, 11, 32, (1, 1)),
        kc.conv_geom(24, 3, 5, 32, (1, 1)),
        kc.conv_geom(24, 9, 11, 24, (1, 1)),
        kc.conv_geom(3, 9, 11, 16, (3, 3), (1, 1), (1, 1, 1, 1)),
    ]
    for geom in others:
        _, weights, _, _ = _conv_case((geom, 1, None, 0, False, 0, False))
        assert not dense.direct_tiles(weights, geom), geom
    for geom in DIRECT_GEOMS:
        _, weights, _, _ = _conv_case((geom, 1, None, 0, False, 0, False))
        assert dense.direct_tiles(weights, geom), geom


@pytest.mark.parametrize("stride", [1, 2], ids=["one-image", "eight-images"])
@pytest.mark.parametrize("masked_", [None, 0.5], ids=["dense", "masked"])
def test_conv_outputs_do_not_depend_on_threads_or_batch(masked_, stride):
    """An image's outputs are the same bits in one thread and in two, alone and in batches of 9
    and 11 (masked at stride 2: eight-image blocks)."""
    rng = np.random.default_rng(11)
    geom = kc.conv_geom(64, 13, 19, 12, (3, 3), (stride, stride), (1, 1, 1, 1))
    assert schedule.eight_images(geom) == (stride == 2)
    x = rng.standard_normal((11, 64, 13, 19), dtype=np.float32)
    weights = kc.prepare_conv(rng.standard_normal((12, 64, 3, 3), dtype=np.float32), None, geom)
    skip = None if masked_ is None else rng.random((12, geom.oh, geom.ow)) < masked_
    runs = []
    threads = numba.get_num_threads()
    try:
        for t, batch in ((1, 1), (threads, 1), (1, 9), (threads, 11)):
            numba.set_num_threads(t)
            out = np.zeros((11, 12, geom.oh, geom.ow), np.float32)
            for i in range(0, 11, batch):
                kc.conv2d(x[i : i + batch], weights, geom, skip, out[i : i + batch])
            runs.append(out.tobytes())
    finally:
        numba.set_num_threads(threads)
    assert all(r == runs[0] for r in runs)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("masked_", [None, 0.3], ids=["dense", "masked"])
def test_nan_and_inf_in_the_input_meet_the_kernels_as_they_meet_the_twin(bad, masked_):
    """Padding taps, padded filters and lanes past a row's end must not multiply a NaN or Inf
    into an output the twin leaves finite."""
    rng = np.random.default_rng(3)
    for geom in (kc.conv_geom(3, 12, 12, 5, (7, 7), (2, 2), (3, 3, 3, 3)), kc.conv_geom(16, 9, 9, 6, (3, 3))):
        x = rng.standard_normal((2, geom.c_in, geom.h, geom.w), dtype=np.float32)
        x[0, 1, 8, 8] = bad
        w = rng.standard_normal((geom.k_out, geom.c_in, geom.kh, geom.kw), dtype=np.float32)
        weights = kc.prepare_conv(w, None, geom)
        skip = None if masked_ is None else rng.random((geom.k_out, geom.oh, geom.ow)) < masked_
        got = np.full((2, geom.k_out, geom.oh, geom.ow), 7.0, np.float32)
        want = got.copy()
        kc.conv2d(x, weights, geom, skip, got)
        rconv.conv2d(x, weights, geom, skip, want)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.nan_to_num(got, nan=0.0), np.nan_to_num(want, nan=0.0))


@given(
    st.integers(1, 4),
    st.integers(1, 40),
    st.integers(1, 30),
    st.sampled_from([None, 0.0, 0.5, 1.0]),
    st.integers(0, 2**31),
)
def test_linear_kernel_equals_numpy_twin_bit_for_bit(n, f, o, masked_, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f), dtype=np.float32)
    w = rng.standard_normal((o, f), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    skip = None if masked_ is None else rng.random(o) < masked_
    got, want = np.full((n, o), 3.0, np.float32), np.full((n, o), 3.0, np.float32)
    assert klin.linear(x, w, b, skip, got) == rlin.linear(x, w, b, skip, want)
    assert got.tobytes() == want.tobytes()
    keep = np.arange(o) if skip is None else np.flatnonzero(~skip)
    threads = np.full((n, o), 3.0, np.float32)  # the parallel version, used from PARALLEL_MIN MACs on
    klin.linear_threads(x.reshape(-1), w, b, keep, threads, klin.work_items(n, keep.size))
    assert threads.tobytes() == want.tobytes()
    if skip is not None:
        dense = np.empty((n, o), np.float32)
        klin.linear(x, w, b, None, dense)
        assert got[:, ~skip].tobytes() == dense[:, ~skip].tobytes()


@pytest.mark.parametrize("masked_", [None, 0.4])
def test_linear_over_runs_of_outputs_and_of_images_equals_numpy_twin(masked_):
    """Work items of ITEM_OUTPUTS outputs by ITEM_IMAGES images, several of each with short last
    ones (an odd image left over in a run, a block of fewer than OUT_BLOCK outputs): each item
    alone and all of them in parallel write the twin's bits."""
    rng = np.random.default_rng(5)
    n, f, o = 2 * klin.ITEM_IMAGES + 3, 37, 2 * klin.ITEM_OUTPUTS + 7  # 3 runs of images
    x = rng.standard_normal((n, f), dtype=np.float32)
    w = rng.standard_normal((o, f), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    skip = None if masked_ is None else rng.random(o) < masked_
    want = np.full((n, o), 3.0, np.float32)
    macs = rlin.linear(x, w, b, skip, want)
    keep = np.arange(o) if skip is None else np.flatnonzero(~skip)
    n_items = klin.work_items(n, keep.size)
    assert keep.size > klin.ITEM_OUTPUTS and keep.size % klin.OUT_BLOCK
    assert n_items == 3 * -(-keep.size // klin.ITEM_OUTPUTS)
    one_by_one, threads = np.full((n, o), 3.0, np.float32), np.full((n, o), 3.0, np.float32)
    for item in range(n_items):
        klin.linear_items(x.reshape(-1), w, b, keep, one_by_one, item, item + 1)
    klin.linear_threads(x.reshape(-1), w, b, keep, threads, n_items)
    assert one_by_one.tobytes() == want.tobytes()
    assert threads.tobytes() == want.tobytes()
    got = np.full((n, o), 3.0, np.float32)
    assert klin.linear(x, w, b, skip, got) == macs
    assert got.tobytes() == want.tobytes()


@given(
    st.integers(1, 3),
    st.one_of(st.integers(1, 20), st.sampled_from([8, 16, 24])),
    st.integers(1, 9),
    st.integers(1, 19),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 2),
    st.integers(0, 2),
    st.sampled_from(["contiguous", "cropped", "strided"]),
    st.integers(0, 2**31),
)
def test_channels_last_copy_equals_numpy_transpose(n, c, h, w, pt, pl, extra_h, extra_w, view, seed):
    """The padded channels-last input of the masked kernels: the interior transposed, every
    other element 0 (the buffer starts as garbage), from a C-contiguous input (8 pixels of 8
    channels at a time where C is a multiple of 8), a cropped view, or a strided one (a strided
    1x1 conv reads every other row and column)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, 2 * h, 2 * w), dtype=np.float32)
    x = x[:, :, ::2, ::2] if view == "strided" else x[:, :, :h, :w]
    if view == "contiguous":
        x = np.ascontiguousarray(x)
    hp, wp = pt + h + extra_h, pl + w + extra_w
    want = np.zeros((n, hp, wp, c), np.float32)
    want[:, pt : pt + h, pl : pl + w] = x.transpose(0, 2, 3, 1)
    for min_floats in (1 << 30, 0):  # in the calling thread, by every thread
        got = np.full((n, hp, wp * c), np.nan, np.float32)
        saved, layouts.PARALLEL_MIN = layouts.PARALLEL_MIN, min_floats
        try:
            layouts.channels_last(x, pt, pl, got)
        finally:
            layouts.PARALLEL_MIN = saved
        assert got.tobytes() == want.reshape(n, hp, wp * c).tobytes()


@given(conv_cases())
def test_dense_input_holds_each_pixel_where_the_tap_offsets_say(case):
    """The dense kernels' input (`to_planes` and `to_blocks` write every float of their copy,
    garbage before; a DIRECT conv reads x itself), the tap offsets and the output positions'
    bases (and segments, where `conv_tiles` reads them) of `prepare_conv`: every output finds
    there the pixel each of its taps reads (0 in the padding), as NumPy's padded input has it.
    The copy is the same in the calling thread (whole planes) and by every thread (whole planes,
    or bands of rows where there are few), and writes no float past its end."""
    geom, n = case[0], case[1]
    x, weights, _, _ = _conv_case(case)
    planes = kc.prepare.planes(weights)
    copies = []
    for threads in (1, max(2, numba.get_num_threads())):
        size = n * dense.planes_floats(planes, geom)
        scratch = np.full(size + 32, np.nan, np.float32)
        xp = dense.planes_input(x, geom, planes, weights.plane_of, scratch, threads)
        copies.append(xp.reshape(n, -1))
        assert planes.kind == layouts.DIRECT or np.isnan(scratch[size:]).all()  # nothing written past the copy
    xp = copies[0]
    assert not np.isnan(xp).any()
    assert xp.tobytes() == copies[1].tobytes()
    hp = max(geom.h + geom.pt, (geom.oh - 1) * geom.sh + (geom.kh - 1) * geom.dh + 1)
    wp = max(geom.w + geom.pl, (geom.ow - 1) * geom.sw + (geom.kw - 1) * geom.dw + 1)
    padded = np.zeros((n, geom.c_in, hp, wp), np.float32)
    padded[:, :, geom.pt : geom.pt + geom.h, geom.pl : geom.pl + geom.w] = x
    cg = geom.c_in // geom.groups
    order, _ = layouts.chain_order(cg * geom.kh * geom.kw, layouts.n_chains(geom))

    def check(base, p):
        """The taps of output p, whose tap (0, 0) lies at base in its channel's plane (group 0)."""
        oy, ox = divmod(p, geom.ow)
        for t, j in enumerate(order):
            fy, rem = divmod(int(j), geom.kw * cg)
            fx, c = divmod(rem, cg)
            for g in range(geom.groups):
                if planes.kind == layouts.BLOCKS:  # channel g: block g // 8, lane g % 8
                    at = (g // 8) * 8 * planes.plane + base + weights.offs[t] + g % 8
                else:
                    at = g * cg * planes.plane + base + weights.offs[t]
                want = padded[:, g * cg + c, oy * geom.sh + fy * geom.dh, ox * geom.sw + fx * geom.dw]
                assert xp[:, at].tobytes() == want.tobytes()

    for p in range(geom.oh * geom.ow):
        check(weights.pbase[p], p)
    if planes.kind != layouts.BLOCKS and weights.tile_m != dense.LANE_K:  # the segments `conv_tiles` reads
        seen = np.zeros(geom.oh * geom.ow, int)
        for seg_x, seg_out, lo, hi in weights.segs:
            seen[seg_out + lo : seg_out + hi] += 1
            for lane in range(lo, hi):
                check(seg_x + lane, seg_out + lane)
        assert np.all(seen == 1)  # every output in exactly one segment


PATHS = {  # (c_in, h, w, k_out, kernel, stride, pads, dilation, groups): the path it takes
    "3x3-chains-tiles4-rows": (16, 9, 11, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "1x1-chains-tiles4-flat": (24, 7, 9, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1-stride2-flat-strided-sampled": (32, 9, 8, 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "stem-7x7-stride2-im2col": (3, 17, 16, 8, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),
    "grouped-dilated-im2col-per-tap": (10, 9, 12, 6, (4, 4), (1, 1), (1, 1, 1, 1), (1, 2), 2),
    "depthwise-3x3-one-chain-runs": (12, 9, 10, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 12),
    "depthwise-3x3-stride2-phases": (6, 11, 12, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6),
    "grouped-8-per-group-in-place-taps": (16, 8, 9, 6, (3, 3), (1, 1), (1, 1, 1, 1), (2, 2), 2),
    "eight-images-3x3-stride2-in-place": (16, 9, 9, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "whole-filter-rows-in-place": (4, 9, 9, 5, (3, 2), (1, 1), (1, 0, 1, 1), (1, 1), 1),
    "one-chain-tiles4": (1, 10, 10, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "chains-tiles1-depthwise-5x5": (3, 9, 9, 3, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 3),
    "depthwise-blocks-of-8": (16, 9, 10, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),
    "depthwise-blocks-stride2": (24, 11, 9, 24, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 24),
    "depthwise-blocks-two-bands": (16, 40, 37, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),
    "depthwise-blocks-stride2-bands": (8, 77, 70, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 8),
    "filters-in-lanes-14-wide": (16, 14, 14, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "filters-in-lanes-strided": (16, 14, 13, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "filters-in-lanes-1x1-stride2-in-place": (16, 9, 8, 16, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "filters-in-lanes-1x1-small-plane-in-place": (24, 2, 3, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("n", [1, 9])
@pytest.mark.parametrize("masked_", [None, 0.4], ids=["dense", "masked"])
@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_path_equals_numpy_twin_bit_for_bit(name, masked_, n):
    c, h, w, k, kernel, stride, pads, dil, groups = PATHS[name]
    geom = kc.conv_geom(c, h, w, k, kernel, stride, pads, dil, groups)
    case = (geom, n, masked_, 1, True, sum(map(ord, name)), False)
    x, weights, skip, ep = _conv_case(case)
    if skip is not None:
        skip[0] = True  # a fully masked filter
        skip[-1] = False  # a filter with nothing masked
    got = np.full((n, k, geom.oh, geom.ow), 7.0, np.float32)
    want = got.copy()
    assert kc.conv2d(x, weights, geom, skip, got, None, ep) == rconv.conv2d(x, weights, geom, skip, want, None, ep)
    assert got.tobytes() == want.tobytes()


def test_batches_run_eight_images_at_a_time_unless_one_image_finds_its_taps_in_l1(monkeypatch):
    """`conv_images8` takes every conv read in place but those whose one image's blocks of 8
    positions share taps that 8 images' would not keep in L1 (3x3 stride 1 on 64 channels), on
    planes of 128 positions or more, with filters of at most ONE_IMAGE_BYTES; a conv read from
    im2col rows always runs image by image."""
    per_image = kc.conv_geom(64, 14, 14, 64, (3, 3), (1, 1), (1, 1, 1, 1))
    cases = {
        per_image: False,
        kc.conv_geom(64, 14, 14, 60, (1, 1)): True,  # no taps shared by neighbours (60: not in lanes)
        kc.conv_geom(64, 14, 14, 64, (3, 3), (2, 2), (1, 1, 1, 1)): True,  # few shared
        kc.conv_geom(16, 28, 28, 16, (3, 3), (1, 1), (1, 1, 1, 1)): True,  # 8 images' taps in L1
        kc.conv_geom(64, 7, 7, 64, (3, 3), (1, 1), (1, 1, 1, 1)): True,  # 49 positions
        kc.conv_geom(512, 14, 14, 512, (3, 3), (1, 1), (1, 1, 1, 1)): True,  # 9.4 MB of filters
        kc.conv_geom(3, 32, 32, 8, (7, 7), (2, 2), (3, 3, 3, 3)): False,  # im2col rows
    }
    for geom, eights in cases.items():
        assert schedule.eight_images(geom) == eights, geom
    calls = []
    monkeypatch.setattr(masked, "conv_images8", lambda *a: calls.append(a) or 0)
    rng = np.random.default_rng(4)
    for geom in list(cases)[:3]:
        w = rng.standard_normal((geom.k_out, geom.c_in, geom.kh, geom.kw), dtype=np.float32)
        weights = kc.prepare_conv(w, None, geom)
        skip = rng.random((geom.k_out, geom.oh, geom.ow)) < 0.9  # few outputs: the sampled kernels
        assert kc.plan_skip(skip, weights, geom).groups, geom
        x = rng.standard_normal((9, geom.c_in, geom.h, geom.w), dtype=np.float32)
        calls.clear()
        kc.conv2d(x, weights, geom, skip, np.zeros((9, geom.k_out, geom.oh, geom.ow), np.float32))
        assert bool(calls) == cases[geom], geom


@pytest.mark.parametrize("c", [3, 700], ids=["one thread", "threads"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["out", "out view"])
def test_global_avg_pool_sums_each_plane_in_row_order(c, contiguous):
    """Each output is its plane's float32 sum in row order (NumPy's add.accumulate, one value after
    another), divided once, bit for bit, on one thread and on several, into a C-contiguous out or
    a strided view of a larger one."""
    assert (2 * c * 3 * 5 >= kpool.PARALLEL_MIN) == (c == 700)
    x = (np.random.default_rng(c).standard_normal((2, c, 3, 5)) * 1e3).astype(np.float32)
    want = np.add.accumulate(x.reshape(2, c, 15), axis=2, dtype=np.float32)[:, :, -1] / np.float32(15)
    whole = np.full((2, c, 1, 2), 7.0, np.float32)
    out = np.empty((2, c, 1, 1), np.float32) if contiguous else whole[:, :, :, :1]
    kpool.global_avg_pool(x, out)
    assert out.reshape(2, c).tobytes() == want.tobytes()
    if not contiguous:
        assert np.all(whole[:, :, :, 1] == 7.0)
