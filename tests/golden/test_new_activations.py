"""silu (ONNX Sigmoid + Mul, as torch exports it) and hardswish (ONNX HardSwish) as activation sites:
imported from an ONNX model built here, run dense and masked against onnxruntime, exported back."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from velcro_ref.engine import Model
from velcro_ref.masks import MaskSet
from velcro_ref.onnx_export import build_onnx
from velcro_ref.onnx_import import import_onnx

RTOL = 1e-4  # max|engine - ort| <= RTOL * max|ort|


def run_ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_close(got, want):
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= RTOL * float(np.max(np.abs(want))), f"max error {err:.3g}, max|ort| {np.max(np.abs(want)):.3g}"


def onnx_model(overwrite=None):
    """Conv -> SiLU (Sigmoid, Mul) -> Conv -> HardSwish -> GAP -> Gemm. With `overwrite` {site tensor:
    (mask, constants)} a Where after the site puts the constants at the masked elements: the oracle
    of masked inference (every element computed, masked ones overwritten)."""
    rng = np.random.default_rng(4)
    inits, nodes = [], []

    def init(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def site(t):
        if overwrite is None or t not in overwrite:
            return t
        mask, const = overwrite[t]
        init(f"{t}.mask", mask[None])
        init(f"{t}.const", const[None].astype(np.float32))
        nodes.append(helper.make_node("Where", [f"{t}.mask", f"{t}.const", t], [f"{t}.kept"], name=f"{t}.where"))
        return f"{t}.kept"

    w1 = init("w1", rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32))
    b1 = init("b1", rng.normal(0, 0.2, 8).astype(np.float32))
    nodes.append(helper.make_node("Conv", ["x", w1, b1], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Sigmoid", ["c1"], ["s1"], name="act1/Sigmoid"))
    nodes.append(helper.make_node("Mul", ["c1", "s1"], ["act1"], name="act1"))
    w2 = init("w2", rng.normal(0, 0.3, (6, 8, 3, 3)).astype(np.float32))
    nodes.append(helper.make_node("Conv", [site("act1"), w2], ["c2"], name="conv2", strides=[2, 2]))
    nodes.append(helper.make_node("HardSwish", ["c2"], ["act2"], name="act2"))
    nodes.append(helper.make_node("GlobalAveragePool", [site("act2")], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fw = init("fw", rng.normal(0, 0.5, (5, 6)).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", fw], ["y"], name="fc", transB=1))
    g = helper.make_graph(
        nodes,
        "act",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("act") / "act.onnx"
    onnx.save(onnx_model(), str(path))
    return Model(import_onnx(path))


def inputs(n=6):
    return np.random.default_rng(1).normal(0, 1.5, (n, 3, 9, 9)).astype(np.float32)


def test_sigmoid_mul_imports_as_silu_and_hardswish_as_hardswish(imported):
    ops = {n.name: n.op for n in imported.graph.nodes}
    assert ops["act1"] == "silu" and ops["act2"] == "hardswish"
    assert not any(op in ("sigmoid", "mul") for op in ops.values())
    assert set(imported.sites) == {"act1", "act2"}
    assert imported.chains == {"act1": ("conv1",), "act2": ("conv2",)}


def test_dense_inference_matches_onnxruntime(imported):
    x = inputs()
    assert_close(imported.run(x), run_ort(onnx_model(), x))


def test_masked_inference_matches_the_where_overwrite_oracle(imported):
    rng = np.random.default_rng(2)
    sites = {}
    for name, shape in imported.sites.items():
        mask = rng.random(shape) < 0.4
        sites[name] = (mask, rng.normal(0, 1, shape).astype(np.float32))
    masks = MaskSet(imported.fingerprint, sites, {"name": "test"}, complete=True)
    x = inputs()
    got = imported.run(x, masks=masks)
    assert_close(got, run_ort(onnx_model(overwrite=sites), x))
    dense = imported.layer_macs()
    for site, (mask, _) in sites.items():  # the masked elements' MACs were skipped, not just overwritten
        (conv,) = imported.chains[site]
        assert imported.last_macs[conv] == dense[conv] // mask.size * int(np.count_nonzero(~mask)) * len(x)


def test_export_writes_onnx_that_onnxruntime_runs_like_the_engine(imported, tmp_path):
    model = build_onnx(imported.graph)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("Sigmoid") == 1
    x = inputs()
    assert_close(imported.run(x), run_ort(model, x))
    path = tmp_path / "again.onnx"
    onnx.save(model, str(path))
    again = Model(import_onnx(path))
    assert [n.op for n in again.graph.nodes] == [n.op for n in imported.graph.nodes]
    assert np.array_equal(again.run(x), imported.run(x))


def test_a_lone_sigmoid_is_refused_in_one_line(tmp_path):
    from velcro_ref.errors import UnsupportedOpError

    m = onnx_model()
    for n in m.graph.node:
        if n.op_type == "Mul":
            n.op_type, n.input[:] = "Add", ["c1", "s1"]
    path = tmp_path / "lone.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOpError, match="'Sigmoid' .*x \\* Sigmoid\\(x\\)"):
        import_onnx(path)
