"""The Python API gives what the commands give: the same masks, the same JSON documents."""

import collections
import json
import warnings

import numpy as np
import pytest
from robust_util import zoo_graph

import velcro_ref
from velcro_ref import cli
from velcro_ref.engine import Model
from velcro_ref.masks import MaskSet
from velcro_ref.model_io import save_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    save_model(zoo_graph("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.125, seed=6), d / "m.h5")
    return d


@pytest.fixture(scope="module")
def stats_path(files):
    """Statistics of the model on 32 footwear train images, written here (not by another test)."""
    model = velcro_ref.load_model(files / "m.h5")
    x, _ = velcro_ref.task_images(model, velcro_ref.task_classes(task="footwear"), "train", 32)
    velcro_ref.save_stats(velcro_ref.profile(model, x, batch=16), files / "own_s.h5")
    return files / "own_s.h5"


def run(capsys, *args):
    assert cli.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_profile_and_compress_equal_the_commands(files, capsys):
    model = velcro_ref.load_model(files / "m.h5")
    x, _ = velcro_ref.task_images(model, velcro_ref.task_classes(task="footwear"), "train", 64)
    stats = velcro_ref.profile(model, x, batch=16)
    run(
        capsys,
        "profile",
        files / "m.h5",
        "--data",
        "fashion-mnist",
        "--classes",
        "5,7,9",
        "--samples",
        64,
        "--batch",
        16,
        "-o",
        files / "s.h5",
    )
    from_file = velcro_ref.load_stats(files / "s.h5")
    for s in stats.sites:
        assert np.array_equal(stats.sites[s].m2, from_file.sites[s].m2)
    for policy in ("uniform", "budget", "channel"):
        masks = velcro_ref.compress(from_file, 0.4, policy, model=model)
        run(
            capsys,
            "compress",
            files / "s.h5",
            "--ratio",
            0.4,
            "--policy",
            policy,
            "--model",
            files / "m.h5",
            "-o",
            files / f"{policy}.h5",
        )
        stored = velcro_ref.load_masks(files / f"{policy}.h5")
        for s, (m, c) in masks.sites.items():
            assert np.array_equal(m, stored.sites[s][0]) and np.array_equal(c, stored.sites[s][1])


def test_evaluate_and_sweep_return_the_commands_json(files, capsys):
    model = velcro_ref.load_model(files / "m.h5")
    masks = velcro_ref.load_masks(files / "uniform.h5")
    x, y = velcro_ref.task_images(model, (5, 7, 9), "test", 50)
    doc = velcro_ref.evaluate(model, x, y, (5, 7, 9), masks=masks)
    cli_doc = json.loads(
        run(
            capsys,
            "eval",
            files / "m.h5",
            "--masks",
            files / "uniform.h5",
            "--data",
            "fashion-mnist",
            "--classes",
            "5,7,9",
            "--samples",
            50,
            "--json",
        )
    )
    assert {k: cli_doc[k] for k in doc} == doc
    assert 0 < doc["csr"] < 1
    res = velcro_ref.sweep(model, task="footwear", ratios="0:0.4:0.2", profile_samples=64, samples=40)
    cli_res = json.loads(
        run(
            capsys,
            "sweep",
            files / "m.h5",
            "--task",
            "footwear",
            "--ratios",
            "0:0.4:0.2",
            "--profile-samples",
            64,
            "--samples",
            40,
            "--json",
        )
    )
    assert {k: cli_res[k] for k in res} == json.loads(json.dumps(res))


def test_compress_refuses_unknown_sites_and_both_ways_of_giving_ratios(files, stats_path):
    stats = velcro_ref.load_stats(stats_path)
    with pytest.raises(velcro_ref.VelcroError, match="unknown site"):
        velcro_ref.compress(stats, ratios={"nope": 0.5})
    with pytest.raises(velcro_ref.VelcroError, match="not both"):
        velcro_ref.compress(stats, 0.3, ratios={})
    assert isinstance(velcro_ref.load_model(files / "m.h5"), Model)


def test_per_site_masks_record_the_sites_left_out(files, stats_path):
    stats = velcro_ref.load_stats(stats_path)
    first, second = list(stats.sites)[:2]
    masks = velcro_ref.compress(stats, ratios={first: 0.5, second: 0.5}, exclude=(second,))
    assert masks.policy["exclude"] == [second]
    assert masks.sites[first][0].any() and not masks.sites[second][0].any()


def test_api_functions_stay_functions_after_their_modules_load(tmp_path):
    """velcro_ref.golden and velcro_ref.quantize name functions; loading the modules that do the work
    must not shadow them (a submodule of the same name would)."""
    model = Model(zoo_graph("resnet18", input_size=16, num_classes=10, width=0.125, seed=1))
    x = np.zeros((1, 3, 16, 16), np.float32)
    for k in range(2):
        velcro_ref.golden(model, x, tmp_path / f"g{k}.h5")
    stats = velcro_ref.profile(model, x)
    for _ in range(2):
        assert velcro_ref.quantize(model, stats).graph.nodes[0].op == "quantize"
    assert callable(velcro_ref.golden) and callable(velcro_ref.quantize)


def test_a_file_written_again_carries_the_time_of_this_writing(tmp_path):
    """provenance["written"] of a file read back (a resumed checkpoint, a merge) is replaced by the
    time of the new writing, the rest kept."""
    import numpy as np

    from velcro_ref.stats import SiteStats, Stats, load_stats, save_stats

    s = Stats("fp", {"a": SiteStats.of_batch(np.ones((2, 3), np.float32))}, (1,), 2, "x")
    s.provenance = {"written": "2000-01-01T00:00:00+0000", "note": 1}
    save_stats(s, tmp_path / "s.h5")
    got = load_stats(tmp_path / "s.h5").provenance
    assert got["note"] == 1 and got["written"] != "2000-01-01T00:00:00+0000" and got["written"].startswith("20")


def test_sweep_takes_ratios_as_written_as_compress_does(files):
    """A NumPy float32 0.7 swept as 0.699999988 (fewer elements masked than `compress` and the command mask
    for 0.7); True swept as ratio 1; an empty list failed in max()."""
    model = velcro_ref.load_model(files / "m.h5")
    kw = {"task": "footwear", "profile_samples": 64, "samples": 20}
    want = velcro_ref.sweep(model, ratios=[0.0, 0.7], **kw)
    got = velcro_ref.sweep(model, ratios=[np.float32(0.7), np.float64(0.0)], **kw)
    assert got["points"] == want["points"] and got["points"][1]["ratio"] == 0.7
    for bad, needle in (([True], "must be a number"), ([], "at least one ratio")):
        with pytest.raises(velcro_ref.VelcroError, match=needle):
            velcro_ref.sweep(model, ratios=bad, **kw)


def test_a_class_string_is_a_comma_list_not_its_characters(files):
    """task_images(model, "10") took the characters '1' and '0' as classes 1 and 0."""
    model = velcro_ref.load_model(files / "m.h5")
    with pytest.raises(velcro_ref.VelcroError, match="class 10 out of range"):
        velcro_ref.task_images(model, "10", "test", 5)
    _, y = velcro_ref.task_images(model, "5, 7,9", "test", 30)
    assert set(y.tolist()) <= {5, 7, 9} and len(set(y.tolist())) > 1


def _own_masks(model, ratio=0.5):
    """Uniform masks of `model` from statistics of 32 footwear train images (made here, not by another test)."""
    x, _ = velcro_ref.task_images(model, velcro_ref.task_classes(task="footwear"), "train", 32)
    return velcro_ref.compress(velcro_ref.profile(model, x, batch=16), ratio)


def test_per_site_ratios_take_no_policy(files):
    """compress(stats, ratios=..., policy="channel") ignored the policy (the command refuses both)."""
    model = velcro_ref.load_model(files / "m.h5")
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "train", 16)
    stats = velcro_ref.profile(model, x)
    site = next(iter(stats.sites))
    with pytest.raises(velcro_ref.VelcroError, match="policy 'channel' with per-site ratios"):
        velcro_ref.compress(stats, ratios={site: 0.5}, policy="channel")


def test_golden_stores_the_constants_the_run_used_as_float32(files, tmp_path):
    """A MaskSet of float64 constants wrote them as float64 (0.5891047130094299, where the run used 0.5891047)."""
    import h5py

    from velcro_ref.masks import MaskSet

    model = velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    wide = MaskSet(masks.fingerprint, {s: (m, c.astype(np.float64) + 1e-9) for s, (m, c) in masks.sites.items()})
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 2)
    velcro_ref.golden(model, x, tmp_path / "g.h5", wide)
    site, (mask, const) = next(iter(wide.sites.items()))
    with h5py.File(tmp_path / "g.h5") as f:
        stored = f[f"sites/{site}/constants"][()]
    assert stored.dtype == np.float32 and np.array_equal(stored, const.astype(np.float32))


def test_a_mask_made_writeable_again_and_edited_is_seen_by_the_next_run(files):
    """After the read-only error a user sets writeable and edits the mask in place: the stale plan ran."""
    model = velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 3)
    dense = model.run(x)
    masked, macs = model.run_counted(x, masks)
    assert not np.array_equal(masked, dense)
    for mask, _ in masks.sites.values():
        mask.flags.writeable = True
        mask[...] = False
    again, macs_again = model.run_counted(x, masks)
    assert np.array_equal(again, dense) and sum(macs_again.values()) > sum(macs.values())


def test_a_mask_edited_after_two_models_ran_it_is_seen_by_both(files):
    """Two models ran one MaskSet; a user made a mask writeable and edited it. The first model's
    run saw the edit and made the array read-only again, and the second then kept its stale plan:
    other outputs and MACs than a fresh model's, with no error."""
    a, b = velcro_ref.load_model(files / "m.h5"), velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(a)
    x, _ = velcro_ref.task_images(a, (5, 7, 9), "test", 3)
    a.run(x, masks), b.run(x, masks)
    for mask, const in masks.sites.values():
        mask.flags.writeable = const.flags.writeable = True
        mask[...], const[...] = True, 5.0
    fresh = MaskSet(masks.fingerprint, {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()})
    want, want_macs = velcro_ref.load_model(files / "m.h5").run_counted(x, fresh)
    for model in (a, b):
        got, macs = model.run_counted(x, masks)
        assert np.array_equal(got, want) and macs == want_macs


def test_masks_edited_through_the_arrays_they_are_views_of_are_seen_by_the_next_run(files):
    """A MaskSet's mask and constants were views of a user's writeable arrays; the run made the views
    read-only and kept its plan, so an edit through the arrays left the next run on the old values."""
    model = velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 3)
    y, macs = model.run_counted(x, masks)
    parents = {s: (np.stack([m, m]), np.stack([c, c])) for s, (m, c) in masks.sites.items()}
    views = MaskSet(masks.fingerprint, {s: (pm[0], pc[0]) for s, (pm, pc) in parents.items()})
    assert np.array_equal(model.run(x, views), y)
    for pm, pc in parents.values():
        pm[0], pc[0] = True, 5.0  # through the parents, whose views the run made read-only
    fresh = MaskSet(masks.fingerprint, {s: (pm[0].copy(), pc[0].copy()) for s, (pm, pc) in parents.items()})
    want, want_macs = velcro_ref.load_model(files / "m.h5").run_counted(x, fresh)
    got, got_macs = model.run_counted(x, views)
    assert np.array_equal(got, want) and got_macs == want_macs and not np.array_equal(got, y)


def test_a_plan_made_from_views_of_a_writeable_array_is_not_kept_once_it_is_read_only(files):
    """Views of a writeable parent: a run, an edit through the parent, the parent made read-only,
    and the next run took the first run's plan."""
    model = velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 3)
    parents = {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()}
    views = MaskSet(masks.fingerprint, {s: (pm[...], pc[...]) for s, (pm, pc) in parents.items()})
    first = model.run(x, views)
    for pm, pc in parents.values():
        pm[...], pc[...] = True, 5.0
        pm.flags.writeable = pc.flags.writeable = False
    fresh = MaskSet(masks.fingerprint, {s: (pm.copy(), pc.copy()) for s, (pm, pc) in parents.items()})
    want = velcro_ref.load_model(files / "m.h5").run(x, fresh)
    assert np.array_equal(model.run(x, views), want) and not np.array_equal(want, first)


def test_a_view_whose_base_another_model_froze_again_after_an_edit_is_worked_out_anew(files):
    """Model b froze an array, model a ran a view of it; the array was made writeable, edited and
    frozen again by b's next run, and a kept its plan: the view itself never changed."""
    a, b, fresh = (velcro_ref.load_model(files / "m.h5") for _ in range(3))
    masks = _own_masks(a)
    x, _ = velcro_ref.task_images(a, (5, 7, 9), "test", 3)
    b.run(x, masks)
    views = MaskSet(masks.fingerprint, {s: (m[...], c[...]) for s, (m, c) in masks.sites.items()})
    first = a.run(x, views)
    for mask, const in masks.sites.values():
        mask.flags.writeable = const.flags.writeable = True
        mask[...], const[...] = True, 5.0
    b.run(x, masks)  # frozen again
    want = fresh.run(x, MaskSet(masks.fingerprint, {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()}))
    assert np.array_equal(a.run(x, views), want) and not np.array_equal(want, first)


def test_a_mask_set_holding_a_view_is_left_as_it_came(files):
    """Its plan is not kept, yet the run froze the arrays of it that own their memory."""
    model = velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    sites = {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()}
    first = next(iter(sites))
    sites[first] = (sites[first][0][...], sites[first][1])  # one view among arrays of their own
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 2)
    model.run(x, MaskSet(masks.fingerprint, sites))
    assert all(a.flags.writeable for pair in sites.values() for a in pair) and model._masks is None


def test_a_refused_view_of_a_read_only_array_is_left_writeable(files):
    """The run made the view read-only and could not make it writeable again (its base is read-only)."""
    model = velcro_ref.load_model(files / "m.h5")
    site, shape = next(iter(model.sites.items()))
    base = np.ones(shape, bool)
    view = base[...]
    base.flags.writeable = False
    const = np.full(shape, np.nan, np.float32)
    with pytest.raises(velcro_ref.VelcroError, match="NaN or Inf"):
        model.run(np.zeros((1, *model.input_shape), np.float32), MaskSet(model.fingerprint, {site: (view, const)}))
    assert view.flags.writeable and const.flags.writeable


def test_a_kept_plan_is_worked_out_anew_for_an_array_recast_or_restrided_in_place(files):
    """NumPy lets a read-only array's dtype ('>f4' for float32 constants) and strides (a square
    mask transposed) be set in place; the kept plan ran on."""
    model, fresh = velcro_ref.load_model(files / "m.h5"), velcro_ref.load_model(files / "m.h5")
    masks = _own_masks(model)
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 3)
    site, (mask, const) = next((s, p) for s, p in masks.sites.items() if p[0].shape[-1] == p[0].shape[-2])
    const[...] = 1.0  # read byte-swapped: 4.6e-41, finite
    first = model.run(x, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting strides is deprecated in NumPy 2.4
        const.dtype = const.dtype.newbyteorder(">")
        mask.strides = (*mask.strides[:-2], mask.strides[-1], mask.strides[-2])
    copies = {s: (np.array(m), np.array(c, np.float32)) for s, (m, c) in masks.sites.items()}
    want = fresh.run(x, MaskSet(masks.fingerprint, copies))
    assert np.array_equal(model.run(x, masks), want) and not np.array_equal(want, first)


@pytest.mark.parametrize("source", ["uniform", "channel", "budget", "file"])
def test_a_mask_set_of_arrays_of_their_own_keeps_its_plan_from_run_to_run(files, tmp_path, source):
    """Masks read from a file were views of the read's buffer, and every run worked their plan out
    anew (2 - 2.5x the masked run's time at batch 1)."""
    model = velcro_ref.load_model(files / "m.h5")
    x, _ = velcro_ref.task_images(model, velcro_ref.task_classes(task="footwear"), "train", 32)
    stats = velcro_ref.profile(model, x, batch=16)
    policy = "uniform" if source == "file" else source
    masks = velcro_ref.compress(stats, 0.5, policy=policy, model=model if policy == "budget" else None)
    if source == "file":
        velcro_ref.save_masks(masks, tmp_path / "m.masks.h5")
        masks = velcro_ref.load_masks(tmp_path / "m.masks.h5", model)
    y = model.run(x[:2], masks)
    plan = model._masks
    assert plan is not None and np.array_equal(model.run(x[:2], masks), y) and model._masks is plan


def test_masks_a_run_refuses_are_left_writeable_without_a_warning(files):
    model = velcro_ref.load_model(files / "m.h5")
    site, shape = next(iter(model.sites.items()))
    mask, const = np.ones(shape, bool), np.full(shape, 1e300)  # beyond float32
    masks = MaskSet(model.fingerprint, {site: (mask, const)})
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(velcro_ref.VelcroError, match="NaN or Inf"):
            model.run(x, masks)
    assert mask.flags.writeable and const.flags.writeable


def test_a_refused_mask_set_of_views_of_one_another_is_left_writeable(files):
    """One site's mask a view of a later site's: making them writeable again in their order raised
    NumPy's ValueError (a view's base was still read-only) in place of the one-line refusal."""
    model = velcro_ref.load_model(files / "m.h5")
    by_shape = collections.defaultdict(list)
    for site, shape in model.sites.items():
        by_shape[tuple(shape)].append(site)
    a, b = next(v for v in by_shape.values() if len(v) >= 2)[:2]
    mb = np.zeros(model.sites[b], bool)
    ca, cb = np.zeros(model.sites[a], np.float32), np.zeros(model.sites[b], np.float32)
    mb.flat[0], cb.flat[0] = True, np.nan
    masks = MaskSet(model.fingerprint, {a: (mb[...], ca), b: (mb, cb)})
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 1)
    with pytest.raises(velcro_ref.VelcroError, match="NaN or Inf"):
        model.run(x, masks)
    assert all(arr.flags.writeable for pair in masks.sites.values() for arr in pair)


def test_one_class_may_be_given_as_an_integer(files, tmp_path):
    """task_images(model, 5) raised a TypeError (an int is not iterable); it is the one class 5."""
    model = velcro_ref.load_model(files / "m.h5")
    _, y = velcro_ref.task_images(model, 5, "test", 7)
    assert y.tolist() == [5] * 7
    with pytest.raises(velcro_ref.VelcroError, match="out of range"):
        velcro_ref.task_images(model, 10, "test", 5)
    for bad in (True, 5.0, None, np.array(5)):  # a bool is no class; the others raised a TypeError
        with pytest.raises(velcro_ref.VelcroError):
            velcro_ref.task_images(model, bad, "test", 5)
    x, y = velcro_ref.task_images(model, 5, "test", 7)
    assert velcro_ref.evaluate(model, x, y, 5)["classes"] == [5]
    assert velcro_ref.task_classes(classes=5) == (5,) == velcro_ref.task_classes(classes=np.int64(5))
    for bad in (True, 5.0):  # a TypeError from task_classes (and so sweep and locality)
        with pytest.raises(velcro_ref.VelcroError):
            velcro_ref.task_classes(classes=bad)
    for bad in (b"\x05", bytearray(b"\x05"), memoryview(b"\x05"), {5: 1}):  # integers, but no class lists: were class 5
        with pytest.raises(velcro_ref.VelcroError, match="classes expect a class"):
            velcro_ref.task_classes(classes=bad)
        with pytest.raises(velcro_ref.VelcroError, match="classes expect a class"):
            velcro_ref.task_images(model, bad, "test", 5)
        with pytest.raises(velcro_ref.VelcroError, match="expect a 1-D sequence of class indices, found"):
            velcro_ref.evaluate(model, x, y, bad)
        with pytest.raises(velcro_ref.VelcroError, match="expect a 1-D sequence of class indices, found"):
            velcro_ref.profile(model, x[:2], classes=bad)
    assert velcro_ref.evaluate(model, x, y, {9: 0, 5: 0, 7: 0}.keys())["classes"] == [5, 7, 9]  # a set, as task_classes
    for bad in (bytearray(bytes(y.astype(np.uint8))), set(y.tolist())):  # labels: one integer per image, in order
        with pytest.raises(velcro_ref.VelcroError, match="labels expect a 1-D sequence of class indices, found"):
            velcro_ref.evaluate(model, x, bad, (5, 7, 9))
    typed = memoryview(y.astype(np.int64))  # a typed memoryview is an array of labels, not bytes
    assert velcro_ref.evaluate(model, x, typed, (5, 7, 9)) == velcro_ref.evaluate(model, x, y, (5, 7, 9))
    with pytest.raises(velcro_ref.VelcroError, match="labels expect a 1-D sequence of class indices"):
        velcro_ref.golden(model, x[:3], tmp_path / "g.h5", labels=[[5], [7, 9], 9])  # was a NumPy ValueError
    assert velcro_ref.profile(model, x[:2], classes=5).classes == (5,)  # one class, as evaluate takes it
    for bad in ([5, True], [5, np.array(True)], collections.deque([5, True]), [[5], [7, 9]], [[5], [7, [9]]]):
        with pytest.raises(velcro_ref.VelcroError, match="expect"):
            velcro_ref.evaluate(model, x, y, bad)
        with pytest.raises(velcro_ref.VelcroError, match="expect"):
            velcro_ref.profile(model, x[:2], classes=bad)
    with pytest.raises(velcro_ref.VelcroError, match="task classes name class 10"):  # not "labels name"
        velcro_ref.evaluate(model, x, y, 10)
    assert velcro_ref.task_classes(classes={"sneaker", "ankle boot"}) == (7, 9)  # a set by index, as of ints
    assert velcro_ref.task_classes(classes=np.array(["sandal", "bag"])) == (5, 8)
    with pytest.raises(velcro_ref.VelcroError, match="duplicate classes: 5"):  # as "5,5" is refused
        velcro_ref.task_classes(classes=[5, 5])


def test_save_model_takes_a_loaded_model(files, tmp_path):
    """save_model(model, path) with a Model (as load_model returns it) raised an AttributeError."""
    model = velcro_ref.load_model(files / "m.h5")
    assert velcro_ref.save_model(model, tmp_path / "again.h5") == model.fingerprint
    assert velcro_ref.load_model(tmp_path / "again.h5").fingerprint == model.fingerprint


def test_evaluate_lists_a_set_of_classes_in_order(files):
    model = velcro_ref.load_model(files / "m.h5")
    x, y = velcro_ref.task_images(model, (5, 7, 9), "test", 12)
    assert velcro_ref.evaluate(model, x, y, {9, 5, 7})["classes"] == [5, 7, 9]


def test_a_mask_set_made_by_hand_is_saved_whole_with_its_model(files, tmp_path):
    """A MaskSet listing only some sites (complete=False) could only be written as it is, and the
    file was then refused when loaded with its model ("no masks for site(s) ..."), with no word of
    the fix; with the model, the sites it leaves out are written unmasked."""
    from velcro_ref.errors import MaskError
    from velcro_ref.masks import MaskSet

    model = velcro_ref.load_model(files / "m.h5")
    site, shape = next(iter(model.sites.items()))
    mask = np.zeros(shape, bool)
    mask.flat[::3] = True
    const = np.full(shape, 0.25, np.float32)
    partial = MaskSet(model.fingerprint, {site: (mask, const)})
    velcro_ref.save_masks(partial, tmp_path / "part.masks.h5")
    with pytest.raises(MaskError, match=r"no masks for site.*save_masks\(masks, path, model=model\)"):
        velcro_ref.load_masks(tmp_path / "part.masks.h5", model)
    velcro_ref.save_masks(partial, tmp_path / "m.masks.h5", model=model)
    back = velcro_ref.load_masks(tmp_path / "m.masks.h5", model)
    assert set(back.sites) == set(model.sites)
    assert np.array_equal(back.sites[site][0], mask) and np.array_equal(back.sites[site][1], const)
    assert not any(m.any() for s, (m, _) in back.sites.items() if s != site)
    x, _ = velcro_ref.task_images(model, (5, 7, 9), "test", 6)
    assert np.array_equal(model.run(x, masks=back), model.run(x, masks=partial))


def test_images_of_the_other_byte_order_give_what_native_ones_give(files):
    """A float32 batch written on a big-endian machine ('>f4') was refused ("expects dtype float32,
    found >f4"); the commands read such .npy files as native values, the API takes them too."""
    model = velcro_ref.load_model(files / "m.h5")
    x, y = velcro_ref.task_images(model, (5, 7, 9), "test", 6)
    swapped = x.astype(">f4")
    assert not swapped.dtype.isnative and np.array_equal(swapped, x)
    assert np.array_equal(model.run(swapped), model.run(x))
    assert velcro_ref.evaluate(model, swapped, y, (5, 7, 9)) == velcro_ref.evaluate(model, x, y, (5, 7, 9))
    a, b = velcro_ref.profile(model, swapped, batch=4), velcro_ref.profile(model, x, batch=4)
    assert a.sites.keys() == b.sites.keys()
    stats_fields = ("count", "shift", "shifted_mean", "m2", "min", "max")
    for site in a.sites:
        assert all(np.array_equal(getattr(a.sites[site], f), getattr(b.sites[site], f)) for f in stats_fields)
    with pytest.raises(velcro_ref.VelcroError, match="expects dtype float32, found >f8"):
        model.run(x.astype(">f8"))


def test_evaluate_refuses_masks_of_another_model_before_any_run(files, monkeypatch):
    """evaluate refuses a MaskSet of another model before any run (the refusal came after the whole
    dense pass, 5 batches of 1000 images)."""
    from velcro_ref import evaluation

    model = velcro_ref.load_model(files / "m.h5")
    other = Model(zoo_graph("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.125, seed=7))
    masks = MaskSet(
        other.fingerprint, {s: (np.zeros(sh, bool), np.zeros(sh, np.float32)) for s, sh in other.sites.items()}
    )
    x, y = velcro_ref.task_images(model, (5, 7, 9), "test", 4)

    def no_run(*args, **kwargs):
        raise AssertionError("a run before the masks were checked")

    monkeypatch.setattr(evaluation, "evaluate", no_run)
    with pytest.raises(velcro_ref.VelcroError, match="masks"):
        velcro_ref.evaluate(model, x, y, (5, 7, 9), masks=masks)
