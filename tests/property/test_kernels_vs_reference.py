"""Every Numba kernel equals its NumPy twin over shapes, strides, padding, dilation and groups."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref.kernels import conv2d as kconv
from velcro_ref.kernels import linear as klin
from velcro_ref.kernels import overwrite as kover
from velcro_ref.kernels import pool as kpool
from velcro_ref.ops.base import window_out_size as pool_out_size
from velcro_ref.reference import conv2d as rconv
from velcro_ref.reference import linear as rlin
from velcro_ref.reference import overwrite as rover
from velcro_ref.reference import pool as rpool


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.one_of(st.integers(1, 6), st.sampled_from([16, 32])))  # 16, 32: in-place masked paths
    kg = draw(st.integers(1, 5))
    depthwise = draw(st.booleans())
    if depthwise:
        cg, kg, groups = 1, draw(st.integers(1, 2)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 12))
    n = draw(st.sampled_from([1, 2, 11, 70]))  # 11: eight images per block and 3 alone; 70: SIMD lanes
    seed = draw(st.integers(0, 2**31))
    masked = draw(st.sampled_from([None, 0.0, 0.3, 0.8, 1.0]))
    return n, groups, cg, kg, kh, kw, sh, sw, dh, dw, pads, h, w, seed, masked


@given(conv_cases(), st.sampled_from([None, 64]))
def test_conv2d_kernel_equals_numpy_twin(case, chunk_floats):
    n, groups, cg, kg, kh, kw, sh, sw, dh, dw, (pt, pl, pb, pr), h, w, seed, masked = case
    rng = np.random.default_rng(seed)
    c, k = cg * groups, kg * groups
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, cg, kh, kw), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    oh = pool_out_size(h, kh, sh, pt, pb, False, dh)
    ow = pool_out_size(w, kw, sw, pl, pr, False, dw)
    skip = None if masked is None else rng.random((k, oh, ow)) < masked
    got = np.full((n, k, oh, ow), 7.0, np.float32)
    want = np.full((n, k, oh, ow), 7.0, np.float32)
    saved = kconv.CHUNK_FLOATS
    try:
        if chunk_floats:  # tiny scratch: one image per chunk
            kconv.CHUNK_FLOATS = chunk_floats
        m_got = kconv.conv2d(x, wt, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, got)
    finally:
        kconv.CHUNK_FLOATS = saved
    m_want = rconv.conv2d(x, wt, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, want)
    assert m_got == m_want
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale * max(1, cg * kh * kw) ** 0.5)
    if skip is not None:
        assert np.all(got[:, skip] == 7.0)  # masked elements are never written


def test_conv2d_direct_path_equals_im2col_path():
    # a 3x3 depthwise conv (9 taps) takes the direct loop; give it a grouped twin that takes im2col
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 9, 9), dtype=np.float32)
    wt = rng.standard_normal((4, 1, 3, 3), dtype=np.float32)
    b = np.zeros(4, np.float32)
    direct = np.empty((2, 4, 9, 9), np.float32)
    kconv.conv2d(x, wt, b, 1, 1, 1, 1, 1, 1, 1, 1, 4, None, direct)
    # the same conv as a dense conv with block-diagonal weights (36 taps -> im2col path)
    full = np.zeros((4, 4, 3, 3), np.float32)
    for i in range(4):
        full[i, i] = wt[i, 0]
    via_gemm = np.empty_like(direct)
    kconv.conv2d(x, full, b, 1, 1, 1, 1, 1, 1, 1, 1, 1, None, via_gemm)
    np.testing.assert_allclose(direct, via_gemm, atol=1e-5)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k // 2)) for k in (kh, kw, kh, kw)]
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 11))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 11))
    return kh, kw, sh, sw, pads, h, w, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**31))


@given(pool_cases())
def test_pool_kernels_equal_numpy_twins(case):
    kh, kw, sh, sw, (pt, pl, pb, pr), h, w, ceil_mode, include_pad, seed = case
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w), dtype=np.float32)
    if seed % 3 == 0:  # a NaN wins every window it is in
        x.flat[seed % x.size] = np.nan
    oh = pool_out_size(h, kh, sh, pt, pb, ceil_mode)
    ow = pool_out_size(w, kw, sw, pl, pr, ceil_mode)
    got, want = np.empty((2, 3, oh, ow), np.float32), np.empty((2, 3, oh, ow), np.float32)
    kpool.max_pool(x, kh, kw, sh, sw, pt, pl, got)
    rpool.max_pool(x, kh, kw, sh, sw, pt, pl, want)
    np.testing.assert_array_equal(got, want)
    kpool.avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, include_pad, got)
    rpool.avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, include_pad, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g1, g2 = np.empty((2, 3, 1, 1), np.float32), np.empty((2, 3, 1, 1), np.float32)
    kpool.global_avg_pool(x, g1)
    rpool.global_avg_pool(x, g2)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


@given(
    st.integers(1, 4),
    st.integers(1, 40),
    st.integers(1, 30),
    st.sampled_from([None, 0.0, 0.5, 1.0]),
    st.integers(0, 2**31),
)
def test_linear_kernel_equals_numpy_twin(n, f, o, masked, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f), dtype=np.float32)
    w = rng.standard_normal((o, f), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    skip = None if masked is None else rng.random(o) < masked
    got, want = np.full((n, o), 3.0, np.float32), np.full((n, o), 3.0, np.float32)
    assert klin.linear(x, w, b, skip, got) == rlin.linear(x, w, b, skip, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(f))


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("groups", [1, 2])
def test_masked_conv_paths_equal_numpy_twin(n, groups):
    # taps = 4 * 9 = 36 take the im2col paths: one image (runs) and a batch (one GEMM per position)
    rng = np.random.default_rng(n + groups)
    x = rng.standard_normal((n, 4 * groups, 7, 6), dtype=np.float32)
    wt = rng.standard_normal((3 * groups, 4, 3, 3), dtype=np.float32)
    b = rng.standard_normal(3 * groups, dtype=np.float32)
    skip = rng.random((3 * groups, 7, 6)) < 0.4
    skip[0] = True  # a fully masked channel
    skip[1] = False  # a channel with nothing masked
    got, want = np.full((n, 3 * groups, 7, 6), 7.0, np.float32), np.full((n, 3 * groups, 7, 6), 7.0, np.float32)
    assert kconv.conv2d(x, wt, b, 1, 1, 1, 1, 1, 1, 1, 1, groups, skip, got) == rconv.conv2d(
        x, wt, b, 1, 1, 1, 1, 1, 1, 1, 1, groups, skip, want
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("n", [1, 9])
@pytest.mark.parametrize(
    "groups, cg, kh, stride, pad, dil",
    [
        (1, 16, 3, 1, 1, 1),
        (2, 16, 3, 1, 1, 1),
        (1, 32, 3, 2, 1, 2),
        (1, 16, 1, 2, 0, 1),
        (1, 16, 5, 1, 2, 1),
        (1, 3, 7, 2, 3, 1),
        (1, 4, 3, 2, 1, 1),
    ],
    ids=["row-runs", "grouped", "strided-dilated", "1x1-stride2", "5x5", "stem-7x7-stride2", "3x3-stride2-4ch"],
)
def test_masked_in_place_paths_equal_numpy_twin(n, groups, cg, kh, stride, pad, dil):
    """The sampled kernels read taps from the padded channels-last input, a filter row (one
    channel group, unit dilation) or a tap at a time, with a multiple of 16 channels per group;
    a strided conv with few channels does so after `_space_to_depth` (the last two cases)."""
    rng = np.random.default_rng(n + groups + cg + kh)
    k = 5 * groups
    x = rng.standard_normal((n, cg * groups, 9, 8), dtype=np.float32)
    wt = rng.standard_normal((k, cg, kh, kh), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    oh = pool_out_size(9, kh, stride, pad, pad, False, dil)
    ow = pool_out_size(8, kh, stride, pad, pad, False, dil)
    skip = rng.random((k, oh, ow)) < 0.5
    skip[0] = True  # a fully masked channel
    skip[1] = False  # a channel with nothing masked
    got, want = np.full((n, k, oh, ow), 7.0, np.float32), np.full((n, k, oh, ow), 7.0, np.float32)
    args = (stride, stride, pad, pad, pad, pad, dil, dil, groups, skip)
    if cg % 16:  # the case must reach the space-to-depth path, not im2col rows
        assert kconv._space_to_depth(x, wt, (cg, kh, kh, stride, stride, pad, pad, dil, dil, oh, ow)) is not None
    assert kconv.conv2d(x, wt, b, *args, got) == rconv.conv2d(x, wt, b, *args, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(cg * kh * kh))
    assert np.all(got[:, skip] == 7.0)


@given(
    st.integers(1, 3),
    st.integers(1, 20),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 2),
    st.integers(0, 2),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_channels_last_copy_equals_numpy_transpose(n, c, h, w, pt, pl, extra_h, extra_w, strided, seed):
    """The padded channels-last input of the masked kernels: the interior transposed, every
    other element 0 (the buffer starts as garbage), also from a strided view (a strided 1x1
    conv reads every other row and column)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, 2 * h, 2 * w), dtype=np.float32)
    x = x[:, :, ::2, ::2] if strided else x[:, :, :h, :w]
    hp, wp = pt + h + extra_h, pl + w + extra_w
    want = np.zeros((n, hp, wp, c), np.float32)
    want[:, pt : pt + h, pl : pl + w] = x.transpose(0, 2, 3, 1)
    got = np.full((n, hp, wp * c), np.nan, np.float32)
    kconv.channels_last(x, pt, pl, got)
    assert got.tobytes() == want.reshape(n, hp, wp * c).tobytes()


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_space_to_depth_meets_nan_and_inf_as_the_twin_does(bad):
    """The stem's 7x7 filter padded to 8x8 blocks multiplies zero weights by pixels no output
    of the conv reads; with a NaN/Inf in the input the kernel must not turn 0 * Inf into NaN
    where the twin has a finite output."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 12, 12), dtype=np.float32)
    x[0, 1, 8, 8] = bad  # padded (11, 11): under the zero taps of output (2, 2) and real taps of others
    wt = rng.standard_normal((5, 3, 7, 7), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    skip = rng.random((5, 6, 6)) < 0.3
    got, want = np.full((2, 5, 6, 6), 7.0, np.float32), np.full((2, 5, 6, 6), 7.0, np.float32)
    args = (2, 2, 3, 3, 3, 3, 1, 1, 1, skip)
    assert kconv.conv2d(x, wt, b, *args, got) == rconv.conv2d(x, wt, b, *args, want)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


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


def test_filter_rows_of_the_wrong_width_are_refused():
    """The SIMD kernels step through `w_taps` rows by its width: rows that are not
    `taps_last(w)`'s (padded to a multiple of 16) would read past the array."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6), dtype=np.float32)
    wt = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    b = np.zeros(4, np.float32)
    skip = rng.random((4, 6, 6)) < 0.5
    unpadded = np.ascontiguousarray(wt.transpose(0, 2, 3, 1).reshape(4, 27))
    with pytest.raises(ValueError, match="taps_last"):
        kconv.conv2d(x, wt, b, 1, 1, 1, 1, 1, 1, 1, 1, 1, skip, np.empty((2, 4, 6, 6), np.float32), None, unpadded)


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
