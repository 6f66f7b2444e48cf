"""Graphs that once computed wrong numbers with exit code 0, each with its numbers worked out by hand.

- A batch_norm that reads the graph output conv2d (a dead branch) must not be folded into it.
- Masks on a relu that reads the graph output linear must not skip the output's MACs. Such a relu
  can only be on a dead branch (nothing the output depends on reads the output): dead branches are
  not run, and masks naming a site on one are refused in one line.
- Parameters stored under `<bn>.folded_bias` / `<bn>.folded_weight` are the file's own, whatever a
  loader derives from the batch norm `<bn>`.
- A tensor that took a NaN on a later batch of a profiling run keeps it in its range (statistics
  of a network that overflowed are refused, whichever batch overflowed).

Every case is checked with load_model(path).run and with `velcro infer` (tests/property/test_random_graphs.py
runs `velcro infer` in real processes).
"""

import json

import h5py
import numpy as np
import pytest
from oracle64 import write_model
from robust_util import ROOT

import velcro_ref
from velcro_ref import cli
from velcro_ref.errors import MaskError
from velcro_ref.masks import MaskSet, save_masks
from velcro_ref.stats import collect_stats, joint_range, merge_ranges

CONV1X1 = {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0, 0, 0, 0], "groups": 1}


def node(name, op, inputs, attrs=None, **params):
    return {"name": name, "op": op, "inputs": list(inputs), "attrs": attrs or {}, "params": params}


def bn_node(name, x):
    # gamma 4, var 3, eps 1: scale 4 / sqrt(3 + 1) = 2; shift beta - mean * scale
    return node(
        name, "batch_norm", [x], {"eps": 1.0}, gamma=f"{name}.g", beta=f"{name}.b", mean=f"{name}.m", var=f"{name}.v"
    )


def bn_params(name, c, beta, mean):
    return {f"{name}.g": [4.0] * c, f"{name}.b": beta, f"{name}.m": mean, f"{name}.v": [3.0] * c}


def infer_cli(capsys, tmp_path, model, x, masks=None):
    """`velcro infer ... -o y.npy --json` (in this process); the output array it wrote."""
    np.save(tmp_path / "x.npy", x)
    args = ["infer", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--json"]
    if masks is not None:
        save_masks(masks, tmp_path / "masks.h5")
        args += ["--masks", tmp_path / "masks.h5"]
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["output_shape"] == list(np.load(tmp_path / "y.npy").shape)
    return np.load(tmp_path / "y.npy")


# --- a batch_norm reading the output conv2d ----------------------------------------------------------------


def output_conv_read_by_bn(path, relu_after_bn=False):
    """input (1, 1, 2) -> conv 'conv' (weight 2, bias 1) = the output; 'norm' = batch_norm(conv) is dead."""
    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 1, **CONV1X1}, weight="conv.w", bias="conv.b"),
        bn_node("norm", "conv"),
    ]
    params = {"conv.w": [[[[2.0]]]], "conv.b": [1.0], **bn_params("norm", 1, [0.5], [1.0])}
    if relu_after_bn:
        nodes.append(node("act", "relu", ["norm"]))
    return write_model(path, (1, 1, 2), "conv", nodes, params)


X12 = np.array([1.0, 2.0], np.float32).reshape(1, 1, 1, 2)
CONV_OUT = np.array([3.0, 5.0]).reshape(1, 1, 1, 2)  # 2 x + 1; the batch norm would give 2 (c - 1) + 0.5


def test_batch_norm_reading_the_output_conv_leaves_the_output_alone(capsys, tmp_path):
    output_conv_read_by_bn(tmp_path / "m.h5")
    assert np.array_equal(velcro_ref.load_model(tmp_path / "m.h5").run(X12), CONV_OUT)
    assert np.array_equal(infer_cli(capsys, tmp_path, tmp_path / "m.h5", X12), CONV_OUT)


def test_masks_after_a_batch_norm_reading_the_output_conv_are_refused_and_the_output_is_whole(capsys, tmp_path):
    fp = output_conv_read_by_bn(tmp_path / "m.h5", relu_after_bn=True)
    masks = MaskSet(fp, {"act": (np.ones((1, 1, 2), bool), np.full((1, 1, 2), 7.0, np.float32))}, complete=True)
    model = velcro_ref.load_model(tmp_path / "m.h5")
    assert model.plan.dead == ("norm", "act") and model.sites == {}
    assert np.array_equal(model.run(X12), CONV_OUT)
    with pytest.raises(MaskError, match="site 'act' is on a dead branch"):
        model.run(X12, masks=masks)
    refused_cli(capsys, tmp_path, tmp_path / "m.h5", X12, masks)


def refused_cli(capsys, tmp_path, model, x, masks):
    """`velcro infer --masks` refuses masks of a dead site: one error line, exit 1, no output written."""
    np.save(tmp_path / "x.npy", x)
    save_masks(masks, tmp_path / "masks.h5")
    args = ["infer", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--masks", tmp_path / "masks.h5"]
    code = cli.main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and "is on a dead branch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()


# --- masks on a relu reading the output linear -------------------------------------------------------------


def output_linear_read_by_relu(path):
    """input (1, 1, 3) -> flatten -> linear 'fc' = the output; 'act' = relu(fc) is dead."""
    nodes = [
        node("flat", "flatten", ["input"]),
        node("fc", "linear", ["flat"], weight="fc.w", bias="fc.b"),
        node("act", "relu", ["fc"]),
    ]
    params = {"fc.w": [[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]], "fc.b": [0.5, -1.0]}
    return write_model(path, (1, 1, 3), "fc", nodes, params)


X123 = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 1, 1, 3)
FC_OUT = np.array([[1 - 3 + 0.5, 2 + 2 - 1]])  # [-1.5, 3]


@pytest.mark.parametrize("mask", [[True, True], [False, True]])
def test_masks_on_a_relu_reading_the_output_linear_are_refused_and_the_output_is_whole(capsys, tmp_path, mask):
    fp = output_linear_read_by_relu(tmp_path / "m.h5")
    masks = MaskSet(fp, {"act": (np.array(mask), np.array([7.0, 7.0], np.float32))}, complete=True)
    model = velcro_ref.load_model(tmp_path / "m.h5")
    assert np.array_equal(model.run(X123), FC_OUT)
    assert model.last_macs["fc"] == 2 * 3  # the output is computed in full
    with pytest.raises(MaskError, match="site 'act' is on a dead branch"):
        model.run(X123, masks=masks)
    refused_cli(capsys, tmp_path, tmp_path / "m.h5", X123, masks)
    assert np.array_equal(infer_cli(capsys, tmp_path, tmp_path / "m.h5", X123), FC_OUT)


# --- parameters stored under the keys a folded batch norm would get ----------------------------------------


def folded_key_model(path, n_out):
    """input (1, 1, 1) -> conv 'conv' (weights 1, 2) -> 'norm' (scale 2, shift 1) -> flatten -> linear 'fc'
    whose bias is stored as `norm.folded_bias`: the foldable pair's derived key."""
    w = {2: [[1.0, 0.0], [0.0, 1.0]], 3: [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]}[n_out]
    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 2, **CONV1X1}, weight="conv.w"),
        bn_node("norm", "conv"),
        node("flat", "flatten", ["norm"]),
        node("fc", "linear", ["flat"], weight="fc.w", bias="norm.folded_bias"),
    ]
    params = {
        "conv.w": np.array([1.0, 2.0]).reshape(2, 1, 1, 1),
        **bn_params("norm", 2, [1.0, 1.0], [0.0, 0.0]),
        "fc.w": w,
        "norm.folded_bias": [10.0, 20.0, 30.0][:n_out],
    }
    return write_model(path, (1, 1, 1), "fc", nodes, params)


XPM = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)


@pytest.mark.parametrize(
    "n_out, want",
    [
        (2, [[3 + 10, 5 + 20], [-1 + 10, -3 + 20]]),  # norm = 2 * (x, 2x) + 1; the same shape as the derived bias
        (3, [[13, 25, 3 + 5 + 30], [9, 17, -1 - 3 + 30]]),  # another shape than the derived bias
    ],
)
def test_a_bias_stored_under_the_folded_bias_key_is_the_files_own(capsys, tmp_path, n_out, want):
    folded_key_model(tmp_path / "m.h5", n_out)
    assert np.array_equal(velcro_ref.load_model(tmp_path / "m.h5").run(XPM), want)
    assert np.array_equal(infer_cli(capsys, tmp_path, tmp_path / "m.h5", XPM), want)


def test_golden_vectors_keep_a_bias_stored_under_the_folded_bias_key(capsys, tmp_path):
    folded_key_model(tmp_path / "m.h5", 2)
    np.save(tmp_path / "x.npy", XPM)
    code = cli.main(
        ["golden", str(tmp_path / "m.h5"), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "g.h5")]
    )
    assert code == 0, capsys.readouterr().err
    with h5py.File(tmp_path / "g.h5", "r") as f:
        (fc,) = [g for g in f["nodes"].values() if g.attrs["name"] == "fc"]
        assert np.array_equal(fc["bias"][()], [10.0, 20.0])
        assert np.array_equal(fc["output"][()], [[13, 25], [9, 17]])


def test_a_weight_stored_under_the_folded_weight_key_is_the_files_own(capsys, tmp_path):
    """'side' = conv(input) with its weight stored as `norm.folded_weight`, added to norm(conv(input))."""
    nodes = [
        node("conv", "conv2d", ["input"], {"out_channels": 2, **CONV1X1}, weight="conv.w"),
        bn_node("norm", "conv"),
        node("side", "conv2d", ["input"], {"out_channels": 2, **CONV1X1}, weight="norm.folded_weight"),
        node("sum", "add", ["norm", "side"]),
    ]
    params = {
        "conv.w": np.array([1.0, 2.0]).reshape(2, 1, 1, 1),
        **bn_params("norm", 2, [1.0, 1.0], [0.0, 0.0]),
        "norm.folded_weight": np.array([3.0, 4.0]).reshape(2, 1, 1, 1),
    }
    write_model(tmp_path / "m.h5", (1, 1, 1), "sum", nodes, params)
    want = np.array([[3 + 3, 5 + 4], [-1 - 3, -3 - 4]]).reshape(2, 2, 1, 1)  # norm (2x + 1, 4x + 1) + (3x, 4x)
    assert np.array_equal(velcro_ref.load_model(tmp_path / "m.h5").run(XPM), want)
    assert np.array_equal(infer_cli(capsys, tmp_path, tmp_path / "m.h5", XPM), want)


# --- a NaN in a later batch's tensor ------------------------------------------------------------------------


def nan_logits_model(path):
    """input (4, 1, 1) -> relu 'act' -> flatten -> linear 'fc' (weights 3e38, 3e38, -3e38, -3e38): on an image
    of zeros fc is 0; on an image of tens every product overflows to +inf or -inf and fc is NaN."""
    nodes = [
        node("act", "relu", ["input"]),
        node("flat", "flatten", ["act"]),
        node("fc", "linear", ["flat"], weight="fc.w", bias="fc.b"),
    ]
    return write_model(path, (4, 1, 1), "fc", nodes, {"fc.w": [[3e38, 3e38, -3e38, -3e38]], "fc.b": [0.0]})


X_ZEROS_THEN_TENS = np.array([0.0, 10.0], np.float32).repeat(4).reshape(2, 4, 1, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_nan_on_a_later_batch_stays_in_the_range_and_the_stats_are_refused(capsys, tmp_path, batch):
    nan_logits_model(tmp_path / "m.h5")
    model = velcro_ref.load_model(tmp_path / "m.h5")
    assert np.isnan(model.run(X_ZEROS_THEN_TENS[1:])).all() and model.run(X_ZEROS_THEN_TENS[:1])[0, 0] == 0.0
    lo, hi = collect_stats(model, X_ZEROS_THEN_TENS, batch=batch).ranges["fc"]
    assert np.isnan(lo) and np.isnan(hi)
    np.savez(tmp_path / "x.npz", x=X_ZEROS_THEN_TENS, y=np.zeros(2, np.int64))
    args = ["profile", tmp_path / "m.h5", "--images", tmp_path / "x.npz", "--batch", batch, "-o", tmp_path / "s.h5"]
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "tensor 'fc'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.h5").exists()


def test_ranges_joined_keep_a_nan_from_either_side():
    for a, b in [((0.0, 1.0), (np.nan, np.nan)), ((np.nan, np.nan), (0.0, 1.0))]:
        assert all(np.isnan(v) for v in joint_range(a, b))
        assert all(np.isnan(v) for v in merge_ranges({"t": a}, {"t": b})["t"])
    assert joint_range((-1.0, 2.0), (0.0, 3.0)) == (-1.0, 3.0)


@pytest.mark.parametrize("taps", [9, 15, 17, 70])
def test_a_sum_of_negative_zeros_stays_negative_zero_in_linear_and_masked_conv(taps):
    """Each chain of a sum whose products all underflow to -0 is -0, and so is the sum with a bias
    of -0 (the NumPy twins' order). The kernels' lanes past a run's end (a masked load's lanes,
    the zero columns padding filters to whole vectors) added +0 * +0 and turned the chains' -0 into
    +0: 0.0 where the twins give -0.0, and a masked conv's output unlike the dense one's (exit 0)."""
    from velcro_ref.kernels import conv as kc
    from velcro_ref.kernels import linear as klin
    from velcro_ref.reference import conv2d as rconv
    from velcro_ref.reference import linear as rlin

    x = np.full((1, taps), 1e-30, np.float32)
    w = np.full((4, taps), -1e-30, np.float32)
    b = np.full(4, -0.0, np.float32)
    got, want = np.full((1, 4), 7.0, np.float32), np.full((1, 4), 7.0, np.float32)
    klin.linear(x, w, b, None, got)
    rlin.linear(x, w, b, None, want)
    assert np.signbit(want).all() and got.tobytes() == want.tobytes()
    geom = kc.conv_geom(taps, 2, 2, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    prepared = kc.prepare_conv(w.reshape(4, taps, 1, 1), b, geom)
    skip = np.zeros((4, 2, 2), bool)
    skip[0, 0, 0] = True
    masked, dense, twin = (np.full((1, 4, 2, 2), 7.0, np.float32) for _ in range(3))
    xc = np.full((1, taps, 2, 2), 1e-30, np.float32)
    kc.conv2d(xc, prepared, geom, skip, masked, None, None)
    kc.conv2d(xc, prepared, geom, None, dense, None, None)
    rconv.conv2d(xc, prepared, geom, skip, twin, None, None)
    assert np.signbit(twin[0, 1:]).all() and np.signbit(dense[0, 1:]).all()
    assert masked[0, 1:].tobytes() == twin[0, 1:].tobytes()


def _stop_at_site(col, k):
    """Make the collector's k-th site of the next run raise KeyboardInterrupt (k = 0: before any
    site changes; k = 3: after three sites took the batch), as a Ctrl-C there would."""
    taken, run_site = [0], col.run_site

    def stopping(step, x, out):
        if taken[0] == k:
            raise KeyboardInterrupt
        taken[0] += 1
        return run_site(step, x, out)

    col.run_site = stopping
    return lambda: setattr(col, "run_site", run_site)


def test_threads_feeding_one_collector_take_turns_a_batch_at_a_time():
    """One StatsCollector fed by several threads (a thread pool, a threaded Dask scheduler) refused
    their batches with "an earlier batch stopped part way" (43 of 50 batches in a thread pool): a
    thread read another's batch half added into the sites. They take turns, a batch whole at a time
    (the model's run_lock): a batch sent while another is held at its fourth site is added after it."""
    import threading

    from velcro_ref.stats import FIELDS, StatsCollector

    model = velcro_ref.load_model(ROOT / "weights" / "resnet18.h5")
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "train", 16)
    alone, shared = StatsCollector(model), StatsCollector(model)
    alone.add_batch(x[:8])
    alone.add_batch(x[8:])
    held, go, taken, run_site = threading.Event(), threading.Event(), [0], shared.run_site

    def holding(step, y, out):
        if taken[0] == 3:
            held.set()
            go.wait(60)
        taken[0] += 1
        return run_site(step, y, out)

    shared.run_site = holding
    errors = []

    def feed(batch):
        try:
            shared.add_batch(batch)
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    first = threading.Thread(target=feed, args=(x[:8],))
    first.start()
    assert held.wait(60)
    second = threading.Thread(target=feed, args=(x[8:],))
    second.start()
    second.join(0.5)  # long enough for it to reach the collector: it was refused there at once
    go.set()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert shared.stats.n_images == 16 and shared.stats.ranges == alone.stats.ranges
    for name, site in alone.stats.sites.items():
        for f in FIELDS:
            assert np.array_equal(getattr(shared.stats.sites[name], f), getattr(site, f)), (name, f)


def test_a_batch_stopped_part_way_leaves_no_statistics_that_count_it_in_some_sites(tmp_path):
    """A Ctrl-C inside StatsCollector.add_batch left the batch in the sites before it (count 192 of
    128 images at 8 of ResNet-18's 17 sites when the cell was run again); the masks made from them
    differed from a clean profile's at 1660 elements, with no error. Stopped before its first site
    a batch adds nothing (the ranges of the nodes it ran put back); stopped after it, the collector
    refuses later batches and save_stats and the mask policies refuse its statistics."""
    from velcro_ref.engine import Model
    from velcro_ref.errors import StatsError
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.policies import make_masks
    from velcro_ref.stats import StatsCollector, save_stats

    model = velcro_ref.load_model(ROOT / "weights" / "resnet18.h5")
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "train", 24)
    # stopped at its first site, a batch leaves nothing, not even the ranges of the nodes it ran:
    # conv -> add -> relu, a batch 10 times as large stopped at the site, then the real one
    rng = np.random.default_rng(0)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 2, "kernel": 3, "pads": 1}, {"weight": "c.w"})
    params = {"c.w": rng.standard_normal((2, 1, 3, 3)).astype(np.float32)}
    small = Model(Graph((conv, Node("a", "add", ("c", "c")), Node("r", "relu", ("a",))), (1, 4, 4), "r", params))
    y = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    whole, early = StatsCollector(small), StatsCollector(small)
    whole.add_batch(y)
    undo = _stop_at_site(early, 0)
    with pytest.raises(KeyboardInterrupt):
        early.add_batch(10 * y)
    undo()
    early.add_batch(y)
    assert early.stats.ranges == whole.stats.ranges and set(early.stats.ranges) == {"input", "c", "a"}
    assert early.stats.n_images == 4
    for f in ("count", "m2", "max"):
        assert np.array_equal(getattr(early.stats.sites["r"], f), getattr(whole.stats.sites["r"], f))

    torn = StatsCollector(model)
    torn.add_batch(x[:8])
    undo = _stop_at_site(torn, 3)
    with pytest.raises(KeyboardInterrupt):
        torn.add_batch(x[8:16])
    undo()
    with pytest.raises(StatsError, match="stopped part way"):
        torn.add_batch(x[8:16])
    with pytest.raises(StatsError, match="counts \\[16.0\\] images, the statistics 8: a batch stopped part way"):
        save_stats(torn.stats, tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(StatsError, match="images, site 'stem.2' 16: a batch stopped part way left them half added; no"):
        make_masks("uniform", torn.stats, 0.5)

    with pytest.raises(StatsError, match="a batch stopped part way left them half added; nothing quantized"):
        velcro_ref.quantize(model, torn.stats)  # its ranges are torn too
