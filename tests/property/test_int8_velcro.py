"""VELCRO on int8 models: masked int8 inference equals dense int8 inference with the masked site
elements overwritten by their constants (quantized with the site's scale and zero point), bit for
bit, and the kernels count exactly the MACs of the elements they compute; statistics of an int8
model are those of its dequantized site values.

The oracle (tests/int8_oracle.py) is a NumPy walk over the quantized graph that computes every
element of every node and overwrites the masked site elements right after each site. Models: the
three zoo families (16x16, width 0.25) quantized by `velcro quantize` from random-image statistics,
int8 activations with per-channel weights and `ort` requantization, and uint8 activations with
per-tensor weights and `fixed_point` requantization; and a small model with two average pools
(qavg_pool) between relu sites, quantized by onnxruntime's quantize_static and imported.
"""

from __future__ import annotations

import int8_oracle
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_util import NodeOutputs

import velcro_ref
from velcro_ref import quant
from velcro_ref.engine import Model
from velcro_ref.masks import MaskSet
from velcro_ref.zoo import build_zoo

FAMILIES = ("resnet18", "mobilenet_v2", "googlenet")
CONFIGS = {"int8-pc-ort": ("int8", True, "ort"), "uint8-pt-fixed": ("uint8", False, "fixed_point")}
SIZE = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name in FAMILIES:
        fmodel = Model(build_zoo(name, input_size=SIZE, num_classes=10, width=0.25, seed=1))
        calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, SIZE, SIZE)).astype(np.float32)
        stats = velcro_ref.profile(fmodel, calib)
        for key, (act, pc, rq) in CONFIGS.items():
            out[f"{name}/{key}"] = velcro_ref.quantize(fmodel, stats, per_channel=pc, activations=act, requant=rq)
    for act in ("uint8", "int8"):
        out[f"{POOLS}/{act}"] = _pooling_model(tmp_path_factory.mktemp(f"pools-{act}"), act)
    return out


POOLS = "onnx-avg-pools"  # average pools (qavg_pool) between kept relu sites, from quantize_static


def _pooling_model(folder, act):
    """conv -> relu -> AveragePool 3x3/2 (padding left out of the count) -> conv -> relu ->
    AveragePool 2x2/2 (ceil_mode, padding counted) -> GlobalAveragePool -> Gemm, quantized by
    onnxruntime's quantize_static (QDQ, relus kept as sites) and imported."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from velcro_ref.onnx_import import import_onnx

    rng = np.random.default_rng(2)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "AveragePool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        ),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node(
            "AveragePool",
            ["r2"],
            ["p2"],
            name="pool2",
            kernel_shape=[2, 2],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
        helper.make_node("GlobalAveragePool", ["p2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    inits = [weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 1, 1), weight("b2", 8)]
    inits += [weight("w3", 10, 8), weight("b3", 10)]
    graph = helper.make_graph(
        nodes,
        "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": rng.uniform(-1, 1, (4, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    onnx.save(model, str(folder / "float.onnx"))
    quantize_static(
        str(folder / "float.onnx"),
        str(folder / "q.onnx"),
        Batches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"QDQKeepRemovableActivations": True},
    )
    imported = Model(import_onnx(folder / "q.onnx"))
    ops = {n.op for n in imported.graph.nodes}
    assert {"qavg_pool", "qrelu"} <= ops, ops  # the model holds what it is here for
    return imported


def chains_of(graph) -> tuple[dict, dict]:
    """site -> the conv/linear nodes a masked element skips (docs/design.md, producer chain): the
    site's producer if it is a conv or linear, or the convs feeding an add that feeds the site,
    each only where the site's path is its one reader; and site -> the adds passed on the way
    (their masked elements are computed from skipped inputs and never read)."""
    readers: dict[str, list] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n.name)
    readers.setdefault(graph.output, []).append("<output>")
    by_name = {n.name: n for n in graph.nodes}
    out, through = {}, {}
    for n in graph.nodes:
        if n.op not in ("qrelu", "qrelu6"):
            continue
        chain, adds, todo = [], [], [n.inputs[0]]
        while todo:
            t = todo.pop()
            src = by_name.get(t)
            if src is None or len(readers[t]) != 1:
                continue
            if src.op in ("qconv2d", "qlinear"):
                chain.append(t)
            elif src.op == "qadd":
                adds.append(t)
                todo.extend(src.inputs)
        out[n.name], through[n.name] = chain, adds
    return out, through


def random_masks(model, rng):
    sites = {}
    for s, shape in model.sites.items():
        q = model.plan.node(s).q
        lo, hi = quant.dequantize_linear(np.array(quant.qrange(q.dtype)), q.scale, q.zero_point)
        density = rng.choice([0.0, 0.3, 0.7, 1.0])
        mask = rng.random(shape) < density
        span = float(hi - lo)  # constants inside the site's range and beyond it (they saturate)
        const = rng.uniform(lo - 0.2 * span, hi + 0.2 * span, shape).astype(np.float32)
        sites[s] = (mask, const)
    return MaskSet(model.fingerprint, sites)


@settings(max_examples=40)
@given(
    st.sampled_from([f"{f}/{c}" for f in FAMILIES for c in CONFIGS] + [f"{POOLS}/uint8", f"{POOLS}/int8"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 3]),
)
def test_masked_int8_equals_dense_int8_with_the_sites_overwritten(models, key, seed, batch):
    model = models[key]
    rng = np.random.default_rng(seed)
    masks = random_masks(model, rng)
    x = rng.uniform(-1.5, 1.5, (batch, 3, SIZE, SIZE)).astype(np.float32)
    seen = NodeOutputs()
    got = model.run(x, masks=masks, observer=seen)
    want = int8_oracle.run(model.graph, x, masks={s: m for s, m in masks.sites.items()})
    assert np.array_equal(got, want[model.graph.output])

    chains, through = chains_of(model.graph)
    skipped = {node: masks.sites[site][0] for site, chain in chains.items() for node in chain}
    passed = {node: masks.sites[site][0] for site, adds in through.items() for node in adds}
    for name, value in seen.values.items():
        if name in passed:
            keep = ~passed[name]
            assert np.array_equal(value[:, keep], want[name][:, keep]), name
            continue
        if name in skipped:  # a skipped chain element is never computed: it holds the zero point
            keep = ~skipped[name]
            assert np.array_equal(value[:, keep], want[name][:, keep]), name
            zp = model.plan.node(name).q.zero_point
            assert np.all(value[:, skipped[name]] == zp), name
        else:
            assert np.array_equal(value, want[name]), name

    for n in model.graph.nodes:
        if n.op not in ("qconv2d", "qlinear"):
            continue
        per_element = int(np.prod(model.graph.params[n.params["weight"]].shape[1:]))
        computed = want[n.name][0].size - (int(skipped[n.name].sum()) if n.name in skipped else 0)
        assert model.last_macs[n.name] == batch * computed * per_element, n.name


def test_profile_of_an_int8_model_holds_the_dequantized_site_values(models):
    model = models["resnet18/int8-pc-ort"]
    x = np.random.default_rng(5).uniform(-1, 1, (6, 3, SIZE, SIZE)).astype(np.float32)
    stats = velcro_ref.profile(model, x, batch=4)
    ref = int8_oracle.run(model.graph, x)
    for site in model.sites:
        q = model.plan.node(site).q
        real = quant.dequantize_linear(ref[site], q.scale, q.zero_point).astype(np.float64)
        s = stats.sites[site]
        np.testing.assert_allclose(s.mean, real.mean(axis=0), rtol=0, atol=1e-12 * max(1.0, np.abs(real).max()))
        np.testing.assert_allclose(s.variance, real.var(axis=0), rtol=1e-9, atol=1e-12)
        assert np.array_equal(s.min, real.min(axis=0)) and np.array_equal(s.max, real.max(axis=0))


def test_compressed_int8_sites_hold_their_quantized_means(models):
    """`compress` on int8 statistics: the masked elements of a site read the element's mean over
    the profile images quantized with the site's parameters; the rest as dense."""
    model = models["mobilenet_v2/uint8-pt-fixed"]
    rng = np.random.default_rng(6)
    stats = velcro_ref.profile(model, rng.uniform(-1, 1, (10, 3, SIZE, SIZE)).astype(np.float32))
    masks = velcro_ref.compress(stats, 0.4)
    x = rng.uniform(-1, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    seen = NodeOutputs()
    model.run(x, masks=masks, observer=seen)
    for site, (mask, _) in masks.sites.items():
        q = model.plan.node(site).q
        assert mask.sum() == int(0.4 * mask.size), site
        expected = quant.quantize_linear(stats.sites[site].mean.astype(np.float32), q.scale, q.zero_point, q.dtype)
        assert np.array_equal(seen.values[site][:, mask], np.broadcast_to(expected[mask], (2, int(mask.sum()))))


def test_an_int8_input_of_a_uint8_concat_goes_through_the_table_in_engine_and_oracle():
    """An input of another type than the concat's output is requantized through the table even
    where its scale and zero point are the output's (the oracle copied it, keeping negative codes
    in a uint8 tensor; the engine saturates them at 0, as QuantizeLinear(DequantizeLinear(x)) does)."""
    from velcro_ref.graph import INPUT, Graph, Node

    q = {"y_scale": 0.0625, "y_zero_point": 0}
    nodes = (
        Node("i8", "quantize", (INPUT,), {**q, "dtype": "int8"}),
        Node("u8", "quantize", (INPUT,), {**q, "dtype": "uint8"}),
        Node("c", "qconcat", ("i8", "u8"), {**q, "dtype": "uint8"}),
        Node("out", "dequantize", ("c",)),
    )
    graph = Graph(nodes, (1, 2, 2), "out", {})
    x = np.array([[[[-1.0, -0.0625], [0.5, 3.0]]]], np.float32)
    want = np.array([0, 0, 8, 48, 0, 0, 8, 48], np.uint8)  # codes: negative values saturate at 0 in uint8
    assert np.array_equal(int8_oracle.run(graph, x)["c"].reshape(-1), want)
    seen = NodeOutputs()
    Model(graph).run(x, observer=seen)
    assert np.array_equal(seen.values["c"].reshape(-1), want)
