"""Golden: single-op int8 ONNX models built with onnx.helper, run in onnxruntime's CPU provider,
against the int8 kernels with `ort` requantization: every output element identical.

onnxruntime's QLinearConv and QGemm with uint8 activations, on x86 CPUs without VNNI (this
machine's AVX2), sum adjacent u8 x s8 products in int16 with saturation (vpmaddubsw) unless the
session sets "session.x64quantprecision" to "1" (exact int32 sums, docs/int8.md); with int8
activations they are exact by default, and that option makes the session fail to load. The
sessions here set the option for uint8 activations only;
`test_qlinearconv_default_session_matches_where_pairs_fit_int16` checks the default session on
data whose pair sums fit in int16, where both agree.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from robust_util import save_onnx

from velcro_ref import qprepare as P
from velcro_ref.engine import Model
from velcro_ref.kernels.conv import conv_geom
from velcro_ref.kernels.int8 import conv as kconv
from velcro_ref.kernels.int8 import eltwise as kelt
from velcro_ref.kernels.int8 import linear as klin
from velcro_ref.kernels.int8 import pool as kpool
from velcro_ref.onnx_import import import_onnx
from velcro_ref.ops.base import QParams
from velcro_ref.ops.base import window_out_size as pool_out_size

ONNX_TYPE = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def session(nodes, inputs, inits, precise=None, opset=13):
    """An onnxruntime session of a graph whose output "y" has the type of its first input; exact
    int32 sums (x64quantprecision) for uint8 inputs unless `precise` says otherwise."""
    if precise is None:
        precise = inputs[0].type.tensor_type.elem_type == TensorProto.UINT8
    y = helper.make_tensor_value_info("y", inputs[0].type.tensor_type.elem_type, None)
    graph = helper.make_graph(nodes, "g", inputs, [y])
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items())
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)], ir_version=8
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if precise:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def tensor_in(name, array):
    return helper.make_tensor_value_info(name, ONNX_TYPE[array.dtype], list(array.shape))


def rand_q(rng, shape, dtype, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


def output_scale(rng, acc_std):
    """A y scale that spreads outputs over the 8-bit range (a few saturate)."""
    return np.float32(acc_std * 6.0 / 255.0 * rng.uniform(0.7, 1.3))


def conv_case(rng, dtype, per_channel, groups, cg, kg, kh, kw, stride, pads, dilation, n=2, h=11, w=9, x_hi=None):
    k = kg * groups
    c = cg * groups
    x = rand_q(rng, (n, c, h, w), dtype, hi=x_hi)
    wq = rng.integers(-127, 128, (k, cg, kh, kw)).astype(np.int8)
    bias = rng.integers(-20000, 20000, k).astype(np.int32)
    x_scale = np.float32(rng.uniform(0.005, 0.05))
    w_scale = rng.uniform(0.001, 0.02, k if per_channel else 1).astype(np.float32)
    x_zp = int(rand_q(rng, (), dtype))
    y_zp = int(rand_q(rng, (), dtype))
    acc_std = 80.0 * 70.0 * np.sqrt(cg * kh * kw)
    y_scale = np.float32(x_scale * w_scale.mean() * acc_std * 6.0 / 255.0)
    return x, wq, bias, x_scale, w_scale, x_zp, y_scale, y_zp, (kh, kw, stride, pads, dilation, groups)


def run_conv_both(x, wq, bias, x_scale, w_scale, x_zp, y_scale, y_zp, g, precise=None):
    kh, kw, stride, pads, dilation, groups = g
    dtype = x.dtype.type
    k = wq.shape[0]
    per_channel = w_scale.size > 1
    inits = {
        "xs": x_scale,
        "xz": np.array(x_zp, dtype),
        "w": wq,
        "ws": w_scale if per_channel else w_scale[0],
        "wz": np.zeros(k, np.int8) if per_channel else np.int8(0),
        "ys": y_scale,
        "yz": np.array(y_zp, dtype),
        "b": bias,
    }
    node = helper.make_node(
        "QLinearConv",
        ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
        ["y"],
        kernel_shape=[kh, kw],
        strides=[stride, stride],
        pads=list(pads),
        dilations=[dilation, dilation],
        group=groups,
    )
    want = session([node], [tensor_in("x", x)], inits, precise).run(None, {"x": x})[0]
    geom = conv_geom(*x.shape[1:], k, (kh, kw), (stride, stride), pads, (dilation, dilation), groups)
    pc = P.prepare_conv("conv", wq, 0, bias, x_zp, dtype, geom)
    rq = P.requant_params("ort", x_scale, w_scale, y_scale, y_zp, dtype, k)
    oh = pool_out_size(x.shape[2], kh, stride, pads[0], pads[2], False, dilation)
    ow = pool_out_size(x.shape[3], kw, stride, pads[1], pads[3], False, dilation)
    got = np.zeros((x.shape[0], k, oh, ow), dtype)
    kconv.conv2d(x, x_zp, pc, geom, rq, None, got)
    return got, want


CONV_SHAPES = [
    # groups, cg, kg, kh, kw, stride, pads (t, l, b, r), dilation
    (1, 16, 24, 3, 3, 1, (1, 1, 1, 1), 1),  # dense 3x3
    (1, 3, 8, 7, 7, 2, (3, 3, 3, 3), 1),  # a stem
    (1, 32, 20, 1, 1, 2, (0, 0, 0, 0), 1),  # strided 1x1
    (1, 5, 7, 3, 2, 1, (0, 1, 2, 0), 2),  # odd channels, asymmetric pads, dilation
    (4, 6, 3, 3, 3, 1, (1, 1, 1, 1), 1),  # grouped
    (12, 1, 1, 3, 3, 1, (1, 1, 1, 1), 1),  # depthwise
    (12, 1, 1, 3, 3, 2, (1, 1, 1, 1), 1),  # depthwise, strided
    (6, 1, 2, 3, 3, 1, (1, 0, 1, 2), 1),  # depthwise with a channel multiplier
]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_qlinearconv_matches_onnxruntime(dtype, per_channel, shape):
    rng = np.random.default_rng(hash((np.dtype(dtype).name, per_channel, shape)) % 2**32)
    groups, cg, kg, kh, kw, stride, pads, dilation = shape
    got, want = run_conv_both(*conv_case(rng, dtype, per_channel, groups, cg, kg, kh, kw, stride, pads, dilation))
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} differ"
    # the outputs cover the range, with some saturation but not all of it
    assert len(np.unique(want)) > 40


def test_qlinearconv_default_session_matches_where_pairs_fit_int16():
    # x and its zero point (the padding) <= 128, |w| <= 127: two products sum to at most
    # 2 * 128 * 127 = 32512 < 32768
    rng = np.random.default_rng(7)
    x, wq, bias, xs, ws, xz, ys, yz, g = conv_case(rng, np.uint8, True, 1, 32, 32, 3, 3, 1, (1, 1, 1, 1), 1)
    x = rand_q(rng, x.shape, np.uint8, lo=0, hi=128)
    xz = 100
    got, want = run_conv_both(x, wq, bias, xs, ws, xz, ys, yz, g, precise=False)
    assert np.array_equal(got, want)


def test_qlinearconv_rounds_ties_half_to_even():
    # x_scale * w_scale / y_scale = 0.5 exactly: an odd accumulator lands on a tie
    rng = np.random.default_rng(3)
    x = rand_q(rng, (1, 4, 6, 6), np.uint8, lo=0, hi=20)
    wq = rng.integers(-3, 4, (8, 4, 1, 1)).astype(np.int8)
    bias = rng.integers(-50, 50, 8).astype(np.int32)
    geom = (1, 1, 1, (0, 0, 0, 0), 1, 1)
    got, want = run_conv_both(x, wq, bias, np.float32(0.5), np.ones(1, np.float32), 0, np.float32(1.0), 100, geom)
    acc = np.einsum("nchw,kc->nkhw", x.astype(np.int64), wq[:, :, 0, 0].astype(np.int64)) + bias[None, :, None, None]
    assert (acc % 2 == 1).sum() > 50  # many ties
    assert np.array_equal(want, (np.rint(acc / 2) + 100).astype(np.uint8))  # half to even, not half up
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qgemm_matches_onnxruntime(dtype, per_channel):
    # the com.microsoft QGemm (transB = 1, int32 bias) that onnxruntime makes of a quantized Gemm
    rng = np.random.default_rng(11 + per_channel)
    n, f, o = 3, 200, 37
    x = rand_q(rng, (n, f), dtype)
    wq = rng.integers(-127, 128, (o, f)).astype(np.int8)
    bias = rng.integers(-30000, 30000, o).astype(np.int32)
    xs, xz, yz = np.float32(0.02), int(rand_q(rng, (), dtype)), int(rand_q(rng, (), dtype))
    ws = rng.uniform(0.002, 0.01, o if per_channel else 1).astype(np.float32)
    ys = np.float32(xs * ws.mean() * 80 * 70 * np.sqrt(f) * 6 / 255)
    inits = {
        "as": xs,
        "az": np.array(xz, dtype),
        "b": wq,
        "bs": ws if per_channel else ws[0],
        "bz": np.zeros(o, np.int8) if per_channel else np.int8(0),
        "c": bias,
        "ys": ys,
        "yz": np.array(yz, dtype),
    }
    node = helper.make_node(
        "QGemm", ["x", "as", "az", "b", "bs", "bz", "c", "ys", "yz"], ["y"], domain="com.microsoft", transB=1
    )
    want = session([node], [tensor_in("x", x)], inits).run(None, {"x": x})[0]
    pl = P.prepare_linear("fc", wq, 0, bias, xz, dtype)
    rq = P.requant_params("ort", xs, ws, ys, yz, dtype, o)
    got = np.zeros((n, o), dtype)
    assert klin.linear(x, xz, pl, rq, None, got) == n * o * f
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (1, 3, 7, 1), (1, 16, 14, 14)])
def test_qlinearadd_matches_onnxruntime(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    a, b = rand_q(rng, shape, dtype), rand_q(rng, shape, dtype)
    sa, sb, sy = (np.float32(v) for v in rng.uniform(0.01, 0.1, 3))
    za, zb, zy = (int(v) for v in rand_q(rng, 3, dtype))
    inits = {"as": sa, "bs": sb, "ys": sy}
    inits.update(az=np.array(za, dtype), bz=np.array(zb, dtype), yz=np.array(zy, dtype))
    node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], domain="com.microsoft")
    want = session([node], [tensor_in("a", a), tensor_in("b", b)], inits).run(None, {"a": a, "b": b})[0]
    got = np.zeros(shape, dtype)
    kelt.add(a, b, P.add_params(sa, za, sb, zb, sy, zy, dtype), None, got)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinearadd_matches_onnxruntime_on_every_pair_of_values(dtype):
    # all 256 x 256 input pairs; with these scales and zero points a float32 sum rounded step by
    # step (no fused multiply-add) lands on ties onnxruntime does not see and differs from it
    codes = np.arange(256, dtype=np.uint8).view(np.dtype(dtype))
    a, b = (v.reshape(1, 256, 16, 16) for v in np.meshgrid(codes, codes))
    sa, sb, sy = np.float32(0.051), np.float32(0.037), np.float32(0.062)
    za, zb, zy = (17, 140, 90) if dtype is np.uint8 else (17, -40, 90)
    inits = {"as": sa, "bs": sb, "ys": sy}
    inits.update(az=np.array(za, dtype), bz=np.array(zb, dtype), yz=np.array(zy, dtype))
    node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], domain="com.microsoft")
    want = session([node], [tensor_in("a", a), tensor_in("b", b)], inits).run(None, {"a": a, "b": b})[0]
    got = np.zeros(a.shape, dtype)
    kelt.add(a, b, P.add_params(sa, za, sb, zb, sy, zy, dtype), None, got)
    assert np.array_equal(got, want)
    f32 = np.float32
    ra, rb = f32(sa / sy), f32(sb / sy)
    plain = (f32(zy) - (ra * f32(za) + rb * f32(zb)) + a.astype(f32) * ra) + b.astype(f32) * rb
    lo, hi = P.quant.qrange(dtype)
    assert not np.array_equal(np.clip(np.rint(plain), lo, hi).astype(dtype), want)


def test_qlinearadd_rounds_its_float32_sum_half_to_even():
    # scales 1, 1, 2: (a + b) / 2 lands on ties that round half to even
    a = np.arange(0, 64, dtype=np.uint8).reshape(1, 4, 4, 4)
    b = (np.arange(64, dtype=np.uint8) * 3 % 64).astype(np.uint8).reshape(1, 4, 4, 4)
    one, two = np.float32(1), np.float32(2)
    inits = {"as": one, "az": np.uint8(0), "bs": one, "bz": np.uint8(0), "ys": two, "yz": np.uint8(0)}
    node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], domain="com.microsoft")
    want = session([node], [tensor_in("a", a), tensor_in("b", b)], inits).run(None, {"a": a, "b": b})[0]
    assert np.array_equal(want, np.rint((a.astype(np.int64) + b) / 2).astype(np.uint8))
    got = np.zeros_like(a)
    kelt.add(a, b, P.add_params(one, 0, one, 0, two, 0, np.uint8), None, got)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("hw", [(7, 7), (1, 1), (13, 5)])
def test_qlinear_global_average_pool_matches_onnxruntime(dtype, hw):
    rng = np.random.default_rng(hw[0] * 31 + hw[1])
    x = rand_q(rng, (2, 19, *hw), dtype)
    xs, ys = np.float32(0.03), np.float32(0.011)
    xz, yz = int(rand_q(rng, (), dtype)), int(rand_q(rng, (), dtype))
    inits = {"xs": xs, "xz": np.array(xz, dtype), "ys": ys, "yz": np.array(yz, dtype)}
    node = helper.make_node(
        "QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", channels_last=0
    )
    want = session([node], [tensor_in("x", x)], inits).run(None, {"x": x})[0]
    got = np.zeros((2, 19, 1, 1), dtype)
    scale = P.global_avg_pool_scale(xs, ys, hw[0] * hw[1])
    kpool.global_avg_pool(x, xz, scale, yz, *P.quant.qrange(dtype), got)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinearconcat_matches_onnxruntime(dtype):
    rng = np.random.default_rng(5)
    xs = [rand_q(rng, (2, c, 5, 6), dtype) for c in (3, 4, 2)]
    scales = [np.float32(0.02), np.float32(0.035), np.float32(0.05)]  # the last one is the output's
    zps = [int(v) for v in rand_q(rng, 2, dtype)] + [7]
    ys, yz = np.float32(0.05), 7
    inits = {"ys": ys, "yz": np.array(yz, dtype)}
    ins = ["ys", "yz"]
    for i in range(3):
        inits[f"s{i}"], inits[f"z{i}"] = scales[i], np.array(zps[i], dtype)
        ins += [f"x{i}", f"s{i}", f"z{i}"]
    node = helper.make_node("QLinearConcat", ins, ["y"], domain="com.microsoft", axis=1)
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    want = session([node], [tensor_in(k, v) for k, v in feeds.items()], inits).run(None, feeds)[0]
    name = np.dtype(dtype).name
    tables = [P.concat_table(QParams(scales[i], zps[i], name), QParams(ys, yz, name)) for i in range(3)]
    assert tables[2] is None and tables[0] is not None
    got = np.zeros((2, 9, 5, 6), dtype)
    kelt.concat(xs, tables, got)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("k, s, pad, ceil", [(3, 2, 1, False), (3, 1, 1, True), (2, 2, 0, True), (3, 2, 0, True)])
def test_maxpool_on_8bit_matches_onnxruntime(dtype, k, s, pad, ceil):
    rng = np.random.default_rng(k * 10 + s)
    x = rand_q(rng, (2, 5, 13, 10), dtype)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [pad] * 4, "ceil_mode": int(ceil)}
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    want = session([node], [tensor_in("x", x)], {}, opset=12).run(None, {"x": x})[0]
    oh = pool_out_size(13, k, s, pad, pad, ceil)
    ow = pool_out_size(10, k, s, pad, pad, ceil)
    got = np.zeros((2, 5, oh, ow), dtype)
    kpool.max_pool(x, k, k, s, s, pad, pad, got)
    assert np.array_equal(got, want)


@settings(max_examples=150)
@given(
    st.sampled_from([np.uint8, np.int8]),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_qlinear_average_pool_matches_onnxruntime(dtype, kh, kw, sh, sw, pt, pl, include, ceil, seed):
    """QLinearAveragePool with drawn window, padding, count_include_pad and ceil_mode, against the
    int8 kernel; a window as large as the input without padding is onnxruntime's global pool (the
    importer makes it a qglobal_avg_pool), not drawn here."""
    pt, pl = min(pt, kh // 2), min(pl, kw // 2)
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(kh, kh + 9)), int(rng.integers(kw, kw + 9))
    x = rand_q(rng, (2, 3, h, w), dtype)
    xs, ys = np.float32(rng.uniform(0.005, 0.05)), np.float32(rng.uniform(0.002, 0.05))
    xz, yz = int(rand_q(rng, (), dtype)), int(rand_q(rng, (), dtype))
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [pt, pl, pt, pl]}
    attrs.update(count_include_pad=int(include), ceil_mode=int(ceil))
    inits = {"xs": xs, "xz": np.array(xz, dtype), "ys": ys, "yz": np.array(yz, dtype)}
    node = helper.make_node("QLinearAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", **attrs)
    want = session([node], [tensor_in("x", x)], inits).run(None, {"x": x})[0]
    oh, ow = pool_out_size(h, kh, sh, pt, pt, ceil), pool_out_size(w, kw, sw, pl, pl, ceil)
    assert want.shape == (2, 3, oh, ow)
    qmin, qmax = P.quant.qrange(dtype)
    deq = xs * np.arange(qmin - xz, qmax - xz + 1).astype(np.float32)
    got = np.zeros((2, 3, oh, ow), dtype)
    kpool.avg_pool(x, deq, -qmin, kh, kw, sh, sw, pt, pl, include, ys, yz, qmin, qmax, got)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("kernel, pads", [((5, 6), (0, 0, 0, 0)), ((5, 6), (1, 1, 1, 1)), ((3, 3), (0, 0, 0, 0))])
def test_imported_qlinear_average_pool_runs_as_onnxruntime_does(tmp_path, dtype, kernel, pads):
    """Imported between QuantizeLinear and DequantizeLinear: a window the size of the input without
    padding becomes a qglobal_avg_pool (onnxruntime's global-pool arithmetic), any other a
    qavg_pool; the engine's output equals onnxruntime's."""
    zp, zp_y = (128, 100) if dtype == np.uint8 else (0, -7)
    inits = [
        numpy_helper.from_array(np.float32(0.021), "xs"),
        numpy_helper.from_array(np.array(zp, dtype), "xz"),
        numpy_helper.from_array(np.float32(0.013), "ys"),
        numpy_helper.from_array(np.array(zp_y, dtype), "yz"),
    ]
    attrs = {"kernel_shape": list(kernel), "pads": list(pads), "count_include_pad": 1}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quantize_x"),
        helper.make_node(
            "QLinearAveragePool",
            ["xq", "xs", "xz", "ys", "yz"],
            ["yq"],
            name="pool_quant",
            domain="com.microsoft",
            **attrs,
        ),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dequantize_y"),
    ]
    path = save_onnx(tmp_path / "pool.onnx", nodes, inits, ["N", 4, 5, 6], (("", 13), ("com.microsoft", 1)), "pool")
    x = np.random.default_rng(3).uniform(-2, 2, (3, 4, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph = import_onnx(path)
    ops = {n.op for n in graph.nodes}
    assert ("qglobal_avg_pool" in ops) == (kernel == (5, 6) and not any(pads))
    assert ("qavg_pool" in ops) != ("qglobal_avg_pool" in ops)
    assert np.array_equal(Model(graph).run(x), want)


def test_a_qavg_pool_of_one_whole_input_window_exports_as_a_window_onnxruntime_runs_alike(tmp_path):
    """kernel 4 x 4, stride 4, end pads 1 under ceil_mode on a 4 x 4 input: one window, the whole input
    (the second would start in the end pad). Its export was written with the end pads cut to 0, which
    onnxruntime runs as its global pool, rounding before it adds the zero point: one step apart at
    exact halves (18 of 768 outputs here, exit 0). The export keeps the pads and the one window."""
    from robust_util import int8_session

    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.onnx_export import export_onnx

    q = {"y_scale": 2.0**-6, "y_zero_point": 5, "dtype": "int8"}
    pool = {"kernel": [4, 4], "stride": [4, 4], "pads": [0, 0, 1, 1], "ceil_mode": True, "count_include_pad": False}
    nodes = (
        Node("q", "quantize", (INPUT,), {**q, "y_scale": 2.0**-7}),
        Node("p", "qavg_pool", ("q",), {**pool, **q}),
        Node("out", "dequantize", ("p",)),
    )
    graph = Graph(nodes, (3, 4, 4), "out", {})
    x = (np.random.default_rng(1).integers(-60, 60, (256, 3, 4, 4)) * 2.0**-7).astype(np.float32)
    got = Model(graph).run(x)
    # the exact mean of each image's 16 codes in output steps, rounded half to even after the zero point
    codes = np.rint(x / 2.0**-7).reshape(256, 3, 16).astype(np.float64)
    assert np.array_equal(got.reshape(256, 3), (np.rint(codes.mean(axis=2) / 2 + 5) - 5) * 2.0**-6)
    export_onnx(graph, tmp_path / "p.onnx")
    session = int8_session(tmp_path / "p.onnx", "int8", "QDQ")  # onnxruntime's exact int8 mode
    assert np.array_equal(session.run(None, {session.get_inputs()[0].name: x})[0], got)
    assert "qavg_pool" in {n.op for n in import_onnx(tmp_path / "p.onnx").nodes}


@pytest.mark.parametrize("out_dtype", ["uint8", "int8"])
def test_an_add_or_average_pool_of_mixed_types_is_refused(out_dtype):
    """onnxruntime's QLinearAdd, QLinearAveragePool and QLinearGlobalAveragePool take one type for
    every input and output, and run a QDQ node of mixed types in float32: the engine's integer
    arithmetic gave 24 of 756 outputs of an add one step away from onnxruntime on such a model's
    own export, and 222 of 1024 of a global pool (exit 0)."""
    from velcro_ref.errors import ModelError
    from velcro_ref.graph import INPUT, Graph, Node

    def q(dtype, zp):
        return {"y_scale": 0.02, "y_zero_point": zp, "dtype": dtype}

    pool = {"kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": False}
    mixed = {
        "qadd": (Node("a", "qadd", ("i8", "u8"), q(out_dtype, 3)),),
        "qavg_pool": (Node("a", "qavg_pool", ("u8" if out_dtype == "int8" else "i8",), {**pool, **q(out_dtype, 3)}),),
        "qglobal_avg_pool": (Node("a", "qglobal_avg_pool", ("u8" if out_dtype == "int8" else "i8",), q(out_dtype, 3)),),
    }
    for op, middle in mixed.items():
        nodes = (
            Node("i8", "quantize", (INPUT,), q("int8", -5)),
            Node("u8", "quantize", (INPUT,), q("uint8", 120)),
            *middle,
            Node("out", "dequantize", ("a",)),
        )
        with pytest.raises(ModelError, match=f"node 'a': {op} of .* one type for every input and the output"):
            Model(Graph(nodes, (2, 4, 4), "out", {}))
    t = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
    other = "int8" if out_dtype == "uint8" else "uint8"
    node = helper.make_node("QLinearAdd", ["a", "s", "za", "b", "s", "zb", "s", "zy"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", t[other], [4]), helper.make_tensor_value_info("b", t[out_dtype], [4])],
        [helper.make_tensor_value_info("y", t[out_dtype], [4])],
        [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, other), "za"),
            numpy_helper.from_array(np.array(0, out_dtype), "zb"),
            numpy_helper.from_array(np.array(0, out_dtype), "zy"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(Exception, match="Type"):  # no kernel of mixed types
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op", ["QLinearGlobalAveragePool", "QLinearAveragePool"])
def test_a_com_microsoft_pool_of_mixed_types_is_refused_naming_the_pool(tmp_path, op):
    """The import named the DequantizeLinear after the pool, calling its uint8 input float32, where
    the pool itself is refused (a QLinearAveragePool over the whole input is a global pool)."""
    from velcro_ref.errors import ModelError

    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(3, np.int8), "xz"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ys"),
        numpy_helper.from_array(np.array(120, np.uint8), "yz"),
    ]
    window = {"kernel_shape": [8, 8]} if op == "QLinearAveragePool" else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node(op, ["xq", "xs", "xz", "ys", "yz"], ["pq"], "pool", domain="com.microsoft", **window),
        helper.make_node("DequantizeLinear", ["pq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, tmp_path / "p.onnx")
    with pytest.raises(ModelError, match="node 'pool[^']*': qglobal_avg_pool of int8 input into uint8: one type"):
        import_onnx(tmp_path / "p.onnx")
