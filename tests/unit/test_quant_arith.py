"""velcro_ref.quant against onnxruntime: the scales, zero points, int8 weights and int32 biases
that quantize_static writes, and single-node QuantizeLinear / DequantizeLinear models.

quantize_static gets the ranges measured here with the engine's float model (through its
calibration cache), so both sides start from the same numbers: two float engines give ranges
a few ulps apart, which moves a scale's last bits (docs/int8.md).
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data
from onnxruntime.quantization.quant_utils import compute_scale_zp
from robust_util import NodeOutputs, zoo_graph

from velcro_ref import quant
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.kernels.int8.requant import quantize_linear as kernel_quantize
from velcro_ref.onnx_export import export_onnx
from velcro_ref.plan import executed_graph
from velcro_ref.quantization import quantize_model


class RangeObserver(NodeOutputs):
    """Per-tensor min and max of every node output over the images run."""

    def __init__(self):
        self.ranges = {}

    def on_node(self, step, inputs, out, skip):
        lo, hi = np.float32(out.min()), np.float32(out.max())
        old = self.ranges.get(step.name, (lo, hi))
        self.ranges[step.name] = (min(old[0], lo), max(old[1], hi))


def _folded(graph):
    """The graph as the engine runs it: batch norms folded into their convs."""
    from velcro_ref.engine import Model

    return executed_graph(Model(graph).plan, graph)


def measured_ranges(graph, images):
    obs = RangeObserver()
    model = Model(graph)
    for x in images:
        model.run(x, observer=obs)
    obs.ranges[INPUT] = (min(np.float32(x.min()) for x in images), max(np.float32(x.max()) for x in images))
    return obs.ranges


def quantize_with_ranges(onnx_path, ranges, tmp_path, fmt, per_channel, act):
    cache = tmp_path / "ranges.json"
    data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    out = tmp_path / "q.onnx"
    quantize_static(
        str(onnx_path),
        str(out),
        None,
        calibration_cache_path=str(cache),
        quant_format=fmt,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def resnet_and_ranges(tmp_path_factory):
    graph = _folded(zoo_graph("resnet18", input_size=32, num_classes=10, width=0.25, seed=0))
    path = tmp_path_factory.mktemp("onnx") / "r.onnx"
    export_onnx(graph, path)
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    return graph, path, measured_ranges(graph, images)


@pytest.mark.parametrize("fmt", [QuantFormat.QDQ, QuantFormat.QOperator])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_parameters_equal_what_quantize_static_writes(resnet_and_ranges, tmp_path, fmt, per_channel, act):
    graph, path, ranges = resnet_and_ranges
    init = quantize_with_ranges(path, ranges, tmp_path, fmt, per_channel, act)
    readers = graph.readers()
    # The quantizer gives a ReLU's input (read by the ReLU alone) the ReLU output's range.
    adjusted = dict(ranges)
    for n in graph.nodes:
        if n.op == "relu" and len(readers[n.inputs[0]]) == 1:
            adjusted[n.inputs[0]] = ranges[n.name]
    params = {}
    for name, (lo, hi) in adjusted.items():
        if f"{name}_scale" in init:
            params[name] = quant.scale_zero_point(lo, hi, act)
            assert same_bits(init[f"{name}_scale"], params[name][0]), name
            assert init[f"{name}_zero_point"].dtype == np.dtype(act)
            assert int(init[f"{name}_zero_point"]) == int(params[name][1]), name
    assert len(params) >= 25  # the input, every site, conv outputs feeding adds, pool and fc outputs
    n_layers = 0
    for n in graph.nodes:
        if n.op not in ("conv2d", "linear"):
            continue
        t = n.inputs[0]
        while t not in params:  # max pool and flatten outputs share their input's parameters
            t = graph.node(t).inputs[0]
        x_scale = params[t][0]
        w, b = graph.params[n.params["weight"]], graph.params[n.params["bias"]]
        ws = quant.adjust_weight_scale_for_bias(x_scale, quant.weight_scale(w, per_channel), b, per_channel)
        wkey, bkey = n.params["weight"], n.params["bias"]
        assert same_bits(init[f"{wkey}_scale"].reshape(-1), np.asarray(ws).reshape(-1)), wkey
        assert same_bits(init[f"{wkey}_quantized"], quant.quantize_weight(w, ws)), wkey
        assert same_bits(init[f"{bkey}_quantized"], quant.quantize_bias(b, x_scale, ws)), bkey
        n_layers += 1
    assert n_layers == 21


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_scale_is_raised_when_the_bias_would_not_fit_int32(tmp_path, per_channel):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1e-4, (4, 3, 1, 1)).astype(np.float32)
    b = np.array([3e3, -2e2, 1e-3, 5e3], np.float32)  # b / (x_scale * w_scale) far beyond 2^31
    params = {"w": w, "b": b}
    attrs = {"out_channels": 4, "kernel": [1, 1], "stride": [1, 1], "pads": [0] * 4, "groups": 1}
    graph = Graph((Node("conv", "conv2d", (INPUT,), attrs, {"weight": "w", "bias": "b"}),), (3, 4, 4), "conv", params)
    path = tmp_path / "c.onnx"
    export_onnx(graph, path)
    ranges = {INPUT: (np.float32(-1e-3), np.float32(1e-3)), "conv": (np.float32(-5e3), np.float32(5e3))}
    init = quantize_with_ranges(path, ranges, tmp_path, QuantFormat.QDQ, per_channel, "uint8")
    x_scale = quant.scale_zero_point(*ranges[INPUT], "uint8")[0]
    plain = quant.weight_scale(w, per_channel)
    ws = quant.adjust_weight_scale_for_bias(x_scale, plain, b, per_channel)
    assert np.any(ws != plain)
    assert same_bits(init["w_scale"].reshape(-1), np.asarray(ws).reshape(-1))
    assert same_bits(init["w_quantized"], quant.quantize_weight(w, ws))
    assert same_bits(init["b_quantized"], quant.quantize_bias(b, x_scale, ws))


def run_node(op, x, scale, zero_point, out_type):
    inits = [numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(np.asarray(zero_point), "z")]
    in_type = TensorProto.FLOAT if x.dtype == np.float32 else helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "s", "z"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", in_type, list(x.shape))],
        [helper.make_tensor_value_info("y", out_type, list(x.shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def division_sensitive(rng, scale, n=200):
    """Values x where rint(x / scale) differs from rint(x * float32(1 / scale)) in float32."""
    s = np.float32(scale)
    inv = np.float32(1) / s
    k = rng.integers(-300, 300, 200_000).astype(np.float32)
    x = ((k + np.float32(0.5)) * s).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    diff = np.rint(x / s) != np.rint(x * inv)
    return x[diff][:n]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("scale", [0.5, 0.1, 0.0123, 3.7e-3])
def test_quantize_linear_equals_onnxruntime(dtype, scale):
    rng = np.random.default_rng(int(scale * 1e4))
    qmin, qmax = quant.qrange(dtype)
    zp = np.array(rng.integers(qmin, qmax + 1), dtype)
    s = np.float32(scale)
    ties = ((rng.integers(-300, 300, 500) + np.float32(0.5)) * s).astype(np.float32)  # x / scale = k + 0.5
    special = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0], np.float32)
    x = np.concatenate([rng.normal(0, 200 * scale, 2000).astype(np.float32), ties, special, division_sensitive(rng, s)])
    want = run_node("QuantizeLinear", x, s, zp, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    got = quant.quantize_linear(x, s, zp, dtype)
    assert np.array_equal(got, want)
    assert got[np.isnan(x)][0] == qmin  # NaN: MLAS's clamp gives qmin


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantize_linear_of_a_quotient_beyond_float32_saturates_as_onnxruntime_without_a_warning(dtype):
    """3e38 / 0.01 overflows float32: NumPy warned (a masked site's constant in `velcro golden`)."""
    x, s, zp = np.array([3e38, -3e38, 1.0], np.float32), np.float32(0.01), np.array(0, dtype)
    want = run_node("QuantizeLinear", x, s, zp, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = quant.quantize_linear(x, s, zp, dtype)
    assert np.array_equal(got, want)


def test_quantize_linear_divides_rather_than_multiplying_by_the_reciprocal():
    rng = np.random.default_rng(9)
    s = np.float32(0.1)
    x = division_sensitive(rng, s)
    assert x.size > 10
    want = run_node("QuantizeLinear", x, s, np.uint8(128), TensorProto.UINT8)
    by_division = quant.quantize_linear(x, s, 128, np.uint8)
    by_reciprocal = np.clip(np.rint(x * (np.float32(1) / s)) + 128, 0, 255).astype(np.uint8)
    assert np.array_equal(want, by_division)
    assert not np.array_equal(want, by_reciprocal)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_dequantize_linear_equals_onnxruntime(dtype):
    q = np.arange(256, dtype=np.uint8).view(np.dtype(dtype))
    for scale, zp in [(0.1, 3), (3.7e-3, -7 if dtype is np.int8 else 200), (1e-30, 0)]:
        want = run_node("DequantizeLinear", q, np.float32(scale), np.array(zp, dtype), TensorProto.FLOAT)
        assert same_bits(quant.dequantize_linear(q, scale, zp), want)


def test_scale_zero_point_by_hand():
    # [-1, 2] on uint8: scale 3/255, zero point round(0 + 1 / (3/255)) = 85
    s, z = quant.scale_zero_point(np.float32(-1), np.float32(2), "uint8")
    assert s == np.float32(3 / 255) and z == 85
    # a range that excludes 0 is widened to hold it: [0.5, 2] -> [0, 2], zero point 0
    s, z = quant.scale_zero_point(np.float32(0.5), np.float32(2), "uint8")
    assert s == np.float32(2 / 255) and z == 0
    # int8 ReLU output: [0, 6] -> zero point -128
    assert quant.scale_zero_point(np.float32(0), np.float32(6), "int8")[1] == -128
    # symmetric int8 weights: absmax / 127, zero point 0
    s, z = quant.scale_zero_point(np.float32(-0.5), np.float32(0.25), "int8", symmetric=True)
    assert s == np.float32(1.0 / 254) and z == 0
    # an all-zero range: scale 1, zero point 0
    assert quant.scale_zero_point(np.float32(0), np.float32(0), "uint8") == (1.0, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_zero_points_round_half_to_even_as_onnxruntime(dtype):
    """qmin - rmin / scale on a tie (126.5 for [-126.5/64, 128.5/64] on uint8, whose scale is 1/64
    exactly) rounds half to even, as onnxruntime's quantizer (numpy.round) does: 126, not 127; and
    on drawn ranges the scale and zero point equal its `compute_scale_zp`."""
    qmin, qmax = (dtype(v) for v in quant.qrange(dtype))
    rng = np.random.default_rng(5)
    ties = [(np.float32(-(k + 0.5) / 64), np.float32((255 - k - 0.5) / 64)) for k in range(0, 255, 7)]
    drawn = [tuple(np.sort(rng.normal(0, 10.0 ** rng.integers(-3, 3), 2)).astype(np.float32)) for _ in range(300)]
    for lo, hi in ties + drawn:
        want_zp, want_scale = compute_scale_zp(lo, hi, qmin, qmax)
        scale, zp = quant.scale_zero_point(lo, hi, np.dtype(dtype).name)
        assert (scale, int(zp)) == (want_scale, int(want_zp)), (lo, hi)
    assert quant.scale_zero_point(np.float32(-126.5 / 64), np.float32(128.5 / 64), "uint8")[1] == 126


def test_the_engine_quantize_kernel_rounds_ties_as_onnxruntime():
    """The kernel of the model's quantize op (not `quant.quantize_linear`) on values whose quotient
    is a tie or where x / scale and x * (1 / scale) round apart."""
    rng = np.random.default_rng(3)
    for scale in (np.float32(0.0137), np.float32(0.1)):
        ties = ((rng.integers(-120, 120, 2000) + np.float32(0.5)) * scale).astype(np.float32)
        x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), division_sensitive(rng, scale)])
        for dtype, zp in ((np.int8, -3), (np.uint8, 128)):
            qmin, qmax = quant.qrange(dtype)
            got = np.empty(x.size, dtype)
            kernel_quantize(x, scale, zp, qmin, qmax, got)
            want = run_node(
                "QuantizeLinear", x, scale, np.array(zp, dtype), helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            )
            assert np.array_equal(got, want), int(np.sum(got != want))


def test_fixed_point_multiplier_by_hand():
    m, s = quant.fixed_point_multiplier(np.array([0.5, 0.75, 0.3, 1.0, 0.0, 2.0**-40]))
    assert list(m) == [2**30, 3 * 2**29, round(0.6 * 2**31), 2**30, 0, 0]
    assert list(s) == [0, 0, -1, 1, 0, 0]
    # q * 2^31 rounds up to 2^31: halved, shift + 1
    m, s = quant.fixed_point_multiplier(np.nextafter(1.0, 0.0))
    assert (int(m), int(s)) == (2**30, 1)


def test_fma_f32_rounds_once():
    # against exact rational arithmetic rounded to float32 by hand (nearest, ties to even)
    from fractions import Fraction

    def round_f32(q):
        f = np.float32(float(q))  # nearest double, then float32: may double-round; fix below
        lo, hi = sorted((f, np.nextafter(f, np.float32(np.inf if Fraction(float(f)) < q else -np.inf))))
        d_lo, d_hi = q - Fraction(float(lo)), Fraction(float(hi)) - q
        if d_lo != d_hi:
            return lo if d_lo < d_hi else hi
        return lo if int(np.array(lo).view(np.uint32)) % 2 == 0 else hi

    rng = np.random.default_rng(8)
    x = rng.normal(0, 100, 3000).astype(np.float32)
    y = rng.normal(0, 1, 3000).astype(np.float32)
    z = rng.normal(0, 100, 3000).astype(np.float32)
    # halfway cases of the float64 sum: z tiny against x * y
    x[:500], y[:500] = np.float32(1 + 2.0**-23), np.float32(1 + 2.0**-23)
    z[:500] = (rng.choice([-1, 1], 500) * 2.0 ** rng.integers(-80, -40, 500)).astype(np.float32)
    got = quant.fma_f32(x, y, z)
    want = [
        round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))) for a, b, c in zip(x, y, z, strict=True)
    ]
    assert np.array_equal(got, np.array(want, np.float32))
    plain = (x * y + z).astype(np.float32)
    assert not np.array_equal(got, plain)  # one rounding differs from two


@pytest.mark.parametrize("zp", [0, 100, -128])
def test_ort_requantization_at_a_scale_of_inf_takes_nan_to_qmin_as_onnxruntime(zp):
    """0 * inf is NaN, which onnxruntime's clamp (MAXPS) takes to qmin; the twin gave the zero point (the
    low byte of the integer a NaN converts to). Other accumulators saturate by their sign."""
    got = quant.requantize_ort(np.array([0, 5, -3], np.int32), np.float32(np.inf), zp, np.int8)
    assert got.tolist() == [-128, 127, -128]


def test_a_range_whose_scale_is_below_the_smallest_normal_float32_gets_scale_1():
    """[0, 1e-37] on uint8 gives a float64 scale of 3.9e-40, below float32's smallest normal
    (1.18e-38): onnxruntime's compute_scale_zp, as docs/int8.md says, gives scale 1 and zero point
    0. A test of `scale <= 0` kept the subnormal scale, which a later division turns into inf."""
    for hi in (1e-37, 2.9e-36):  # 2.9e-36 / 255 = 1.137e-38, still below 1.175e-38
        assert quant.scale_zero_point(np.float32(0), np.float32(hi), "uint8") == (1.0, 0)
        want_zp, want_scale = compute_scale_zp(np.float32(0), np.float32(hi), np.uint8(0), np.uint8(255))
        assert (float(want_scale), int(want_zp)) == (1.0, 0)
    # 3.1e-36 / 255 = 1.216e-38 is normal: kept
    s, z = quant.scale_zero_point(np.float32(0), np.float32(3.1e-36), "uint8")
    assert s == np.float32(np.float64(np.float32(3.1e-36)) / 255) and z == 0


def test_fixed_point_multiplier_keeps_a_shift_of_minus_31():
    """TFLite's QuantizeMultiplier flushes to (0, 0) only below shift -31: 2^-31.5 = 2^-0.5 x
    2^-31 is (round(2^-0.5 x 2^31), -31) = (1518500250, -31) and 2^-32 is (2^30, -31); 2^-33
    (shift -32) is flushed. Flushing at shift -31 turned these multipliers into 0."""
    m, s = quant.fixed_point_multiplier(np.array([2.0**-31.5, 2.0**-32, 2.0**-33]))
    assert list(m) == [1518500250, 2**30, 0]
    assert list(s) == [-31, -31, 0]
    # M x 2^(shift - 31) is the real to within half a unit of M
    assert abs(1518500250 * 2.0**-62 - 2.0**-31.5) <= 0.5 * 2.0**-62


def test_ort_requantization_rounds_ties_to_even():
    """MLAS rounds acc x scale half to even (docs/int8.md): 2.5 -> 2, 3.5 -> 4, 0.5 -> 0, -2.5 -> -2,
    -3.5 -> -4, 1.5 -> 2; rounding half up gave 3 for 2.5 and 1 for 0.5."""
    acc = np.array([5, 7, 1, -5, -7, 3], np.int32)
    got = quant.requantize_ort(acc, np.float32(0.5), 0, np.int8)
    assert got.tolist() == [2, 4, 0, -2, -4, 2]
    # with a zero point: ties round before the zero point is added
    assert quant.requantize_ort(acc, np.float32(0.5), 11, np.uint8).tolist() == [13, 15, 11, 9, 7, 13]


def test_quantize_raises_the_weight_scale_of_a_bias_beyond_int32():
    """A conv of weight 1e-6 and bias 100 with input scale 0.01: at the plain weight scale
    (1e-6 / 127) the bias would be 1.27e12 in int32 units. The quantized model must raise the
    weight scale to 1.0001 x 2 x 100 / (2^32 - 2) / 0.01 (docs/int8.md) and give out 100; without
    the raise the bias clipped to 2^31 - 1, which dequantizes to 0.169, and the output was 0."""
    w = np.full((1, 1, 1, 1), 1e-6, np.float32)
    b = np.array([100.0], np.float32)
    attrs = {"out_channels": 1, "kernel": [1, 1], "stride": [1, 1], "pads": [0] * 4, "groups": 1}
    conv = Node("conv", "conv2d", (INPUT,), attrs, {"weight": "w", "bias": "b"})
    graph = Graph((conv,), (1, 2, 2), "conv", {"w": w, "b": b})
    # int8: [-1.28, 1.27] -> scale 2.55 / 255 = 0.01; [0, 255] -> scale 1, zero point -128
    ranges = {INPUT: (np.float32(-1.28), np.float32(1.27)), "conv": (np.float32(0), np.float32(255))}
    x_scale = np.float32((np.float64(np.float32(1.27)) - np.float64(np.float32(-1.28))) / 255)
    for per_channel in (False, True):
        q = quantize_model(Model(graph), ranges, per_channel=per_channel)
        conv = next(n for n in q.nodes if n.op == "qconv2d")
        ws = q.params[conv.params["w_scale"]][0]
        assert ws == pytest.approx(1.0001 * 2 * 100.0 / (2.0**32 - 2) / float(x_scale), rel=1e-6)
        bq = int(q.params[conv.params["bias"]][0])
        step = float(np.float32(x_scale * ws))  # the bias scale, float32(x_scale * w_scale)
        assert 2**30 < bq < 2**31 - 1 and abs(bq * step - 100.0) <= step / 2  # round(b / scale), not clipped
        x = np.array([-1.28, 0.0, 0.5, 1.27], np.float32).reshape(1, 1, 2, 2)
        assert Model(q).run(x).tolist() == [[[[100.0, 100.0], [100.0, 100.0]]]]
