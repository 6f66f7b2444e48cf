"""Every bad model file gives one line `error: FILE: ...` naming the node, parameter or attribute (exit 1).

tests/unit/test_cli_errors.py covers not-HDF5, one truncation, a missing parameter, a wrong parameter
shape and a NaN weight; these are the other cases of the robustness issue.
"""

import json
import tracemalloc

import h5py
import numpy as np
import pytest
from robust_util import ROOT, edited_copy, velcro_process, zoo_graph

from velcro_ref import h5io
from velcro_ref.engine import Model
from velcro_ref.errors import ModelError
from velcro_ref.graph import MAX_ELEMENTS, Graph, Node, validate
from velcro_ref.model_io import graph_from_json, load_graph, save_model
from velcro_ref.stats import collect_stats, save_stats


def edit_graph(fn):
    """An edit of the stored graph JSON (the stored fingerprint goes stale; validation fails first)."""

    def edit(f):
        doc = json.loads(f.attrs["graph"])
        fn(doc)
        f.attrs["graph"] = json.dumps(doc)

    return edit


def restamped(edit):
    """`edit`, then the fingerprint of the edited contents stored, as in a file another writer made."""

    def run(f):
        edit(f)
        params = {h5io.unescape_key(k): f["params"][k][()] for k in f["params"]}
        f.attrs["fingerprint"] = graph_from_json(json.loads(f.attrs["graph"]), {}, params).fingerprint()

    return run


def node(doc, name):
    return next(n for n in doc["nodes"] if n["name"] == name)


def write_raw_model(path, doc, declared, fingerprint="0" * 64, version=1):
    """A model file written by hand: `declared` maps parameter -> array, or (shape, dtype) for a dataset
    that is declared but never written (HDF5 allocates no storage for it)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "velcro-model"
        f.attrs["format_version"] = version
        f.attrs["fingerprint"] = fingerprint
        f.attrs["graph"] = json.dumps(doc)
        f.attrs["meta"] = "{}"
        g = f.create_group("params")
        for key, value in declared.items():
            if isinstance(value, tuple):
                g.create_dataset(key, shape=value[0], dtype=value[1])
            else:
                g.create_dataset(key, data=value)
    return path


def conv_node(name, src, out_channels, kernel=1, **attrs):
    a = {"out_channels": out_channels, "kernel": [kernel, kernel], **attrs}
    return {"name": name, "op": "conv2d", "inputs": [src], "attrs": a, "params": {"weight": f"{name}.weight"}}


def linear_node(name, src):
    return {"name": name, "op": "linear", "inputs": [src], "attrs": {}, "params": {"weight": f"{name}.weight"}}


def flatten_node(name, src):
    return {"name": name, "op": "flatten", "inputs": [src], "attrs": {}, "params": {}}


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda f: f.attrs.__setitem__("format_version", 3), ["format_version 3 is newer than supported"]),
        (lambda f: f.attrs.__setitem__("format", "velcro-stats"), ["format attribute expects 'velcro-model'"]),
        (lambda f: f.attrs.__delitem__("format"), ["format attribute expects 'velcro-model'", "none"]),
        (lambda f: f.attrs.__setitem__("format_version", "1"), ["'format_version' expects an integer", "str"]),
        (lambda f: f.attrs.__delitem__("graph"), ["attribute 'graph' is missing"]),
        (lambda f: f.attrs.__setitem__("graph", '{"nodes": ['), ["attribute 'graph' is not valid JSON"]),
        (lambda f: f.attrs.__setitem__("graph", "[" * 100000), ["attribute 'graph' is not valid JSON"]),
        (lambda f: f.attrs.__setitem__("meta", "[1, 2]"), ["attribute 'meta' expects a JSON dict, found list"]),
        (lambda f: f.attrs.__delitem__("fingerprint"), ["attribute 'fingerprint' is missing"]),
        (lambda f: f.__delitem__("params"), ["group 'params' is missing"]),
        (
            lambda f: (f.__delitem__("params"), f.create_dataset("params", data=[1.0])),
            ["'params' expects an HDF5 group, found Dataset"],
        ),
        (
            lambda f: (f["params"].__delitem__("fc.bias"), f["params"].create_group("fc.bias")),
            ["parameter 'fc.bias' expects an HDF5 dataset, found Group"],
        ),
        (
            lambda f: (
                f["params"].__delitem__("fc.bias"),
                f["params"].create_dataset("fc.bias", data=h5py.Empty("f4")),
            ),
            ["parameter 'fc.bias'", "empty dataspace"],
        ),
        (
            lambda f: f["params"]["fc.weight"].__setitem__((0, 0), 0.5),
            ["fingerprint mismatch", "modified or corrupted"],
        ),
    ],
    ids=[
        "newer-version",
        "other-format",
        "no-format",
        "version-not-int",
        "no-graph",
        "graph-not-json",
        "graph-nested-too-deep",
        "meta-not-object",
        "no-fingerprint",
        "no-params-group",
        "params-is-dataset",
        "parameter-is-group",
        "parameter-empty-dataspace",
        "weight-changed-after-writing",
    ],
)
def test_bad_file_structure_is_one_line_naming_the_file(velcro, tmp_path, model_file, edit, needles):
    bad = edited_copy(model_file, tmp_path / "bad.h5", edit)
    velcro("info", bad).error_line(f"error: {bad}: ", *needles)


@pytest.mark.parametrize(
    "edit, needles",
    [
        (
            edit_graph(lambda d: node(d, "bn1").__setitem__("inputs", ["layer1.0.relu1"])),
            ["graph is cyclic: relu -> maxpool -> layer1.0.conv1 -> layer1.0.bn1 -> layer1.0.relu1 -> bn1 -> relu"],
        ),
        (edit_graph(lambda d: node(d, "bn1").__setitem__("inputs", ["bn1"])), ["graph is cyclic: bn1 -> bn1"]),
        (
            edit_graph(lambda d: d["nodes"].insert(0, d["nodes"].pop(2))),
            ["node 'relu': reads tensor 'bn1' before it is produced", "topological order"],
        ),
        (
            edit_graph(lambda d: node(d, "relu").__setitem__("inputs", ["bn_1"])),
            ["node 'relu': reads tensor 'bn_1', which no node produces"],
        ),
        (
            edit_graph(lambda d: (node(d, "relu").__setitem__("op", "gelu"), node(d, "fc").__setitem__("op", "gemm"))),
            ["unsupported op 'gelu' (node 'relu'), 'gemm' (node 'fc')", "supported: add,"],
        ),
        (
            edit_graph(lambda d: node(d, "conv1")["attrs"].__setitem__("strides", [2, 2])),
            ["node 'conv1': unknown attribute(s) strides for conv2d", "valid: out_channels, kernel, stride"],
        ),
        (edit_graph(lambda d: node(d, "conv1")["attrs"].__setitem__("stride", 0)), ["node 'conv1': stride", "got 0"]),
        (
            edit_graph(lambda d: node(d, "relu")["attrs"].__setitem__("max", 6.0)),
            ["node 'relu': max expects 3.4028234663852886e+38 (float32's largest), got 6.0"],
        ),
        (
            edit_graph(lambda d: node(d, "conv1")["attrs"].__setitem__("kernel", True)),
            ["node 'conv1': kernel expects an int or two ints, got True"],
        ),
        (edit_graph(lambda d: node(d, "conv1")["attrs"].__setitem__("pads", -1)), ["node 'conv1': pads", "got -1"]),
        (
            edit_graph(lambda d: node(d, "maxpool")["attrs"].__setitem__("ceil_mode", "yes")),
            ["node 'maxpool': ceil_mode expects true or false, got 'yes'"],
        ),
        (
            edit_graph(lambda d: node(d, "bn1")["attrs"].__setitem__("eps", -1e-5)),
            ["node 'bn1': eps expects a number"],
        ),
        (
            edit_graph(lambda d: node(d, "layer1.0.conv1").__setitem__("name", "conv1")),
            ["node 'conv1': name used by two nodes"],
        ),
        (edit_graph(lambda d: node(d, "conv1").__setitem__("name", "input")), ["'input' is reserved"]),
        (edit_graph(lambda d: node(d, "fc").__setitem__("atrs", {})), ["node 'fc': unknown key(s) 'atrs'"]),
        (edit_graph(lambda d: d.__setitem__("input_shape", [3, 16])), ["conv2d expects a rank-3 input", "(3, 16)"]),
        (edit_graph(lambda d: d.__setitem__("output", "logits")), ["graph output 'logits' is not produced"]),
        (edit_graph(lambda d: d.pop("output")), ["'output' must name a tensor, found None"]),
    ],
    ids=[
        "cycle",
        "self-loop",
        "read-before-produced",
        "unknown-tensor",
        "unknown-ops-all-listed",
        "unknown-attribute",
        "zero-stride",
        "relu-max-other-than-the-largest-float",
        "bool-kernel",
        "negative-pads",
        "non-bool-ceil-mode",
        "negative-eps",
        "duplicate-name",
        "reserved-name",
        "unknown-node-key",
        "wrong-input-rank",
        "unknown-output",
        "no-output",
    ],
)
def test_malformed_graph_is_one_line_naming_the_node(velcro, tmp_path, model_file, edit, needles):
    bad = edited_copy(model_file, tmp_path / "bad.h5", edit)
    velcro("info", bad).error_line(f"error: {bad}: ", *needles)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_parameter_of_wrong_dtype_is_named(velcro, tmp_path, model_file, dtype):
    def edit(f):
        a = f["params/layer3.0.conv1.weight"][()]
        del f["params/layer3.0.conv1.weight"]
        f["params"].create_dataset("layer3.0.conv1.weight", data=a.astype(dtype))

    bad = edited_copy(model_file, tmp_path / "dtype.h5", edit)
    velcro("info", bad).error_line(
        str(bad), "parameter 'layer3.0.conv1.weight'", "expects float32", f"found {np.dtype(dtype)}"
    )


@pytest.mark.parametrize("key, other", [("c%w", "c%w"), ("c.w", "c%2Ew")])
def test_a_dataset_under_a_name_no_key_is_stored_as_is_refused(tmp_path, key, other):
    """Key 'c%w' is stored as params/c%25w; a second dataset params/c%w (or params/c%2Ew beside
    c.w) unescaped to the same key, and the loader took one of the two by the order of the names,
    with the fingerprint over that one: its values ran with exit 0 (-5 on every output)."""
    doc = {"input_shape": [1, 2, 2], "output": "c", "nodes": [conv_node("c", "input", 1)]}
    doc["nodes"][0]["params"]["weight"] = key
    canonical, stray = np.full((1, 1, 1, 1), 2.0, np.float32), np.full((1, 1, 1, 1), -5.0, np.float32)
    fingerprint = graph_from_json(doc, {}, {key: stray}).fingerprint()
    path = write_raw_model(tmp_path / "m.h5", doc, {h5io.escape_key(key): canonical}, fingerprint)
    with h5py.File(path, "a") as f:
        f["params"].create_dataset(other, data=stray)
    with pytest.raises(ModelError, match=f"dataset 'params/{other}' is no stored parameter name"):
        load_graph(path)
    with h5py.File(path, "a") as f:
        del f["params"][other]
    with pytest.raises(ModelError, match="fingerprint mismatch"):  # the values the fingerprint is of are gone
        load_graph(path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.7, 0.999])
def test_truncated_file_at_any_length_is_a_model_error(velcro, tmp_path, model_file, fraction):
    data = model_file.read_bytes()
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(data[: int(len(data) * fraction)])
    velcro("info", bad).error_line(f"error: {bad}: ")


def test_directory_instead_of_model(velcro, tmp_path):
    velcro("info", tmp_path).error_line(f"error: {tmp_path}: is a directory")


def test_nonfinite_parameters_are_refused_unless_allowed(velcro, tmp_path, small_graph):
    params = dict(small_graph.params)
    params["layer4.1.conv2.weight"] = params["layer4.1.conv2.weight"].copy()
    params["layer4.1.conv2.weight"].flat[[3, 7]] = [np.inf, -np.inf]
    params["fc.bias"] = np.array([np.nan, 0, 0, 0], np.float32)
    path = tmp_path / "nonfinite.h5"
    save_model(Graph(small_graph.nodes, small_graph.input_shape, small_graph.output, params, small_graph.meta), path)
    line = velcro("info", path).error_line(str(path), "NaN or Inf", "--allow-nonfinite")
    assert "fc.bias" in line or "layer4.1.conv2.weight" in line
    ok = velcro("info", path, "--allow-nonfinite", "--json")
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["total_params"] > 0


def _conv_batch_norm(path, weight_scale, gamma, var, bias=(0, 0, 0, 1)):
    """conv (4 filters) -> batch norm (kept apart where its fold does not fit float32) -> relu, on (2, 5, 6)."""
    rng = np.random.default_rng(0)
    params = {"c.weight": rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32) * np.float32(weight_scale)}
    params |= {"c.bias": np.array(bias, np.float32), "b.gamma": np.array(gamma, np.float32)}
    params |= {"b.beta": np.zeros(4, np.float32), "b.mean": np.zeros(4, np.float32), "b.var": np.array(var, np.float32)}
    conv = {"out_channels": 4, "kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pads": [1] * 4, "groups": 1}
    nodes = (
        Node("c", "conv2d", ("input",), conv, {"weight": "c.weight", "bias": "c.bias"}),
        Node("b", "batch_norm", ("c",), {"eps": 1e-5}, {r: f"b.{r}" for r in ("gamma", "beta", "mean", "var")}),
        Node("r", "relu", ("b",)),
    )
    save_model(Graph(nodes, (2, 5, 6), "r", params), path)


@pytest.mark.parametrize("case", ["nonfinite parameters", "overflow"])
def test_infer_warns_of_nan_or_inf_outputs_in_one_line_naming_the_cause(tmp_path, case):
    """NumPy's RuntimeWarnings (a batch norm's inf * 0, its overflow) leaked to stderr beside the one-line
    warning, and with --allow-nonfinite that warning blamed an overflow for the parameters' inf."""
    path = tmp_path / "m.h5"
    if case == "overflow":  # finite parameters; the batch norm (not foldable: 1e10 / 1e-15) overflows float32
        _conv_batch_norm(path, 1e30, [1e10, 1e-30, 1, 3e8], [1e-30, 1, 1e-40, 1])
        flags = []
    else:
        _conv_batch_norm(path, 1, [1, 2, np.inf, 1], [1, 1, 1, 1], bias=(0, np.inf, -np.inf, 1))
        flags = ["--allow-nonfinite"]
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((2, 2, 5, 6)).astype(np.float32))
    res = velcro_process("infer", path, "--input", tmp_path / "x.npy", *flags)
    assert res.code == 0, res.err
    (line,) = res.err.splitlines()
    assert line.startswith("warning: ") and "NaN or Inf" in line
    cause = "parameters hold NaN or Inf" if case == "nonfinite parameters" else "overflowed float32"
    assert cause in line, line


def test_negative_batch_norm_variance_is_refused_unless_allowed(tmp_path, small_graph):
    params = dict(small_graph.params)
    params["bn1.var"] = -np.abs(params["bn1.var"])
    path = tmp_path / "negvar.h5"
    save_model(Graph(small_graph.nodes, small_graph.input_shape, small_graph.output, params, small_graph.meta), path)
    with pytest.raises(ModelError, match=r"node 'bn1': batch_norm needs var \+ eps > 0"):
        load_graph(path)
    load_graph(path, allow_nonfinite=True)


def _absurd_models():
    """(name, graph JSON, declared parameters, expected words); nothing here may be allocated."""
    big = 10**9
    yield (
        "1e9-input-channels",
        {"input_shape": [big, 16, 16], "output": "fc", "nodes": [flatten_node("f", "input"), linear_node("fc", "f")]},
        {"fc.weight": ((4, 1), np.float32)},
        ["node 'input'", "(1000000000, 16, 16)", f"exceeds {MAX_ELEMENTS} elements"],
    )
    yield (
        "1e9-output-channels",
        {"input_shape": [3, 8, 8], "output": "c", "nodes": [conv_node("c", "input", big)]},
        {"c.weight": ((big, 3, 1, 1), np.float32)},
        ["parameter 'c.weight'", "(1000000000, 3, 1, 1)", "exceeds"],
    )
    yield (
        "2e8-channels-with-fitting-weight",
        {"input_shape": [1, 64, 64], "output": "c", "nodes": [conv_node("c", "input", 1 << 27)]},
        {"c.weight": ((1 << 27, 1, 1, 1), np.float32)},
        ["node 'c'", "output shape (134217728, 64, 64) exceeds"],
    )
    yield (
        "huge-padding",
        {"input_shape": [1, 4, 4], "output": "c", "nodes": [conv_node("c", "input", 1, pads=100000)]},
        {"c.weight": np.ones((1, 1, 1, 1), np.float32)},
        ["node 'c'", "exceeds"],
    )
    yield (
        "huge-kernel-work-buffer",
        {"input_shape": [1, 8200, 8200], "output": "c", "nodes": [conv_node("c", "input", 1, kernel=8192)]},
        {"c.weight": ((1, 1, 8192, 8192), np.float32)},
        ["node 'c'", "work buffer", "exceeds"],
    )
    layers = [flatten_node("f", "input")] + [linear_node(f"l{i}", "f" if i == 0 else f"l{i - 1}") for i in range(5)]
    yield (
        "parameters-beyond-total",
        {"input_shape": [1 << 14, 1, 1], "output": "l4", "nodes": layers},
        {f"l{i}.weight": ((1 << 14, 1 << 14), np.float32) for i in range(5)},
        ["the parameters hold", "more than"],
    )


@pytest.mark.parametrize("name, doc, declared, needles", list(_absurd_models()), ids=[m[0] for m in _absurd_models()])
def test_absurd_dimensions_are_refused_before_any_allocation(tmp_path, monkeypatch, name, doc, declared, needles):
    monkeypatch.setattr(h5io, "ISOLATE", False)  # measure the loader here, not in a child process
    path = write_raw_model(tmp_path / f"{name}.h5", doc, declared)
    assert path.stat().st_size < 1 << 20  # declared datasets take no room
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as e:
            load_graph(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    for needle in needles:
        assert needle in msg, msg
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated while refusing {name}"


def test_in_memory_graph_with_bad_fields_is_a_model_error():
    from velcro_ref.engine import Model

    w = np.ones((2, 1, 1, 1), np.float32)
    bad_graphs = [
        Graph((Node("c", "conv2d", ("input",), {"out_channels": 2, "kernel": 1}, {"weight": "w"}),), (1, 2, 2), "c"),
        Graph((Node("c", "conv2d", ("input",), [], {"weight": "w"}),), (1, 2, 2), "c", {"w": w}),
        Graph((Node("c", "conv2d", "input", {}, {"weight": "w"}),), (1, 2, 2), "c", {"w": w}),
        Graph((Node(3, "relu", ("input",)),), (1, 2, 2), "c"),
        Graph((Node("c", "conv2d", ("input",), {"out_channels": 2, "kernel": 1}, {"weight": "w"}),), (1, 2, 2), "c",
              {"w": [[1.0]]}),
        Graph((Node("r", "relu", ("input",)),), (1.5, 2, 2), "r"),
    ]  # fmt: skip
    for g in bad_graphs:
        with pytest.raises(ModelError):
            Model(g)


@pytest.mark.parametrize("y_scale", [1e39, 1e-50, 0.0, -0.5, "0.5", None])
def test_an_output_scale_that_is_no_positive_float32_is_refused(velcro, tmp_path, y_scale):
    """y_scale 1e39 passed the check (NumPy compares float32(1e39), inf, with 1e39 cast to float32) and
    infer wrote NaN outputs with exit 0; 1e-50 became 0 in float32."""
    bad = edited_copy(
        ROOT / "weights" / "resnet18_int8.h5",
        tmp_path / "bad.h5",
        restamped(edit_graph(lambda d: node(d, "fc")["attrs"].__setitem__("y_scale", y_scale))),
    )
    velcro("info", bad).error_line(f"error: {bad}: ", "node 'fc': y_scale expects a positive float32 value")


def test_a_quantized_conv_without_its_requantization_mode_is_refused(velcro, tmp_path):
    """A qconv2d or qlinear without `requant` was read as "ort": a fixed_point model whose attribute was
    lost gave other codes with exit 0 (docs/formats.md gives the attribute no default)."""
    bad = edited_copy(
        ROOT / "weights" / "resnet18_int8.h5",
        tmp_path / "bad.h5",
        restamped(edit_graph(lambda d: node(d, "fc")["attrs"].pop("requant"))),
    )
    velcro("info", bad).error_line(f"error: {bad}: ", "node 'fc': attribute requant is missing")


def edit_preprocessing(fn):
    def edit(f):
        meta = json.loads(f.attrs["meta"])
        fn(meta["preprocessing"])
        f.attrs["meta"] = json.dumps(meta)

    return edit


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda p: p.__setitem__("mean", [True]), "mean expects a list of 1 number(s)"),  # was read as 1.0
        (lambda p: p.__setitem__("std", [True]), "std expects a list of 1 positive normal number(s)"),
        (lambda p: p.__setitem__("std", [1e-40]), "std expects a list of 1 positive normal number(s)"),  # subnormal
        (lambda p: p.__setitem__("scale", "0.00392156862745098"), "scale expects a positive number"),  # text, was cast
        (lambda p: p.__setitem__("mean", ["abc"]), "mean expects"),  # these gave tracebacks
        (lambda p: p.__setitem__("mean", 0.286), "mean expects"),
        (lambda p: p.__setitem__("scale", [0.5, 0.5]), "scale expects"),
        (lambda p: p.__setitem__("std", [0.0]), "std expects a list of 1 positive"),
        (lambda p: p.__setitem__("std", [1e-50]), "std expects a list of 1 positive"),  # 0 in float32
        (lambda p: p.__setitem__("scale", 1e39), "scale expects a positive number (finite in float32)"),
        (lambda p: p.__setitem__("mean", [0.1, 0.2]), "mean expects a list of 1 number(s), one per input channel"),
        (lambda p: p.pop("std"), "expects exactly the keys mean, scale, std; found ['mean', 'scale']"),
    ],
)
def test_a_bad_preprocessing_is_refused_when_the_model_loads(velcro, tmp_path, change, needle):
    """meta's preprocessing was read only when images were preprocessed: a bool or a number as text was
    cast (eval printed other accuracies with exit 0), other values gave tracebacks there."""
    bad = edited_copy(ROOT / "weights" / "resnet18.h5", tmp_path / "bad.h5", edit_preprocessing(change))
    velcro("info", bad).error_line(f"error: {bad}: ", "meta 'preprocessing'", needle)


def test_a_preprocessing_of_one_value_per_input_channel_is_taken(tmp_path):
    graph = zoo_graph("resnet18", input_size=32, in_channels=3, num_classes=4)
    assert len(graph.meta["preprocessing"]["mean"]) == 3
    validate(graph)
    bad = Graph(
        graph.nodes,
        graph.input_shape,
        graph.output,
        graph.params,
        {"preprocessing": {"scale": 1, "mean": [0], "std": [1]}},
    )
    with pytest.raises(ModelError, match="mean expects a list of 3 number"):
        validate(bad)
    numpy_scale = {"scale": np.float32(1 / 255), "mean": [0.5], "std": [0.5]}  # no JSON number: a one-line refusal
    with pytest.raises(ModelError, match="scale expects a positive number"):
        validate(Graph(graph.nodes, graph.input_shape, graph.output, graph.params, {"preprocessing": numpy_scale}))
    relu = (Node("r", "relu", ("input",)),)
    pre = {"scale": 1, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}  # rank 2, channels first: taken (r1)
    validate(Graph(relu, (3, 10), "r", {}, {"preprocessing": pre}))
    validate(Graph(relu, (10,), "r", {}, {"preprocessing": {"scale": 1, "mean": [0.1], "std": [1]}}))
    with pytest.raises(ModelError, match="mean expects a list of 1 number"):
        validate(Graph(relu, (3,), "r", {}, {"preprocessing": pre}))


def swap_param(node_name, role, value):
    """An edit giving a node's parameter `role` the array value (the fingerprint goes stale; validation fails first)."""

    def edit(f):
        doc = json.loads(f.attrs["graph"])
        old = node(doc, node_name)["params"].get(role)  # a role the node may not have had
        key = node(doc, node_name)["params"][role] = f"{node_name}.{role}.edited"
        f.attrs["graph"] = json.dumps(doc)
        if old is not None:
            del f["params"][h5io.escape_key(old)]  # no parameter left that no node uses
        f["params"].create_dataset(h5io.escape_key(key), data=value)

    return edit


@pytest.mark.parametrize("node_name", ["fc", "stem.0"])
@pytest.mark.parametrize(
    "role, value",
    [
        ("w_zero_point", np.zeros(3, np.int8)),
        ("w_scale", np.full(3, 0.01, np.float32)),
        ("w_scale", np.full((2, 5), 0.01, np.float32)),
        ("w_zero_point", np.zeros((1, 1), np.int8)),
    ],
)
def test_weight_quantization_of_another_shape_is_refused(velcro, tmp_path, node_name, role, value):
    """qlinear did not check them as qconv2d does: a traceback, a NumPy message without the file, or a
    (2, 5) scale taken."""
    bad = edited_copy(
        ROOT / "weights" / "resnet18_int8.h5", tmp_path / "bad.h5", restamped(swap_param(node_name, role, value))
    )
    velcro("info", bad).error_line(f"error: {bad}: ", f"node '{node_name}': {role} expects shape (1,) or (")


def test_numpy_integers_in_attributes_save_as_the_python_ones(tmp_path):
    """validate takes a NumPy integer where an attribute is an integer; save_model raised a TypeError
    (the JSON writer had no rule for it)."""
    graph = zoo_graph("resnet18", input_size=28, in_channels=1, width=0.25, num_classes=10)
    nodes = tuple(
        Node(
            n.name, n.op, n.inputs, {k: np.int64(v) if k == "out_channels" else v for k, v in n.attrs.items()}, n.params
        )
        for n in graph.nodes
    )
    numpy_graph = Graph(nodes, graph.input_shape, graph.output, graph.params, graph.meta)
    assert save_model(numpy_graph, tmp_path / "m.h5") == graph.fingerprint() == numpy_graph.fingerprint()
    assert load_graph(tmp_path / "m.h5").fingerprint() == graph.fingerprint()
    narrow = tuple(  # int16 groups and out_channels: the MACs multiplied in int16 and wrapped
        Node(
            n.name,
            n.op,
            n.inputs,
            {k: np.int16(v) if k in ("groups", "out_channels") else v for k, v in n.attrs.items()},
            n.params,
        )
        for n in graph.nodes
    )
    narrow_model = Model(Graph(narrow, graph.input_shape, graph.output, graph.params, graph.meta))
    assert narrow_model.layer_macs() == Model(graph).layer_macs()


def test_a_quantized_model_of_format_version_1_is_refused(velcro, tmp_path):
    bad = edited_copy(
        ROOT / "weights" / "resnet18_int8.h5", tmp_path / "bad.h5", lambda f: f.attrs.modify("format_version", 1)
    )
    velcro("info", bad).error_line(
        f"error: {bad}: ", "format_version 1 is a float model's, and the graph holds quantized ops"
    )


@pytest.mark.parametrize(
    "command, args, work",
    [
        ("locality", ["--classes", "5,7", "--samples", "4"], "locality"),
        ("sweep", ["--classes", "5,7", "--samples", "4", "--profile-samples", "4"], "sweep"),
        ("simulate", ["--accel", "edge16"], None),
        ("compress", ["--policy", "budget", "--ratio", "0.5", "-o", "{tmp}/k.h5"], None),
    ],
)
def test_allow_nonfinite_reaches_the_loader_of_every_command_that_names_it(
    velcro, tmp_path, monkeypatch, command, args, work
):
    """locality and sweep took --allow-nonfinite and loaded the model without it (their error asked for
    the flag just given); simulate's and compress --model's errors asked for a flag they did not have."""
    from velcro_ref import api

    graph = zoo_graph("resnet18", input_size=28, in_channels=1, width=0.25, num_classes=10)
    var = graph.params["bn1.var"].copy()
    var[0] = np.inf  # refused at load; the network's values stay finite (that channel's output is its beta)
    params = {**graph.params, "bn1.var": var}
    path = tmp_path / "nan.h5"
    save_model(Graph(graph.nodes, graph.input_shape, graph.output, params, graph.meta), path)
    args = [a.format(tmp=tmp_path) for a in args]
    if command == "compress":  # the model is an option there, after the stats
        x = np.zeros((2, 1, 28, 28), np.float32)
        save_stats(collect_stats(Model(load_graph(path, allow_nonfinite=True)), x), tmp_path / "s.h5")
        command, path, args = "compress", tmp_path / "s.h5", ["--model", path, *args]
    velcro(command, path, *args).error_line("NaN or Inf", "--allow-nonfinite")

    def loaded(model, *a, **k):
        assert np.isinf(model.graph.params["bn1.var"][0])
        raise SystemExit(7)

    if command == "compress":  # the flag without the model it applies to was taken and ignored
        velcro(command, path, *args[2:], "--allow-nonfinite").error_line("--allow-nonfinite applies to --model", code=2)
    if work:
        monkeypatch.setattr(api, work, loaded)
    res = velcro(command, path, *args, "--allow-nonfinite")
    assert res.code == (7 if work else 0), res.err


def test_a_graph_attribute_given_twice_in_the_json_is_refused(velcro, tmp_path):
    """`"groups": 7, ..., "groups": 1` in a stored graph: the last value was taken without a word (the
    fingerprint computed from what was read, so the file looked whole)."""

    def twice(f):
        text = f.attrs["graph"]
        text = text.decode() if isinstance(text, bytes) else text
        assert text.index('"kernel":') < text.index('"groups":')  # the stored value comes last
        f.attrs["graph"] = text.replace('"kernel":', '"groups": 7, "kernel":', 1)

    bad = edited_copy(ROOT / "weights" / "resnet18.h5", tmp_path / "twice.h5", twice)
    velcro("info", bad).error_line(f"error: {bad}: ", "'groups' given twice")


def test_a_parameter_no_node_uses_is_refused_when_saved_and_when_read(velcro, tmp_path):
    """save_model wrote it and its fingerprint; the reader reads the parameters its nodes name, so the file
    it had just written was called "modified or corrupted after it was written"."""
    import dataclasses

    g = zoo_graph("resnet18")
    extra = dataclasses.replace(g, params={**g.params, "unused.extra": np.ones(3, np.float32)})
    with pytest.raises(ModelError, match="parameter.s. unused.extra used by no node"):
        save_model(extra, tmp_path / "extra.h5")
    assert not (tmp_path / "extra.h5").exists()

    def add(f):
        f["params"].create_dataset("unused.extra", data=np.ones(3, np.float32))

    bad = edited_copy(ROOT / "weights" / "resnet18.h5", tmp_path / "bad.h5", add)
    velcro("info", bad).error_line(f"error: {bad}: ", "unused.extra used by no node")
