"""ONNX import and export against onnxruntime: hand-built ONNX graphs, velcro graphs, a torch export."""

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from velcro_ref import cli
from velcro_ref.engine import Model
from velcro_ref.errors import ModelError, UnsupportedOpError
from velcro_ref.graph import INPUT, Graph, Node, validate
from velcro_ref.model_io import load_graph, save_model
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import import_onnx

RTOL = 1e-4  # max|engine - ort| <= RTOL * max|ort|


def run_ort(path_or_model, x):
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_close(got, want):
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= RTOL * float(np.max(np.abs(want))), f"max error {err:.3g}, max|ort| {np.max(np.abs(want)):.3g}"
    return err


class OnnxBuilder:
    """Initializers and nodes for a hand-written ONNX graph (independent of the code under test)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def rand(self, name, shape, scale=0.3):
        return self.init(name, self.rng.normal(0, scale, shape).astype(np.float32))

    def node(self, op, inputs, name, outputs=None, **attrs):
        outputs = outputs or [f"{name or len(self.nodes)}:out"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def bn(self, x, name, c):
        r = self.rng
        ins = [
            self.init(f"{name}.s", r.uniform(0.5, 1.5, c).astype(np.float32)),
            self.init(f"{name}.b", r.normal(0, 0.1, c).astype(np.float32)),
            self.init(f"{name}.m", r.normal(0, 0.1, c).astype(np.float32)),
            self.init(f"{name}.v", r.uniform(0.5, 1.5, c).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, *ins], name, epsilon=1e-3)

    def model(self, out, in_shape, out_shape, opset=17, ir_version=8, props=None):
        g = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", *out_shape])],
            initializer=self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
        if props:
            helper.set_model_props(m, props)
        onnx.checker.check_model(m)
        return m


def cnn_onnx(softmax=True):
    """Every op of the float format: asymmetric pads, BN, Relu, Clip(0, 6) from constants, depthwise and grouped
    conv, MaxPool ceil_mode, AveragePool (both count_include_pad), Add, Concat, GAP, Flatten, Gemm, Softmax."""
    b = OnnxBuilder()
    w1, b1 = b.rand("w1", (8, 3, 3, 3)), b.rand("b1", (8,), 0.1)
    x = b.node("Conv", ["x", w1, b1], "conv1", strides=[2, 2], pads=[1, 0, 2, 1], kernel_shape=[3, 3])  # 8x9x8
    x = b.node("Relu", [b.bn(x, "bn1", 8)], "relu1")
    x = b.node("Conv", [x, b.rand("wdw", (8, 1, 3, 3))], "dw", group=8, pads=[1, 1, 1, 1])
    lo = b.node("Constant", [], "six_lo", value=numpy_helper.from_array(np.array(0, np.float32)))
    hi = b.init("six_hi", np.array(6, np.float32))
    x = b.node("Clip", [b.bn(x, "bn2", 8), lo, hi], "clip6")
    x = b.node("Conv", [x, b.rand("wg", (12, 4, 1, 1), 0.6), b.rand("bg", (12,), 0.1)], "group_conv", group=2)
    a = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)  # 12x4x4
    y = b.node("Conv", [x, b.rand("wb", (12, 12, 3, 3), 0.2)], "conv_b", strides=[2, 2], pads=[0, 0, 1, 1])
    y = b.node("Relu", [y], "relu_b")
    x = b.node("Relu", [b.node("Add", [a, y], "add")], "relu_add")
    p = b.node("AveragePool", [x], "avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    x = b.node("Concat", [p, x], "concat", axis=1)  # 24x4x4
    x = b.node(
        "AveragePool", [x], "avgpool_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1
    )
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    x = b.node("Relu", [b.node("Gemm", [x, b.rand("fc1w", (24, 16)), b.rand("fc1b", (16,))], "fc1")], "relu_fc")
    x = b.node("Gemm", [x, b.rand("fc2w", (10, 16)), b.rand("fc2b", (10,))], "fc2", transB=1)
    out = b.node("Softmax", [x], "softmax", ["probs"], axis=1) if softmax else x
    return b.model(out, (3, 17, 17), (10,))


def exporter_idioms_onnx():
    """Opset 10 as older exporters write it: Clip attributes, Reshape through Shape/Gather/Concat, MatMul + Add,
    shared initializers behind Identity, SAME padding, ReduceMean, names with '/', empty and repeated names."""
    b = OnnxBuilder(seed=1)
    w, bias = b.rand("w", (6, 2, 3, 3)), b.rand("bias", (6,), 0.1)
    ones, zeros = b.init("ones", np.ones(6, np.float32)), b.init("zeros", np.zeros(6, np.float32))
    var = b.node("Identity", [ones], "", ["bn.running_var"])
    mean = b.node("Identity", [zeros], "", ["bn.running_mean"])
    x = b.node("Conv", ["x", w, bias], "/stem/conv/Conv", auto_pad=b"SAME_UPPER", strides=[2, 2])  # 6x5x4, pads 1,0,1,1
    x = b.node("BatchNormalization", [x, ones, zeros, mean, var], "/stem/bn/BatchNormalization")
    x = b.node("Clip", [x], "/stem/act/Clip", min=0.0, max=6.0)
    x = b.node("Identity", [x], "/stem/Identity")
    m = b.node("ReduceMean", [x], "", ["pooled"], axes=[2, 3], keepdims=1)
    m = b.node("Dropout", [m], "/drop/Dropout", ratio=0.5)
    shape = b.node("Shape", [m], "/Shape")
    n = b.node("Gather", [shape, b.init("zero", np.array(0, np.int64))], "/Gather")
    n = b.node("Unsqueeze", [n], "/Unsqueeze", axes=[0])
    target = b.node("Concat", [n, b.init("minus1", np.array([-1], np.int64))], "/Concat", axis=0)
    x = b.node("Reshape", [m, target], "/Reshape")
    x = b.node("MatMul", [x, b.rand("mw", (6, 5))], "/fc/MatMul")
    x = b.node("Add", [x, b.rand("mb", (5,))], "/fc/Add")
    x = b.node("Relu", [x], "")
    x = b.node("Relu", [x], "")
    x = b.node("Softmax", [x], "/Softmax", ["probs"], axis=-1)
    pre = {"scale": 1 / 255, "mean": [0.5, 0.5], "std": [0.25, 0.25]}
    return b.model(x, (2, 9, 8), (5,), opset=10, ir_version=5, props={"velcro.preprocessing": json.dumps(pre)}), pre


@pytest.mark.parametrize("softmax", [True, False], ids=["probs", "logits"])
def test_hand_built_onnx_cnn_matches_onnxruntime(tmp_path, softmax):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn_onnx(softmax), path)
    g = import_onnx(path)
    assert g.input_shape == (3, 17, 17)
    assert g.activation_sites() == ["relu1", "clip6", "relu_b", "relu_add", "relu_fc"]
    assert g.node("clip6").op == "relu6"
    assert g.node("conv1").attrs["pads"] == [1, 0, 2, 1]
    x = np.random.default_rng(5).normal(0, 1, (3, 3, 17, 17)).astype(np.float32)  # batch 3: dynamic axis
    want = run_ort(str(path), x)
    got = Model(g).run(x)
    err = assert_close(got, want)
    kind = "probs" if softmax else "logits"
    print(f"hand-built CNN ({kind}): max|engine - ort| = {err:.3g}, max|ort| = {np.abs(want).max():.3g}")


def test_exporter_idioms_import_and_match(tmp_path):
    model, pre = exporter_idioms_onnx()
    path = tmp_path / "idioms.onnx"
    onnx.save(model, path)
    g = import_onnx(path)
    ops = [n.op for n in g.nodes]
    assert ops == ["conv2d", "batch_norm", "relu6", "global_avg_pool", "flatten", "linear", "relu", "relu", "softmax"]
    names = [n.name for n in g.nodes]
    assert len(set(names)) == len(names) and all(n.replace("_", "").replace(".", "").isalnum() for n in names)
    assert names[:3] == ["stem.conv", "stem.bn", "stem.act"]
    assert g.node("fc").params.keys() == {"weight", "bias"}  # MatMul + Add became one linear with bias
    assert g.node("stem.conv").attrs["pads"] == [1, 0, 1, 1]  # SAME_UPPER on 9x8, stride 2, kernel 3
    assert g.meta == {"preprocessing": pre}
    x = np.random.default_rng(6).normal(0, 1, (4, 2, 9, 8)).astype(np.float32)
    err = assert_close(Model(g).run(x), run_ort(str(path), x))
    print(f"exporter idioms: max|engine - ort| = {err:.3g}")


def test_unsupported_ops_are_listed_in_one_error(tmp_path):
    b = OnnxBuilder()
    x = b.node("Conv", ["x", b.rand("w", (4, 3, 1, 1))], "conv")
    x = b.node("Sigmoid", [x], "gate_sigmoid")
    x = b.node("LRN", [x], "norm_lrn", size=3)
    x = b.node("Clip", [x, b.init("lo", np.array(-1, np.float32)), b.init("hi", np.array(1, np.float32))], "clip")
    x = b.node("Relu", [x], "relu")
    path = tmp_path / "bad.onnx"
    onnx.save(b.model(x, (3, 5, 5), (4, 5, 5)), path)
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(path)
    msg = str(e.value)
    assert str(path) in msg
    for needle in ("'Sigmoid' (node 'gate_sigmoid')", "'LRN' (node 'norm_lrn')", "'Clip' (node 'clip'", "[-1, 1]"):
        assert needle in msg, msg
    assert "Supported ops: Add, AveragePool, BatchNormalization" in msg


def test_unreadable_onnx_is_a_model_error_naming_the_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07not really an onnx file\xff\xfe" * 20)
    for path in (bad, tmp_path / "missing.onnx"):
        with pytest.raises(ModelError, match=str(path.name)):
            import_onnx(path)


def small_graph():
    """A velcro graph with every exportable op, built by hand."""
    rng = np.random.default_rng(7)

    def p(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype(np.float32)

    params = {
        "conv1.weight": p(8, 2, 3, 3),
        "conv1.bias": p(8, scale=0.1),
        "bn1.gamma": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "bn1.beta": p(8, scale=0.1),
        "bn1.mean": p(8, scale=0.1),
        "bn1.var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "dw.weight": p(8, 1, 3, 3),
        "pw.weight": p(8, 4, 1, 1, scale=0.5),
        "fc.weight": p(5, 16),
        "fc.bias": p(5, scale=0.1),
    }
    conv = {"out_channels": 8, "kernel": [3, 3], "stride": [2, 2], "pads": [0, 1, 1, 0]}
    dw = {"out_channels": 8, "kernel": [3, 3], "pads": 1, "groups": 8}
    avg = {"kernel": [3, 3], "stride": [2, 2], "pads": [1, 0, 0, 0], "ceil_mode": True, "count_include_pad": True}
    nodes = [
        Node("conv1", "conv2d", ("input",), conv, {"weight": "conv1.weight", "bias": "conv1.bias"}),
        Node("bn1", "batch_norm", ("conv1",), {"eps": 1e-5}, {r: f"bn1.{r}" for r in ("gamma", "beta", "mean", "var")}),
        Node("relu6", "relu6", ("bn1",)),
        Node("dw", "conv2d", ("relu6",), dw, {"weight": "dw.weight"}),
        Node("pw", "conv2d", ("dw",), {"out_channels": 8, "kernel": [1, 1], "groups": 2}, {"weight": "pw.weight"}),
        Node("add", "add", ("pw", "relu6")),
        Node("relu", "relu", ("add",)),
        Node("maxpool", "max_pool", ("relu",), {"kernel": [3, 3], "stride": [2, 2], "ceil_mode": True}),
        Node("avgpool", "avg_pool", ("relu",), avg),
        Node("concat", "concat", ("maxpool", "avgpool")),
        Node("gap", "global_avg_pool", ("concat",)),
        Node("flatten", "flatten", ("gap",)),
        Node("dropout", "dropout", ("flatten",), {"p": 0.2}),
        Node("fc", "linear", ("dropout",), {}, {"weight": "fc.weight", "bias": "fc.bias"}),
        Node("softmax", "softmax", ("fc",)),
    ]  # fmt: skip
    meta = {"name": "small", "preprocessing": {"scale": 1 / 255, "mean": [0.5, 0.5], "std": [0.5, 0.5]}}
    return Graph(tuple(nodes), (2, 12, 10), "softmax", params, meta)


def test_exported_graph_runs_in_onnxruntime_like_the_engine(tmp_path):
    g = small_graph()
    path = tmp_path / "small.onnx"
    export_onnx(g, path)
    m = onnx.load(path)
    assert m.opset_import[0].version == 19 and m.ir_version == 9  # it has an avg_pool
    assert [i.name for i in m.graph.input] == ["input"] and m.graph.output[0].name == "softmax"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" in ops and "Clip" in ops and ops.count("Conv") == 3
    assert json.loads({p.key: p.value for p in m.metadata_props}["velcro.meta"]) == g.meta
    x = np.random.default_rng(8).normal(0, 1, (3, 2, 12, 10)).astype(np.float32)
    err = assert_close(Model(g).run(x), run_ort(str(path), x))
    print(f"export: max|engine - ort| = {err:.3g}")


def test_import_of_export_runs_identically(tmp_path):
    g = small_graph()
    path = tmp_path / "small.onnx"
    export_onnx(g, path)
    g2 = import_onnx(path)
    assert g2.meta == g.meta
    assert g2.activation_sites() == g.activation_sites()
    assert [n.name for n in g2.nodes] == [n.name for n in g.nodes if n.op != "dropout"]
    x = np.random.default_rng(9).normal(0, 1, (2, 2, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(Model(g2).run(x), Model(g).run(x))


def test_cli_import_and_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["velcro_ref.commands_onnx"])
    h5, onnx_path, back = tmp_path / "m.h5", tmp_path / "m.onnx", tmp_path / "back.h5"
    save_model(small_graph(), h5)
    assert cli.main(["export-onnx", str(h5), "-o", str(onnx_path)]) == 0
    assert cli.main(["import-onnx", str(onnx_path), "-o", str(back)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_graph(back).meta == small_graph().meta
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    assert cli.main(["import-onnx", str(garbage), "-o", str(tmp_path / "x.h5")]) == 1
    assert f"error: {garbage}" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
    for command in ("import-onnx", "export-onnx"):
        assert cli.main([command, "--help"]) == 0


def test_cli_export_of_fixed_point_layers_says_onnxruntime_requantizes_them_otherwise(tmp_path, capsys):
    # the shipped int8 models requantize in fixed point, which ONNX has no form for
    weights = Path(__file__).resolve().parents[2] / "weights"
    n_fixed = sum(n.attrs.get("requant") == "fixed_point" for n in load_graph(weights / "resnet18_int8.h5").nodes)
    assert n_fixed > 0
    assert cli.main(["export-onnx", str(weights / "resnet18_int8.h5"), "-o", str(tmp_path / "q.onnx")]) == 0
    err = capsys.readouterr().err
    assert f"note: {n_fixed} layer(s) requantize in fixed point" in err and "docs/int8.md" in err
    assert cli.main(["export-onnx", str(weights / "resnet18.h5"), "-o", str(tmp_path / "f.onnx")]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fold", [True, False], ids=["bn-folded-by-exporter", "bn-kept"])
def test_torch_export_imports_and_matches(tmp_path, fold):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.act = nn.ReLU6()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.avg = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
            self.branch = nn.Conv2d(8, 4, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(12, 10)

        def forward(self, x):
            x = self.act(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.dw(x)) + x)
            x = self.pool(x)
            x = torch.cat([self.avg(x), torch.relu(self.branch(x))], 1)
            x = self.gap(x)
            x = x.view(x.size(0), -1)
            return torch.softmax(self.fc(self.drop(x)), dim=1)

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    net.eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 21, 19),),
        str(path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=fold,
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
    )
    g = import_onnx(path)
    assert ("batch_norm" in [n.op for n in g.nodes]) == (not fold)
    x = np.random.default_rng(10).normal(0, 1, (2, 3, 21, 19)).astype(np.float32)
    got = Model(g).run(x)
    err = assert_close(got, run_ort(str(path), x))
    with torch.no_grad():
        assert_close(got, net(torch.from_numpy(x)).numpy())
    print(f"torch export ({'folded' if fold else 'bn kept'}): max|engine - ort| = {err:.3g}")


@pytest.mark.parametrize("op", ["max_pool", "avg_pool", "avg_pool_count_pad"])
@pytest.mark.parametrize(
    "hw, kernel, stride",
    [((5, 4), 2, 2), ((4, 4), 2, 3), ((5, 5), 3, 3), ((7, 6), 3, 2)],
    ids=["k2s2-last-row-dropped", "k2s3-both-dropped", "k3s3-both-dropped", "k3s2-none-dropped"],
)
def test_exported_ceil_mode_pool_keeps_the_engine_size_where_the_last_window_would_start_in_the_padding(
    tmp_path, op, hw, kernel, stride
):
    # PyTorch's ceil_mode drops a last window that would start in the end padding; ONNX's size
    # formula has no such rule, so the exported pads must make it give the same size: the file
    # passes onnx's full check (shape inference), onnxruntime loads it with a Gemm after the pool
    # and computes what the engine does
    attrs = {"kernel": [kernel, kernel], "stride": [stride, stride], "pads": 1, "ceil_mode": True}
    if op != "max_pool":
        attrs["count_include_pad"] = op == "avg_pool_count_pad"
    rng = np.random.default_rng(3)
    pool = Node("pool", op.removesuffix("_count_pad"), ("input",), attrs)
    g0 = Graph((pool,), (3, *hw), "pool", {}, {})
    shape = validate(g0)["pool"]
    n_out = int(np.prod(shape))
    params = {"fc.weight": rng.normal(0, 0.3, (4, n_out)).astype(np.float32)}
    nodes = (pool, Node("flat", "flatten", ("pool",)), Node("fc", "linear", ("flat",), {}, {"weight": "fc.weight"}))
    x = rng.normal(0, 1, (2, 3, *hw)).astype(np.float32)
    for g in (g0, Graph(nodes, (3, *hw), "fc", params, {})):
        path = tmp_path / f"{g.output}.onnx"
        export_onnx(g, path)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in inferred.graph.value_info}
        dims.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in inferred.graph.output})
        assert dims["pool"] == list(shape)
        if g is g0:  # the pool alone: onnxruntime's bits (an AveragePool of opset 19, `export_opset`)
            assert m.opset_import[0].version == (19 if op != "max_pool" else 17)
            np.testing.assert_array_equal(Model(g).run(x), run_ort(str(path), x))
        assert_close(Model(g).run(x), run_ort(str(path), x))
        np.testing.assert_array_equal(Model(import_onnx(path)).run(x), Model(g).run(x))


def small_windows():
    """(size, kernel, stride, start pad, end pad, op, count_include_pad) of one axis: sizes 1 - 7,
    kernels 1 - 4, strides 1 - 4, pads within half the kernel; max, and average with and without
    the padding counted."""
    for n, k, s, lo, hi in itertools.product(range(1, 8), range(1, 5), range(1, 5), range(3), range(3)):
        if 2 * max(lo, hi) <= k and n + lo + hi >= k:
            for op, count_pad in (("max_pool", None), ("avg_pool", False), ("avg_pool", True)):
                yield n, k, s, lo, hi, op, count_pad


def test_every_small_ceil_mode_window_exports_to_a_file_onnx_checks_and_onnxruntime_runs_like_the_engine(tmp_path):
    # sizes 1 - 7, kernels 1 - 4, strides 1 - 4, pads up to half the kernel, on one axis; max, and
    # average with and without the padding counted: the export passes onnx's full check (its
    # shape inference must give the engine's size) and onnxruntime gives the engine's values
    rng = np.random.default_rng(5)
    path, n_cases = tmp_path / "p.onnx", 0
    for n, k, s, lo, hi, op, count_pad in small_windows():
        attrs = {"kernel": [k, 1], "stride": [s, 1], "pads": [lo, 0, hi, 0], "ceil_mode": True}
        if count_pad is not None:
            attrs["count_include_pad"] = count_pad
        g = Graph((Node("pool", op, ("input",), attrs),), (1, n, 2), "pool", {}, {})
        export_onnx(g, path)
        onnx.checker.check_model(onnx.load(path), full_check=True)
        x = rng.normal(0, 1, (2, 1, n, 2)).astype(np.float32)
        want, got = Model(g).run(x), run_ort(str(path), x)
        assert got.shape == want.shape, (n, k, s, lo, hi, op, count_pad)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=str((n, k, s, lo, hi, op, count_pad)))
        n_cases += 1
    assert n_cases > 1000


def test_a_ceil_mode_average_with_no_onnx_form_is_refused_in_one_line(tmp_path):
    # counting its padding, the average's first axis keeps its windows only with ONNX's ceil_mode 1
    # (a window runs past the end pad), its second only with 0 (stride 3 over a kernel of 2, whose
    # ceil rounds up where the engine's rule drops): one ceil_mode serves both axes in ONNX
    attrs = {"kernel": [2, 2], "stride": [2, 3], "pads": [0, 1, 0, 0], "ceil_mode": True, "count_include_pad": True}
    g = Graph((Node("pool", "avg_pool", ("input",), attrs),), (1, 5, 2), "pool", {}, {})
    with pytest.raises(ModelError, match="node 'pool': no ONNX pooling window gives this ceil_mode window"):
        export_onnx(g, tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


def test_a_ceil_mode_window_exported_with_ceil_mode_0_imports_back_to_the_same_windows(tmp_path):
    # An axis of 3 at stride 3 over a kernel of 1 (PyTorch's ceil_mode drops its second window, which
    # would start in the end padding) has no ONNX ceil_mode 1 form, so the export writes
    # ceil_mode 0 for the node, and the other axis then needs an end pad up to k - 1, which the
    # engine's pools (pads within k // 2) took for an error: import-onnx refused its own export.
    # Back in, the window is written with end pads within k // 2: the same size, windows and counts.
    rng = np.random.default_rng(6)
    path, n_cases = tmp_path / "p.onnx", 0
    for n, k, s, lo, hi, op, count_pad in small_windows():
        attrs = {"kernel": [1, k], "stride": [3, s], "pads": [0, lo, 0, hi], "ceil_mode": True}
        if count_pad is not None:
            attrs["count_include_pad"] = count_pad
        g = Graph((Node("pool", op, ("input",), attrs),), (1, 3, n), "pool", {}, {})
        try:
            export_onnx(g, path)
        except ModelError:  # a window ONNX cannot write (docs/formats.md): refused in one line
            continue
        x = rng.normal(0, 1, (2, 1, 3, n)).astype(np.float32)
        back = import_onnx(path)
        np.testing.assert_array_equal(Model(back).run(x), Model(g).run(x), err_msg=str((n, k, s, lo, hi, op)))
        n_cases += 1
    assert n_cases > 500


@pytest.mark.parametrize("name", ["fc.weight", "velcro.relu6_max"])
def test_a_node_named_as_a_parameter_or_an_export_constant_exports(tmp_path, name):
    """The importer names parameters '<node>.<role>', so a node may be named as another node's parameter;
    the exporter's initializer of that name is renamed (the export was refused: "names used both ...")."""
    rng = np.random.default_rng(3)
    params = {"fc.weight": rng.standard_normal((4, 12)).astype(np.float32)}
    nodes = (
        Node("flat", "flatten", (INPUT,)),
        Node("fc", "linear", ("flat",), {}, {"weight": "fc.weight"}),
        Node(name, "relu6", ("fc",)),
    )
    graph = Graph(nodes, (3, 2, 2), name, params)
    export_onnx(graph, tmp_path / "m.onnx")
    x = (rng.standard_normal((3, 3, 2, 2)) * 4).astype(np.float32)
    assert_close(run_ort(str(tmp_path / "m.onnx"), x), Model(graph).run(x))
    np.testing.assert_array_equal(Model(import_onnx(tmp_path / "m.onnx")).run(x), Model(graph).run(x))


def test_a_node_name_kept_as_it_is_is_not_taken_by_a_cleaned_one(tmp_path):
    """'act/1' cleans to 'act.1', the name of another node: the node named 'act.1' keeps it, whichever comes
    first, so `--layer act.1` or `--exclude act.1` still picks the same layer after a round trip."""
    rng = np.random.default_rng(1)
    params = {"w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32)}
    params["w2"] = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    nodes = (
        Node("conv1", "conv2d", (INPUT,), {"out_channels": 4, "kernel": 3, "pads": 1}, {"weight": "w1"}),
        Node("act/1", "relu", ("conv1",)),
        Node("conv2", "conv2d", ("act/1",), {"out_channels": 4, "kernel": 3, "pads": 1}, {"weight": "w2"}),
        Node("act.1", "relu6", ("conv2",)),
    )
    graph = Graph(nodes, (2, 6, 6), "act.1", params)
    export_onnx(graph, tmp_path / "m.onnx")
    back = import_onnx(tmp_path / "m.onnx")
    assert {n.name: n.op for n in back.nodes if n.op in ("relu", "relu6")} == {"act.1_2": "relu", "act.1": "relu6"}


def test_a_name_of_a_node_that_becomes_no_graph_node_is_not_kept(tmp_path):
    """An Identity named 'act.1' (folded away) held that name against the Relu 'act/1' cleaned into it."""
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [
        helper.make_node("Identity", ["w0"], ["w"], name="act.1"),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="act/1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w0")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "m.onnx")
    assert [n.name for n in import_onnx(tmp_path / "m.onnx").nodes] == ["conv", "act.1"]
