"""Drawn float convs quantized by onnxruntime's quantize_static, against onnxruntime bit for bit.

A conv with drawn channels, groups, kernel, strides, dilations and pads, alone or followed by a
relu, a max pool, a global average pool (squeezed to (N, C) or not), an average pool, a softmax
head, or added to or concatenated with a second conv, on a drawn batch; quantized by quantize_static (QDQ or
QOperator, per-tensor or per-channel weights, uint8 or int8 activations, MinMax over three drawn
batches; in QDQ the weights may stay float32 and quantized in the graph, `AddQDQPairToWeight`),
imported by `import_onnx` and run by the engine: every output element must equal onnxruntime's
in its exact mode (robust_util's `int8_session`), and so must onnxruntime's run of the engine's
QDQ export; or the import is refused in one line (a softmax of a quantized tensor: onnxruntime
runs its own QLinearSoftmax there). Models onnxruntime cannot quantize or run (an empty output)
are not judged.
"""

import logging

import numpy as np
import onnx
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from robust_util import int8_session

from velcro_ref.engine import Model
from velcro_ref.errors import VelcroError
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import import_onnx

TAILS = ["none", "relu", "maxpool", "gap", "add", "concat", "avgpool", "softmax"]


class Batches(CalibrationDataReader):
    def __init__(self, batches):
        self.batches = iter([{"x": x} for x in batches])

    def get_next(self):
        return next(self.batches, None)


@st.composite
def quantizable_convs(draw):
    """(float model, input shape, seed, format, activation type, per-channel, weights quantized in the
    graph: AddQDQPairToWeight, QDQ only)."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    c = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 24, 32]))
    shape = (draw(st.sampled_from([1, 2, 8, 9])), c, draw(st.integers(3, 16)), draw(st.integers(3, 16)))
    kernel = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    groups = draw(st.sampled_from(sorted({g for g in (1, 2, c) if c % g == 0})))
    k_out = groups * draw(st.sampled_from([1, 2, 3, 8, 16]))
    attrs = {
        "kernel_shape": kernel,
        "strides": [draw(st.integers(1, 2)), draw(st.integers(1, 2))],
        "dilations": [draw(st.integers(1, 2)), draw(st.integers(1, 2))],
        "pads": [draw(st.integers(0, 1)) for _ in range(4)],
        "group": groups,
    }

    def weight(name):
        return numpy_helper.from_array(rng.standard_normal((k_out, c // groups, *kernel), np.float32), name)

    inits = [weight("w"), numpy_helper.from_array(rng.standard_normal(k_out, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", **attrs)]
    tail = draw(st.sampled_from(TAILS))
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["conv"], ["y"], name="relu"))
    elif tail == "maxpool":
        pads = [1, 1, 1, 1] if draw(st.booleans()) else [0, 0, 0, 0]
        nodes.append(helper.make_node("MaxPool", ["conv"], ["y"], name="pool", kernel_shape=[2, 2], pads=pads))
    elif tail == "gap":
        squeeze = draw(st.booleans())  # (N, C, 1, 1) -> (N, C): a flatten
        nodes.append(helper.make_node("GlobalAveragePool", ["conv"], ["gap" if squeeze else "y"], name="gap"))
        if squeeze:
            inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
            nodes.append(helper.make_node("Squeeze", ["gap", "axes"], ["y"], name="squeeze"))
    elif tail == "avgpool":  # onnxruntime runs QLinearAveragePool: qavg_pool
        pads = [1, 1, 1, 1] if draw(st.booleans()) else [0, 0, 0, 0]
        include = draw(st.sampled_from([0, 1]))
        nodes.append(
            helper.make_node(
                "AveragePool", ["conv"], ["y"], name="pool", kernel_shape=[2, 2], pads=pads, count_include_pad=include
            )
        )
    elif tail == "softmax":  # refused: onnxruntime runs QLinearSoftmax there
        nodes.append(helper.make_node("GlobalAveragePool", ["conv"], ["gap"], name="gap"))
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
        nodes.append(helper.make_node("Softmax", ["flat"], ["y"], name="softmax", axis=1))
    elif tail in ("add", "concat"):
        inits.append(weight("w2"))
        nodes.append(helper.make_node("Conv", ["x", "w2"], ["conv2"], name="conv2", **attrs))
        extra = {"axis": 1} if tail == "concat" else {}
        nodes.append(helper.make_node(tail.capitalize(), ["conv", "conv2"], ["y"], name=tail, **extra))
    end = draw(st.sampled_from([None, "Identity", "Dropout"]))  # quantize_static keeps it after the last DQ
    if end:
        nodes[-1].output[0] = "last"
        nodes.append(helper.make_node(end, ["last"], ["y"], name="end"))
    graph = helper.make_graph(
        nodes,
        "drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    fmt, act = draw(st.sampled_from(["QDQ", "QOperator"])), draw(st.sampled_from(["uint8", "int8"]))
    pair = fmt == "QDQ" and draw(st.booleans())  # AddQDQPairToWeight: float weights, quantized in the graph
    return model, shape, seed, fmt, act, draw(st.booleans()), pair, end


@settings(max_examples=300)
@given(quantizable_convs())
def test_quantized_conv_matches_onnxruntime_bit_for_bit_or_is_refused(tmp_path_factory, case):
    model, shape, seed, fmt, act, per_channel, pair, end = case
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("int8")
    onnx.save(model, str(folder / "float.onnx"))
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    logging.disable(logging.WARNING)  # quantize_static's notes on each model
    try:
        quantize_static(
            str(folder / "float.onnx"),
            str(folder / "q.onnx"),
            Batches([rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(3)]),
            quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"AddQDQPairToWeight": pair},
        )
        want = int8_session(folder / "q.onnx", act, fmt).run(None, {"x": x})[0]
    except Exception:  # onnxruntime cannot run the float or the quantized model (an empty output)
        event("not judged: onnxruntime cannot run it")
        return
    finally:
        logging.disable(logging.NOTSET)
    try:
        graph = import_onnx(folder / "q.onnx")
        got = Model(graph).run(x)
    except VelcroError as e:
        assert "\n" not in str(e).strip(), f"refusal not one line: {e}"
        # the refusals of the weights' form itself would hide an importer that no longer reads it
        assert not (pair and "DequantizeLinear of an initializer" in str(e)), str(e)
        assert not (end and "not produced by any node" in str(e)), str(e)  # nor of a trailing Identity
        event(f"refused{' (weights quantized in the graph)' if pair else ''}")
        return
    event(f"compared: {fmt} {act}{' weights quantized in the graph' if pair else ''}")
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg=f"{fmt} {act} per_channel={per_channel}")
    export_onnx(graph, folder / "exported.onnx")  # QDQ, run by onnxruntime as it runs its own
    exported = int8_session(folder / "exported.onnx", act, "QDQ").run(None, {"input": x})[0]
    np.testing.assert_array_equal(exported, got, err_msg=f"QDQ export of {fmt} {act} per_channel={per_channel}")
