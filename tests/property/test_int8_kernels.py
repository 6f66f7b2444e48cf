"""Every int8 kernel equals its NumPy twin bit for bit; masked runs equal dense runs at the
unmasked elements and leave the masked ones as they were; executed MACs are counted right; an
int32 accumulator that could overflow is refused, naming the layer."""

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref import qprepare as P
from velcro_ref import quant
from velcro_ref.errors import AccumulatorOverflowError
from velcro_ref.kernels.conv import conv_geom
from velcro_ref.kernels.int8 import conv as kconv
from velcro_ref.kernels.int8 import eltwise as kelt
from velcro_ref.kernels.int8 import linear as klin
from velcro_ref.kernels.int8 import pool as kpool
from velcro_ref.kernels.int8 import requant as kreq
from velcro_ref.kernels.int8.simd import TILE_K, TILE_P
from velcro_ref.ops.base import QParams
from velcro_ref.ops.base import window_out_size as pool_out_size
from velcro_ref.reference import int8 as ref

SENTINEL = 77


@contextlib.contextmanager
def threads(n):
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def rand_q(rng, shape, dtype):
    lo, hi = quant.qrange(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def requant_record(rng, mode, x_scale, n_out, per_channel, dtype, acc_std):
    ws = rng.uniform(0.002, 0.02, n_out if per_channel else 1).astype(np.float32)
    ys = np.float32(x_scale * ws.mean() * acc_std * 6.0 / 255.0)
    return P.requant_params(mode, x_scale, ws, ys, int(rand_q(rng, (), dtype)), dtype, n_out)


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    if depthwise:
        groups, cg, kg = draw(st.integers(1, 20)), 1, draw(st.sampled_from([1, 1, 2]))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cg = draw(st.one_of(st.integers(1, 7), st.sampled_from([16, 33])))
        kg = draw(st.one_of(st.integers(1, 5), st.sampled_from([TILE_K, TILE_K + 3, 2 * TILE_K])))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 2 * TILE_P + 5))
    n = draw(st.sampled_from([1, 2, 3]))
    return {
        "geom": conv_geom(groups * cg, h, w, groups * kg, (kh, kw), (sh, sw), pads, (dh, dw), groups),
        "cg": cg,
        "kg": kg,
        "h": h,
        "w": w,
        "n": n,
        "dtype": draw(st.sampled_from([np.uint8, np.int8])),
        "mode": draw(st.sampled_from(quant.REQUANT_MODES)),
        "per_channel": draw(st.booleans()),
        "w_zero_point": draw(st.sampled_from(["zero", "tensor", "channel"])),
        "masked": draw(st.sampled_from([0.0, 0.3, 0.9, 1.0])),
        "seed": draw(st.integers(0, 2**31)),
    }


def build_conv(case):
    g = case["geom"]
    rng = np.random.default_rng(case["seed"])
    k, c = case["kg"] * g.groups, case["cg"] * g.groups
    dtype = case["dtype"]
    x = rand_q(rng, (case["n"], c, case["h"], case["w"]), dtype)
    wq = rng.integers(-127, 128, (k, case["cg"], g.kh, g.kw)).astype(np.int8)
    wz = {"zero": 0, "tensor": int(rng.integers(-20, 20)), "channel": rng.integers(-20, 20, k)}[case["w_zero_point"]]
    bias = rng.integers(-(2**16), 2**16, k).astype(np.int32)
    x_zp = int(rand_q(rng, (), dtype))
    pc = P.prepare_conv("conv", wq, wz, bias, x_zp, dtype, g)
    acc_std = 80.0 * 80.0 * np.sqrt(case["cg"] * g.kh * g.kw)
    rq = requant_record(rng, case["mode"], np.float32(0.02), k, case["per_channel"], dtype, acc_std)
    oh = pool_out_size(case["h"], g.kh, g.sh, g.pt, g.pb, False, g.dh)
    ow = pool_out_size(case["w"], g.kw, g.sw, g.pl, g.pr, False, g.dw)
    skip = None if case["masked"] == 0.0 else rng.random((k, oh, ow)) < case["masked"]
    return x, x_zp, pc, rq, skip, (case["n"], k, oh, ow), dtype


@given(conv_cases())
def test_conv2d_kernel_equals_numpy_twin(case):
    x, x_zp, pc, rq, skip, shape, dtype = build_conv(case)
    g = case["geom"]
    got = np.full(shape, SENTINEL, dtype)
    want = np.full(shape, SENTINEL, dtype)
    macs_got = kconv.conv2d(x, x_zp, pc, g, rq, skip, got)
    macs_want = ref.conv2d(x, x_zp, pc, g, rq, skip, want)
    assert np.array_equal(got, want)
    n_live = shape[1] * shape[2] * shape[3] if skip is None else int((~skip).sum())
    assert macs_got == macs_want == n_live * shape[0] * case["cg"] * g.kh * g.kw


@given(conv_cases())
def test_conv2d_items_shared_with_helper_threads_equal_numpy_twin(case):
    # every conv, however small, handed out to the calling thread and a helper (kernels/int8/workers.py)
    x, x_zp, pc, rq, skip, shape, dtype = build_conv(case)
    got = np.full(shape, SENTINEL, dtype)
    want = np.full(shape, SENTINEL, dtype)
    saved = kconv.PARALLEL_MIN_MACS
    kconv.PARALLEL_MIN_MACS = 0
    try:
        with threads(2):
            macs = kconv.conv2d(x, x_zp, pc, case["geom"], rq, skip, got)
    finally:
        kconv.PARALLEL_MIN_MACS = saved
    assert macs == ref.conv2d(x, x_zp, pc, case["geom"], rq, skip, want)
    assert np.array_equal(got, want)


@given(conv_cases())
def test_masked_conv2d_equals_dense_and_leaves_masked_elements(case):
    case["masked"] = max(case["masked"], 0.3)
    x, x_zp, pc, rq, skip, shape, dtype = build_conv(case)
    g = case["geom"]
    dense = np.zeros(shape, dtype)
    dense_macs = kconv.conv2d(x, x_zp, pc, g, rq, None, dense)
    masked = np.full(shape, SENTINEL, dtype)
    masked_macs = kconv.conv2d(x, x_zp, pc, g, rq, skip, masked)
    assert np.array_equal(masked[:, ~skip], dense[:, ~skip])
    assert np.all(masked[:, skip] == SENTINEL)
    assert dense_macs == shape[0] * shape[1] * shape[2] * shape[3] * case["cg"] * g.kh * g.kw
    assert masked_macs == dense_macs * int((~skip).sum()) // skip.size


def test_conv2d_takes_the_tile_path_with_partial_and_full_tiles():
    # a mixed tile (some masked), a full tile and a masked tile in one output row, checked by hand
    rng = np.random.default_rng(2)
    x = rand_q(rng, (1, 4, 1, 2 * TILE_P + 1), np.uint8)
    wq = rng.integers(-127, 128, (TILE_K, 4, 1, 1)).astype(np.int8)
    geom = conv_geom(4, 1, 2 * TILE_P + 1, TILE_K, (1, 1))
    pc = P.prepare_conv("c", wq, 0, None, 10, np.uint8, geom)
    rq = P.requant_params("ort", 1.0, np.float32(1.0), 1.0, 0, np.uint8, TILE_K)
    rq = rq._replace(scale=np.full(TILE_K, 1 / 2048, np.float32), zero_point=128)
    skip = np.zeros((TILE_K, 1, 2 * TILE_P + 1), bool)
    skip[3, 0, 1] = True  # first tile mixed
    skip[:, 0, TILE_P : 2 * TILE_P] = True  # second tile masked
    out = np.full((1, TILE_K, 1, 2 * TILE_P + 1), SENTINEL, np.uint8)
    macs = kconv.conv2d(x, 10, pc, geom, rq, skip, out)
    acc = np.einsum("cw,kc->kw", x[0, :, 0].astype(np.int64) - 10, wq[:, :, 0, 0].astype(np.int64))
    want = np.clip(np.rint((acc / 2048).astype(np.float32)) + 128, 0, 255)
    assert np.array_equal(out[0, :, 0][~skip[:, 0]], want[~skip[:, 0]])
    assert np.all(out[0, :, 0][skip[:, 0]] == SENTINEL)
    assert macs == int((~skip).sum()) * 4


@given(
    st.integers(1, 4),
    st.integers(1, 300),
    st.integers(1, 40),
    st.sampled_from([np.uint8, np.int8]),
    st.sampled_from(quant.REQUANT_MODES),
    st.sampled_from([None, 0.4, 1.0]),
    st.integers(0, 2**31),
)
def test_linear_kernel_equals_numpy_twin_and_dense(n, f, o, dtype, mode, masked, seed):
    rng = np.random.default_rng(seed)
    x = rand_q(rng, (n, f), dtype)
    wq = rng.integers(-127, 128, (o, f)).astype(np.int8)
    x_zp = int(rand_q(rng, (), dtype))
    pl = P.prepare_linear("fc", wq, rng.integers(-5, 5, o), rng.integers(-(2**16), 2**16, o), x_zp, dtype)
    rq = requant_record(rng, mode, np.float32(0.03), o, True, dtype, 80.0 * 80.0 * np.sqrt(f))
    skip = None if masked is None else rng.random(o) < masked
    got, want = np.full((n, o), SENTINEL, dtype), np.full((n, o), SENTINEL, dtype)
    macs = klin.linear(x, x_zp, pl, rq, skip, got)
    assert macs == ref.linear(x, x_zp, pl, rq, skip, want)
    assert np.array_equal(got, want)
    live = o if skip is None else int((~skip).sum())
    assert macs == n * live * f
    if skip is not None:
        dense = np.zeros((n, o), dtype)
        klin.linear(x, x_zp, pl, rq, None, dense)
        assert np.array_equal(got[:, ~skip], dense[:, ~skip]) and np.all(got[:, skip] == SENTINEL)


scales = st.floats(1e-3, 1.0, allow_nan=False).map(np.float32)


@given(
    st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 7), st.integers(1, 11)),
    st.sampled_from([np.uint8, np.int8]),
    st.tuples(scales, scales, scales),
    st.sampled_from([None, 0.5, 1.0]),
    st.integers(0, 2**31),
)
def test_add_kernel_equals_numpy_twin(shape, dtype, sc, masked, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_q(rng, shape, dtype), rand_q(rng, shape, dtype)
    za, zb, zy = (int(v) for v in rand_q(rng, 3, dtype))
    prm = P.add_params(sc[0], za, sc[1], zb, sc[2], zy, dtype)
    skip = None if masked is None else rng.random(shape[1:]) < masked
    got, want = np.full(shape, SENTINEL, dtype), np.full(shape, SENTINEL, dtype)
    kelt.add(a, b, prm, skip, got)
    ref.add(a, b, prm, skip, want)
    assert np.array_equal(got, want)
    if skip is not None:
        assert np.all(got[:, skip] == SENTINEL)


def test_add_gives_int32_min_for_a_quotient_beyond_int32_as_x86_does():
    # onnxruntime's AVX2 kernel converts with cvtps2dq: out of range gives INT32_MIN, clamped to qmin
    a = np.array([[255, 0, 200]], np.uint8)
    prm = P.add_params(1e3, 0, 1e3, 0, 1e-6, 0, np.uint8)
    got = np.zeros_like(a)
    kelt.add(a, a, prm, None, got)
    assert list(got[0]) == [0, 0, 0]
    want = np.zeros_like(a)
    ref.add(a, a, prm, None, want)
    assert np.array_equal(got, want)


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.sampled_from([np.uint8, np.int8]),
    st.integers(0, 2**31),
)
def test_concat_kernel_equals_numpy_twin(channels, dtype, seed):
    rng = np.random.default_rng(seed)
    xs = [rand_q(rng, (2, c, 3, 4), dtype) for c in channels]
    ys, yz = np.float32(0.05), int(rand_q(rng, (), dtype))
    tables = []
    for i in range(len(xs)):
        same = i == 0
        s = ys if same else np.float32(rng.uniform(0.01, 0.1))
        z = yz if same else int(rand_q(rng, (), dtype))
        name = np.dtype(dtype).name
        tables.append(P.concat_table(QParams(s, z, name), QParams(ys, yz, name)))
    assert tables[0] is None
    got = np.zeros((2, sum(channels), 3, 4), dtype)
    want = np.zeros_like(got)
    kelt.concat(xs, tables, got)
    ref.concat(xs, tables, want)
    assert np.array_equal(got, want)


@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 1),
    st.booleans(),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([np.uint8, np.int8]),
    st.integers(0, 2**31),
)
def test_pool_kernels_equal_numpy_twins(k, s, pad, ceil, h, w, dtype, seed):
    pad = min(pad, k // 2)
    h, w = max(h, k), max(w, k)
    rng = np.random.default_rng(seed)
    x = rand_q(rng, (2, 3, h, w), dtype)
    oh, ow = pool_out_size(h, k, s, pad, pad, ceil), pool_out_size(w, k, s, pad, pad, ceil)
    got, want = np.zeros((2, 3, oh, ow), dtype), np.zeros((2, 3, oh, ow), dtype)
    kpool.max_pool(x, k, k, s, s, pad, pad, got)
    ref.max_pool(x, k, k, s, s, pad, pad, want)
    assert np.array_equal(got, want)
    qmin, qmax = quant.qrange(dtype)
    scale = P.global_avg_pool_scale(0.02, np.float32(rng.uniform(0.005, 0.05)), h * w)
    xz, yz = int(rand_q(rng, (), dtype)), int(rand_q(rng, (), dtype))
    got, want = np.zeros((2, 3, 1, 1), dtype), np.zeros((2, 3, 1, 1), dtype)
    kpool.global_avg_pool(x, xz, scale, yz, qmin, qmax, got)
    ref.global_avg_pool(x, xz, scale, yz, qmin, qmax, want)
    assert np.array_equal(got, want)
    deq = np.float32(rng.uniform(0.005, 0.05)) * np.arange(qmin - xz, qmax - xz + 1).astype(np.float32)
    y_scale = np.float32(rng.uniform(0.002, 0.05))
    for include in (False, True):
        got, want = np.zeros((2, 3, oh, ow), dtype), np.ones((2, 3, oh, ow), dtype)
        kpool.avg_pool(x, deq, -qmin, k, k, s, s, pad, pad, include, y_scale, yz, qmin, qmax, got)
        ref.avg_pool(x, deq, -qmin, k, k, s, s, pad, pad, include, y_scale, yz, qmin, qmax, want)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_an_average_pool_window_summing_inf_and_minus_inf_gives_qmin_in_kernel_and_twin(dtype):
    """Codes that dequantize to +inf and -inf in one window sum to NaN: qmin, as onnxruntime's clamp gives;
    a window of +inf alone saturates to qmax."""
    qmin, qmax = quant.qrange(dtype)
    deq = np.zeros(256, np.float32)
    deq[0], deq[255] = -np.inf, np.inf  # the lowest and highest codes
    x = np.array([[qmin, qmax, qmax], [qmax, qmax, qmax]], dtype).reshape(1, 1, 2, 3)  # windows NaN, +inf
    for twin in (kpool.avg_pool, ref.avg_pool):
        out = np.full((1, 1, 1, 2), 7, dtype)
        twin(x, deq, -qmin, 2, 2, 1, 1, 0, 0, False, np.float32(1.0), 3, qmin, qmax, out)
        assert out.ravel().tolist() == [qmin, qmax]


@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=200),
    st.sampled_from([np.uint8, np.int8]),
    st.floats(1e-3, 10.0).map(np.float32),
    st.integers(-128, 255),
)
def test_quantize_and_dequantize_kernels_equal_numpy_twins(values, dtype, scale, zp):
    qmin, qmax = quant.qrange(dtype)
    zp = min(max(zp, qmin), qmax)
    x = np.array(values + [np.nan, np.inf, -np.inf], np.float32)
    got, want = np.zeros(x.size, dtype), np.zeros(x.size, dtype)
    kreq.quantize_linear(x, scale, zp, qmin, qmax, got)
    ref.quantize_linear(x, scale, zp, qmin, qmax, want)
    assert np.array_equal(got, want)
    back, back_ref = np.zeros(x.size, np.float32), np.zeros(x.size, np.float32)
    kreq.dequantize_linear(got, scale, zp, back)
    ref.dequantize_linear(got, scale, zp, back_ref)
    assert back.tobytes() == back_ref.tobytes()


@given(st.integers(1, 3), st.integers(1, 16), st.integers(1, 50), st.integers(0, 2**31))
def test_requantize_kernel_in_ort_mode_equals_numpy_twin(n, k, p, seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**31), 2**31, (n, k, p)).astype(np.int32)
    acc[0, 0, 0] = -(2**31)
    rq = P.requant_params("ort", 0.02, rng.uniform(0.001, 0.01, k).astype(np.float32), 5.0, 3, np.int8, k)
    got, want = np.zeros((n, k, p), np.int8), np.zeros((n, k, p), np.int8)
    kreq.requantize(acc, rq, got)
    ref.requantize(acc, rq, want)
    assert np.array_equal(got, want)


def test_conv_whose_accumulator_could_overflow_is_refused_naming_the_layer():
    w = np.full((2, 8000, 3, 3), 127, np.int8)  # 72000 taps * 255 * 127 > 2^31
    with pytest.raises(AccumulatorOverflowError, match="node 'layer4.1.conv2'.*2147483647"):
        P.prepare_conv("layer4.1.conv2", w, 0, None, 0, np.uint8, conv_geom(8000, 3, 3, 2, (3, 3), pads=(1, 1, 1, 1)))
    with pytest.raises(AccumulatorOverflowError, match="node 'fc'"):
        P.prepare_linear("fc", w.reshape(2, -1), 0, None, 0, np.uint8)


def test_accumulator_bound_is_exact_at_the_int32_limit():
    # taps * max|x - zp| * max|w| + |bias| = 2^31 - 1 is accepted and computed exactly; one more is refused
    w = np.full((1, 2, 1, 1), 127, np.int8)
    x = np.full((1, 2, 1, 1), 255, np.uint8)
    edge = quant.INT32_MAX - 2 * 255 * 127
    geom = conv_geom(2, 1, 1, 1, (1, 1))
    pc = P.prepare_conv("c", w, 0, np.array([edge]), 0, np.uint8, geom)
    rq = P.requant_params("fixed_point", 1.0, np.float32(1.0), 2.0**23, 0, np.uint8, 1)
    out = np.zeros((1, 1, 1, 1), np.uint8)
    kconv.conv2d(x, 0, pc, geom, rq, None, out)
    assert int(out[0, 0, 0, 0]) == 255  # (2^31 - 1) / 2^23 = 256 - 2^-23 saturates
    with pytest.raises(AccumulatorOverflowError, match="node 'c'"):
        P.prepare_conv("c", w, 0, np.array([edge + 1]), 0, np.uint8, geom)
    with pytest.raises(AccumulatorOverflowError):
        P.prepare_conv("c", -w, 0, np.array([-edge - 1]), 0, np.uint8, geom)


def test_accumulator_bound_takes_the_input_farther_from_its_zero_point():
    """int8 input of zero point 100: x - zp reaches -128 - 100 = -228, not only 127 - 100 = 27, so
    two taps of weight 127 give |acc| up to 2 x 228 x 127 = 57912 before the bias (docs/int8.md:
    max(x_zp - qmin, qmax - x_zp)). Taking only qmax - x_zp let a bias of 2^31 - 1 - 2 x 27 x 127
    through, whose accumulator overflows int32 at x = -128."""
    assert int(quant.accumulator_bound(np.array([[127]]), 0, 100, "int8")[0]) == 127 * 228
    assert int(quant.accumulator_bound(np.array([[127]]), 0, -100, "int8")[0]) == 127 * 227
    w = np.full((1, 2, 1, 1), 127, np.int8)
    geom = conv_geom(2, 1, 1, 1, (1, 1))
    edge = quant.INT32_MAX - 2 * 228 * 127
    P.prepare_conv("c", w, 0, np.array([-edge]), 100, np.int8, geom)  # at x = -128: acc = -(2^31 - 1)
    for bias in (edge + 1, -edge - 1, quant.INT32_MAX - 2 * 27 * 127):
        with pytest.raises(AccumulatorOverflowError, match="node 'c'"):
            P.prepare_conv("c", w, 0, np.array([bias]), 100, np.int8, geom)
