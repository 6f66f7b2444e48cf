"""Golden: ONNX forms the importer once took in and then ran to wrong numbers, with no error.

Each model is built with onnx.helper. Where the engine runs it, its output must be onnxruntime's
(float32, within rounding) and of the type the file declares; where it cannot, the import must
fail with a one-line VelcroError naming the reason. Covered: a Relu or Clip on 8-bit codes
themselves, QuantizeLinear's `output_dtype` without a zero point, a DequantizeLinear without a
zero point on int8 codes, a QDQ op whose output no QuantizeLinear reads (a float op on the
dequantized values), a float graph output left holding codes, an attribute no converter reads,
a node with fewer inputs than ONNX allows, and weights folded from a saturating float8 Cast or a
sparse Constant.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from velcro_ref.engine import Model
from velcro_ref.errors import VelcroError
from velcro_ref.onnx_import import import_onnx

X = np.array([[[[-1.0, -0.3], [0.1, 0.5]], [[1.5, 2.7], [-0.02, 0.26]]]], np.float32)  # (1, 2, 2, 2)


def save(tmp_path, nodes, consts, opset=13, out_type=TensorProto.FLOAT, name="m", x_shape=("N", 2, 2, 2)):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", out_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def both(path, x=X):
    """(engine output, onnxruntime output) of the model at path."""
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return Model(import_onnx(path)).run(x), want


def refused(path) -> str:
    with pytest.raises(VelcroError) as e:
        import_onnx(path)
    message = str(e.value)
    assert message.strip() and "\n" not in message.strip()
    return message


Q, DQ = "QuantizeLinear", "DequantizeLinear"


@pytest.mark.parametrize("act, dtype", [("Relu", np.int8), ("Clip", np.int8), ("Clip", np.uint8)])  # Relu: no uint8
def test_a_relu_or_clip_on_the_codes_themselves_is_refused(tmp_path, act, dtype):
    """ONNX applies it to the codes, max(q, 0); the quantized site computes max(q, zero point)."""
    zero = dtype(-20 if dtype == np.int8 else 100)
    consts = {"s": np.float32(0.02), "z": zero}
    if act == "Clip":
        consts.update(lo=dtype(0), hi=dtype(6))
    inputs = ["q", "lo", "hi"] if act == "Clip" else ["q"]
    nodes = [
        helper.make_node(Q, ["x", "s", "z"], ["q"]),
        helper.make_node(act, inputs, ["r"]),
        helper.make_node(DQ, ["r", "s", "z"], ["y"]),
    ]
    path = save(tmp_path, nodes, consts, opset=14)
    got_ort = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    on_values = np.clip(X, 0, None) if act == "Relu" else np.clip(X, 0, 6)
    assert np.abs(got_ort - on_values).max() > 0.1  # the codes' answer is not the values' one
    assert "codes" in refused(path)


def test_quantize_output_dtype_without_a_zero_point_is_followed(tmp_path):
    nodes = [
        helper.make_node(Q, ["x", "s"], ["q"], output_dtype=TensorProto.INT8),
        helper.make_node(DQ, ["q", "s"], ["y"]),
    ]
    path = save(tmp_path, nodes, {"s": np.float32(0.05)}, opset=21)
    got, want = both(path)
    assert (want < 0).any()  # int8: the negative values survive (uint8 would clamp them to 0)
    np.testing.assert_array_equal(got, want)


def test_quantize_output_dtype_other_than_8_bits_is_refused(tmp_path):
    nodes = [
        helper.make_node(Q, ["x", "s"], ["q"], output_dtype=TensorProto.INT16),
        helper.make_node(DQ, ["q", "s"], ["y"]),
    ]
    assert "output_dtype" in refused(save(tmp_path, nodes, {"s": np.float32(0.05)}, opset=21))


def test_dequantize_without_a_zero_point_reads_int8_codes_as_int8(tmp_path):
    nodes = [helper.make_node(Q, ["x", "s", "z"], ["q"]), helper.make_node(DQ, ["q", "s"], ["y"])]
    got, want = both(save(tmp_path, nodes, {"s": np.float32(0.05), "z": np.int8(0)}))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["Relu", "Clip", "MaxPool", "Flatten", "GlobalAveragePool"])
def test_a_qdq_op_whose_output_no_quantize_reads_runs_on_the_values(tmp_path, op):
    """DQ -> op -> graph output: onnxruntime runs the float op on the dequantized values; the engine
    must too, and return float32 (it once returned the uint8 codes, or their qrelu6 clamp)."""
    attrs = {"kernel_shape": [1, 1]} if op == "MaxPool" else {}
    inputs = ["d", "lo", "hi"] if op == "Clip" else ["d"]
    nodes = [
        helper.make_node(Q, ["x", "s", "z"], ["q"]),
        helper.make_node(DQ, ["q", "s", "z"], ["d"]),
        helper.make_node(op, inputs, ["y"], **attrs),
    ]
    # scale 0.047: the quantized 6 is 128 steps, 6.016, where Clip's float answer is 6
    consts = {"s": np.float32(0.047), "z": np.uint8(0), "lo": np.float32(0.0), "hi": np.float32(6.0)}
    x = X * 3  # up to 8.1: above 6
    got, want = both(save(tmp_path, nodes, consts), x)
    assert op != "Clip" or want.max() == 6.0
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_float_output_left_holding_codes_is_refused(tmp_path):
    nodes = [
        helper.make_node(Q, ["x", "s", "z"], ["q"]),
        helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[1, 1]),
    ]
    message = refused(save(tmp_path, nodes, {"s": np.float32(0.02), "z": np.uint8(128)}))
    assert "declared float32" in message


def test_an_attribute_no_converter_reads_is_refused_unless_at_its_default(tmp_path):
    def softmax_model(name, **attrs):
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Softmax", ["f"], ["y"], **attrs)]
        return save(tmp_path, nodes, {}, name=name)

    message = refused(softmax_model("odd", made_up=3))
    assert "made_up=3" in message
    got, want = both(softmax_model("default", axis=-1))  # written out at ONNX's default
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_concat_without_inputs_is_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Concat", [], ["c"], axis=1), helper.make_node("Add", ["x", "c"], ["y"])]
    assert "Concat takes 1 or more inputs, found 0" in refused(save(tmp_path, nodes, {}))


def test_a_tensor_named_like_a_step_the_importer_adds_keeps_its_own_values(tmp_path):
    """A ReduceMean r with keepdims=0 is a pool and a flatten; the pool's output was filed under the
    made-up name `r#pooled`, so readers of a real tensor of that name got the pool (exit 0)."""
    nodes = [
        helper.make_node("HardSwish", ["x"], ["r#pooled"]),
        helper.make_node("ReduceMean", ["x"], ["r"], axes=[2, 3], keepdims=0),
        helper.make_node("GlobalAveragePool", ["r#pooled"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Add", ["r", "f"], ["y"]),
    ]
    got, want = both(save(tmp_path, nodes, {}, opset=14), X * 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 13])  # axes an attribute, then an input
def test_a_global_pool_squeezed_to_n_c_is_run_as_a_flatten(tmp_path, opset):
    """GlobalAveragePool -> Squeeze(axes 2, 3) -> Gemm, as exporters write a classifier head, was refused."""
    w = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    axes = {"axes": [-1, 2]} if opset < 13 else {}
    squeeze = helper.make_node("Squeeze", ["g"] + (["axes"] if opset >= 13 else []), ["s"], **axes)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        squeeze,
        helper.make_node("Gemm", ["s", "w"], ["y"], transB=1),
    ]
    consts = {"w": w, **({"axes": np.array([3, -2], np.int64)} if opset >= 13 else {})}
    path = save(tmp_path, nodes, consts, opset=opset)
    assert [n.op for n in import_onnx(path).nodes] == ["global_avg_pool", "flatten", "linear"]
    got, want = both(path, np.concatenate([X, X[:, ::-1]]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_softmax_before_opset_13_on_more_than_two_axes_is_refused_saying_why(tmp_path):
    """The refusal read "axis 1 on a rank-4 input; supported: the class axis 1": the axis is 1, and the
    reason (before opset 13 Softmax flattens every axis from its axis on) went unsaid."""
    for axis in (1, 3):  # axis 3 was told to use the class axis 1, which is refused too there
        nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=axis)]
        message = refused(save(tmp_path, nodes, {}, opset=11, name=f"a{axis}"))
        assert f"rank-4 input at opset 11, where Softmax flattens every axis from {axis} on" in message
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1)]
    path = save(tmp_path, nodes, {}, opset=13, name="m13")  # the class axis of a rank-4 input: runs
    got, want = both(path)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _flatten_tail(tmp_path, nodes, consts, opset, name, features=8):
    """`nodes` (ending in "flat", `features` per image) followed by a Gemm against ones, into y."""
    nodes = [*nodes, helper.make_node("Gemm", ["flat", "ones"], ["y"], transB=1)]
    return save(tmp_path, nodes, {**consts, "ones": np.ones((3, features), np.float32)}, opset=opset, name=name)


def _shape_cast_reshape():
    """Shape -> Cast(int32) -> Slice -> Concat(-1) -> Cast(int64) -> Reshape (as tf2onnx writes)."""
    return [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["s32", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "minus1"], ["t32"], axis=0),
        helper.make_node("Cast", ["t32"], ["t"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "t"], ["flat"]),
    ], {"zero": np.array([0], np.int32), "one": np.array([1], np.int32), "minus1": np.array([-1], np.int32)}


def _reshape_allowzero():
    return [helper.make_node("Reshape", ["x", "t"], ["flat"], allowzero=1)], {"t": np.array([-1, 8], np.int64)}


def _reduce_mean_noop():
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1, noop_with_empty_axes=1),
        helper.make_node("Flatten", ["m"], ["flat"]),
    ]
    return nodes, {"axes": np.array([2, 3], np.int64)}, 2


def _gemm_beta_without_c():
    return [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["flat"], beta=0.5)], {
        "w": np.eye(8, dtype=np.float32)
    }


def _max_pool_storage_order():
    pool = helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 1], storage_order=1)
    return [pool, helper.make_node("Flatten", ["p"], ["flat"])], {}, 4


def _dropout_training_ratio_zero():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["d"]), helper.make_node("Flatten", ["d"], ["flat"])]
    return nodes, {"ratio": np.float32(0.0), "train": np.array(True)}


@pytest.mark.parametrize(
    "build, opset",
    [
        (_shape_cast_reshape, 13),
        (_reshape_allowzero, 14),
        (_reduce_mean_noop, 18),
        (_gemm_beta_without_c, 13),
        (_max_pool_storage_order, 12),
        (_dropout_training_ratio_zero, 13),
    ],
)
def test_attributes_that_change_nothing_here_are_not_refused(tmp_path, build, opset):
    """A Cast's `to` on a shape holding the batch size, Reshape's allowzero with no 0 in the target,
    ReduceMean's noop_with_empty_axes with axes given, Gemm's beta without C, MaxPool's
    storage_order without its Indices output, a Dropout in training mode with ratio 0 (it drops
    nothing and scales by 1): each read, none refused."""
    nodes, consts, *features = build()
    path = _flatten_tail(tmp_path, nodes, consts, opset, build.__name__, *features)
    got, want = both(path, np.concatenate([X, X * 2]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_what_storage_order_or_training_mode_would_change_is_refused(tmp_path):
    """MaxPool's Indices output read (storage_order orders it), and Dropout in training mode with a
    ratio above 0 (it drops elements at random): each refused in one line naming why."""
    pool = helper.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 1], storage_order=1)
    cast = helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT)
    path = save(tmp_path, [pool, cast, helper.make_node("Add", ["p", "f"], ["y"])], {}, opset=12, name="indices")
    assert "output 'idx' is read" in refused(path)
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 1], storage_order=2)
    assert "storage_order=2" in refused(save(tmp_path, [pool], {}, opset=12, name="order2"))
    for ratio, name in ((0.5, "half"), (None, "default")):
        consts = {"train": np.array(True)} | ({} if ratio is None else {"ratio": np.float32(ratio)})
        ins = ["x", "ratio" if ratio is not None else "", "train"]
        path = save(tmp_path, [helper.make_node("Dropout", ins, ["y"])], consts, name=name)
        assert "training_mode is true" in refused(path), name


def test_a_clip_refused_names_its_bounds_in_float32_digits(tmp_path):
    """A Clip to [0, 6.0000005] is not a relu6: the refusal says 6.0000005, not 6 (nor 6 for a
    float64 bound of 6 + 1e-12, which float32 would round to 6)."""
    path = save(
        tmp_path,
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        {"lo": np.float32(0), "hi": np.float32(6.0000005)},
    )
    assert "[0, 6.0000005]" in refused(path)
    clip = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])  # float64 bounds: in their own digits
    assert "[0, 6.000000000001]" in refused(save(tmp_path, [clip], {"lo": 0.0, "hi": 6 + 1e-12}, name="wide"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # beyond float32's range: no overflow warning before the refusal
        assert "[0, 1e+39]" in refused(save(tmp_path, [clip], {"lo": 0.0, "hi": 1e39}, name="beyond"))


@pytest.mark.parametrize("op", ["qconv2d", "qlinear"])
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_export_keeps_per_channel_weight_zero_points_under_one_weight_scale(tmp_path, op, dtype):
    """A w_scale of one value with a w_zero_point per channel: the export once wrote the first
    channel's zero point for all, and onnxruntime (and the re-imported model) computed other numbers."""
    from robust_util import int8_session

    from velcro_ref.graph import Graph, Node
    from velcro_ref.onnx_export import export_onnx

    rng = np.random.default_rng(0)
    k, c = 3, 2
    conv = op == "qconv2d"
    w = rng.integers(-60, 60, (k, c, 3, 3) if conv else (k, c * 25)).astype(np.int8)
    zero = 0 if dtype == "int8" else 128
    q = {"y_scale": 0.5, "y_zero_point": zero, "dtype": dtype, "requant": "ort"}
    layer = {"out_channels": k, "kernel": [3, 3], "pads": [1, 1, 1, 1]} if conv else {}
    nodes = [
        Node("xq", "quantize", ("input",), {"y_scale": 0.02, "y_zero_point": zero, "dtype": dtype}),
        *(() if conv else (Node("f", "flatten", ("xq",)),)),
        Node(
            "l", op, ("xq",) if conv else ("f",), {**layer, **q}, {"weight": "w", "w_scale": "ws", "w_zero_point": "wz"}
        ),
        Node("out", "dequantize", ("l",)),
    ]
    params = {"w": w, "ws": np.array([0.01], np.float32), "wz": np.array([0, 10, -20], np.int8)}
    model = Model(Graph(tuple(nodes), (c, 5, 5), "out", params))
    x = np.random.default_rng(1).standard_normal((2, c, 5, 5)).astype(np.float32)
    got = model.run(x)
    export_onnx(model.graph, tmp_path / "q.onnx")
    want = int8_session(tmp_path / "q.onnx", dtype, "QDQ").run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(Model(import_onnx(tmp_path / "q.onnx")).run(x), got)


W_WIDE = np.array([1000.0, -70000.0, 300.0, 3.14159, -0.1, 2.0e6], np.float32)  # beyond every float8 range
FLOAT8 = [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ]


def _cast_weight(tmp_path, to, w=W_WIDE, opset=21, **cast):
    """A 1x1 conv on one channel whose 6 filters are Cast(Cast(w, to), FLOAT), folded at import."""
    nodes = [
        helper.make_node("Cast", ["w"], ["w8"], to=to, **cast),
        helper.make_node("Cast", ["w8"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "wf"], ["y"]),
    ]
    return save(tmp_path, nodes, {"w": w.reshape(-1, 1, 1, 1)}, opset, name="cast", x_shape=("N", 1, 1, 1))


@pytest.mark.parametrize("to", FLOAT8)
def test_a_folded_float8_cast_saturates_as_onnx_defines_it(tmp_path, to):
    """saturate defaults to 1: values beyond the type's range become its largest, not NaN or inf."""
    x = np.ones((1, 1, 1, 1), np.float32)
    got, want = both(_cast_weight(tmp_path, to), x)
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("to", FLOAT8)
def test_a_folded_float8_cast_without_saturation_within_range_equals_onnxruntime(tmp_path, to):
    x = np.ones((1, 1, 1, 1), np.float32)
    w = np.array([200.0, -230.0, 3.14159, -0.1, 1e-3, 0.0], np.float32)  # within every float8 range
    got, want = both(_cast_weight(tmp_path, to, w, saturate=0), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("to, value", [(TensorProto.FLOAT8E5M2, 61440.0), (TensorProto.FLOAT8E4M3FN, 480.0)])
@pytest.mark.parametrize("sign", [1, -1])
def test_a_folded_float8_cast_without_saturation_beyond_range_is_refused(tmp_path, to, value, sign):
    """onnxruntime gives NaN for FLOAT8E5M2 in [61440, 65536) where ONNX's reference rounds to inf
    (and they differ for FLOAT8E4M3FN in [480, 496)): the fold took the reference's value."""
    w = np.array([1.0, sign * value], np.float32)
    assert "saturate=0" in refused(_cast_weight(tmp_path, to, w, saturate=0))
    assert "saturate=0" in refused(_cast_weight(tmp_path, to, W_WIDE, saturate=0))


@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2FNUZ])
def test_a_fnuz_cast_without_saturation_beyond_range_is_nan_as_in_onnxruntime(tmp_path, to):
    """Where onnxruntime and ONNX's reference agree (NaN beyond a FNUZ type's range), the fold is kept."""
    got, want = both(_cast_weight(tmp_path, to, W_WIDE, saturate=0), np.ones((1, 1, 1, 1), np.float32))
    assert np.isnan(want).sum() >= 2
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2FNUZ])
def test_a_saturating_cast_of_an_infinity_to_a_fnuz_type_is_refused(tmp_path, to):
    """ONNX's table says NaN; onnxruntime and ONNX's reference give the type's largest value. The
    fold gave NaN with exit 0."""
    w = np.array([np.inf, -np.inf, 1.0, 0.5], np.float32)
    assert "Cast of an infinity" in refused(_cast_weight(tmp_path, to, w))
    got, want = both(_cast_weight(tmp_path, to, w[2:]), np.ones((1, 1, 1, 1), np.float32))  # finite: folded
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "to, close",
    [(TensorProto.FLOAT8E4M3FN, 431.99999999999994), (TensorProto.FLOAT16, 1.00048828125091),
     (TensorProto.BFLOAT16, 1.0039062500001)],
)  # fmt: skip
def test_a_float64_cast_to_a_narrow_float_folds_as_onnxruntime_or_is_refused(tmp_path, to, close):
    """onnxruntime casts float64 through float32 (two roundings), ONNX's reference at once: 431.99999999999994
    to FLOAT8E4M3FN gives 448 in onnxruntime and gave 416 folded, with exit 0. Where the two agree the fold
    is onnxruntime's; where they differ the Cast is refused."""
    wide = np.array([3.0625, 1.0, -0.5, 2.0, 0.25, 7.0], np.float64)
    got, want = both(_cast_weight(tmp_path, to, wide), np.ones((1, 1, 1, 1), np.float32))
    np.testing.assert_array_equal(got, want)
    assert "round otherwise through float32" in refused(_cast_weight(tmp_path, to, np.append(wide, close)))


@pytest.mark.parametrize("to", [TensorProto.INT4, TensorProto.UINT4])
def test_a_folded_cast_to_4_bits_is_refused_naming_the_cast(tmp_path, to):
    """onnxruntime rounds 2.7 to 3 where ONNX's reference truncates to 2: no one right answer."""
    w = np.array([2.7, -2.7, 1.5, 0.5, -0.5, 6.6], np.float32)
    message = refused(_cast_weight(tmp_path, to, w))
    assert "Cast to" in message and "4" in message


def test_a_weight_from_a_sparse_constant_is_its_dense_array(tmp_path):
    dense = np.zeros((3, 2, 1, 1), np.float32)
    dense[0, 1], dense[2, 0] = 1.5, -0.25
    index = np.array([1, 4], np.int64)  # linear positions of the two values
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(dense.reshape(-1)[index], "v"), numpy_helper.from_array(index, "i"), dense.shape
    )
    nodes = [
        helper.make_node("Constant", [], ["w"], sparse_value=sparse),
        helper.make_node("Conv", ["x", "w"], ["y"]),
    ]
    got, want = both(save(tmp_path, nodes, {}))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("u8_zero", [128, 0])  # 0: the output's scale and zero point are the input's
def test_a_requantization_from_int8_to_uint8_reads_the_codes_as_int8(tmp_path, u8_zero):
    nodes = [
        helper.make_node(Q, ["x", "s", "z8"], ["q8"]),
        helper.make_node(DQ, ["q8", "s", "z8"], ["d8"]),
        helper.make_node(Q, ["d8", "s", "zu"], ["qu"]),
        helper.make_node(DQ, ["qu", "s", "zu"], ["y"]),
    ]
    consts = {"s": np.float32(0.05), "z8": np.int8(0), "zu": np.uint8(u8_zero)}
    got, want = both(save(tmp_path, nodes, consts, opset=17))
    assert (X < 0).any()  # negative int8 codes, whose bytes read as uint8 would be above 127
    np.testing.assert_array_equal(got, want)


def test_a_concat_of_int8_and_uint8_tensors_matches_onnxruntime(tmp_path):
    nodes = [
        helper.make_node(Q, ["x", "s", "z8"], ["q8"]),
        helper.make_node(Q, ["x", "s2", "zu"], ["qu"]),
        helper.make_node(DQ, ["q8", "s", "z8"], ["d8"]),
        helper.make_node(DQ, ["qu", "s2", "zu"], ["du"]),
        helper.make_node("Concat", ["d8", "du"], ["c"], axis=1),
        helper.make_node(Q, ["c", "s2", "zu"], ["qc"]),
        helper.make_node(DQ, ["qc", "s2", "zu"], ["y"]),
    ]
    consts = {"s": np.float32(0.05), "z8": np.int8(0), "s2": np.float32(0.1), "zu": np.uint8(128)}
    got, want = both(save(tmp_path, nodes, consts, opset=17))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("use", ["dead", "weight"])
def test_a_refused_constant_read_second_by_another_node_is_named_or_ignored(tmp_path, use):
    """Mul(w, Cast(Cast(one, INT4), FLOAT)): the refused Cast feeds the Mul's second input. Dead, the
    branch changes nothing and the model imports; as a conv's weight it is refused naming the Cast
    (the propagation looked up the Mul's first input and stopped with a KeyError)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Cast", ["one"], ["q"], to=TensorProto.INT4),
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w", "qf"], ["w2"]),
        helper.make_node("Conv", ["x", "w2" if use == "weight" else "w"], ["y"], kernel_shape=[1, 1]),
    ]
    consts = {"w": rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "one": np.ones((3, 2, 1, 1), np.float32)}
    path = save(tmp_path, nodes, consts, opset=21)
    if use == "dead":
        got, want = both(path)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    else:
        assert "Cast to int4" in refused(path)


BN_CONSTS = {"g": np.array([1.5, 0.5], np.float32), "b": np.array([0.1, -0.2], np.float32)}
BN_CONSTS |= {"m": np.array([0.3, -0.1], np.float32), "v": np.array([2.0, 0.5], np.float32)}


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_a_batch_norm_that_outputs_batch_statistics_is_refused(tmp_path, opset):
    """Before opset 14 a BatchNormalization listing more outputs than Y runs in training mode: ONNX and
    onnxruntime normalise by the batch's mean and variance, not the stored ones (the outputs need not be read)."""
    outputs = ["y", "mean", "var", "saved_mean", "saved_var"]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], outputs, name="bn")]
    path = save(tmp_path, nodes, BN_CONSTS, opset=opset)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": X})[0]
    stored = (X - BN_CONSTS["m"][:, None, None]) / np.sqrt(BN_CONSTS["v"][:, None, None] + 1e-5)
    assert not np.allclose(want, stored * BN_CONSTS["g"][:, None, None] + BN_CONSTS["b"][:, None, None], atol=1e-3)
    assert "training mode" in refused(path)


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 2)])
@pytest.mark.parametrize("opset", [9, 13])
def test_batch_norm_parameters_that_are_not_vectors_are_refused_as_onnxruntime_refuses_them(tmp_path, opset, shape):
    """They were flattened and run as a per-channel batch norm, exit 0; the schema says (C)."""
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")]
    path = save(tmp_path, nodes, {k: v.reshape(shape) for k, v in BN_CONSTS.items()}, opset=opset)
    with pytest.raises(Exception, match="NumDimensions"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    assert "expects one vector of a value per channel" in refused(path)


@pytest.mark.parametrize("is_test", [0, 1])
def test_a_batch_norm_before_opset_7_runs_only_in_test_mode(tmp_path, is_test):
    """Opset 6's is_test=0, its default, is training mode (batch statistics); is_test=1 the stored ones."""
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn", is_test=is_test)]
    path = save(tmp_path, nodes, BN_CONSTS, opset=6)
    if not is_test:
        assert "is_test=0" in refused(path)
        return
    c = {k: v.astype(np.float64)[:, None, None] for k, v in BN_CONSTS.items()}
    want = (X - c["m"]) / np.sqrt(c["v"] + np.float32(1e-5)) * c["g"] + c["b"]
    np.testing.assert_allclose(Model(import_onnx(path)).run(X), want, rtol=1e-6)


def test_a_batch_norm_fold_that_float32_cannot_hold_runs_unfolded(tmp_path):
    """Conv weights times the batch norm's scale: 1e30 * 1e10 overflows float32 and 1e-30 * 1e-12 falls below
    its normal range, where every tensor of the network stays finite: the fold would give inf (NaN on the
    zero padding) or lose bits, so the batch norm runs on its own, as onnxruntime without fusions computes."""
    w = np.ones((3, 2, 3, 3), np.float32)
    w[0], w[2] = 1e30, 1e-30
    consts = {"w": w, "g": np.array([1e10, 1.0, 1e-12], np.float32), "b": np.zeros(3, np.float32)}
    consts |= {"m": np.zeros(3, np.float32), "v": np.ones(3, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
    ]
    path = save(tmp_path, nodes, consts, x_shape=("N", 2, 4, 4))
    x = np.full((1, 2, 4, 4), 1e-20, np.float32)
    x[0, :, 1, 2] = 1e20
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = Model(import_onnx(path))
    assert model.plan.folded == {}
    np.testing.assert_allclose(model.run(x), want, rtol=1e-6)


def test_gemm_beta_0_with_a_c_that_is_not_finite_is_refused_in_one_line(tmp_path, recwarn):
    """0 * inf: NaN in ONNX's reference, C left out by onnxruntime; refused as a C that is not finite."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "c"], ["y"], beta=0.0)]
    c = np.array([np.inf, 1.0], np.float32)
    message = refused(save(tmp_path, nodes, {"w": np.ones((8, 2), np.float32), "c": c}))
    assert "beta 0 times C holding 1 value(s) not finite" in message
    assert not recwarn.list


@pytest.mark.parametrize("dtype, zero", [(np.uint8, 128), (np.int8, 0)])
def test_a_quantized_clip_0_6_read_with_other_parameters_clips_the_values(tmp_path, dtype, zero):
    """DequantizeLinear -> Clip(0, 6) -> QuantizeLinear of another scale, as onnxruntime's quantizer writes it
    where the Clip's input is also read elsewhere: 6 / 0.28 = 21.4 codes, so the input's code nearest 6 stands
    for 5.88, and clamping there before the requantization gave 250 where ONNX gives 255 (6 in steps of 6/255)."""
    out_zero = dtype(0 if dtype == np.uint8 else -128)
    consts = {"s": np.float32(0.28), "z": dtype(zero), "s6": np.float32(6 / 255), "z6": out_zero}
    consts |= {"lo": np.float32(0), "hi": np.float32(6)}
    nodes = [
        helper.make_node(Q, ["x", "s", "z"], ["q"]),
        helper.make_node(DQ, ["q", "s", "z"], ["d"]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["c"]),
        helper.make_node(Q, ["c", "s6", "z6"], ["q6"]),
        helper.make_node(DQ, ["q6", "s6", "z6"], ["y"]),
    ]
    x = np.linspace(-2, 9, 2 * 2 * 4 * 5, dtype=np.float32).reshape(2, 2, 4, 5)
    path = save(tmp_path, nodes, consts, x_shape=("N", 2, 4, 5))
    got, want = both(path, x)
    np.testing.assert_array_equal(got, want)
    assert want.max() == np.float32(255 * np.float32(6 / 255))  # the clip's top is reached


def _pool_ceil(opset):
    return [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], {}, opset


def _reduce_mean_axes_attribute(opset):
    return [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3])], {}, opset


def _concat_without_axis(opset):
    return [helper.make_node("Concat", ["x", "x"], ["y"])], {}, opset


def _clip_of_two_bounds(opset):
    consts = {"lo": np.array([0.0, -1.0], np.float32), "hi": np.array([6.0], np.float32)}
    return [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], consts, opset


def _clip_bound_of_shape_1_1(opset):  # one value, but no scalar: onnxruntime refuses it, onnx's reference takes it
    consts = {"lo": np.zeros((1, 1), np.float32), "hi": np.array([6.0], np.float32)}
    return [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], consts, opset


def _quantization_of_shape_1_1(opset):  # one value each, but no scalars: onnxruntime refuses them
    consts = {"s": np.full((1, 1), 0.1, np.float32), "z": np.zeros((1, 1), np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    return nodes, consts, opset


def _float64_weight(opset):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])]
    return nodes, {"w": np.ones((8, 2), np.float64)}, opset


def _conv_group_of_float_type(opset):
    return [helper.make_node("Conv", ["x", "w"], ["y"], group=1.0)], {"w": np.ones((2, 2, 1, 1), np.float32)}, opset


def _batch_norm_epsilon_of_int_type(opset):  # onnx's reference evaluator takes it as absent (1e-5), the importer took 1
    return [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1)], BN_CONSTS, opset


def _two_producers(opset):  # the importer took the later one
    nodes = [helper.make_node("Relu", ["x"], ["c"]), helper.make_node("Neg", ["x"], ["c"])]
    return [*nodes, helper.make_node("Relu", ["c"], ["y"])], {}, opset


def _a_node_writes_the_input(opset):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["x"])]
    return [*nodes, helper.make_node("Add", ["r", "x"], ["y"])], {}, opset


def _strides_of_int_type(opset):  # INT where ONNX defines INTS: the converter failed on it with a traceback
    return [helper.make_node("Conv", ["x", "w"], ["y"], strides=2)], {"w": np.ones((2, 2, 1, 1), np.float32)}, opset


def _a_constant_without_output(opset):  # the fold failed on it with a traceback
    nodes = [helper.make_node("Constant", [], [], value_float=2.0), helper.make_node("Relu", ["x"], ["y"])]
    return nodes, {}, opset


def _a_nameless_output(opset):
    return [helper.make_node("Relu", ["x"], [""]), helper.make_node("Relu", ["x"], ["y"])], {}, opset


@pytest.mark.parametrize(
    "build, opset, message",
    [
        (_conv_group_of_float_type, 13, "attribute group is FLOAT; ONNX defines it as INT"),
        (_batch_norm_epsilon_of_int_type, 15, "attribute epsilon is INT; ONNX defines it as FLOAT"),
        (_two_producers, 13, "tensor 'c' is written twice"),
        (_a_node_writes_the_input, 13, "tensor 'x' is written twice"),
        (_a_nameless_output, 13, "its output 0 has no name"),
        (_strides_of_int_type, 13, "attribute strides is INT; ONNX defines it as INTS"),
        (_a_constant_without_output, 13, "Constant takes 1 outputs, found 0"),
        (_pool_ceil, 8, "attribute ceil_mode=1 is not defined for MaxPool at opset 8"),
        (_reduce_mean_axes_attribute, 18, "attribute axes=[2, 3] is not defined for ReduceMean at opset 18"),
        (_concat_without_axis, 13, "required attribute axis is missing"),
        (_clip_of_two_bounds, 13, "min has shape (2,); a bound is a scalar"),
        (_clip_bound_of_shape_1_1, 13, "min has shape (1, 1); a bound is a scalar"),
        (_quantization_of_shape_1_1, 13, "scale and zero point of shapes (1, 1) and (1, 1); expects scalars"),
        (_float64_weight, 13, "not a valid ONNX model ([ShapeInferenceError] (op_type:Gemm): B has inconsistent type"),
    ],
)
def test_a_model_onnxruntime_refuses_as_invalid_is_refused(tmp_path, build, opset, message):
    """An attribute its opset does not define (ceil_mode before opset 10) or of another type than ONNX's, a
    required one left out, a bound of two values, a float64 weight of a float32 op, a tensor written twice or
    a nameless output: the importer took the first, the last or the default and answered."""
    nodes, consts, opset = build(opset)
    path = save(tmp_path, nodes, consts, opset=opset)
    with pytest.raises(Exception, match="ONNXRuntimeError"):  # when the model loads, or when it runs
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    assert message in refused(path)


def test_an_op_from_a_later_opset_is_refused(tmp_path):
    """HardSwish exists from opset 14; an opset-13 model using it is invalid to onnxruntime."""
    path = save(tmp_path, [helper.make_node("HardSwish", ["x"], ["y"], name="hs")], {}, opset=13)
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "HardSwish is defined from opset 14; the model's opset is 13" in refused(path)


@pytest.mark.parametrize("operand", ["w", "c"])
def test_gemm_operands_holding_inf_at_alpha_and_beta_1_run_as_onnxruntime_runs_them(tmp_path, operand):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "c"], ["y"])]
    consts = {"w": np.ones((8, 2), np.float32), "c": np.array([0.0, 1.0], np.float32)}
    consts[operand][0] = np.inf
    got, want = both(save(tmp_path, nodes, consts))
    assert np.isinf(want[0, 0])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_conv_before_a_requantized_clip_skips_the_masked_outputs(tmp_path):
    """Conv -> Q -> DQ -> Clip(0, 6) -> Q of another scale: the requantization between the conv and the site
    (one-input qconcat) is element for element, so the conv stays on the site's producer chain and skips
    what the mask overwrites (it computed every output after the requantization came in)."""
    from velcro_ref.masks import MaskSet

    rng = np.random.default_rng(3)
    consts = {"xs": np.float32(0.05), "xz": np.int8(0), "cs": np.float32(0.28), "cz": np.int8(-5)}
    consts |= {"rs": np.float32(6 / 255), "rz": np.int8(-128), "lo": np.float32(0), "hi": np.float32(6)}
    consts |= {"w": rng.integers(-127, 128, (6, 2, 3, 3)).astype(np.int8), "ws": np.float32(0.01), "wz": np.int8(0)}
    nodes = [
        helper.make_node(Q, ["x", "xs", "xz"], ["xq"]),
        helper.make_node(DQ, ["xq", "xs", "xz"], ["xd"]),
        helper.make_node(DQ, ["w", "ws", "wz"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(Q, ["c", "cs", "cz"], ["cq"]),
        helper.make_node(DQ, ["cq", "cs", "cz"], ["cd"]),
        helper.make_node("Clip", ["cd", "lo", "hi"], ["r"], name="clip"),
        helper.make_node(Q, ["r", "rs", "rz"], ["rq"]),
        helper.make_node(DQ, ["rq", "rs", "rz"], ["y"]),
    ]
    model = Model(import_onnx(save(tmp_path, nodes, consts, x_shape=("N", 2, 4, 5))))
    assert model.plan.chains["clip"] == ("conv",)
    mask = rng.random((6, 4, 5)) < 0.5
    masks = MaskSet(model.fingerprint, {"clip": (mask, np.full((6, 4, 5), 1.5, np.float32))}, {"name": "t"})
    x = rng.uniform(-3, 3, (2, 2, 4, 5)).astype(np.float32)
    y, macs = model.run_counted(x, masks=masks)
    assert macs["conv"] == 2 * int(np.count_nonzero(~mask)) * 2 * 3 * 3
    dense = model.run(x)
    np.testing.assert_array_equal(y[:, ~mask], dense[:, ~mask])
    np.testing.assert_array_equal(y[:, mask], np.float32(np.rint(1.5 / np.float32(6 / 255)) * np.float32(6 / 255)))


def test_two_nodes_of_one_name_are_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="same"), helper.make_node("Relu", ["r"], ["y"], name="same")]
    path = save(tmp_path, nodes, {})
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "two or more nodes named 'same'" in refused(path)


@pytest.mark.parametrize("is_test", [0, 1])
def test_a_dropout_before_opset_7_runs_only_in_test_mode(tmp_path, is_test):
    """Dropout-6: is_test=0, its default, drops elements at random (training mode); is_test=1 is Y = X."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y"], is_test=is_test)]
    path = save(tmp_path, nodes, {}, opset=6)
    if not is_test:
        assert "is_test=0 before opset 7: training mode" in refused(path)
        return
    np.testing.assert_array_equal(Model(import_onnx(path)).run(X), np.maximum(X, 0))


def test_metadata_nested_too_deeply_is_refused_in_one_line(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], {})
    model = onnx.load(str(path))
    helper.set_model_props(model, {"velcro.meta": "[" * 100_000 + "]" * 100_000})
    path.write_bytes(model.SerializeToString())
    assert "metadata 'velcro.meta' is not valid JSON (nested too deeply" in refused(path)


def test_an_initializer_stored_twice_is_refused(tmp_path):
    """ONNX names initializers once; onnxruntime runs such a model with one of the two (which one depends on
    the shape) and onnx's reference evaluator with the last: no answer is the right one."""
    from onnx.reference import ReferenceEvaluator

    nodes, x = [helper.make_node("Conv", ["x", "w"], ["y"])], np.ones((1, 2, 3, 3), np.float32)
    path = save(tmp_path, nodes, {"w": np.ones((2, 2, 3, 3), np.float32)}, x_shape=("N", 2, 3, 3))
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.full((2, 2, 3, 3), 2, np.float32), "w"))
    path.write_bytes(model.SerializeToString())
    got_ort = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got_ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert not np.allclose(got_ort, got_ref)
    assert "initializer 'w' stored twice; ONNX initializer names are unique" in refused(path)


XO = 2 + np.abs(X)


def _clip_at_the_largest_float(form):
    """Conv whose filter 0 overflows to +inf (on XO, every product does), then a Clip from 0 whose maximum
    is float32's largest value (opset 7's default, given at opset 13, absent at opset 13: ONNX's default)
    or +inf (given)."""
    big = np.finfo(np.float32).max
    consts = {"w": np.array([3e38, 1.0], np.float32).reshape(2, 1, 1, 1) * np.ones((2, 2, 1, 1), np.float32)}
    if form == "opset 7":
        return [helper.make_node("Clip", ["c"], ["y"], min=0.0)], consts, 7
    if form == "absent":
        return [helper.make_node("Clip", ["c", "lo"], ["y"])], consts | {"lo": np.float32(0)}, 13
    hi = big if form == "given" else np.float32(np.inf)
    return [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], consts | {"lo": np.float32(0), "hi": hi}, 13


@pytest.mark.parametrize("form", ["opset 7", "given", "absent", "inf"])
def test_a_clip_to_the_largest_float_clamps_inf_as_onnxruntime_does(tmp_path, form):
    """It ran as a plain relu, which keeps +inf where Clip gives the largest float (and 0 times it is 0, not NaN)."""
    from velcro_ref.onnx_export import export_onnx

    clip, consts, opset = _clip_at_the_largest_float(form)
    path = save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"]), *clip], consts, opset=opset)
    got, want = both(path, XO)
    assert np.isinf(want[:, 0]).all() == (form == "inf") and np.isfinite(want[:, 1]).all()
    np.testing.assert_array_equal(got, want)
    export_onnx(import_onnx(path), tmp_path / "back.onnx")
    back = ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(back.run(None, {back.get_inputs()[0].name: XO})[0], want)


def test_a_profile_of_a_clip_to_the_largest_float_sees_that_float(tmp_path):
    from velcro_ref.stats import collect_stats

    clip, consts, opset = _clip_at_the_largest_float("absent")
    path = save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"]), *clip], consts, opset=opset)
    model = Model(import_onnx(path))
    (site,) = collect_stats(model, XO, batch=1).sites.values()
    assert site.max[0].max() == np.finfo(np.float32).max and np.isfinite(site.m2).all()


@pytest.mark.parametrize("form", ["given", "inf"])
def test_info_shows_the_largest_float_a_relu_clamps_to(tmp_path, form, capsys):
    """`velcro info` printed no attribute, so a relu clamping +inf to float32's largest value read as a plain relu."""
    import json

    from velcro_ref import cli

    clip, consts, opset = _clip_at_the_largest_float(form)
    path = save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"]), *clip], consts, opset=opset)
    assert cli.main(["import-onnx", str(path), "-o", str(tmp_path / "m.h5")]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "m.h5")]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if " relu " in line]
    assert row.endswith("max=3.4028235e+38") == (form == "given"), row
    assert cli.main(["info", str(tmp_path / "m.h5"), "--json"]) == 0
    (relu,) = [layer for layer in json.loads(capsys.readouterr().out)["layers"] if layer["op"] == "relu"]
    assert relu["attrs"] == ({"max": float(np.finfo(np.float32).max)} if form == "given" else {})


@pytest.mark.parametrize("side", [2901, 2902])  # 255 * 2901^2 fits int32, 255 * 2902^2 does not
def test_an_int8_global_average_pool_whose_sum_can_pass_int32_is_refused(tmp_path, side):
    """onnxruntime sums the plane in int32 and wraps: codes of 255 with zero point 0 gave it 0 for a mean of
    170. The sum is an accumulator as a conv's is, refused where its worst case exceeds int32."""
    from velcro_ref.errors import AccumulatorOverflowError

    consts = {"xs": np.float32(0.02), "xz": np.uint8(0), "ys": np.float32(0.03), "yz": np.uint8(0)}
    nodes = [
        helper.make_node(Q, ["x", "xs", "xz"], ["q"]),
        helper.make_node("QLinearGlobalAveragePool", ["q", "xs", "xz", "ys", "yz"], ["p"], domain="com.microsoft"),
        helper.make_node(DQ, ["p", "ys", "yz"], ["y"]),
    ]
    path = save(tmp_path, nodes, consts, x_shape=("N", 1, side, side))
    model = onnx.load(str(path))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path.write_bytes(model.SerializeToString())
    x = np.full((1, 1, side, side), 255 * 0.02, np.float32)
    if side == 2902:
        with pytest.raises(AccumulatorOverflowError, match="int32 accumulator can overflow"):
            Model(import_onnx(path))
        from velcro_ref import cli  # nor does import-onnx write a model no command could load

        assert cli.main(["import-onnx", str(path), "-o", str(tmp_path / "m.h5")]) == 1
        assert not (tmp_path / "m.h5").exists()
        return
    got, want = both(path, x)
    np.testing.assert_array_equal(got, want)
    assert abs(float(want.ravel()[0]) / 0.03 - 170) < 0.5


def test_quantized_weights_read_by_a_float_op_are_refused_naming_why(tmp_path):
    """DequantizeLinear -> Flatten -> Gemm(DequantizeLinear(int8 weights)) -> QuantizeLinear: the Gemm's data
    input is float (no QuantizeLinear -> DequantizeLinear after the Flatten), so it would run as a float op;
    the refusal said its weight was computed at run time."""
    rng = np.random.default_rng(0)
    consts = {"xs": np.float32(0.02), "xz": np.int8(0), "ws": np.float32(0.002), "wz": np.int8(0)}
    consts |= {"w": rng.integers(-127, 128, (5, 8)).astype(np.int8), "ys": np.float32(0.2), "yz": np.int8(0)}
    nodes = [
        helper.make_node(Q, ["x", "xs", "xz"], ["q"]),
        helper.make_node(DQ, ["q", "xs", "xz"], ["d"]),
        helper.make_node("Flatten", ["d"], ["f"]),
        helper.make_node(DQ, ["w", "ws", "wz"], ["dw"]),
        helper.make_node("Gemm", ["f", "dw"], ["g"], transB=1),
        helper.make_node(Q, ["g", "ys", "yz"], ["gq"]),
        helper.make_node(DQ, ["gq", "ys", "yz"], ["y"]),
    ]
    path = save(tmp_path, nodes, consts)
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0].shape == (1, 5)
    assert "weight ('dw') is a DequantizeLinear of quantized weights read by a float op" in refused(path)


def _quantized_matmul(tmp_path, kind, w_scale_shape, out_scale_shape=(), w_zero_shape=None):
    """x (N, 8) -> QuantizeLinear -> QLinearMatMul, QGemm or QLinearAdd (of x with itself) -> DequantizeLinear."""
    rng = np.random.default_rng(0)
    ws = np.full(w_scale_shape, 0.01, np.float32) if w_scale_shape != "per-output" else np.float32([0.01, 0.02, 0.03])
    wz = np.zeros(np.shape(ws) if w_zero_shape is None else w_zero_shape, np.int8)
    consts = {
        "xs": np.float32(0.05), "xz": np.uint8(128), "ws": ws, "wz": wz,
        "ys": np.full(out_scale_shape, 0.1, np.float32), "yz": np.full(out_scale_shape, 128, np.uint8),
    }  # fmt: skip
    if kind == "QLinearMatMul":
        consts["w"] = rng.integers(-9, 9, (8, 3)).astype(np.int8)
        mid = helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"])
    elif kind == "QGemm":
        consts["w"] = rng.integers(-9, 9, (3, 8)).astype(np.int8)
        args = ["xq", "xs", "xz", "w", "ws", "wz", "", "ys", "yz"]
        mid = helper.make_node("QGemm", args, ["yq"], transB=1, domain="com.microsoft")
    else:
        args = ["xq", "xs", "xz", "xq", "xs", "xz", "ys", "yz"]
        mid = helper.make_node("QLinearAdd", args, ["yq"], domain="com.microsoft")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        mid,
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "kind, w_shape, out_shape, taken, zero_shape",
    [
        ("QGemm", "per-output", (), False, ()),  # onnxruntime: scale and zero point of one size
        ("QGemm", "per-output", (), True, (3,)),
        ("QGemm", (1,), (), False, ()),  # one value each, but not of one shape
        ("QLinearMatMul", (), (), True, None),
        ("QLinearMatMul", "per-output", (), True, None),
        ("QLinearMatMul", (1, 3), (), True, None),  # per column of B (K, N), as (1, N)
        ("QLinearMatMul", (1, 1), (), False, None),
        ("QLinearMatMul", (3, 1), (), False, None),
        ("QGemm", (1,), (), True, None),
        ("QGemm", (1, 1), (), False, None),
        ("QGemm", (1, 3), (), False, None),
        ("QLinearAdd", (), (), True, None),
        ("QLinearAdd", (), (1,), False, None),  # contrib schema: "must be a scalar"
        ("QLinearMatMul", (), (1,), True, None),
    ],
)
def test_quantization_parameters_of_the_shapes_onnxruntime_takes_are_taken_and_no_others(
    tmp_path, kind, w_shape, out_shape, taken, zero_shape
):
    """Weight scales and zero points of shape (1, 1) or (K, 1), and a contrib op's activation scale of
    shape (1,), were imported (reshaped) where onnxruntime refuses the model."""
    path = _quantized_matmul(tmp_path, kind, w_shape, out_shape, zero_shape)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    try:
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    except Exception:  # onnxruntime refuses it (when the model loads, or when it runs)
        want = None
    assert (want is not None) == taken
    if taken:
        assert np.array_equal(Model(import_onnx(path)).run(x), want)
    else:
        assert "scale and zero point of shapes" in refused(path) or "expects one shape" in refused(path)


def test_nodes_out_of_topological_order_are_refused_naming_the_unnamed_node(tmp_path):
    """The refusal named the node '' (onnxruntime sorts such a graph; ONNX requires the order)."""
    nodes = [helper.make_node("Relu", ["h"], ["y"]), helper.make_node("Relu", ["x"], ["h"], name="first")]
    message = refused(save(tmp_path, nodes, {}))
    assert "an unnamed 'Relu' node: reads tensor 'h' before it is produced" in message and "''" not in message


def test_a_sparse_initializer_is_refused_by_name(tmp_path):
    """Its weight was never read: the refusal said it "is computed at run time"."""
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    path = save(tmp_path, nodes, {})
    model = onnx.load(str(path))
    values = numpy_helper.from_array(np.array([1.5], np.float32), "w")
    indices = numpy_helper.from_array(np.array([0], np.int64), "w_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1]))
    onnx.save(model, str(path))
    assert "sparse initializer(s) 'w': not read by this importer" in refused(path)


def test_a_folded_cast_beyond_float32_gives_no_numpy_warning(tmp_path):
    """Cast(float64 1e300 -> float) of a conv's weight printed NumPy's overflow warning; the weight
    is infinite, as ONNX's Cast makes it, and a model file of it is refused (NaN or Inf parameters)."""
    w = np.full((2, 2, 1, 1), 1e300)
    nodes = [
        helper.make_node("Cast", ["w64"], ["w"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
    ]
    path = save(tmp_path, nodes, {"w64": w})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = import_onnx(path)
    assert all(np.isposinf(v).all() for v in graph.params.values())


@pytest.mark.parametrize("versions", [(13, 11), (11, 13)])
def test_the_default_domain_at_two_opset_versions_is_refused(tmp_path, versions):
    """Softmax(axis=1) means another thing at opset 11 (over C*H*W) and 13 (over channels). Listed twice,
    the importer took the first version, onnxruntime the last: one number apart by up to 0.985."""
    path = save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], axis=1)], {})
    model = onnx.load(str(path))
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", v) for v in versions])
    path.write_bytes(model.SerializeToString())
    assert "the default domain 2 versions (11, 13)" in refused(path)
    same = save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, name="same")
    model = onnx.load(str(same))
    model.opset_import.extend([helper.make_opsetid("ai.onnx", 13)])  # listed twice at one version: as once
    same.write_bytes(model.SerializeToString())
    got, want = both(same)
    assert np.allclose(got, want, rtol=1e-6, atol=0)


def test_a_metadata_key_given_twice_is_refused(tmp_path):
    """Two `velcro.meta` entries (onnx's checker refuses the file): the importer took the last one's
    preprocessing without a word, and `golden --data` then fed raw pixels."""
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], {})
    model = onnx.load(str(path))
    for meta in ('{"preprocessing": {"scale": 1}}', '{"preprocessing": {"scale": 2}}'):
        model.metadata_props.append(onnx.StringStringEntryProto(key="velcro.meta", value=meta))
    path.write_bytes(model.SerializeToString())
    assert "metadata key(s) 'velcro.meta' given twice" in refused(path)


def test_a_node_attribute_given_twice_is_refused(tmp_path):
    """Gemm with alpha=1 and alpha=3: the importer took the last (3) without a word; onnxruntime refuses
    the graph ("Attribute 'alpha' appeared multiple times")."""
    gemm = helper.make_node("Gemm", ["flat", "w"], ["y"], alpha=1.0)
    gemm.attribute.extend([helper.make_attribute("alpha", 3.0)])
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), gemm]
    path = save(tmp_path, nodes, {"w": np.ones((8, 3), np.float32)})
    assert "attribute(s) 'alpha' given twice" in refused(path)
