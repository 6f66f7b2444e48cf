"""Accelerator TOML through `velcro simulate` and ONNX through `velcro import-onnx`: one line, all problems at once.

tests/unit/test_sim_arch.py checks simulator.arch's messages; tests/golden/test_onnx_roundtrip.py checks the
importer's; here they go through the CLI (exit code, one line, no traceback, no output file)."""

import numpy as np
import pytest
from robust_util import zoo_graph

from simulator.arch import ARCH_DIR

GOOD = (ARCH_DIR / "edge16.toml").read_text()


def arch_file(tmp_path, text, name="accel.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_arch_problem_is_listed_in_one_line(velcro, tmp_path, model_file):
    bad = (
        GOOD.replace("rows = 16", "rows = 0\ncolour = 3")
        .replace("cols = 16", "cols = -4")
        .replace("ifmap_kib = 32", "ifmap_kib = 0")
        .replace("bytes_per_cycle = 16", "bytes_per_cycle = -1.5")
    )
    bad = "\n".join(ln for ln in bad.splitlines() if not ln.startswith(("clock_mhz", "lanes")))
    path = arch_file(tmp_path, "speed = 3\n" + bad)
    line = velcro("simulate", model_file, "--accel", path, "--csv", tmp_path / "out.csv").error_line(str(path))
    for needle in (
        "unknown key [array].colour",
        "unknown key speed",
        "[array].rows must be a positive integer, got 0",
        "[array].cols must be a positive integer, got -4",
        "[buffers].ifmap_kib must be a positive number, got 0",
        "[dram].bytes_per_cycle must be a positive number, got -1.5",
        "[array].clock_mhz is missing",
        "[vector].lanes is missing",
    ):
        assert needle in line, line
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "text, needles",
    [
        ("format = [", ["not valid TOML"]),
        ("", ["problem(s)", "[array] is missing", "[energy] is missing"]),
        (GOOD.replace("[energy]", "[energy]\nflux = { pj = 1.0, source = 'x' }"), ["unknown key [energy].flux"]),
        (GOOD.replace('dataflow = "output_stationary"', 'dataflow = "row_stationary"'), ["one of output_stationary"]),
    ],
    ids=["not-toml", "empty", "unknown-energy-action", "unknown-dataflow"],
)
def test_bad_arch_file(velcro, tmp_path, model_file, text, needles):
    path = arch_file(tmp_path, text)
    velcro("simulate", model_file, "--accel", path).error_line(str(path), *needles)


def test_unknown_preset_and_missing_file(velcro, tmp_path, model_file):
    unknown = velcro("simulate", model_file, "--accel", "tpu9000")
    unknown.error_line("unknown accelerator 'tpu9000'", "presets: ", code=2)  # a name: bad usage
    missing = tmp_path / "missing.toml"
    velcro("simulate", model_file, "--accel", missing).error_line(str(missing))


def test_arch_file_that_is_not_text(velcro, tmp_path, model_file):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00rows = 3\x9c")
    velcro("simulate", model_file, "--accel", path).error_line(str(path))


def test_infinite_arch_figures_are_refused(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, GOOD.replace("clock_mhz = 200", "clock_mhz = inf"))
    velcro("simulate", model_file, "--accel", path).error_line(str(path), "clock_mhz")


def test_nan_and_inf_arch_figures_are_all_listed(velcro, tmp_path, model_file):
    text = (
        GOOD.replace("clock_mhz = 200", "clock_mhz = nan")
        .replace("ifmap_kib = 32", "ifmap_kib = inf")
        .replace("mac = { pj = 0.3,", "mac = { pj = inf,")
        .replace("leakage = { pj = 20.0,", "leakage = { pj = nan,")
    )
    line = velcro("simulate", model_file, "--accel", arch_file(tmp_path, text)).error_line("4 problem(s)")
    for needle in (
        "[array].clock_mhz must be a positive number, got nan",
        "[buffers].ifmap_kib must be a positive number, got inf",
        "[energy].mac.pj must be a non-negative number, got inf",
        "[energy].leakage.pj must be a non-negative number, got nan",
    ):
        assert needle in line, line


def test_simulate_refuses_masks_of_another_model(velcro, tmp_path, model_file, mask_file):
    from velcro_ref.model_io import save_model

    other = tmp_path / "other.h5"
    save_model(zoo_graph("resnet18", input_size=16, width=0.125, num_classes=4, seed=3), other)
    velcro("simulate", other, "--masks", mask_file, "--accel", "edge16").error_line(
        str(mask_file), "masks were made for model"
    )


# ---------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_lib():
    return pytest.importorskip("onnx")


def onnx_file(onnx_lib, tmp_path, nodes, in_shape, out_shape, weight_shape=(4, 3, 1, 1)):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(weight_shape, np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "robustness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx_lib.save(model, path)
    return path


def node(op, inputs, output, name, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, [output], name=name, **attrs)


def test_unsupported_onnx_ops_are_listed_with_node_names(velcro, tmp_path, onnx_lib):
    nodes = [
        node("Conv", ["x", "w"], "c", "stem_conv"),
        node("Sigmoid", ["c"], "s", "gate"),
        node("Tanh", ["s"], "h", "act/tanh"),
        node("Relu", ["h"], "y", "out_relu"),
    ]
    path = onnx_file(onnx_lib, tmp_path, nodes, ["N", 3, 8, 8], ["N", 4, 8, 8])
    out = tmp_path / "model.h5"
    res = velcro("import-onnx", path, "-o", out)
    res.error_line(str(path), "'Sigmoid' (node 'gate')", "'Tanh' (node 'act/tanh')", "Supported ops: Add")
    assert not out.exists()


@pytest.mark.parametrize(
    "in_shape, out_shape, needles",
    [
        (["N", 3, "H", "W"], ["N", 4, "H", "W"], ["input 'x'", "fixed C, H, W"]),
        (["N", 3, 8], ["N", 4, 8], ["node 'conv'", "rank-3 input"]),
        (["N", 3, 10**9, 8], ["N", 4, 10**9, 8], ["exceeds", "elements per image"]),
    ],
    ids=["symbolic-height-width", "no-width", "absurd-height"],
)
def test_onnx_shapes_that_cannot_be_inferred(velcro, tmp_path, onnx_lib, in_shape, out_shape, needles):
    nodes = [node("Conv", ["x", "w"], "c", "conv"), node("Relu", ["c"], "y", "relu")]
    path = onnx_file(onnx_lib, tmp_path, nodes, in_shape, out_shape)
    out = tmp_path / "model.h5"
    velcro("import-onnx", path, "-o", out).error_line(str(path), *needles)
    assert not out.exists()


def test_onnx_weight_that_does_not_fit_is_named(velcro, tmp_path, onnx_lib):
    nodes = [node("Conv", ["x", "w"], "c", "conv"), node("Relu", ["c"], "y", "relu")]
    path = onnx_file(onnx_lib, tmp_path, nodes, ["N", 3, 8, 8], ["N", 4, 8, 8], weight_shape=(4, 5, 1, 1))
    velcro("import-onnx", path, "-o", tmp_path / "m.h5").error_line(str(path), "node 'conv'", "5 input channels")


def test_requantizing_a_flattened_tensor_is_refused_naming_the_quantize_node(velcro, tmp_path, onnx_lib):
    """A DequantizeLinear -> Flatten -> QuantizeLinear with other parameters: refused at the
    QuantizeLinear with what it is, not with a message about a concat the model does not have."""
    from onnx import helper, numpy_helper

    consts = {"s": np.float32(0.02), "zp": np.uint8(128), "s2": np.float32(0.01), "zp2": np.uint8(100)}
    nodes = [
        node("QuantizeLinear", ["x", "s", "zp"], "xq", "quantize_x"),
        node("DequantizeLinear", ["xq", "s", "zp"], "xd", "dequantize_x"),
        node("Flatten", ["xd"], "f", "flatten"),
        node("QuantizeLinear", ["f", "s2", "zp2"], "fq", "requantize"),
        node("DequantizeLinear", ["fq", "s2", "zp2"], "y", "dequantize_y"),
    ]
    graph = helper.make_graph(
        nodes,
        "requantize",
        [helper.make_tensor_value_info("x", onnx_lib.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx_lib.TensorProto.FLOAT, ["N", 48])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    path = tmp_path / "model.onnx"
    onnx_lib.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    res = velcro("import-onnx", path, "-o", tmp_path / "m.h5")
    res.error_line(str(path), "'QuantizeLinear' (node 'requantize')", "requantization", "shape (48,)")
    assert "concat" not in res.err


def onnx_model(onnx_lib, tmp_path, nodes, in_shape, consts, opset=17):
    """An ONNX file of `nodes` on input x (float, in_shape) with output y and initializers `consts`."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "edges",
        [helper.make_tensor_value_info("x", onnx_lib.TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", onnx_lib.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()],
    )
    path = tmp_path / "model.onnx"
    onnx_lib.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)
    return path


@pytest.mark.parametrize(
    "nodes, in_shape, consts, needles",
    [
        ([node("Softmax", ["x"], "y", "head", axis=3)], ["N", 10], {}, ["axis 3 outside [-2, 1]"]),
        (
            [node("ReduceMean", ["x"], "y", "gap", axes=[6, 7])],
            ["N", 4, 3, 3],
            {},
            ["axis 6 outside [-4, 3]"],
        ),
        (
            [node("Conv", ["x", "w", "b"], "y", "conv")],
            ["N", 3, 4, 4],
            {"w": np.ones((4, 3, 1, 1)), "b": np.ones((1, 4))},
            ["node 'conv'", "bias of shape (1, 4)", "1-D bias"],
        ),
        (
            [node("Gemm", ["x", "w"], "y", "fc", alpha=1e-20, transB=1)],
            ["N", 2],
            {"w": np.full((1, 2), 1e-30)},
            ["node 'fc'", "alpha 1e-20 times B leaves float32's range"],
        ),
        (
            [node("Gemm", ["x", "w"], "y", "fc", alpha=1e20, transB=1)],
            ["N", 2],
            {"w": np.full((1, 2), 1e30)},
            ["node 'fc'", "alpha 1e+20 times B leaves float32's range"],
        ),
        (
            [node("Gemm", ["x", "w", "c"], "y", "fc", beta=1e-30, transB=1)],
            ["N", 2],
            {"w": np.ones((3, 2)), "c": np.full(3, 1e-10)},
            ["node 'fc'", "beta 1e-30 times C leaves float32's range"],
        ),
    ],
    ids=["softmax-axis", "reducemean-axes", "conv-bias-2d", "gemm-alpha-underflow", "gemm-alpha-overflow", "gemm-beta"],
)
def test_onnx_models_onnxruntime_refuses_or_that_would_lose_values_are_refused(
    velcro, tmp_path, onnx_lib, nodes, in_shape, consts, needles
):
    """Invalid models (an axis outside the tensor's rank, a 2-D conv bias) and Gemm factors whose
    fold into the weights would flush or overflow them: one line, no file (they ran, exit 0)."""
    path = onnx_model(onnx_lib, tmp_path, nodes, in_shape, consts)
    out = tmp_path / "m.h5"
    line = velcro("import-onnx", path, "-o", out).error_line(str(path), *needles)
    assert "Supported ops" not in line  # the op is supported; this node of it is not
    assert not out.exists()
