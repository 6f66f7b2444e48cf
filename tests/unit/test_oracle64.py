"""The float64 interpreter of tests/oracle64.py against values worked out by hand and against onnxruntime."""

import numpy as np
import pytest
from oracle64 import ModelFile, decode_key, encode_key, read_model, run, write_model

X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def one_node(op, in_shape, attrs=None, params=None, inputs=("input",)):
    roles = {role: f"p.{role}" for role in (params or {})}
    node = {"name": "y", "op": op, "inputs": list(inputs), "attrs": attrs or {}, "params": roles}
    return ModelFile(
        {"input_shape": list(in_shape), "output": "y", "nodes": [node]},
        {f"p.{role}": np.asarray(v, np.float32) for role, v in (params or {}).items()},
    )


def conv_attrs(k=2, stride=1, dilation=1, pads=(0, 0, 0, 0), groups=1, out_channels=1):
    return {
        "out_channels": out_channels,
        "kernel": [k, k],
        "stride": [stride, stride],
        "dilation": [dilation, dilation],
        "pads": list(pads),
        "groups": groups,
    }


def test_conv2d_by_hand():
    w = np.array([[[[1, 0], [0, -1]]]])  # x[i, j] - x[i+1, j+1]
    m = one_node("conv2d", (1, 3, 3), conv_attrs(), {"weight": w, "bias": [0.5]})
    assert np.array_equal(run(m, X33)["y"], np.full((1, 1, 2, 2), -3.5))
    # dilation 2: the taps are x[0, 0] and x[2, 2]
    m = one_node("conv2d", (1, 3, 3), conv_attrs(dilation=2), {"weight": w, "bias": [0.5]})
    assert np.array_equal(run(m, X33)["y"], [[[[1 - 9 + 0.5]]]])
    # one row of zeros on top only, stride 2: windows at rows -1 and 1, columns 0 only (3 - 2) // 2 + 1 = 1
    m = one_node("conv2d", (1, 3, 3), conv_attrs(stride=2, pads=(1, 0, 0, 0)), {"weight": w})
    assert np.array_equal(run(m, X33)["y"], [[[[0 - 2], [4 - 8]]]])


def test_grouped_conv_keeps_groups_apart_by_hand():
    x = np.array([1.0, 10.0, 100.0, 1000.0], np.float32).reshape(1, 4, 1, 1)
    w = np.array([1, 2, 3, 4], np.float32).reshape(2, 2, 1, 1)  # group 0 reads ch 0-1, group 1 ch 2-3
    m = one_node("conv2d", (4, 1, 1), conv_attrs(k=1, groups=2, out_channels=2), {"weight": w})
    assert np.array_equal(run(m, x)["y"].ravel(), [1 + 20, 300 + 4000])


def test_batch_norm_uses_its_eps_by_hand():
    x = np.array([1.0, 2.0], np.float32).reshape(1, 2, 1, 1)
    prm = {"gamma": [2.0, 1.0], "beta": [0.5, 0.0], "mean": [1.0, 0.0], "var": [3.0, 0.75]}
    y = run(one_node("batch_norm", (2, 1, 1), {"eps": 0.25}, prm), x)["y"].ravel()
    np.testing.assert_allclose(y, [0.5, 2.0], rtol=1e-7)  # (2 - 0) / sqrt(0.75 + 0.25) = 2


def pool_attrs(k, stride, pads, ceil_mode, count_include_pad=None):
    a = {"kernel": [k, k], "stride": [stride, stride], "pads": list(pads), "ceil_mode": ceil_mode}
    if count_include_pad is not None:
        a["count_include_pad"] = count_include_pad
    return a


def test_max_pool_ceil_mode_by_hand():
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    floor = run(one_node("max_pool", (1, 5, 5), pool_attrs(2, 2, (0,) * 4, False)), x)["y"]
    assert np.array_equal(floor[0, 0], [[6, 8], [16, 18]])
    ceil = run(one_node("max_pool", (1, 5, 5), pool_attrs(2, 2, (0,) * 4, True)), x)["y"]
    assert np.array_equal(ceil[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])  # last windows clipped


def test_max_pool_pads_never_win_by_hand():
    x = -np.ones((1, 1, 2, 2), np.float32)  # zero padding would give 0
    y = run(one_node("max_pool", (1, 2, 2), pool_attrs(2, 1, (1, 1, 1, 1), False)), x)["y"]
    assert np.array_equal(y, -np.ones((1, 1, 3, 3)))


@pytest.mark.parametrize("include, corner, centre", [(True, 8 / 9, 24 / 9), (False, 8 / 4, 24 / 4)])
def test_avg_pool_count_include_pad_by_hand(include, corner, centre):
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)  # k 3, stride 2, pads 1: windows at -1 and 1
    y = run(one_node("avg_pool", (1, 3, 3), pool_attrs(3, 2, (1,) * 4, False, include)), x)["y"]
    np.testing.assert_allclose(y[0, 0, 0, 0], corner, rtol=1e-12)  # 0 + 1 + 3 + 4
    np.testing.assert_allclose(y[0, 0, 1, 1], centre, rtol=1e-12)  # 4 + 5 + 7 + 8


def test_avg_pool_ceil_mode_counts_padding_only_up_to_the_padded_edge_by_hand():
    # 4x4 ones, k 3, stride 2, pads 1, ceil: windows start at -1, 1, 3 (3 < 4 + 1 starts inside);
    # rows counted with padding: 3, 3, min(6, 5) - 3 = 2; rows inside the input: 2, 3, 1
    x = np.ones((1, 1, 4, 4), np.float32)
    y = run(one_node("avg_pool", (1, 4, 4), pool_attrs(3, 2, (1,) * 4, True, True)), x)["y"][0, 0]
    assert y.shape == (3, 3)
    np.testing.assert_allclose(y[0, 0], 4 / 9, rtol=1e-12)
    np.testing.assert_allclose(y[2, 2], 1 / 4, rtol=1e-12)
    np.testing.assert_allclose(y[1, 2], 3 / 6, rtol=1e-12)
    y = run(one_node("avg_pool", (1, 4, 4), pool_attrs(3, 2, (1,) * 4, True, False)), x)["y"][0, 0]
    assert np.array_equal(y, np.ones((3, 3)))


def test_small_ops_by_hand():
    x = np.array([[1, -2], [3, 8]], np.float32).reshape(1, 2, 2, 1)  # channel 0: 1, -2; channel 1: 3, 8
    assert np.array_equal(run(one_node("relu", (2, 2, 1)), x)["y"].ravel(), [1, 0, 3, 8])
    assert np.array_equal(run(one_node("relu6", (2, 2, 1)), x)["y"].ravel(), [1, 0, 3, 6])
    assert np.array_equal(run(one_node("global_avg_pool", (2, 2, 1)), x)["y"].ravel(), [-0.5, 5.5])
    assert np.array_equal(run(one_node("flatten", (2, 2, 1)), x)["y"], [[1, -2, 3, 8]])
    assert np.array_equal(run(one_node("dropout", (2, 2, 1), {"p": 0.5}), x)["y"], x)
    add = run(one_node("add", (2, 2, 1), inputs=("input", "input")), x)["y"]
    assert np.array_equal(add.ravel(), [2, -4, 6, 16])
    cat = run(one_node("concat", (2, 2, 1), inputs=("input", "input", "input")), x)["y"]
    assert np.array_equal(cat.ravel(), np.tile([1, -2, 3, 8], 3))
    f = np.array([[1.0, 2.0, 3.0]], np.float32)
    lin = one_node("linear", (3,), params={"weight": [[1, 0, -1], [0.5, 0.5, 0.5]], "bias": [10, 0]})
    assert np.array_equal(run(lin, f)["y"], [[1 - 3 + 10, 3]])
    sm = run(one_node("softmax", (3,)), np.array([[0.0, np.log(2), np.log(5)]], np.float32))["y"]
    np.testing.assert_allclose(sm, [[1 / 8, 2 / 8, 5 / 8]], rtol=1e-7)  # float32 log(2), log(5)


def test_masked_site_is_overwritten_and_read_on_by_hand():
    nodes = [
        {"name": "r", "op": "relu", "inputs": ["input"], "attrs": {}, "params": {}},
        {"name": "f", "op": "flatten", "inputs": ["r"], "attrs": {}, "params": {}},
        {"name": "fc", "op": "linear", "inputs": ["f"], "attrs": {}, "params": {"weight": "w"}},
    ]
    m = ModelFile({"input_shape": [1, 1, 3], "output": "fc", "nodes": nodes}, {"w": np.ones((1, 3), np.float32)})
    x = np.array([-1.0, 2.0, 4.0], np.float32).reshape(1, 1, 1, 3)
    assert run(m, x)["fc"].item() == 6
    masks = {"r": (np.array([[[True, False, True]]]), np.full((1, 1, 3), 7.0, np.float32))}
    out = run(m, x, masks)
    assert out["fc"].item() == 7 + 2 + 7
    assert np.array_equal(out["r"].ravel(), [7, 2, 7])


def test_keys_decode_as_the_docs_say():
    assert decode_key("a%2Fb") == "a/b"
    assert decode_key("a%252Fb") == "a%2Fb"  # a key that holds the text %2F
    assert decode_key("%25%2F") == "%/"
    for key in ("a/b", "a%2Fb", "%", "%25", "/%2F/", "x.y"):
        assert decode_key(encode_key(key)) == key


def test_write_then_read_gives_the_same_model(tmp_path):
    nodes = [{"name": "a/b", "op": "relu", "inputs": ["input"], "attrs": {}, "params": {}}]
    params = {"k/1": np.arange(3, dtype=np.float32), "k%2F1": np.ones(2, np.float32)}
    fp = write_model(tmp_path / "m.h5", (1, 2, 2), "a/b", nodes, params)
    m = read_model(tmp_path / "m.h5")
    assert m.fingerprint == fp and m.nodes == nodes and m.output == "a/b" and m.input_shape == (1, 2, 2)
    assert sorted(m.params) == ["k%2F1", "k/1"]
    assert np.array_equal(m.params["k/1"], params["k/1"]) and np.array_equal(m.params["k%2F1"], params["k%2F1"])


def test_oracle_matches_onnxruntime_on_every_op(tmp_path):
    """One graph with every op of the format, built twice: as ONNX (run by onnxruntime) and as a model file.

    ONNX pads are (top, left, bottom, right) as in the format; Clip(0, 6) is relu6, Gemm(transB) linear.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    p = {
        "c1.w": rng.standard_normal((6, 2, 3, 2)).astype(np.float32),  # groups 2, dilation (2, 1)
        "c1.b": rng.standard_normal(6).astype(np.float32),
        "bn.g": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "bn.b": rng.standard_normal(6).astype(np.float32),
        "bn.m": rng.standard_normal(6).astype(np.float32),
        "bn.v": rng.uniform(0.2, 2, 6).astype(np.float32),
        "c2.w": rng.standard_normal((6, 6, 1, 1)).astype(np.float32),
        "fc.w": rng.standard_normal((5, 12)).astype(np.float32),
        "fc.b": rng.standard_normal(5).astype(np.float32),
    }
    c1 = {
        "out_channels": 6,
        "kernel": [3, 2],
        "stride": [2, 1],
        "dilation": [2, 1],
        "pads": [1, 0, 2, 1],
        "groups": 2,
    }
    c2 = {"out_channels": 6, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    mp = {"kernel": [2, 2], "stride": [2, 2], "pads": [0, 1, 0, 1], "ceil_mode": True}
    ap = {"kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "ceil_mode": False, "count_include_pad": True}
    nodes = [
        ("c1", "conv2d", ["input"], c1, {"weight": "c1.w", "bias": "c1.b"}),
        ("bn", "batch_norm", ["c1"], {"eps": 0.01}, {"gamma": "bn.g", "beta": "bn.b", "mean": "bn.m", "var": "bn.v"}),
        ("r6", "relu6", ["bn"], {}, {}),
        ("c2", "conv2d", ["r6"], c2, {"weight": "c2.w"}),
        ("add", "add", ["c2", "bn"], {}, {}),
        ("r", "relu", ["add"], {}, {}),
        ("mp", "max_pool", ["r"], mp, {}),
        ("ap", "avg_pool", ["r"], ap, {}),
        ("gp", "global_avg_pool", ["ap"], {}, {}),
        ("gmp", "global_avg_pool", ["mp"], {}, {}),
        ("cat", "concat", ["gp", "gmp"], {}, {}),
        ("fl", "flatten", ["cat"], {}, {}),
        ("do", "dropout", ["fl"], {"p": 0.3}, {}),
        ("fc", "linear", ["do"], {}, {"weight": "fc.w", "bias": "fc.b"}),
        ("sm", "softmax", ["fc"], {}, {}),
    ]
    model = ModelFile(
        {
            "input_shape": [4, 9, 8],
            "output": "sm",
            "nodes": [{"name": n, "op": o, "inputs": i, "attrs": a, "params": q} for n, o, i, a, q in nodes],
        },
        p,
    )

    onnx_nodes = [
        helper.make_node(
            "Conv",
            ["input", "c1.w", "c1.b"],
            ["c1"],
            kernel_shape=[3, 2],
            strides=[2, 1],
            dilations=[2, 1],
            pads=c1["pads"],
            group=2,
        ),
        helper.make_node("BatchNormalization", ["c1", "bn.g", "bn.b", "bn.m", "bn.v"], ["bn"], epsilon=0.01),
        helper.make_node("Clip", ["bn", "zero", "six"], ["r6"]),
        helper.make_node("Conv", ["r6", "c2.w"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "bn"], ["add"]),
        helper.make_node("Relu", ["add"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], pads=mp["pads"], ceil_mode=1),
        helper.make_node(
            "AveragePool", ["r"], ["ap"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1
        ),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gmp"]),
        helper.make_node("Concat", ["gp", "gmp"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "fc.w", "fc.b"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["sm"], axis=1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits += [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six")]
    g = helper.make_graph(
        onnx_nodes,
        "every_op",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("sm", "fc", "mp", "ap", "bn")],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip(("sm", "fc", "mp", "ap", "bn"), sess.run(None, {"input": x}), strict=True))
    got = run(model, x)
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()), err_msg=name)
    # and the error scale the oracle carries covers onnxruntime's float32 rounding
    for name, w in want.items():
        assert np.all(np.abs(got[name] - w) <= got.tolerance(name)), name
