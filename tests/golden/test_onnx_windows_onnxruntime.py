"""Conv, MaxPool and AveragePool ONNX nodes with drawn attributes, against onnxruntime.

One node per model, its attributes drawn over what ONNX allows (kernel, strides, dilations,
explicit pads or auto_pad, groups, bias, ceil_mode, count_include_pad) on drawn input sizes. The
importer and the engine must give onnxruntime's output, or refuse the node with a one-line
VelcroError; never another output. Where onnxruntime refuses a node itself (it runs no dilated conv
with auto_pad SAME_*), onnx's reference implementation is the oracle; a node both refuse is not
judged. Tolerance: 1e-4 of the output's magnitude (the engine sums in its own order).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from velcro_ref.engine import Model
from velcro_ref.errors import UnsupportedOpError, VelcroError
from velcro_ref.onnx_import import import_onnx


@st.composite
def window_nodes(draw):
    """(op, input shape, ONNX attributes, initializers, seed) of one Conv / MaxPool / AveragePool."""
    op = draw(st.sampled_from(["Conv", "MaxPool", "AveragePool"]))
    c = draw(st.integers(1, 6))
    shape = (draw(st.integers(1, 2)), c, draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    kernel = [draw(st.integers(1, 5)), draw(st.integers(1, 5))]
    attrs = {"kernel_shape": kernel}
    if draw(st.booleans()):
        attrs["strides"] = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    if op == "Conv" and draw(st.booleans()):
        attrs["dilations"] = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    padding = draw(st.sampled_from(["none", "pads", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if padding == "pads":
        attrs["pads"] = [draw(st.integers(0, 3)) for _ in range(4)]
    elif padding != "none":
        attrs["auto_pad"] = padding
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    inits = []
    if op == "Conv":
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        k_out = groups * draw(st.integers(1, 3))
        if groups > 1:
            attrs["group"] = groups
        inits.append(numpy_helper.from_array(rng.standard_normal((k_out, c // groups, *kernel), np.float32), "w"))
        if draw(st.booleans()):
            inits.append(numpy_helper.from_array(rng.standard_normal(k_out, np.float32), "b"))
    else:
        if draw(st.booleans()):
            attrs["ceil_mode"] = 1
        if op == "AveragePool" and draw(st.booleans()):
            attrs["count_include_pad"] = 1
    return op, shape, attrs, inits, seed


def one_node_model(op, shape, attrs, inits):
    node = helper.make_node(op, ["x", *(t.name for t in inits)], ["y"], name="node", **attrs)
    graph = helper.make_graph(
        [node],
        "window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def oracle(model, x):
    """onnxruntime's output, else onnx's reference implementation's, else None."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    except Exception:  # onnxruntime refuses the node
        pass
    try:
        return ReferenceEvaluator(model).run(None, {"x": x})[0]
    except Exception:  # so does the reference
        return None


# auto_pad SAME_UPPER where ceil(3 / 3) = 1 output column asks for padding -2: onnxruntime reads
# the middle column, TensorFlow's rule the first one (refused); the same with ceil_mode, where
# onnx's shape inference gives 2 columns and onnxruntime 1 (refused).
NEGATIVE_SAME = ("AveragePool", (1, 1, 6, 3), {"kernel_shape": [2, 1], "strides": [1, 3], "auto_pad": "SAME_UPPER"})


@settings(max_examples=1000)
@given(window_nodes())
@example((*NEGATIVE_SAME, [], 0))
@example(("MaxPool", (1, 1, 6, 3), {**NEGATIVE_SAME[2], "ceil_mode": 1}, [], 0))
def test_window_node_matches_onnxruntime_or_is_refused_in_one_line(tmp_path_factory, node):
    op, shape, attrs, inits, seed = node
    model = one_node_model(op, shape, attrs, inits)
    path = tmp_path_factory.mktemp("window") / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(seed).standard_normal(shape, np.float32)
    try:
        got = Model(import_onnx(path)).run(x)
    except VelcroError as e:
        assert "\n" not in str(e).strip(), f"refusal not one line: {e}"
        return
    want = oracle(model, x)
    if want is None:
        return
    assert got.shape == want.shape, f"{op} {attrs} on {shape}: shape {got.shape}, expected {want.shape}"
    bound = 1e-4 * max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert np.max(np.abs(got - want), initial=0.0) <= bound, f"{op} {attrs} on {shape}"


@pytest.mark.parametrize(
    "attrs, needle",
    [
        (NEGATIVE_SAME[2], "asks for padding -2 along W (size 3, kernel 1, stride 3)"),
        ({**NEGATIVE_SAME[2], "strides": [1, 1], "ceil_mode": 1}, "auto_pad SAME_UPPER with ceil_mode 1"),
    ],
)
def test_auto_pad_where_onnx_implementations_differ_is_refused(tmp_path, attrs, needle):
    path = tmp_path / "m.onnx"
    onnx.save(one_node_model("AveragePool", NEGATIVE_SAME[1], attrs, []), str(path))
    with pytest.raises(UnsupportedOpError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(path)
