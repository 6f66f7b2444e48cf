"""The onnx package's own node conformance cases, for every op the importer maps.

Each case whose nodes are all ops `import_onnx` maps (`SUPPORTED_ONNX_OPS`) is imported and run:
it must give the case's expected output (within the case's own tolerances, as onnx's backend
runner checks) or be refused with a one-line VelcroError; a different answer, or any other
exception, fails. A case that runs is exported back to ONNX (`export_onnx`), and onnxruntime
running the export must give the expected output too (a quantized export with onnxruntime's exact
integer sums, `_session`).

The engine runs models of one graph input, so the case's other inputs (a conv's weights, a
Gemm's matrix) become initializers holding the case's data. A QOperator case (QLinearConv,
QLinearMatMul: an integer input) runs between a QuantizeLinear of a float input that quantizes
to the case's integers exactly and a DequantizeLinear, as onnxruntime's quantizer writes whole
models; its integers must then equal the expected ones.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from velcro_ref.engine import Model
from velcro_ref.errors import VelcroError
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import SUPPORTED_ONNX_OPS, import_onnx, onnx_key


def _mapped_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # some cases build their data from overflowing casts
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    mapped = set(SUPPORTED_ONNX_OPS)
    return {c.name: c for c in cases if all(onnx_key(n) in mapped for n in c.model.graph.node)}


CASES = _mapped_cases()

# Cases a CNN reference has to run, not refuse: 2-D convs and pools with their padding, stride
# and ceil modes, inference batch norm, Gemm in its forms, the activations, the classifier head
# and an int8 MatMul of an unnamed node. Every one of them must be among the cases and give the expected output.
MUST_RUN = {
    *(f"test_{n}" for n in ("basic_conv_with_padding", "basic_conv_without_padding", "conv_with_autopad_same")),
    *(f"test_conv_with_strides_{n}" for n in ("padding", "no_padding", "and_asymmetric_padding")),
    *(
        f"test_{pool}_2d_{n}"
        for pool in ("maxpool", "averagepool")
        for n in ("default", "ceil", "strides", "same_upper", "same_lower")
        + ("precomputed_pads", "precomputed_strides", "precomputed_same_upper")
    ),
    "test_averagepool_2d_precomputed_pads_count_include_pad",
    "test_averagepool_2d_ceil_last_window_starts_on_pad",
    "test_maxpool_2d_ceil_output_size_reduce_by_one",
    "test_batchnorm_example",
    "test_batchnorm_epsilon",
    *(f"test_gemm_{n}" for n in ("default_no_bias", "default_zero_bias", "default_vector_bias", "transposeB")),
    *(f"test_gemm_{n}" for n in ("alpha", "beta", "default_scalar_bias", "default_single_elem_vector_bias")),
    "test_globalaveragepool",
    "test_globalaveragepool_precomputed",
    "test_relu",
    "test_hardswish",
    "test_clip_default_min",
    "test_softmax_example",
    "test_softmax_large_number",
    "test_softmax_axis_1",
    "test_flatten_axis1",
    "test_flatten_default_axis",
    "test_matmul_2d",
    "test_qlinearmatmul_2D_int8_float32",
}


def _array(value):
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _initializers(names, values):
    """The case's inputs `names` as initializers holding `values`."""
    tensors = []
    for name, value in zip(names, values, strict=True):
        if isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = name
        else:
            tensor = numpy_helper.from_array(np.asarray(value), name)
        tensors.append(tensor)
    return tensors


def _one_input_model(case, inputs, path):
    """The case's model with its first input kept and the others as initializers of their data."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    names = [i.name for i in model.graph.input]
    model.graph.initializer.extend(_initializers(names[1:], inputs[1:]))
    del model.graph.input[1:]
    onnx.save(model, str(path))
    return path


# QOperator ops: the positions of (input scale, input zero point, output scale, output zero point).
QOPERATOR = {"QLinearConv": (1, 2, 6, 7), "QLinearMatMul": (1, 2, 6, 7)}


def _qoperator_model(case, inputs, path):
    """The case's one QOperator node between QuantizeLinear(float input) and DequantizeLinear;
    returns the path, the float input and the output's (scale, zero point)."""
    node, names = case.model.graph.node[-1], [i.name for i in case.model.graph.input]
    feeds = dict(zip(names, map(_array, inputs), strict=True))
    xs, xz, ys, yz = (node.input[k] for k in QOPERATOR[node.op_type])
    x_q, scale, zero = feeds[node.input[0]], feeds[xs], feeds[xz]
    x = ((x_q.astype(np.int32) - zero.astype(np.int32)) * scale.astype(np.float32)).astype(np.float32)
    info = np.iinfo(x_q.dtype)
    requant = np.clip(np.rint(x / scale.astype(np.float32)) + zero, info.min, info.max)
    assert np.array_equal(requant, x_q), "the float input does not quantize back to the case's integers"
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["float_x", xs, xz], [node.input[0]], name="quantize_x"),
            node,  # as the case has it (unnamed: the importer names it)
            helper.make_node("DequantizeLinear", [node.output[0], ys, yz], ["float_y"], name="dequantize_y"),
        ],
        "qoperator",
        [helper.make_tensor_value_info("float_x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("float_y", TensorProto.FLOAT, None)],
        _initializers(names[1:], inputs[1:]),
    )
    model = helper.make_model(graph, opset_imports=list(case.model.opset_import))
    model.ir_version = case.model.ir_version
    onnx.save(model, str(path))
    return path, x, (feeds[ys], feeds[yz])


def run_case(case, tmp_path):
    """Per data set: ("match", None) or ("refused", message); raises AssertionError on a wrong
    answer. Any exception other than a VelcroError propagates."""
    results = []
    node = case.model.graph.node[-1]
    for k, (inputs, outputs) in enumerate(case.data_sets):
        path, want = tmp_path / f"{case.name}_{k}.onnx", _array(outputs[0])
        x = _array(inputs[0]) if inputs else None  # test_constant has no input: refused at import
        quantized = node.op_type in QOPERATOR and np.issubdtype(x.dtype, np.integer)
        if quantized:
            path, x, (y_scale, y_zero) = _qoperator_model(case, inputs, path)
        else:
            path = _one_input_model(case, inputs, path)
        try:
            graph = import_onnx(path)
            got = Model(graph).run(x)
        except VelcroError as e:
            results.append(("refused", str(e)))
            continue
        exported = tmp_path / f"{case.name}_{k}.exported.onnx"
        export_onnx(graph, exported)
        session = _session(exported, quantized)
        for who, y in (("engine", got), ("exported model in onnxruntime", session.run(None, {"input": x})[0])):
            if quantized:  # the dequantized output back to the integers it holds
                y = np.rint(y / y_scale.astype(np.float32)).astype(np.int64) + y_zero.astype(np.int64)
            where = f"{case.name}[{k}], {who}"
            assert y.shape == want.shape, f"{where}: shape {y.shape}, expected {want.shape}"
            if quantized:
                np.testing.assert_array_equal(y, want.astype(np.int64), err_msg=where)
            else:
                np.testing.assert_allclose(y, want, rtol=case.rtol, atol=case.atol, err_msg=where)
        results.append(("match", None))
    return results


def _session(path, quantized):
    """onnxruntime's session of an exported model; a quantized one with exact integer sums
    (`session.x64quantprecision`): onnxruntime's default session is not exact on 8-bit exports on
    x86 without VNNI (docs/int8.md, *Where onnxruntime is not exact*): the export of
    test_qlinearmatmul_2D_int8_float32 gave 18 for -12 there (AMD Zen 3), -12 with the option. A
    session the option keeps from loading is made without it, and its output is held to the same
    exact comparison."""
    if quantized:
        so = ort.SessionOptions()
        so.add_session_config_entry("session.x64quantprecision", "1")
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime's own error types: the option is refused for this graph
            pass
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_gives_the_expected_output_or_is_refused_in_one_line(name, tmp_path):
    for outcome, message in run_case(CASES[name], tmp_path):
        if outcome == "refused":
            assert message.strip() and "\n" not in message.strip(), f"{name}: refusal not one line: {message!r}"
            assert "Traceback" not in message


def test_the_cnn_cases_run_rather_than_being_refused(tmp_path):
    missing = sorted(MUST_RUN - set(CASES))
    assert not missing, f"cases not found among the mapped ones: {missing}"
    refused = {}
    for name in sorted(MUST_RUN):
        for outcome, message in run_case(CASES[name], tmp_path):
            if outcome == "refused":
                refused[name] = message
    assert not refused, f"refused: {refused}"
