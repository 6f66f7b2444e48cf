"""Golden: load-path rewrites of ONNX forms they must not take in (mutation testing, round 4).

Each model is built with onnx.helper; the engine's output must be onnxruntime's (same shape,
within float32 rounding), or the import must fail with a one-line VelcroError.
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from velcro_ref.engine import Model
from velcro_ref.errors import VelcroError
from velcro_ref.onnx_import import import_onnx

X = np.array([[[[-1.0, -0.3], [0.1, 0.5]], [[1.5, 2.7], [-0.02, 0.26]]]], np.float32)  # (1, 2, 2, 2)


def save(tmp_path, nodes, consts, opset=13, x_shape=("N", 2, 2, 2)):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def onnxruntime_or_refused(path, x=X):
    """The engine's output equals onnxruntime's (shape and values, float32 rounding), or the import
    is refused in one line (also where onnxruntime cannot run the model)."""
    try:
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    except Exception:  # noqa: BLE001 - onnxruntime refuses it: so must the importer
        want = None
    try:
        graph = import_onnx(path)
    except VelcroError as e:
        assert str(e).strip() and "\n" not in str(e).strip()
        return None
    assert want is not None, "imported a model onnxruntime cannot run"
    got = Model(graph).run(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return got


def test_a_softmax_at_opset_13_without_axis_is_over_the_last_axis(tmp_path):
    """From opset 13 Softmax's axis defaults to -1 (here W of (N, 2, 2, 2)), not the channels."""
    path = save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"])], {}, opset=13)
    onnxruntime_or_refused(path)


def test_a_matmul_read_twice_does_not_take_the_bias_of_one_reader(tmp_path):
    """m = MatMul(flatten(x), W) is read by Add(m, bias) and by the Add after it: y = (m + bias) + m."""
    rng = np.random.default_rng(4)
    consts = {"w": rng.standard_normal((8, 3)).astype(np.float32), "b": np.array([1.0, -2.0, 3.0], np.float32)}
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["mb"]),
        helper.make_node("Add", ["mb", "m"], ["y"]),
    ]
    onnxruntime_or_refused(save(tmp_path, nodes, consts))


@pytest.mark.parametrize("axis", [2, 3, -1, -2])
def test_a_concat_along_another_axis_than_the_channels(tmp_path, axis):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["x", "r"], ["y"], axis=axis)]
    onnxruntime_or_refused(save(tmp_path, nodes, {}))


@pytest.mark.parametrize("axes", [[2], [3], [-1]])
def test_a_squeeze_of_some_of_the_unit_axes_keeps_the_others(tmp_path, axes):
    """(N, 2, 1, 1) squeezed along one of its unit axes is (N, 2, 1), not a flatten."""
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["y"])]
    x = X[:, :, :1, :1].copy()
    path = save(tmp_path, nodes, {"axes": np.array(axes, np.int64)}, x_shape=("N", 2, 1, 1))
    onnxruntime_or_refused(path, x)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
def test_auto_pad_same_puts_an_odd_padding_s_extra_row_where_onnx_says(tmp_path, op, auto_pad):
    """A 2x2 window, stride 1, on 3x3: one row and column of padding, at the end for SAME_UPPER and at
    the beginning for SAME_LOWER (the output is onnxruntime's, whose windows differ)."""
    x = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3) * np.float32(0.5) - 4
    if op == "Conv":
        w = np.random.default_rng(6).standard_normal((3, 2, 2, 2)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, kernel_shape=[2, 2])]
        consts = {"w": w}
    else:
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], auto_pad=auto_pad, kernel_shape=[2, 2])]
        consts = {}
    got = onnxruntime_or_refused(save(tmp_path, nodes, consts, x_shape=("N", 2, 3, 3)), x)
    assert got is not None  # both forms are imported
