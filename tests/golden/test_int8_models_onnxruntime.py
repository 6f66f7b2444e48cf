"""Whole int8 models against onnxruntime, bit for bit: the three zoo families (32x32, width 0.25)
quantized in the test by onnxruntime's quantize_static (QDQ and QOperator formats, per-tensor and
per-channel weights, uint8 and int8 activations, QDQ with the activations kept), imported by
`velcro import-onnx` and run by the engine; every output element and every int8 tensor that
onnxruntime computes on the way (exposed as extra graph outputs) must be identical.

The calibration ranges are measured by the velcro engine (`velcro profile`) and handed to
quantize_static through its calibration cache: two float engines give ranges a few ulps apart, and
one ulp moves a scale (docs/int8.md). With the same ranges `velcro quantize` must give every scale,
zero point, int8 weight and int32 bias that quantize_static writes.

onnxruntime sessions (docs/int8.md, "Where onnxruntime is not exact"): uint8 activations with
`session.x64quantprecision = 1` (by default AVX2 without VNNI sums u8 x s8 pairs in int16 with
saturation); int8 QDQ with `session.qdqisint8allowed = 1` (by default onnxruntime runs some of its
convs, adds and pools in float32 on dequantized values); int8 QOperator with the default session.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data
from robust_util import NodeOutputs, int8_session, save_onnx

import velcro_ref
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import import_onnx
from velcro_ref.plan import executed_graph
from velcro_ref.zoo import build_zoo

FAMILIES = ("resnet18", "mobilenet_v2", "googlenet")
SIZE = 32
# (format, per_channel, activations, keep ReLU/Clip as nodes)
CASES = [
    *(
        (fmt, pc, act, False)
        for fmt, pc, act in itertools.product(("QDQ", "QOperator"), (False, True), ("uint8", "int8"))
    ),
    ("QDQ", False, "uint8", True),
    ("QDQ", True, "int8", True),
]
CASE_IDS = [f"{f}-{'pc' if pc else 'pt'}-{a}{'-keep' if k else ''}" for f, pc, a, k in CASES]
# int8 tensors onnxruntime computes: the outputs of these ops (QDQ: QuantizeLinear) and of the ops
# that pass an int8 tensor through; the input holding the output's zero point, which gives its type
ZERO_POINT_INPUT = {
    "QuantizeLinear": 2,
    "QLinearConv": 7,
    "QLinearAdd": 7,
    "QLinearConcat": 1,
    "QLinearGlobalAveragePool": 4,
    "QGemm": 8,
    "QLinearMatMul": 7,
}
PASS_THROUGH = ("MaxPool", "Flatten", "Reshape", "Identity")


@dataclass
class Family:
    name: str
    model: Model  # the float model as it runs (batch norms folded)
    stats: object  # velcro profile over the calibration images
    float_onnx: Path
    cache: Path
    folder: Path
    quantized: dict  # case -> quantized ONNX path


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    graph = build_zoo(request.param, input_size=SIZE, num_classes=10, width=0.25, seed=0)
    folded = executed_graph(Model(graph).plan, graph)
    model = Model(folded)
    export_onnx(folded, folder / "float.onnx")
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, SIZE, SIZE)).astype(np.float32)
    stats = velcro_ref.profile(model, calib, batch=4)
    cache = ranges_cache(model, stats, folder / "ranges.json")
    return Family(request.param, model, stats, folder / "float.onnx", cache, folder, {})


def ranges_cache(model, stats, path) -> Path:
    """quantize_static's calibration cache holding the velcro ranges of every tensor of `model`."""
    ranges = {t: stats.range_of(t) for t in [INPUT, *model.plan.shapes]}
    data = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
    return path


def ort_quantize(float_onnx, out, cache, case, **extra) -> Path:
    """quantize_static of a float ONNX file for one case (format, per_channel, activations, keep), from a
    calibration cache; `extra` adds to its extra_options."""
    fmt, pc, act, keep = case
    quantize_static(
        str(float_onnx),
        str(out),
        None,
        calibration_cache_path=str(cache),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=pc,
        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"QDQKeepRemovableActivations": keep, **extra},
    )
    return out


def quantized_onnx(fam: Family, case) -> Path:
    """quantize_static of the family's float export for one case, from the velcro ranges (cached)."""
    if case not in fam.quantized:
        fmt, pc, act, keep = case
        out = fam.folder / f"q_{fmt}_{pc}_{act}_{keep}.onnx"
        fam.quantized[case] = ort_quantize(fam.float_onnx, out, fam.cache, case)
    return fam.quantized[case]


def int8_tensors(model_proto) -> list[tuple[str, np.dtype]]:
    """Every int8/uint8 tensor the ONNX graph computes, with its dtype."""
    inits = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    found: dict[str, np.dtype] = {}
    for node in model_proto.graph.node:
        if node.op_type in ZERO_POINT_INPUT:
            zp = node.input[ZERO_POINT_INPUT[node.op_type]]
            found[node.output[0]] = inits[zp].dtype
        elif node.op_type in PASS_THROUGH and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return list(found.items())


def velcro_name(tensor, model_proto, names) -> str | None:
    """The imported model's node holding the values of ONNX int8 tensor `tensor`: QDQ names an
    op's quantized output after the float tensor it quantizes, QOperator appends "_quantized" to
    the float node's name; the graph input's quantize node is "input_quantized"."""
    producer = {o: n for n in model_proto.graph.node for o in n.output}
    node = producer.get(tensor)
    if node is not None and node.op_type == "QuantizeLinear":
        x = node.input[0]
        if x not in names:  # the graph output's producer writes "<output>_QuantizeLinear_Input"
            x = x.removesuffix("_QuantizeLinear_Input")
        if x == model_proto.graph.input[0].name:
            return "input_quantized"
        while x not in names and x in producer and producer[x].op_type in ("Identity", "DequantizeLinear"):
            src = producer[x]
            if src.op_type == "DequantizeLinear":
                return velcro_name(src.input[0], model_proto, names)
            x = src.input[0]
        return x if x in names else None
    for name in (tensor, tensor.removesuffix("_quantized")):
        if name in names:
            return name
    return None


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_imported_int8_models_run_bit_exact_against_onnxruntime(family, case):
    fmt, pc, act, keep = case
    path = quantized_onnx(family, case)
    imported = Model(import_onnx(path))
    x = np.random.default_rng(1).uniform(-1.2, 1.2, (4, 3, SIZE, SIZE)).astype(np.float32)

    want = int8_session(path, act, fmt).run(None, {"input": x})[0]
    seen = NodeOutputs()
    got = imported.run(x, observer=seen)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want), f"{int(np.sum(got != want))} of {got.size} outputs differ"

    proto = onnx.load(str(path))
    tensors = int8_tensors(proto)
    ort_values = int8_session(path, act, fmt, tensors).run([t for t, _ in tensors], {"input": x})
    compared = 0
    for (t, dtype), value in zip(tensors, ort_values, strict=True):
        name = velcro_name(t, proto, seen.values)
        assert name is not None, f"ONNX tensor '{t}' has no counterpart in the imported model"
        mine = seen.values[name]
        assert mine.dtype == dtype, (t, name)
        assert np.array_equal(mine.reshape(value.shape), value), (
            f"'{t}' (velcro '{name}'): {int(np.sum(mine.reshape(value.shape) != value))} of {value.size} differ"
        )
        compared += 1
    n_layers = sum(1 for st in imported.plan.nodes if st.op in ("qconv2d", "qlinear", "qadd", "qconcat"))
    assert compared >= n_layers  # every layer's output at least


@pytest.mark.parametrize("case", [("QDQ", False, "uint8", False), ("QDQ", True, "int8", False)], ids=["pt", "pc"])
def test_weights_quantized_in_the_graph_import_as_their_codes(family, case):
    """AddQDQPairToWeight keeps each weight float, quantized by a QuantizeLinear node before its
    DequantizeLinear; the importer refused it ("expects a DequantizeLinear of an initializer"). The
    codes onnxruntime computes there are those quantize_static stores otherwise: the imported
    parameters equal the plain QDQ file's, and the run equals onnxruntime's bit for bit."""
    path = ort_quantize(
        family.float_onnx, family.folder / f"pair_{case[1]}.onnx", family.cache, case, AddQDQPairToWeight=True
    )
    assert any(n.op_type == "QuantizeLinear" and n.input[0].endswith("weight") for n in onnx.load(str(path)).graph.node)
    imported, stored = import_onnx(path), import_onnx(quantized_onnx(family, case))
    assert imported.params.keys() == stored.params.keys()
    for key, a in imported.params.items():
        assert a.dtype == stored.params[key].dtype and np.array_equal(a, stored.params[key]), key
    x = np.random.default_rng(2).uniform(-1.2, 1.2, (3, 3, SIZE, SIZE)).astype(np.float32)
    want = int8_session(path, case[2], "QDQ").run(None, {"input": x})[0]
    assert np.array_equal(Model(imported).run(x), want)


PARAM_CASES = [c for c in CASES if not c[3]]  # the kept activations change no parameter


@pytest.mark.parametrize("case", PARAM_CASES, ids=[i for i, c in zip(CASE_IDS, CASES, strict=True) if not c[3]])
def test_velcro_quantize_gives_the_parameters_of_quantize_static(family, case):
    """Same ranges in, same numbers out: every scale, zero point, int8 weight (with its scales) and
    int32 bias of `velcro quantize` equals what quantize_static wrote (read back by the importer)."""
    _, pc, act, _ = case
    mine = velcro_ref.quantize(family.model, family.stats, per_channel=pc, activations=act)
    theirs = Model(import_onnx(quantized_onnx(family, case))).graph
    by_name = {n.name: n for n in theirs.nodes}
    compared = 0
    for n in mine.graph.nodes:
        if "y_scale" not in n.attrs:
            continue
        other = by_name[n.name]
        assert other.op == n.op, n.name
        for key in ("y_scale", "y_zero_point", "dtype"):
            assert other.attrs[key] == n.attrs[key], (n.name, key, other.attrs[key], n.attrs[key])
        for role, key in n.params.items():
            a, b = mine.graph.params[key], theirs.params[other.params[role]]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (n.name, role)
        assert set(other.params) - {"w_zero_point"} == set(n.params), n.name
        compared += 1
    assert compared == sum(1 for n in mine.graph.nodes if "y_scale" in n.attrs)


def test_sites_keep_the_float_models_names_in_qdq_files(family):
    """quantize_static removes ReLU/Clip(0, 6) and lets the producer write the activation's tensor:
    the import puts a site of that name back. With the activations kept, they are the sites."""
    float_sites = set(family.model.sites)
    for case in (("QDQ", False, "uint8", False), ("QDQ", False, "uint8", True), ("QDQ", True, "int8", False)):
        imported = Model(import_onnx(quantized_onnx(family, case)))
        assert set(imported.sites) == float_sites, case
        for site in imported.sites:  # each site reads its producer alone: a producer chain to skip
            assert imported.chains[site], site
    qop = Model(import_onnx(quantized_onnx(family, ("QOperator", False, "uint8", False))))
    assert len(qop.sites) == len(float_sites)  # QOperator files drop the names: "<producer>.relu"
    assert all(s.endswith(".relu") for s in qop.sites)


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_exported_qdq_runs_bit_exact_in_onnxruntime_and_imports_back(family, tmp_path, act):
    """`velcro quantize`, `export-onnx` (QDQ), onnxruntime: the same output bits as the engine; and
    `import-onnx` of that file gives back every node's quantization and parameters."""
    qmodel = velcro_ref.quantize(family.model, family.stats, per_channel=act == "int8", activations=act)
    path = tmp_path / "q.onnx"
    export_onnx(qmodel.graph, path)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32)
    want = int8_session(path, act, "QDQ").run(None, {"input": x})[0]
    got = qmodel.run(x)
    assert np.array_equal(got, want), f"{int(np.sum(got != want))} of {got.size} outputs differ"
    back = import_onnx(path)
    by_name = {n.name: n for n in back.nodes}
    bypassed = {}  # the importer bypasses Identity (a dropout's export)
    for n in qmodel.graph.nodes:
        if n.op == "dropout":
            bypassed[n.name] = bypassed.get(n.inputs[0], n.inputs[0])
        if n.op in ("dequantize", "dropout"):
            continue
        other = by_name[n.name]
        assert other.op == n.op, n.name
        assert other.inputs == tuple(bypassed.get(t, t) for t in n.inputs), n.name
        for key in ("y_scale", "y_zero_point", "dtype"):
            assert other.attrs.get(key) == n.attrs.get(key), (n.name, key)
        for role, key in n.params.items():
            assert np.array_equal(back.params[other.params[role]], qmodel.graph.params[key]), (n.name, role)
    assert set(back.activation_sites()) == set(qmodel.graph.activation_sites())


class _Images:
    """quantize_static's calibration reader over a list of batches."""

    def __init__(self, batches):
        self.batches = list(batches)

    def get_next(self):
        return {"input": self.batches.pop()} if self.batches else None


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("pc", [False, True], ids=["pt", "pc"])
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_quantized_matmul_imports_bit_exact(tmp_path, fmt, pc, act):
    """MatMul (no Gemm in the zoo families): QDQ MatMul and QOperator QLinearMatMul, weight (F, O)."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (48, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "f.onnx")
    calib = [rng.uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32) for _ in range(4)]
    out = tmp_path / "q.onnx"
    quantize_static(
        str(tmp_path / "f.onnx"),
        str(out),
        _Images(calib),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=pc,
        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    types = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("QLinearMatMul" if fmt == "QOperator" else "MatMul") in types
    model = Model(import_onnx(out))
    assert [st.op for st in model.plan.nodes] == ["flatten", "quantize", "qlinear", "dequantize"]
    x = rng.uniform(-1.5, 1.5, (7, 3, 4, 4)).astype(np.float32)
    want = int8_session(out, act, fmt).run(None, {"input": x})[0]
    assert np.array_equal(model.run(x), want)


def _quantized_convs(tmp_path, rng, nodes, inits, calib_shape, fmt, act, opset=17, **extra) -> Path:
    """quantize_static's model (QDQ or QOperator, int8 weights) of a float graph of `nodes` from input
    'input' to 'y', initializers of the shapes `inits` drawn from rng, calibrated on 3 batches."""
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *calib_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(rng.normal(0, 0.3, v).astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.save(model, tmp_path / "f.onnx")
    out = tmp_path / "q.onnx"
    quantize_static(
        str(tmp_path / "f.onnx"),
        str(out),
        _Images([rng.uniform(-1, 1, calib_shape).astype(np.float32) for _ in range(3)]),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        **extra,
    )
    return out


@pytest.mark.parametrize("end", ["Identity", "Dropout"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_a_trailing_identity_after_the_dequantize_imports_bit_exact(tmp_path, fmt, act, end):
    """quantize_static keeps a float model's last Identity (or inference Dropout), so the graph output
    is Identity(DequantizeLinear(codes)); the import refused it ("graph output ... is not produced by
    any node"): it is the dequantized codes, as a plain DequantizeLinear output is."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(end, ["r"], ["y"], name="last"),
    ]
    out = _quantized_convs(tmp_path, rng, nodes, {"w": (5, 3, 3, 3), "b": (5,)}, (4, 3, 6, 7), fmt, act, opset=13)
    q = onnx.load(str(out)).graph
    last = next(n for n in q.node if n.output[0] == q.output[0].name)
    producer = next(n for n in q.node if n.output[0] == last.input[0])
    assert (last.op_type, producer.op_type) == (end, "DequantizeLinear")
    model = Model(import_onnx(out))
    assert [st.op for st in model.plan.nodes][-1] == "dequantize"
    x = rng.uniform(-1.2, 1.2, (9, 3, 6, 7)).astype(np.float32)
    want = int8_session(out, act, fmt).run(None, {"input": x})[0]
    assert np.array_equal(model.run(x), want)


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_a_silu_left_float_between_quantized_convs_imports_bit_exact(tmp_path, fmt, act):
    """quantize_static told to quantize only convs (op_types_to_quantize, the way to keep a SiLU in float)
    leaves Sigmoid and Mul on the first conv's dequantized output: the import raised KeyError (the SiLU
    looked its input up as a float tensor of the file); it is the float silu on the dequantized values."""
    rng = np.random.default_rng(4)
    inits = {"w1": (6, 3, 3, 3), "b1": (6,), "w2": (4, 6, 3, 3), "b2": (4,)}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sig"),
        helper.make_node("Mul", ["s", "c1"], ["a"], name="silu"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="c2", strides=[2, 2]),
    ]
    out = _quantized_convs(tmp_path, rng, nodes, inits, (8, 3, 10, 9), fmt, act, op_types_to_quantize=["Conv"])
    assert {"Sigmoid", "Mul"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    model = Model(import_onnx(out))
    assert [st.op for st in model.plan.nodes] == [
        "quantize",
        "qconv2d",
        "dequantize",
        "silu",
        "quantize",
        "qconv2d",
    ] + ["dequantize"]
    x = rng.uniform(-1.2, 1.2, (16, 3, 10, 9)).astype(np.float32)
    want = int8_session(out, act, fmt).run(None, {"input": x})[0]
    assert np.array_equal(model.run(x), want)


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("pc", [False, True], ids=["pt", "pc"])
@pytest.mark.parametrize("order", ["pool alone", "pool first", "conv first"])
def test_a_max_pool_on_the_float_input_is_quantized_as_quantize_static_does(tmp_path, order, pc, act):
    """quantize_static quantizes a MaxPool only where a node before it in the file has quantized its
    input: else the pool runs in float (on the input's dequantized values where a later node quantizes
    the input) and its output is quantized with its own range. `velcro quantize` always gave it the
    input's scale and zero point (with the same ranges: another scale for the conv after it, another
    bias, 84 of 256 outputs two steps off)."""
    rng = np.random.default_rng(2)
    consts = {k: rng.normal(0, 0.3 if k[0] == "w" else 0.1, (4, 3, 2, 2) if k[0] == "w" else 4) for k in ("w1", "b1")}
    pool = [
        helper.make_node("MaxPool", ["input"], ["mp"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["mp", "w1", "b1"], ["c1"], name="c1", kernel_shape=[2, 2]),
    ]
    nodes, out = pool, "c1"
    if order != "pool alone":  # the input read by a conv of its own too, after the pool or before it
        consts |= {"w0": rng.normal(0, 0.3, (4, 3, 2, 2)), "b0": rng.normal(0, 0.1, 4)}
        conv = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], name="c0", kernel_shape=[2, 2], strides=[3, 3])]
        nodes, out = (pool + conv if order == "pool first" else conv + pool), "sum"
        nodes.append(helper.make_node("Add", ["c1", "c0"], ["sum"], name="sum"))
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])
    graph = helper.make_graph(
        nodes, "g", [x_info], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "src.onnx"
    )
    model = Model(import_onnx(tmp_path / "src.onnx"))
    stats = velcro_ref.profile(model, rng.uniform(-1, 1, (6, 3, 6, 6)).astype(np.float32), batch=3)
    assert stats.range_of("mp")[0] > stats.range_of(INPUT)[0]  # the pool's range is not the input's
    export_onnx(executed_graph(model.plan, model.graph), tmp_path / "float.onnx")
    cache = ranges_cache(model, stats, tmp_path / "ranges.json")
    ort_quantize(tmp_path / "float.onnx", tmp_path / "q.onnx", cache, ("QDQ", pc, act, False))
    mine = velcro_ref.quantize(model, stats, per_channel=pc, activations=act)
    ops = {n.name: n.op for n in mine.graph.nodes}
    assert ops["mp"] == ("qmax_pool" if order == "conv first" else "max_pool")
    assert ("input_dequantized" in ops) == (order == "pool first")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    if order != "conv first":
        (q_mp,) = [n for n in mine.graph.nodes if n.op == "quantize" and n.inputs == ("mp",)]
        assert (q_mp.attrs["y_scale"], q_mp.attrs["y_zero_point"]) == (
            float(inits["mp_scale"]),
            int(inits["mp_zero_point"]),
        )
    c1 = next(n for n in mine.graph.nodes if n.name == "c1")
    assert np.array_equal(mine.graph.params[c1.params["bias"]], inits["c1.bias_quantized"])
    x = rng.uniform(-1.2, 1.2, (5, 3, 6, 6)).astype(np.float32)
    want = int8_session(tmp_path / "q.onnx", act, "QDQ").run(None, {"input": x})[0]
    got = mine.run(x)
    assert got.tobytes() == want.tobytes(), f"{int(np.sum(got != want))} of {got.size} outputs differ"


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("pc", [False, True], ids=["pt", "pc"])
def test_a_float_max_pool_beside_a_flatten_of_the_input_reads_the_raw_input(tmp_path, pc, act):
    """A flatten of the input before the pool: onnxruntime leaves it float too (its output quantized later
    with its own, equal range), so nothing quantizes the input itself and the float pool reads the raw
    input; velcro's pool read the input quantized and dequantized (204 of 2000 outputs off)."""
    rng = np.random.default_rng(5)
    consts = {"w": rng.normal(0, 0.3, (4, 108)), "b": rng.normal(0, 0.3, 4)}
    consts |= {"w2": rng.normal(0, 0.3, (4, 27)), "b2": rng.normal(0, 0.3, 4)}
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"], name="f"),
        helper.make_node("Gemm", ["f", "w", "b"], ["l"], name="l", transB=1),
        helper.make_node("MaxPool", ["input"], ["mp"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["mp"], ["f2"], name="f2"),
        helper.make_node("Gemm", ["f2", "w2", "b2"], ["l2"], name="l2", transB=1),
        helper.make_node("Add", ["l", "l2"], ["s"], name="s"),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])
    graph = helper.make_graph(
        nodes, "g", [x_info], [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)], inits
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "src.onnx"
    )
    model = Model(import_onnx(tmp_path / "src.onnx"))
    stats = velcro_ref.profile(model, rng.uniform(-1, 1, (6, 3, 6, 6)).astype(np.float32), batch=3)
    export_onnx(executed_graph(model.plan, model.graph), tmp_path / "float.onnx")
    cache = ranges_cache(model, stats, tmp_path / "ranges.json")
    ort_quantize(tmp_path / "float.onnx", tmp_path / "q.onnx", cache, ("QDQ", pc, act, False))
    pools = [list(n.input) for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "MaxPool"]
    assert pools == [["input"]]  # onnxruntime's pool reads the raw input
    mine = velcro_ref.quantize(model, stats, per_channel=pc, activations=act)
    assert [n.inputs for n in mine.graph.nodes if n.op == "max_pool"] == [(INPUT,)]
    x = rng.uniform(-1.2, 1.2, (100, 3, 6, 6)).astype(np.float32)
    want = int8_session(tmp_path / "q.onnx", act, "QDQ").run(None, {"input": x})[0]
    got = mine.run(x)
    assert got.tobytes() == want.tobytes(), f"{int(np.sum(got != want))} of {got.size} outputs differ"


def _extreme_model(path, nodes, x_shape, y_shape, inits):
    """An int8 ONNX model of `nodes` from float input "x" (QuantizeLinear at scale "xs") to float "y"."""
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), *nodes],
        "extreme",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), path)
    return path


@pytest.mark.parametrize("zp", [0, 127, -128])
@pytest.mark.parametrize(
    "shape",
    [(3, 1, 1, 1, 2, 1), (16, 4, 3, 3, 6, 1), (5, 2, 3, 3, 7, 1), (8, 8, 3, 3, 6, 8)],
    ids=["1x1", "3x3k16", "3x3k5", "depthwise"],
)
def test_a_requantization_scale_of_inf_gives_what_onnxruntime_gives(tmp_path, shape, zp):
    """x_scale * w_scale overflows float32 (1e20 * 1e20): the multiplier is inf, an accumulator of 0 times
    it NaN, which onnxruntime's clamp takes to qmin; the engine gave the zero point (the low byte of the
    integer a NaN converts to). Every other accumulator saturates by its sign."""
    k, c, kh, kw, hw, groups = shape
    rng = np.random.default_rng(5)
    w = rng.integers(-2, 3, (k, c // groups, kh, kw)).astype(np.int8)
    inits = {"xs": np.float32(1e20), "xz": np.int8(0), "w": w, "ws": np.float32(1e20), "wz": np.int8(0)}
    inits |= {"ys": np.float32(1.0), "yz": np.int8(zp)}
    nodes = [
        helper.make_node(
            "QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], pads=[kh // 2] * 4, group=groups
        ),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    path = _extreme_model(tmp_path / "conv.onnx", nodes, ["N", c, hw, hw], ["N", k, hw, hw], inits)
    codes = rng.integers(-1, 2, (2, c, hw, hw)) * (rng.random((2, c, hw, hw)) < 0.3)
    x = (codes * 1e20).astype(np.float32)
    want = int8_session(path, "int8", "QOperator").run(None, {"x": x})[0]
    assert (want == -128 - zp).any() and (want != -128 - zp).any()  # accumulators of 0 and others
    assert np.array_equal(Model(import_onnx(path)).run(x), want)


@pytest.mark.parametrize("zp", [0, 127])
def test_a_matmul_requantization_scale_of_inf_gives_what_onnxruntime_gives(tmp_path, zp):
    """QLinearMatMul at x_scale = w_scale = 1e20: rows of 0 give qmin, as in onnxruntime, not the zero point."""
    rng = np.random.default_rng(6)
    w = rng.integers(-2, 3, (12, 5)).astype(np.int8)
    inits = {"xs": np.float32(1e20), "xz": np.int8(0), "w": w, "ws": np.float32(1e20), "wz": np.int8(0)}
    inits |= {"ys": np.float32(1.0), "yz": np.int8(zp), "shape": np.array([-1, 12], np.int64)}
    nodes = [
        helper.make_node("Reshape", ["xq", "shape"], ["flat"]),
        helper.make_node("QLinearMatMul", ["flat", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    path = _extreme_model(tmp_path / "matmul.onnx", nodes, ["N", 3, 2, 2], ["N", 5], inits)
    codes = rng.integers(-1, 2, (6, 3, 2, 2)) * (rng.random((6, 3, 2, 2)) < 0.3)
    x = (codes * 1e20).astype(np.float32)
    want = int8_session(path, "int8", "QOperator").run(None, {"x": x})[0]
    assert (want == -128 - zp).any() and (want != -128 - zp).any()
    assert np.array_equal(Model(import_onnx(path)).run(x), want)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_an_average_pool_window_of_inf_and_minus_inf_gives_what_onnxruntime_gives(tmp_path, fmt):
    """Codes whose dequantized values overflow float32 to +inf and -inf in one window sum to NaN, which
    onnxruntime's clamp takes to qmin; the engine gave 0 (the low byte of the integer a NaN converts to)."""
    sx = np.float32(3.4e38 / 102.6)  # code 103 dequantizes to inf
    inits = {"xs": sx, "xz": np.int8(0), "ys": np.float32(1.0), "yz": np.int8(3)}
    pool = {"kernel_shape": [2, 2], "strides": [1, 1]}
    if fmt == "QOperator":
        ins = ["xq", "xs", "xz", "ys", "yz"]
        q = [helper.make_node("QLinearAveragePool", ins, ["yq"], domain="com.microsoft", **pool)]
    else:
        q = [
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
            helper.make_node("AveragePool", ["xf"], ["s"], **pool),
            helper.make_node("QuantizeLinear", ["s", "ys", "yz"], ["yq"]),
        ]
    nodes = [*q, helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    path = _extreme_model(tmp_path / "pool.onnx", nodes, ["N", 1, 3, 3], ["N", 1, 2, 2], inits)
    big = np.float32(3.4e38)
    x = np.array([[big, -big, big], [1, -big, big], [0, 0, 0]], np.float32).reshape(1, 1, 3, 3)
    want = int8_session(path, "int8", fmt).run(None, {"x": x})[0]
    assert (want == -128 - 3).any()
    assert np.array_equal(Model(import_onnx(path)).run(x), want)


@pytest.mark.parametrize("bias", [True, False])
def test_an_int8_layer_whose_scale_product_overflows_is_not_exported(tmp_path, bias):
    """x_scale * w_scale beyond float32: the engine runs the layer as onnxruntime runs the file imported,
    but an export ran otherwise in onnxruntime (its bias DequantizeLinear of scale inf: 19 of 72 outputs;
    without a bias, 2 of 8 in the float path of ORT_DISABLE_ALL): refused in one line instead."""
    from velcro_ref.errors import VelcroError

    w = np.ones((2, 1, 1, 1), np.int8)
    inits = {"xs": np.float32(1e20), "xz": np.int8(0), "w": w, "ws": np.float32(1e20), "wz": np.int8(0)}
    inits |= {"ys": np.float32(1.0), "yz": np.int8(0)} | ({"b": np.array([3, -2], np.int32)} if bias else {})
    ins = ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"] + (["b"] if bias else [])
    nodes = [
        helper.make_node("QLinearConv", ins, ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    path = _extreme_model(tmp_path / "conv.onnx", nodes, ["N", 1, 3, 3], ["N", 2, 3, 3], inits)
    graph = import_onnx(path)
    x = np.zeros((1, 1, 3, 3), np.float32)
    assert np.array_equal(Model(graph).run(x), int8_session(path, "int8", "QOperator").run(None, {"x": x})[0])
    with pytest.raises(VelcroError, match="x_scale x w_scale overflows float32"):
        export_onnx(graph, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(
    "scale_shape, zp_shape, axis", [((), (), 0), ((1,), (), 0), ((), (1,), 0), ((4,), (4,), 0), ((4,), (4,), -4)]
)
def test_a_weight_quantized_in_the_graph_in_each_form_onnxruntime_runs(tmp_path, scale_shape, zp_shape, axis):
    """The weight's QuantizeLinear per tensor with a scale and a zero point of shape () or (1,) each
    (onnxruntime takes either; a (1,) scale beside a () zero point was refused), and per axis with
    the axis counted from the end; its scale another than the DequantizeLinear's, and values on ties."""
    rng = np.random.default_rng(4)
    s_q = np.full(scale_shape, 0.02, np.float32) if scale_shape else np.float32(0.02)
    w = (rng.integers(-60, 60, (4, 2, 3, 3)) + 0.5).astype(np.float32) * np.float32(0.02)  # x / scale on ties
    w[0, 0, 0, 0] = 9.0  # saturates
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.asarray(s_q, np.float32), "s_q"),
        numpy_helper.from_array(np.zeros(zp_shape, np.int8), "z_q"),
        numpy_helper.from_array(np.full(scale_shape, 0.021, np.float32), "s_dq"),
        numpy_helper.from_array(np.zeros(zp_shape, np.int8), "z_dq"),
        numpy_helper.from_array(np.array(0.03, np.float32), "s_x"),
        numpy_helper.from_array(np.array(0, np.int8), "z_x"),
        numpy_helper.from_array(np.array(0.2, np.float32), "s_y"),
        numpy_helper.from_array(np.array(3, np.int8), "z_y"),
    ]
    per_axis = {"axis": axis} if scale_shape == (4,) else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s_q", "z_q"], ["wq"], **per_axis),
        helper.make_node("DequantizeLinear", ["wq", "s_dq", "z_dq"], ["wd"], **per_axis),
        helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_x", "z_x"], ["xd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s_y", "z_y"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s_y", "z_y"], ["y"]),
    ]
    path = save_onnx(tmp_path / "m.onnx", nodes, inits, ["N", 2, 5, 5])
    x = rng.uniform(-2, 2, (2, 2, 5, 5)).astype(np.float32)
    want = int8_session(path, "int8", "QDQ").run(None, {"x": x})[0]
    assert np.array_equal(Model(import_onnx(path)).run(x), want)
