"""Load-path rewrites checked against arithmetic worked out here, not against the engine (mutation
testing, round 4): a batch norm folded into a conv that has a bias (float64 by hand), and the
plumbing of runs whose figures a user sees.
"""

import numpy as np
from oracle64 import write_model

import velcro_ref

CONV1X1 = {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0, 0, 0, 0], "groups": 1}


def node(name, op, inputs, attrs=None, **params):
    return {"name": name, "op": op, "inputs": list(inputs), "attrs": attrs or {}, "params": params}


def test_a_batch_norm_folded_into_a_conv_with_a_bias_scales_the_bias_minus_the_mean(tmp_path):
    """conv (weights 1, 3; bias 5, -2) -> batch_norm (gamma 4, 2; var 3, 15; eps 1; mean 1, 2;
    beta 0.5, -1): scale gamma / sqrt(var + eps) = 2, 0.5, the batch norm (w x + b - mean) * scale
    + beta; folded, its eps and the conv's bias both count (docs/design.md)."""
    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 2, **CONV1X1}, weight="conv.w", bias="conv.b"),
        node("norm", "batch_norm", ["conv"], {"eps": 1.0}, gamma="g", beta="b", mean="m", var="v"),
    ]
    w, b = np.array([1.0, 3.0]), np.array([5.0, -2.0])
    gamma, var, mean, beta = np.array([4.0, 2.0]), np.array([3.0, 15.0]), np.array([1.0, 2.0]), np.array([0.5, -1.0])
    params = {"conv.w": w.reshape(2, 1, 1, 1), "conv.b": b, "g": gamma, "b": beta, "m": mean, "v": var}
    write_model(tmp_path / "m.h5", (1, 1, 2), "norm", nodes, params)
    model = velcro_ref.load_model(tmp_path / "m.h5")
    assert model.plan.folded == {"norm": "conv"}  # the rewrite under test is made
    x = np.array([1.0, -2.0, 0.25, 8.0], np.float32).reshape(2, 1, 1, 2)
    scale = gamma / np.sqrt(var + 1.0)  # 2, 0.5: exact
    conv = w[None, :, None, None] * x.astype(np.float64) + b[None, :, None, None]
    want = (conv - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]
    assert np.array_equal(model.run(x), want.astype(np.float32))


def test_a_batch_norm_is_not_folded_into_a_conv_another_node_reads(tmp_path):
    """conv (weight 2, bias 1) is read by the batch norm (scale 2, shift -1) and by the add after it:
    sum = norm(conv) + conv, where the add must read the conv's own output."""
    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 1, **CONV1X1}, weight="conv.w", bias="conv.b"),
        node("norm", "batch_norm", ["conv"], {"eps": 1.0}, gamma="g", beta="b", mean="m", var="v"),
        node("sum", "add", ["norm", "conv"]),
    ]
    params = {"conv.w": [[[[2.0]]]], "conv.b": [1.0], "g": [4.0], "b": [1.0], "m": [1.0], "v": [3.0]}
    write_model(tmp_path / "m.h5", (1, 1, 2), "sum", nodes, params)
    model = velcro_ref.load_model(tmp_path / "m.h5")
    x = np.array([1.0, -2.0], np.float32).reshape(1, 1, 1, 2)
    conv = 2.0 * x.astype(np.float64) + 1.0  # 3, -3
    want = ((conv - 1.0) * 2.0 + 1.0) + conv  # 5 + 3, -7 - 3
    assert np.array_equal(model.run(x), want.astype(np.float32))
    assert model.plan.folded == {}
    model.fuse = False  # every node apart: the same
    assert np.array_equal(model.run(x), want.astype(np.float32))


def test_a_masked_site_skips_no_conv_whose_output_another_node_reads(tmp_path):
    """conv (weight 2, bias 1) -> relu 'act' (a site), and sum = act + conv: the conv's output is
    read by the add too, so it is on no producer chain, and masking act's first element (constant
    7) leaves the conv's value there for the add."""
    from velcro_ref.masks import MaskSet

    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 1, **CONV1X1}, weight="conv.w", bias="conv.b"),
        node("act", "relu", ["conv"]),
        node("sum", "add", ["act", "conv"]),
    ]
    fp = write_model(tmp_path / "m.h5", (1, 1, 2), "sum", nodes, {"conv.w": [[[[2.0]]]], "conv.b": [1.0]})
    model = velcro_ref.load_model(tmp_path / "m.h5")
    masks = MaskSet(fp, {"act": (np.array([[[True, False]]]), np.full((1, 1, 2), 7.0, np.float32))}, complete=True)
    x = np.array([1.0, -2.0], np.float32).reshape(1, 1, 1, 2)
    conv = 2.0 * x.astype(np.float64) + 1.0  # 3, -3
    want = np.where([True, False], 7.0, np.maximum(conv, 0.0)) + conv  # 7 + 3, 0 - 3
    assert np.array_equal(model.run(x, masks=masks), want.astype(np.float32))
    assert model.chains["act"] == ()
    assert model.last_macs["conv"] == 2  # both outputs computed


def concat_read_twice(path):
    """a = conv(x) (weight 2, bias 1), b = conv(x) (weight -1), cat = concat(a, b), c = conv(cat)
    (weights 1, 1: a + b), d = relu(c), out = d + a: a is read by the concat and by the add."""
    conv = {"out_channels": 1, **CONV1X1}
    nodes = [
        node("a", "conv2d", ["input"], conv, weight="a.w", bias="a.b"),
        node("b", "conv2d", ["input"], conv, weight="b.w"),
        node("cat", "concat", ["a", "b"]),
        node("c", "conv2d", ["cat"], conv, weight="c.w"),
        node("d", "relu", ["c"]),
        node("out", "add", ["d", "a"]),
    ]
    params = {"a.w": [[[[2.0]]]], "a.b": [1.0], "b.w": [[[[-1.0]]]], "c.w": np.ones((1, 2, 1, 1))}
    return write_model(path, (1, 1, 2), "out", nodes, params)


def test_a_concat_input_another_node_reads_keeps_its_own_buffer(tmp_path):
    """On one image a concat's inputs are written into its channels only where the concat alone
    reads them: here the add reads a after the concat's buffer was freed and written again."""
    concat_read_twice(tmp_path / "m.h5")
    model = velcro_ref.load_model(tmp_path / "m.h5")
    x = np.array([1.0, -2.0, -1.0, 2.0], np.float32).reshape(2, 1, 1, 2)
    a, b = 2.0 * x.astype(np.float64) + 1.0, -x.astype(np.float64)  # 3, -3, -1, 5 and -1, 2, 1, -2
    want = (np.maximum(a + b, 0.0) + a).astype(np.float32)  # 5, -3, -1, 8
    for fuse in (True, False):
        model.fuse = fuse
        assert np.array_equal(model.run(x[:1]), want[:1]), fuse  # one image: the concat's inputs placed
        assert np.array_equal(model.run(x), want), fuse
