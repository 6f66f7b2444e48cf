"""The Python API with legal-looking arguments a notebook passes: each gives the right numbers or a
one-line VelcroError, never a quiet wrong figure (masks of 0/1 integers, a NumPy float32 ratio,
float or column labels, a negative batch, NaN constants, classes as an array, a refused batch
inside a profile, two threads on one Model)."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import velcro_ref
from velcro_ref import data, evaluation
from velcro_ref.engine import Model
from velcro_ref.errors import InputError, VelcroError
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet, ratio_count
from velcro_ref.model_io import save_model
from velcro_ref.stats import StatsCollector


@pytest.fixture(scope="module")
def model():
    """conv -> relu -> flatten -> linear -> relu (a site on a linear layer's chain) -> linear."""
    r = np.random.default_rng(0)
    params = {
        "c.w": r.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "l1.w": r.normal(0, 0.2, (16, 4 * 6 * 6)).astype(np.float32),
        "l1.b": r.normal(0, 0.1, 16).astype(np.float32),
        "l2.w": r.normal(0, 0.3, (10, 16)).astype(np.float32),
    }
    nodes = (
        Node("c", "conv2d", (INPUT,), {"out_channels": 4, "kernel": [3, 3]}, {"weight": "c.w"}),
        Node("r1", "relu", ("c",)),
        Node("f", "flatten", ("r1",)),
        Node("l1", "linear", ("f",), {}, {"weight": "l1.w", "bias": "l1.b"}),
        Node("r2", "relu", ("l1",)),
        Node("l2", "linear", ("r2",), {}, {"weight": "l2.w"}),
    )
    return Model(Graph(nodes, (1, 8, 8), "l2", params, {}))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).random((12, 1, 8, 8), dtype=np.float32)


def _masks(model, dtype=bool, const=0.0):
    rng = np.random.default_rng(2)
    sites = {}
    for s, shape in model.sites.items():
        m = rng.random(shape) < 0.4
        sites[s] = (m.astype(dtype), np.full(shape, const, np.float32))
    return MaskSet(model.fingerprint, sites, {}, complete=True)


def test_a_masked_run_after_the_schedules_module_is_reloaded_writes_the_same_bits():
    """importlib.reload of `schedule` (what IPython's autoreload does once its source is edited)
    makes skip plans of a new class SkipPlan; the conv's dispatch took such a plan for a mask array
    and failed in a ValueError traceback. In a child process, as a reload lasts for the process."""
    child = textwrap.dedent(
        """
        import importlib, sys
        import numpy as np
        from velcro_ref.graph import INPUT, Graph, Node
        from velcro_ref.engine import Model
        from velcro_ref.masks import MaskSet
        import velcro_ref.kernels.conv.schedule as schedule

        r = np.random.default_rng(0)
        params = {"w": r.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "b": r.normal(0, 0.1, 16).astype(np.float32)}
        conv = {"out_channels": 16, "kernel": [3, 3], "pads": [1, 1, 1, 1]}
        nodes = (Node("c", "conv2d", (INPUT,), conv, {"weight": "w", "bias": "b"}), Node("r", "relu", ("c",)))
        model = Model(Graph(nodes, (3, 12, 12), "r", params, {}))
        x = r.random((4, 3, 12, 12), dtype=np.float32)

        def masks():
            mask = np.random.default_rng(2).random((16, 12, 12)) < 0.5
            return MaskSet(model.fingerprint, {"r": (mask, np.full(mask.shape, 0.25, np.float32))})

        before = model.run(x, masks=masks()).copy()
        importlib.reload(schedule)
        after = model.run(x, masks=masks())
        sys.exit(0 if after.tobytes() == before.tobytes() and sum(model.last_macs.values()) < 16 * 27 * 144 * 4 else 3)
        """
    )
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])
def test_masks_of_another_dtype_than_bool_are_refused(model, x, dtype):
    """~1 on an integer is -2, not False: a linear layer computed every output of a 0/1 mask."""
    with pytest.raises(VelcroError, match="bool"):
        model.run(x, masks=_masks(model, dtype))


def test_nan_constants_at_masked_elements_are_refused_as_a_mask_file_s_are(model, x):
    with pytest.raises(VelcroError, match="NaN or Inf"):
        model.run(x, masks=_masks(model, const=np.nan))


def test_a_numpy_float32_ratio_is_the_decimal_it_prints():
    assert str(np.float32(0.29)) == "0.29" and float(np.float32(0.29)) * 100 < 29
    assert ratio_count(np.float32(0.29), 100) == ratio_count(0.29, 100) == 29
    assert ratio_count(np.float32(0.7), 20480) == 14336


def test_a_float32_ratio_masks_what_the_same_python_float_masks(model, x):
    stats = velcro_ref.profile(model, x)
    for policy in ("uniform", "channel"):
        a = velcro_ref.compress(stats, np.float32(0.7), policy)
        b = velcro_ref.compress(stats, 0.7, policy)
        assert a.n_masked() == b.n_masked(), policy


@pytest.mark.parametrize(
    "labels, why",
    [
        (lambda y: y + 0.5, "integer"),  # compared as floats, nothing matched: accuracy 0
        (lambda y: y.astype(str), "integer"),
        (lambda y: y.astype(bool), "integer"),
        (lambda y: y[:, None], "1-D"),  # broadcast (N, 1) against (N,)
    ],
    ids=["float", "str", "bool", "column"],
)
def test_labels_that_are_not_integers_or_not_one_per_image_are_refused(model, x, labels, why):
    y = model.run(x).argmax(axis=1)
    assert evaluation.evaluate(model, x, y, range(10))["accuracy"] == 1.0
    with pytest.raises(VelcroError, match=why):
        evaluation.evaluate(model, x, labels(y), range(10))


@pytest.mark.parametrize("classes", [(2.7, 8.9), (), np.array([[1], [2]])])
def test_task_classes_that_are_not_a_list_of_indices_are_refused(model, x, classes):
    y = model.run(x).argmax(axis=1)
    with pytest.raises(VelcroError):
        evaluation.evaluate(model, x, y, classes)
    with pytest.raises(VelcroError):
        velcro_ref.task_classes(classes=classes)


@pytest.mark.parametrize("batch", [-1, 0, 2.0, True])
def test_a_batch_that_is_not_a_positive_integer_is_refused(model, x, batch):
    """batch=-1 ran no image: accuracy 0, 0 MACs, and a profile of 0 images, without an error."""
    y = model.run(x).argmax(axis=1)
    with pytest.raises(VelcroError, match="batch"):
        velcro_ref.evaluate(model, x, y, range(10), batch=batch)
    with pytest.raises(VelcroError, match="batch"):
        velcro_ref.profile(model, x, batch=batch)


def test_classes_given_as_an_array_are_saved_as_ints(model, x, tmp_path):
    stats = velcro_ref.profile(model, x, classes=np.array([5, 7]))
    assert stats.classes == (5, 7) and all(type(c) is int for c in stats.classes)
    velcro_ref.save_stats(stats, tmp_path / "s.h5")
    velcro_ref.save_masks(velcro_ref.compress(stats, 0.3), tmp_path / "m.h5")
    assert velcro_ref.load_stats(tmp_path / "s.h5").classes == (5, 7)


def test_golden_refuses_labels_that_are_not_class_indices(model, x, tmp_path):
    n_scores = model.shapes[model.graph.output][0]
    for labels in (np.full(len(x), 2.7), np.full(len(x), -1), np.full(len(x), n_scores)):
        with pytest.raises(VelcroError):
            velcro_ref.golden(model, x, tmp_path / "g.h5", labels=labels)
    for labels in (np.full(len(x), -1), np.full(len(x), n_scores)):  # as eval refuses them: bad data, exit 1
        with pytest.raises(InputError, match="labels name class"):
            velcro_ref.golden(model, x, tmp_path / "g.h5", labels=labels)
        with pytest.raises(InputError, match="labels name class .* but the model scores"):
            velcro_ref.evaluate(model, x, labels, [0])
    assert not (tmp_path / "g.h5").exists()
    velcro_ref.golden(model, x, tmp_path / "g.h5", labels=np.full(len(x), n_scores - 1))  # the last class is one


def test_a_batch_the_run_refuses_adds_nothing_to_the_statistics(model, x):
    clean = StatsCollector(model)
    clean.add_batch(x)
    polluted = StatsCollector(model)
    with pytest.raises(VelcroError):
        polluted.add_batch((x * 255).astype(np.uint8))  # refused: not float32
    polluted.add_batch(x)
    assert polluted.stats.ranges == clean.stats.ranges
    assert polluted.stats.n_images == clean.stats.n_images == len(x)


def test_run_counted_gives_each_thread_its_own_run_s_macs(model, x):
    """evaluate read `last_macs` after the run let go of the Model: another thread's run could be
    in between (with a short switch interval, 186 of 600 evaluations counted the other's MACs)."""
    masks = _masks(model)
    dense_macs = model.run_counted(x)[1]
    masked_macs = model.run_counted(x, masks)[1]
    assert sum(masked_macs.values()) < sum(dense_macs.values())
    wrong = []

    def work(m, want):
        for _ in range(200):
            if model.run_counted(x[:2], m)[1] != want:
                wrong.append(m is not None)

    want2 = (model.run_counted(x[:2])[1], model.run_counted(x[:2], masks)[1])
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(m, w)) for m, w in zip((None, masks), want2, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong


@pytest.mark.parametrize("classes", [{9, 5, 7}, frozenset({5, 7, 9}), ["5", "7", "9"], range(5, 10, 2)])
def test_task_classes_take_any_collection_of_indices(classes):
    assert sorted(velcro_ref.task_classes(classes=classes)) == [5, 7, 9]


def test_golden_stores_a_source_of_numpy_numbers_and_arrays_as_json(model, x, tmp_path):
    """A source holding task_images' indices (an array) or a NumPy integer raised json's TypeError."""
    import json

    import h5py

    source = {"data": "fashion-mnist", "indices": np.arange(3, 3 + len(x)), "n": np.int64(len(x))}
    velcro_ref.golden(model, x, tmp_path / "g.h5", source=source)
    with h5py.File(tmp_path / "g.h5") as f:
        stored = json.loads(f.attrs["input_source"])
    assert stored == {"data": "fashion-mnist", "indices": list(range(3, 3 + len(x))), "n": len(x)}
    with pytest.raises(VelcroError, match="source expects JSON values"):
        velcro_ref.golden(model, x, tmp_path / "g2.h5", source={"model": model})
    assert not (tmp_path / "g2.h5").exists()


def test_mask_sets_of_another_form_are_refused_in_one_line(model, x):
    """A site's value of three items and sites given as a list of pairs raised ValueError / TypeError."""
    site, shape = next(iter(model.sites.items()))
    pair = (np.zeros(shape, bool), np.zeros(shape, np.float32))
    for sites in ({site: (*pair, 0)}, [(site, pair)]):
        with pytest.raises(VelcroError, match="pair|dict of site"):
            model.run(x, masks=MaskSet(model.fingerprint, sites))


def test_masks_and_accelerators_that_are_no_mask_set_or_arch_are_refused_in_one_line(model, x):
    """A dict for masks raised AttributeError in Model.run and simulate; None or bytes for the accelerator
    pathlib's TypeError."""
    import simulator
    from simulator import simulate

    with pytest.raises(VelcroError, match="masks expect a MaskSet"):
        model.run(x, masks={})
    with pytest.raises(VelcroError, match="masks expect a MaskSet"):
        simulate(model, "edge16", masks={})
    for accel in (None, b"edge16", _BytesPath("edge16.toml")):
        with pytest.raises(VelcroError, match="accel path expects a str or os.PathLike"):
            simulate(model, accel)
    edge16 = _StrPath(Path(simulator.__file__).parent / "archs" / "edge16.toml")
    assert simulate(model, edge16).total_dense == simulate(model, "edge16").total_dense


def test_compress_takes_one_excluded_site_as_a_name_and_refuses_ratios_of_another_form(model, x):
    """exclude="r1" was read as the sites 'r', '1' (unknown); ratios as a list of pairs raised a TypeError."""
    stats = velcro_ref.profile(model, x)
    one = velcro_ref.compress(stats, 0.5, exclude="r1")
    assert not one.sites["r1"][0].any() and one.sites["r2"][0].any()
    both = velcro_ref.compress(stats, 0.5, exclude=["r1"])
    assert all(np.array_equal(one.sites[s][0], both.sites[s][0]) for s in one.sites)
    with pytest.raises(VelcroError, match="ratios expect a dict"):
        velcro_ref.compress(stats, ratios=[("r1", 0.5)])


class _BytesPath:
    """An os.PathLike whose path is bytes (pathlib takes none)."""

    def __init__(self, path):
        self.path = str(path).encode()

    def __fspath__(self):
        return self.path


class _StrPath(_BytesPath):
    def __fspath__(self):
        return self.path.decode()


def test_a_path_that_is_no_path_is_refused_in_one_line(model, x, tmp_path):
    """bytes raised pathlib's TypeError, an open h5py.File os.fspath's, in the loaders and writers."""
    import h5py

    stats = velcro_ref.profile(model, x)
    masks = velcro_ref.compress(stats, 0.5)
    writers = (
        lambda p: velcro_ref.save_stats(stats, p),
        lambda p: velcro_ref.save_masks(masks, p),
        lambda p: velcro_ref.golden(model, x, p),
        lambda p: save_model(model.graph, p),
    )
    with h5py.File(tmp_path / "f.h5", "w") as f:
        bad = (str(tmp_path / "f.h5").encode(), _BytesPath(tmp_path / "f.h5"), f)
        for call in (velcro_ref.load_model, velcro_ref.load_stats, velcro_ref.load_masks, *writers):
            for path in bad:
                with pytest.raises(VelcroError, match="path expects a str or os.PathLike"):
                    call(path)
    save_model(model.graph, _StrPath(tmp_path / "m.h5"))  # an os.PathLike of a str is a path
    assert velcro_ref.load_model(_StrPath(tmp_path / "m.h5")).path == str(tmp_path / "m.h5")
    velcro_ref.save_masks(masks, tmp_path / "k.h5")
    assert velcro_ref.load_masks(_StrPath(tmp_path / "k.h5")).source == str(tmp_path / "k.h5")  # was the object's repr
    from velcro_ref.onnx_import import import_onnx

    for path in (b"m.onnx", _BytesPath("m.onnx")):
        with pytest.raises(VelcroError, match="path expects a str or os.PathLike"):
            import_onnx(path)
        with pytest.raises(VelcroError, match="path expects a str or os.PathLike"):
            data.load_fashion_mnist("test", path)  # task_images' data_dir


def test_golden_takes_binary_labels_of_a_model_with_one_output(tmp_path):
    """A single logit scores no classes: labels 0 and 1 were refused as past its one class."""
    w = np.ones((1, 4), np.float32)
    nodes = (Node("f", "flatten", (INPUT,)), Node("l", "linear", ("f",), {}, {"weight": "w"}))
    model = Model(Graph(nodes, (1, 2, 2), "l", {"w": w}, {}))
    x = np.zeros((2, 1, 2, 2), np.float32)
    velcro_ref.golden(model, x, tmp_path / "g.h5", labels=[0, 1])


def test_a_model_keeps_the_parameters_it_was_made_with():
    """Edits of the graph's parameter arrays after Model(graph) reached the linear layer's weight and bias
    (held as the caller's arrays where they were C-contiguous float32) and a conv's bias, not the packed
    conv weights: the output was neither model's, under the old fingerprint. Every parameter is a copy."""
    rng = np.random.default_rng(0)
    conv = {"out_channels": 4, "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    nodes = (
        Node("c", "conv2d", (INPUT,), conv, {"weight": "cw", "bias": "cb"}),
        Node("r", "relu", ("c",)),
        Node("f", "flatten", ("r",)),
        Node("l", "linear", ("f",), {}, {"weight": "lw", "bias": "lb"}),
    )
    shapes = {"cw": (4, 2, 3, 3), "cb": (4,), "lw": (3, 100), "lb": (3,)}
    params = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    m = Model(Graph(nodes, (2, 5, 5), "l", params, {}))
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    before = m.run(x)
    for name, v in params.items():
        v *= 2
        assert not np.array_equal(Model(Graph(nodes, (2, 5, 5), "l", params, {})).run(x), before), name
        assert np.array_equal(m.run(x), before), name


def test_a_model_keeps_the_attributes_and_metadata_it_was_made_with(tmp_path):
    """A Model shared its graph's node attribute dicts, metadata, input shape and node inputs (lists)
    with the caller: an edit after Model(graph) changed the graph the Model fingerprints, saves and
    writes into golden files (its pads, its metadata, which tensor a node reads, the image size) while
    its plan ran the old one."""
    from velcro_ref.model_io import load_graph, save_model

    conv = {"out_channels": 4, "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    inputs = ["c"]
    nodes = (
        Node("c", "conv2d", (INPUT,), conv, {"weight": "cw"}),
        Node("s", "silu", ("c",)),
        Node("r", "relu", inputs),
        Node("a", "add", ("r", "s")),
    )
    cw = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    shape = [2, 5, 5]
    graph = Graph(nodes, shape, "a", {"cw": cw}, {"note": {"a": [1]}})
    m = Model(graph)
    fingerprint = m.fingerprint
    conv["pads"][0] = 0
    graph.meta["note"]["a"].append(2)
    inputs[0] = "s"
    shape[1:] = [6, 6]
    assert m.graph.fingerprint() == fingerprint and m.input_shape == (2, 5, 5)
    save_model(m.graph, tmp_path / "m.h5")
    saved = load_graph(tmp_path / "m.h5")
    assert saved.node("c").attrs["pads"] == [1, 1, 1, 1] and saved.meta["note"] == {"a": [1]}
    assert saved.node("r").inputs == ("c",) and saved.input_shape == (2, 5, 5)
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    assert np.array_equal(Model(saved).run(x), m.run(x))


@pytest.mark.parametrize("kind", ["scalar", "0-d", "empty"])
def test_collect_stats_refuses_what_is_no_batch_of_images_in_one_line(model, kind):
    """A scalar raised TypeError from len(); an empty batch gave statistics of no image, which compress
    turned into masks of constant 0."""
    x = {"scalar": np.float32(1.0), "0-d": np.zeros((), np.float32)}.get(kind)
    x = np.zeros((0, *model.input_shape), np.float32) if x is None else x
    with pytest.raises(InputError, match="input: "):
        velcro_ref.collect_stats(model, x)


def test_a_node_attribute_holding_an_array_is_refused_in_one_line():
    """ "kernel": np.array(w.shape[2:]) ended in json's TypeError from the fingerprint, before the graph's
    check could name the node."""
    from velcro_ref.errors import ModelError

    w = np.ones((4, 1, 3, 3), np.float32)
    attrs = {"out_channels": 4, "kernel": np.array(w.shape[2:]), "stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    nodes = (Node("c", "conv2d", (INPUT,), attrs, {"weight": "w"}), Node("r", "relu", ("c",)))
    with pytest.raises(ModelError, match="node 'c': kernel expects"):
        Model(Graph(nodes, (1, 8, 8), "r", {"w": w}))


def test_an_int8_model_and_its_golden_file_keep_the_parameters_it_was_made_with(tmp_path):
    """The int8 convs and linear layers kept the graph's int32 bias arrays, and golden files and quantize
    read the graph's arrays: edits after Model(graph) changed outputs (past the accumulator check made on
    the old bias) and golden files. The Model holds copies."""
    import h5py

    from velcro_ref.model_io import load_graph

    graph = load_graph(Path(__file__).resolve().parents[2] / "weights" / "resnet18_int8.h5")
    m = Model(graph)
    x = np.random.default_rng(1).uniform(-1, 1, (2, *m.input_shape)).astype(np.float32)
    before = m.run(x)
    velcro_ref.golden(m, x, tmp_path / "before.h5")
    for v in graph.params.values():
        if v.dtype == np.int32:
            v += 5
        elif v.dtype.kind == "f":
            v *= 2
    assert np.array_equal(m.run(x), before)
    velcro_ref.golden(m, x, tmp_path / "after.h5")
    with h5py.File(tmp_path / "before.h5") as a, h5py.File(tmp_path / "after.h5") as b:
        for name in a["nodes"]:
            for ds in a["nodes"][name]:
                assert np.array_equal(a["nodes"][name][ds][()], b["nodes"][name][ds][()]), (name, ds)


def test_an_interrupt_while_an_edited_mask_is_frozen_again_leaves_no_stale_plan(monkeypatch):
    """A Ctrl-C taken between making an edited mask read-only and stamping it left it frozen with its
    old stamp, so the Model's plan of the mask before the edit passed every check: the next run masked
    what the array no longer said (124 of 6239 randomly timed SIGALRMs), no error."""
    import velcro_ref.engine as E
    from velcro_ref.zoo import build_zoo

    g = build_zoo("resnet18", input_size=32, width=0.125, num_classes=10)
    model = Model(g)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32), dtype=np.float32)
    masks = velcro_ref.compress(velcro_ref.profile(model, x), 0.5)
    model.run(x, masks=masks)  # the plan made, the arrays read-only
    mask = next(iter(masks.sites.values()))[0]
    mask.flags.writeable = True  # the documented way to edit a mask in place
    mask[...] = False
    real = E._stamp_frozen

    def interrupted(a):
        monkeypatch.setattr(E, "_stamp_frozen", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_stamp_frozen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.run(x, masks=masks)
    assert mask.flags.writeable  # left as it came
    copies = MaskSet(masks.fingerprint, {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()})
    assert np.array_equal(model.run(x, masks=masks), Model(g).run(x, masks=copies))


def test_an_observer_computing_a_site_over_a_masked_site_leaves_its_constants(model, x):
    """A site reading a masked site directly: an observer's run_site may write over its input, which in a
    masked run held the constants the engine writes once per MaskSet. Later runs read the overwritten
    values (StatsCollector too: relu over -1 gave 0). run_site is not offered that input now."""
    from velcro_ref.stats import StatsCollector

    conv = {"out_channels": 2, "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    nodes = (
        Node("c", "conv2d", (INPUT,), conv, {"weight": "cw"}),
        Node("s", "relu", ("c",)),
        Node("t", "relu", ("s",)),
        Node("f", "flatten", ("t",)),
        Node("l", "linear", ("f",), {}, {"weight": "lw"}),
    )
    rng = np.random.default_rng(0)
    params = {
        "cw": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
        "lw": rng.standard_normal((3, 32)).astype(np.float32),
    }
    g = Graph(nodes, (1, 4, 4), "l", params)
    m = Model(g)
    assert m.plan.overwritable("s", "t")
    mask = np.zeros((2, 4, 4), bool)
    mask[0] = True
    masks = MaskSet(m.fingerprint, {"s": (mask, np.full((2, 4, 4), -1.0, np.float32))})
    xs = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    want = Model(g).run(xs, masks=masks)
    m.run(xs, masks=masks)
    col = StatsCollector(m)
    assert "t" in col.over_input  # it computes t over s where it may
    assert np.array_equal(m.run(xs, masks=masks, observer=col), want)

    class Sites:
        def __init__(self):
            self.seen = {}

        def on_site(self, name, y):
            self.seen[name] = y.copy()

    later, fresh = Sites(), Sites()
    m.run(xs, masks=masks, observer=later)
    Model(g).run(xs, masks=masks, observer=fresh)
    assert np.array_equal(later.seen["s"], fresh.seen["s"])  # the constants -1, not relu's 0


def test_last_macs_after_a_failed_sub_batched_run_is_the_last_whole_run_s(monkeypatch):
    """A run of more images than sub_batch that failed in a later sub-batch left the MACs of its first
    sub-batch in last_macs, as a whole run's figure."""
    from velcro_ref.zoo import build_zoo

    m = Model(build_zoo("resnet18", input_size=32, width=0.125, num_classes=10))
    m.sub_batch = 4
    x = np.random.default_rng(2).standard_normal((10, 3, 32, 32), dtype=np.float32)
    m.run(x[:3])
    whole = dict(m.last_macs)
    calls = []
    real = m._run

    def failing(*a):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError
        return real(*a)

    monkeypatch.setattr(m, "_run", failing)
    with pytest.raises(MemoryError):
        m.run(x)
    assert m.last_macs == whole
