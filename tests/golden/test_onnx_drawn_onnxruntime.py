"""ONNX models with drawn attributes and layouts, against onnxruntime.

Two kinds of model: one Conv, MaxPool or AveragePool node with its attributes drawn over what ONNX
allows (kernel, strides, dilations, explicit pads or auto_pad, groups, bias, ceil_mode,
count_include_pad) on drawn input sizes; and short chains of the other mapped ops in drawn
opsets (batch norm, relu, Clip in its forms, HardSwish, SiLU, a residual Add, Concat, pools,
Dropout, Identity) with a drawn head (GlobalAveragePool and a Squeeze of drawn axes, ReduceMean
with axes as attribute or input, Flatten, Reshape, Gemm with transB, alpha, beta and bias shapes,
MatMul and Add, Softmax).
The importer and the engine must give onnxruntime's output, or refuse the model with a one-line
VelcroError; never another output. Where onnxruntime refuses a model itself (it runs no dilated
conv with auto_pad SAME_*), onnx's reference implementation is the oracle; a model both refuse
is not judged. Tolerance: 1e-4 of the output's magnitude (the engine sums in its own order).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from velcro_ref.engine import Model
from velcro_ref.errors import UnsupportedOpError, VelcroError
from velcro_ref.graph import validate
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
# An end pad as large as the kernel: onnxruntime refuses it, onnx's reference gives NaN (an average) or
# another size (a max); the engine ran it to its own answer
PAD_OF_KERNEL = {"kernel_shape": [1, 3], "strides": [2, 3], "pads": [0, 0, 1, 0], "ceil_mode": 1}


def assert_matches_or_refused(model, x, tmp_path_factory):
    """The engine's output of `model` on x equals the oracle's, or the import is refused in one line."""
    path = tmp_path_factory.mktemp("drawn") / "m.onnx"
    onnx.save(model, str(path))
    try:
        got = Model(import_onnx(path)).run(x)
    except VelcroError as e:
        assert "\n" not in str(e).strip(), f"refusal not one line: {e}"
        event("refused")
        return
    want = oracle(model, x)
    if want is None:
        event("not judged: no oracle runs it")
        return
    event("compared")
    what = [(n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in model.graph.node]
    assert got.shape == want.shape, f"{what} on {x.shape}: shape {got.shape}, expected {want.shape}"
    bound = 1e-4 * max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert np.max(np.abs(got - want), initial=0.0) <= bound, f"{what} on {x.shape}"


@settings(max_examples=1000)
@given(window_nodes())
@example((*NEGATIVE_SAME, [], 0))
@example(("MaxPool", (1, 1, 6, 3), {**NEGATIVE_SAME[2], "ceil_mode": 1}, [], 0))
@example(("AveragePool", (1, 1, 1, 1), PAD_OF_KERNEL, [], 0))
@example(("MaxPool", (1, 1, 1, 2), {"kernel_shape": [1, 2], "pads": [0, 0, 1, 0], "ceil_mode": 1}, [], 0))
def test_window_node_matches_onnxruntime_or_is_refused_in_one_line(tmp_path_factory, node):
    op, shape, attrs, inits, seed = node
    x = np.random.default_rng(seed).standard_normal(shape, np.float32)
    assert_matches_or_refused(one_node_model(op, shape, attrs, inits), x, tmp_path_factory)


class _Nodes:
    """Nodes and initializers of a drawn graph."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, value):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, **attrs):
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"n{len(self.nodes)}", **attrs))
        return out


BODY = ["conv", "bn", "relu", "clip", "hardswish", "silu", "add", "concat", "maxpool", "avgpool", "dropout", "identity"]
HEADS = ["none", "gap", "reducemean", "flatten", "reshape", "gemm", "matmul", "softmax"]


@st.composite
def op_chains(draw):
    """(model, input shape, seed): body ops on an NCHW input, then a head, in a drawn opset."""
    opset = draw(st.sampled_from([11, 13, 17, 19]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n, c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    g, t, shape = _Nodes(), "x", [c, h, w]  # shape: of t, per image

    def normal(*dims):
        return rng.standard_normal(dims, np.float32)

    for op in draw(st.lists(st.sampled_from(BODY), min_size=1, max_size=4)):
        cc = shape[0]
        if op == "conv":
            k = draw(st.integers(1, 4))
            t = g.node("Conv", [t, g.const(normal(k, cc, 1, 1)), g.const(normal(k))], kernel_shape=[1, 1])
            shape = [k, *shape[1:]]
        elif op == "bn":
            var = rng.uniform(0.1, 2.0, cc).astype(np.float32)
            params = [g.const(normal(cc)) for _ in range(3)] + [g.const(var)]
            t = g.node("BatchNormalization", [t, *params], epsilon=draw(st.sampled_from([1e-5, 1e-3, 0.1])))
        elif op == "relu":
            t = g.node("Relu", [t])
        elif op == "clip":  # bounds as inputs (opset 11 on), either left out; [0, float32's largest]: relu with max
            lo = draw(st.sampled_from([None, 0.0, -1.0, 0.5]))
            hi = draw(st.sampled_from([None, 6.0, 1.0, np.inf, np.finfo(np.float32).max]))
            ins = [t, "" if lo is None else g.const(np.float32(lo)), "" if hi is None else g.const(np.float32(hi))]
            t = g.node("Clip", ins[: 3 if hi is not None else 2 if lo is not None else 1])
        elif op == "hardswish" and opset >= 14:
            t = g.node("HardSwish", [t])
        elif op == "silu":
            t = g.node("Mul", draw(st.permutations([t, g.node("Sigmoid", [t])])))
        elif op == "add":
            other = g.node("Conv", [t, g.const(normal(cc, cc, 1, 1))], kernel_shape=[1, 1])
            t = g.node("Add", draw(st.permutations([t, other])))
        elif op == "concat":
            t = g.node("Concat", [t, g.node("Relu", [t])], axis=draw(st.sampled_from([1, -3])))
            shape = [2 * cc, *shape[1:]]
        elif op in ("maxpool", "avgpool"):
            kernel = [draw(st.integers(1, shape[1])), draw(st.integers(1, shape[2]))]
            t = g.node("MaxPool" if op == "maxpool" else "AveragePool", [t], kernel_shape=kernel)
            shape = [cc, shape[1] - kernel[0] + 1, shape[2] - kernel[1] + 1]
        elif op == "dropout":
            t = g.node("Dropout", [t])
        elif op == "identity":
            t = g.node("Identity", [t])
    features = int(np.prod(shape))
    head = draw(st.sampled_from(HEADS))
    if head == "gap":
        t = g.node("GlobalAveragePool", [t])
        axes = draw(st.sampled_from(["keep", [2, 3], [-1, -2], [3, 2], [2], [1, 2, 3], [0, 2, 3], [2, 2, 3], None]))
        if axes is None or axes == "keep":
            if axes is None:  # no axes: every axis of size 1, a batch of one too
                t = g.node("Squeeze", [t])
        elif opset >= 13:
            t = g.node("Squeeze", [t, g.const(np.array(axes, np.int64))])
        else:
            t = g.node("Squeeze", [t], axes=axes)
    elif head == "reducemean":
        axes, keep = draw(st.sampled_from([[2, 3], [-1, -2], [3, 2], [1], [2]])), draw(st.sampled_from([0, 1]))
        if opset >= 18:
            t = g.node("ReduceMean", [t, g.const(np.array(axes, np.int64))], keepdims=keep)
        else:
            t = g.node("ReduceMean", [t], axes=axes, keepdims=keep)
    elif head != "none":
        if head == "reshape":
            target = draw(st.sampled_from([[0, -1], [-1, features], [1, -1]]))
            t = g.node("Reshape", [t, g.const(np.array(target, np.int64))])
        else:
            t = g.node("Flatten", [t], axis=draw(st.sampled_from([1, 1, 2, -1])) if head == "flatten" else 1)
        k = draw(st.integers(1, 4))
        if head == "gemm":
            trans_b = draw(st.sampled_from([0, 1]))
            ins = [t, g.const(normal(k, features) if trans_b else normal(features, k))]
            bias = draw(st.sampled_from([None, (k,), (1, k), ()]))
            if bias is not None:
                ins.append(g.const(normal(*bias)))
            alpha, beta = draw(st.sampled_from([1.0, 0.5])), draw(st.sampled_from([1.0, 2.0]))
            t = g.node("Gemm", ins, transB=trans_b, alpha=alpha, beta=beta)
        elif head == "matmul":
            t = g.node("MatMul", [t, g.const(normal(features, k))])
            if draw(st.booleans()):
                t = g.node("Add", draw(st.permutations([t, g.const(normal(k))])))
        elif head == "softmax":
            t = g.node("Softmax", [t], axis=draw(st.sampled_from([1, -1])))
    graph = helper.make_graph(
        g.nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, (n, c, h, w), seed


@settings(max_examples=400)
@given(op_chains())
def test_op_chain_matches_onnxruntime_or_is_refused_in_one_line(tmp_path_factory, chain):
    model, shape, seed = chain
    x = np.random.default_rng(seed).standard_normal(shape, np.float32)
    assert_matches_or_refused(model, x, tmp_path_factory)


@pytest.mark.parametrize(
    "attrs, needle",
    [
        (NEGATIVE_SAME[2], "asks for padding -2 along W (size 3, kernel 1, stride 3)"),
        ({**NEGATIVE_SAME[2], "strides": [1, 1], "ceil_mode": 1}, "auto_pad SAME_UPPER with ceil_mode 1"),
        # onnxruntime: 2 output columns (as without auto_pad); the spec's ceil((3 - 1 + 1) / 3): 1
        ({**NEGATIVE_SAME[2], "auto_pad": "VALID", "ceil_mode": 1}, "auto_pad VALID with ceil_mode 1"),
    ],
)
def test_auto_pad_where_onnx_implementations_differ_is_refused(tmp_path, attrs, needle):
    path = tmp_path / "m.onnx"
    onnx.save(one_node_model("AveragePool", NEGATIVE_SAME[1], attrs, []), str(path))
    with pytest.raises(UnsupportedOpError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(path)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_auto_pad_valid_with_ceil_mode_where_implementations_agree_matches_onnxruntime(tmp_path, op):
    """6 rows and 4 columns, kernel 2 and 3, stride 2 and 1: onnxruntime's ceil((n - k) / s) + 1 and the
    spec's ceil((n - k + 1) / s) agree (3 and 2), so the pool is taken as pads 0."""
    attrs = {"kernel_shape": [2, 3], "strides": [2, 1], "auto_pad": "VALID", "ceil_mode": 1}
    path = tmp_path / "m.onnx"
    onnx.save(one_node_model(op, (1, 2, 6, 4), attrs, []), str(path))
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 4), np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = Model(import_onnx(path)).run(x)
    assert got.shape == want.shape == (1, 2, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("above", [0.0, 2.0**-40, 2.0**-30, 1e-9])
def test_batch_norm_with_variance_near_minus_epsilon_matches_onnxruntime(tmp_path, eps, above):
    """var + eps nearly cancels: the sum is exact in float32 (onnxruntime's arithmetic) only with
    eps taken as the float32 number ONNX stores, so the engine must use that number, not its
    decimal. var + eps = 0 exactly (onnxruntime: NaN and inf) must be refused."""
    var = np.float32(-np.float32(eps) + np.float32(above))
    consts = {"g": [1.0, 2.0], "b": [0.0, 0.5], "m": [0.0, 0.25], "v": [var, var]}
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn", epsilon=eps)
    graph = helper.make_graph(
        [node],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.save(model, str(tmp_path / "bn.onnx"))
    x = np.array([[[[1.0, -2.0, 0.5]], [[1.0, -2.0, 0.5]]]], np.float32)
    sum32 = var + np.float32(eps)
    if sum32 <= 0:  # refused where a model is loaded (the API's Model(graph) lets it run, as onnxruntime)
        with pytest.raises(VelcroError, match="batch_norm needs var \\+ eps > 0"):
            validate(import_onnx(tmp_path / "bn.onnx"))
        return
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = Model(import_onnx(tmp_path / "bn.onnx")).run(x)
    np.testing.assert_allclose(got, want, rtol=4e-7)


@pytest.mark.parametrize(("alpha", "w"), [(2.0, 1e-40), (0.5, 2e-38), (0.25, 3e-38)])
def test_a_gemm_alpha_fold_that_stays_exact_below_the_normal_range_is_taken(tmp_path, alpha, w):
    """alpha times a weight below float32's normal range is folded where the product is exact
    (a power of two on a subnormal with bits to spare) and refused only where bits are lost."""
    weight = np.array([[w, -w]], np.float32)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", alpha=alpha, transB=1)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(tmp_path / "g.onnx"))
    x = np.array([[1e30, 3e29]], np.float32)
    exact = (np.float64(np.float32(w)) * np.float64(np.float32(alpha))).astype(np.float32) == np.float64(
        np.float32(w)
    ) * np.float64(np.float32(alpha))
    if not exact:
        with pytest.raises(VelcroError, match="alpha .* times B leaves float32's range"):
            import_onnx(tmp_path / "g.onnx")
        return
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(Model(import_onnx(tmp_path / "g.onnx")).run(x), want, rtol=1e-6)
