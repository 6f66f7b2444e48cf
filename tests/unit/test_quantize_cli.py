"""`velcro quantize`: the command and velcro_ref.quantize give the same model; its options reach the
model; bad calibration files give one line naming the file; `eval` and `sweep` take int8 models."""

from __future__ import annotations

import json
import shutil
import warnings

import h5py
import numpy as np
import pytest

import velcro_ref
from velcro_ref import cli
from velcro_ref.model_io import load_graph, save_model
from velcro_ref.zoo import build_zoo


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantize")
    save_model(build_zoo("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.125, seed=4), d / "m.h5")
    args = ["profile", d / "m.h5", "--data", "fashion-mnist", "--classes", "0,1,2,3,4,5,6,7,8,9"]
    assert cli.main([str(a) for a in [*args, "--samples", 64, "--batch", 32, "-o", d / "s.h5"]]) == 0
    return d


def run(*args) -> int:
    """The exit code of `velcro ARGS` (argparse's usage errors exit from inside main)."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("act", ["int8", "uint8"])
@pytest.mark.parametrize("requant", ["ort", "fixed_point"])
def test_the_command_writes_what_the_api_gives(files, tmp_path, capsys, act, requant):
    out = tmp_path / "q.h5"
    assert run("quantize", files / "m.h5", "--calib", files / "s.h5", "--activations", act, "--requant", requant,
               "--per-channel", "-o", out) == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    model = velcro_ref.load_model(files / "m.h5")
    api = velcro_ref.quantize(model, velcro_ref.load_stats(files / "s.h5"), True, act, requant)
    graph = load_graph(out)
    assert [(n.name, n.op, n.attrs) for n in graph.nodes] == [(n.name, n.op, n.attrs) for n in api.graph.nodes]
    for key, a in api.graph.params.items():
        assert np.array_equal(graph.params[key], a) and graph.params[key].dtype == a.dtype
    q = graph.meta["quantization"]
    assert (q["activations"], q["per_channel"], q["requant"]) == (act, True, requant)
    assert q["calibration"]["n_images"] == 64 and q["calibration"]["stats_file"] == str(files / "s.h5")
    with h5py.File(out, "r") as f:
        assert f.attrs["format_version"] == 2
    convs = [n for n in graph.nodes if n.op == "qconv2d"]
    assert all(n.attrs["dtype"] == act and n.attrs["requant"] == requant for n in convs)
    assert all(graph.params[n.params["w_scale"]].shape == (n.attrs["out_channels"],) for n in convs)


def test_stats_without_ranges_are_refused_in_one_line(files, tmp_path, capsys):
    old = tmp_path / "v2.h5"
    shutil.copy(files / "s.h5", old)
    with h5py.File(old, "a") as f:  # a version 2 file: the sites only
        f.attrs["format_version"] = 2
        del f["ranges"]
    assert run("quantize", files / "m.h5", "--calib", old, "-o", tmp_path / "q.h5") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(old) in err and "format version 3" in err and "profile" in err
    assert not (tmp_path / "q.h5").exists()


@pytest.mark.parametrize("where", ["range", "site"])
def test_a_calibration_range_beyond_float32_is_refused_in_one_line(files, tmp_path, capsys, where):
    """A range of [-1e39, 1e39] (a file edited by hand: no float32 activation takes it) made `velcro
    quantize` print three NumPy overflow warnings before its error about a y_scale of inf."""
    wide = tmp_path / "wide.h5"
    shutil.copy(files / "s.h5", wide)
    with h5py.File(wide, "a") as f:
        if where == "range":
            name = next(iter(f["ranges"]))
            f["ranges"][name][...] = [-1e39, 1e39]
        else:
            name = next(iter(f["sites"]))
            f["sites"][name]["max"][...] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run("quantize", files / "m.h5", "--calib", wide, "-o", tmp_path / "q.h5") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lies beyond float32; nothing quantized" in err and f"'{name}'" in err
    assert not (tmp_path / "q.h5").exists()


def test_stats_of_another_model_and_bad_options_are_refused(files, tmp_path, capsys):
    other = tmp_path / "other.h5"
    save_model(build_zoo("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.125, seed=5), other)
    assert run("quantize", other, "--calib", files / "s.h5", "-o", tmp_path / "q.h5") == 1
    assert "stats were made for model" in capsys.readouterr().err
    assert (
        run("quantize", files / "m.h5", "--calib", files / "s.h5", "--activations", "int4", "-o", tmp_path / "q.h5")
        == 2
    )
    assert run("quantize", files / "m.h5", "--calib", files / "s.h5", "--requant", "x", "-o", tmp_path / "q.h5") == 2
    assert run("quantize", files / "m.h5", "--calib", files / "s.h5", "-o", files / "s.h5") == 2  # onto an input
    capsys.readouterr()


def test_a_quantized_model_is_not_quantized_again(files, tmp_path, capsys):
    q = tmp_path / "q.h5"
    assert run("quantize", files / "m.h5", "--calib", files / "s.h5", "-o", q) == 0
    assert (
        run("profile", q, "--data", "fashion-mnist", "--classes", "0,1", "--samples", 8, "-o", tmp_path / "qs.h5") == 0
    )
    assert run("quantize", q, "--calib", tmp_path / "qs.h5", "-o", tmp_path / "qq.h5") == 1
    assert "quantized already" in capsys.readouterr().err


def test_eval_and_sweep_take_int8_models(files, tmp_path, capsys):
    q = tmp_path / "q.h5"
    assert run("quantize", files / "m.h5", "--calib", files / "s.h5", "--requant", "fixed_point", "-o", q) == 0
    capsys.readouterr()
    data = ["--data", "fashion-mnist", "--classes", "5,7,9", "--samples", 40]
    assert run("profile", q, *data, "--split", "train", "-o", tmp_path / "qs.h5") == 0
    assert run("compress", tmp_path / "qs.h5", "--ratio", 0.3, "-o", tmp_path / "qm.h5") == 0
    capsys.readouterr()
    assert run("eval", q, "--masks", tmp_path / "qm.h5", *data, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_images"] == 40 and 0 <= doc["dense"]["accuracy"] <= 1
    assert doc["masked"]["macs"] < doc["dense"]["macs"] and doc["csr"] > 0
    assert run("sweep", q, "--classes", "5,7,9", "--ratios", "0,0.3", "--samples", 30, "--json") == 0
    sweep = json.loads(capsys.readouterr().out)
    csr = [p["csr"] for p in sweep["points"]]
    assert csr[0] == 0 and csr[1] > 0


def test_a_relu_that_never_fired_on_the_calibration_images_is_refused_for_int8(tmp_path):
    """conv (zero weights, bias -0.5) -> relu: calibrated range [0, 0], so scale 1 and zero point 0
    (onnxruntime's rule). With int8 that zero point is not -128: onnxruntime's quantizer drops the
    relu and lets -1 through where this one's clamp gives 0. Refused; uint8 (zero point 0 = qmin)
    is fine."""
    from velcro_ref.engine import Model
    from velcro_ref.errors import ModelError
    from velcro_ref.graph import INPUT, Graph, Node

    conv = Node("conv", "conv2d", (INPUT,), {"out_channels": 2, "kernel": 1}, {"weight": "w", "bias": "b"})
    nodes = (conv, Node("relu1", "relu", ("conv",)), Node("gap", "global_avg_pool", ("relu1",)))
    params = {"w": np.zeros((2, 1, 1, 1), np.float32), "b": np.full(2, -0.5, np.float32)}
    model = Model(Graph(nodes, (1, 3, 3), "gap", params))
    stats = velcro_ref.profile(model, np.random.default_rng(0).standard_normal((7, 1, 3, 3), dtype=np.float32))
    with pytest.raises(
        ModelError, match=r"node 'relu1': calibrated range \[0, 0\] gives scale 1 and zero point 0, not -128"
    ):
        velcro_ref.quantize(model, stats, activations="int8")
    q = velcro_ref.quantize(model, stats, activations="uint8")
    assert np.all(q.run(np.ones((1, 1, 3, 3), np.float32)) == 0)


def test_a_bias_scale_that_underflows_float32_is_refused_in_its_own_words():
    """x_scale ~ 1e-17 and w_scale ~ 1e-32: their float32 product is 0 (a zero bias leaves the
    weight scale as it is), so b / (x_scale * w_scale) is no int32 (onnxruntime's tool divides 0 by
    0 there). Refused naming the cause, not an accumulator bound, and without NumPy's warnings."""
    import warnings

    from velcro_ref.engine import Model
    from velcro_ref.errors import ModelError
    from velcro_ref.graph import INPUT, Graph, Node

    conv = Node("conv", "conv2d", (INPUT,), {"out_channels": 2, "kernel": 1}, {"weight": "w", "bias": "b"})
    params = {"w": np.full((2, 1, 1, 1), 4e-30, np.float32), "b": np.zeros(2, np.float32)}
    model = Model(Graph((conv, Node("act", "relu", ("conv",))), (1, 3, 3), "act", params))
    x = np.random.default_rng(0).standard_normal((7, 1, 3, 3)).astype(np.float32) * np.float32(1e-15)
    stats = velcro_ref.profile(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match=r"node 'conv': the bias scale x_scale \* w_scale is 0 in float32"):
            velcro_ref.quantize(model, stats, activations="int8")


@pytest.mark.parametrize("case", ["dropout before the pool", "pool is the output", "pool and flatten are the output"])
def test_a_float_max_pool_quantize_does_not_emulate_is_refused_in_one_line(case):
    """A max pool on the float input stays float (onnxruntime's rule); after a dropout of that input, or as
    the graph's output, it is refused rather than quantized another way."""
    from velcro_ref.engine import Model
    from velcro_ref.errors import ModelError
    from velcro_ref.graph import INPUT, Graph, Node

    pool = {"kernel": [2, 2], "stride": [2, 2], "pads": [0] * 4, "ceil_mode": False}
    conv = {"out_channels": 2, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    src = "drop" if case == "dropout before the pool" else INPUT
    nodes = [Node("drop", "dropout", (INPUT,), {"p": 0.5})] if src == "drop" else []
    nodes.append(Node("mp", "max_pool", (src,), pool))
    if case == "dropout before the pool":
        nodes.append(Node("c", "conv2d", ("mp",), conv, {"weight": "w"}))
    if case == "pool and flatten are the output":  # no quantized op: onnxruntime leaves it all float
        nodes.append(Node("f", "flatten", ("mp",)))
    params = {"w": np.ones((2, 2, 1, 1), np.float32)}
    model = Model(Graph(tuple(nodes), (2, 4, 4), nodes[-1].name, params))
    stats = velcro_ref.profile(model, np.random.default_rng(0).uniform(-1, 1, (4, 2, 4, 4)).astype(np.float32))
    with pytest.raises(ModelError, match=f"node '{nodes[-1].name if case.endswith('output') else 'mp'}': ") as err:
        velcro_ref.quantize(model, stats)
    assert "\n" not in str(err.value)


def test_quantize_of_in_memory_statistics_of_an_overflowed_network_names_the_tensor():
    """c1 = 3e38 x on its first channel: +inf on an image of 10. Statistics collected in memory (no file,
    which would refuse them) were quantized up to a y_scale of inf, refused as a bad scale of c1; the
    refusal now says what happened, as `velcro profile` does."""
    from velcro_ref.engine import Model
    from velcro_ref.errors import StatsError
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.stats import collect_stats

    conv = {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0, 0, 0, 0], "groups": 1}
    nodes = (
        Node("c1", "conv2d", (INPUT,), {"out_channels": 2, **conv}, {"weight": "w1"}),
        Node("a", "relu", ("c1",)),
        Node("c2", "conv2d", ("a",), {"out_channels": 1, **conv}, {"weight": "w2"}),
    )
    w1 = np.array([3e38, 1.0], np.float32).reshape(2, 1, 1, 1)
    model = Model(Graph(nodes, (1, 1, 2), "c2", {"w1": w1, "w2": np.ones((1, 2, 1, 1), np.float32)}))
    x = np.array([0.5, 10.0, 1.0, 2.0], np.float32).reshape(2, 1, 1, 2)
    stats = collect_stats(model, x)
    assert stats.ranges["c1"] == (0.5, np.inf)
    with pytest.raises(StatsError, match=r"tensor 'c1' took values \[0.5, inf\] .*; nothing quantized"):
        velcro_ref.quantize(model, stats)
