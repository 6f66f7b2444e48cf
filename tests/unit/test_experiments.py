"""Sweeps, ratio grids and the locality summary on real Fashion-MNIST images."""

import math

import numpy as np
import pytest
from robust_util import overflowing_model, zoo_graph

from velcro_ref.data import task_images
from velcro_ref.engine import Model
from velcro_ref.errors import UsageError
from velcro_ref.experiments import locality, parse_ratios, profile_task, sweep


def test_parse_ratios():
    assert parse_ratios("0:0.2:0.05") == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert parse_ratios("0.5,0.1") == [0.1, 0.5]
    for text in ("-0,0.5", "-1e-11:0.5:0.1"):  # -0 is 0 ("Ratios -0..0.5" in the demo's text)
        assert [math.copysign(1, r) for r in parse_ratios(text)][0] == 1.0, text
    for bad in ("0:1.5:0.5", "a,b", "0.5:0.1:0.1", "0:1:0"):
        with pytest.raises(UsageError):
            parse_ratios(bad)


@pytest.fixture(scope="module")
def small_model():
    return Model(zoo_graph("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.25, seed=4))


def test_sweep_csr_is_zero_at_ratio_zero_and_rises_with_ratio(small_model):
    classes = (5, 7, 9)
    stats = profile_task(small_model, classes, 300)
    x, y = task_images(small_model, classes, "test", 300)
    res = sweep(small_model, stats, x, y, classes, [0.0, 0.2, 0.4, 0.6])
    csrs = [p["csr"] for p in res["points"]]
    assert csrs[0] == 0.0
    assert all(b > a for a, b in zip(csrs, csrs[1:], strict=False))
    assert res["n_eval_images"] == 300
    assert res["points"][0]["accuracy"] == res["baseline_accuracy"]
    assert res["best_csr_no_loss"]["accuracy"] >= res["baseline_accuracy"]
    # accuracies are fractions counted in whole images
    for p in res["points"]:
        assert abs(p["accuracy"] * 300 - round(p["accuracy"] * 300)) < 1e-9


def test_locality_of_a_set_with_itself_has_ratio_one(small_model):
    stats = profile_task(small_model, (1, 3), 200)
    res = locality(stats, stats)
    assert res["median_variance_ratio"] == pytest.approx(1.0)
    assert res["share_under_threshold_task"] == res["share_under_threshold_general"]


def test_locality_refuses_statistics_of_two_models_and_a_threshold_outside_its_range(small_model, monkeypatch):
    """Task statistics of one model and general ones of another (same sites) gave a median ratio with
    no error, and other sites a KeyError; the API took a threshold of 0, -1 or NaN (0.0 shares)."""
    from velcro_ref import api, experiments
    from velcro_ref.errors import StatsError

    other = Model(zoo_graph("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.25, seed=5))
    third = Model(zoo_graph("mobilenet_v2", input_size=28, in_channels=1, num_classes=10, width=0.25, seed=4))
    x, _ = task_images(small_model, (1, 3), "train", 20)
    stats = profile_task(small_model, (1, 3), 20, x=x)
    same_sites, other_sites = profile_task(other, (1, 3), 20, x=x), profile_task(third, (1, 3), 20, x=x)
    assert list(same_sites.sites) == list(stats.sites) != list(other_sites.sites)
    for general in (same_sites, other_sites):
        with pytest.raises(
            StatsError,
            match=f"cannot compare stats of model {stats.fingerprint} with stats of model {general.fingerprint}",
        ):
            locality(stats, general)
    for threshold in (0, -1, float("nan"), 1001, True, "0.1"):
        with pytest.raises(UsageError, match=r"threshold must be a number in \(0, 1000\]"):
            locality(stats, stats, threshold)
    assert locality(stats, stats, 1000)["threshold"] == 1000  # the range's end is in it
    assert type(locality(stats, stats, np.float32(0.5))["threshold"]) is float  # JSON takes it

    def ran(*a, **k):
        raise AssertionError("the profile ran before the check")

    monkeypatch.setattr(experiments, "profile_task", ran)
    with pytest.raises(UsageError, match="threshold must be"):
        api.locality(small_model, classes=(1, 3), threshold=0)
    with pytest.raises(UsageError, match="unknown policy 'nope'; choose from uniform, budget, channel"):
        api.sweep(small_model, classes=(1, 3), policy="nope")


def test_task_images_are_of_the_task_classes(small_model):
    x, y = task_images(small_model, (0, 8), "test")
    assert x.shape == (2000, 1, 28, 28) and x.dtype == np.float32
    assert set(np.unique(y)) == {0, 8}


def test_sweep_points_count_the_images_whose_scores_overflowed_and_the_command_warns(tmp_path, monkeypatch, capsys):
    """A sweep's accuracy at a ratio could come from +inf scores (float32 overflowed on its test images,
    though not on its profile images) with no word; each point counts them and `velcro sweep` warns."""
    from velcro_ref import api, cli
    from velcro_ref.stats import collect_stats

    model, x = overflowing_model()  # 3 images overflow, 4 do not
    small = x[3:]
    res = sweep(model, collect_stats(model, small), x, np.zeros(7, np.int64), (0, 1), [0.0, 0.5])
    # dense (at 0.5 the masks' constants may replace the +inf score): the images whose scores are inf
    assert res["points"][0]["inf_images"] == int(np.isinf(model.run(x)).any(axis=1).sum()) == 3
    monkeypatch.setattr(api, "sweep", lambda *a, **k: {**res, "n_eval_images": 7})
    model_file = tmp_path / "m.h5"
    from velcro_ref.model_io import save_model

    save_model(model.graph, model_file)
    assert cli.main(["sweep", str(model_file), "--classes", "0,1", "--ratios", "0,0.5"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    listed = ", ".join(f"{p['ratio']:g}" for p in res["points"] if p["inf_images"])
    assert line.startswith(f"warning: at ratio(s) {listed} some images have an infinite score"), line


def test_a_model_without_macs_or_sites_is_refused_in_one_line_where_a_figure_needs_them():
    """eval --masks and sweep on a model with no conv or linear layer ended in a ZeroDivisionError
    (the CSR divides by the dense MACs, 0); locality on a model without sites in a ValueError."""
    from velcro_ref import api
    from velcro_ref.errors import ModelError, StatsError
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.stats import collect_stats

    model = Model(Graph((Node("f", "flatten", (INPUT,)), Node("r", "relu", ("f",))), (1, 4, 4), "r", {}))
    x = np.random.default_rng(0).standard_normal((12, 1, 4, 4)).astype(np.float32)
    y = np.arange(12) % 16
    masks = api.compress(collect_stats(model, x), 0.5)
    assert api.evaluate(model, x, y, (0, 1))["dense"]["macs"] == 0  # dense alone: no CSR, no refusal
    with pytest.raises(ModelError, match="executes no MAC"):
        api.evaluate(model, x, y, (0, 1), masks=masks)
    with pytest.raises(ModelError, match="executes no MAC"):
        sweep(model, collect_stats(model, x), x, y, (0, 1), [0.0, 0.5])
    nodes = (Node("f", "flatten", (INPUT,)), Node("l", "linear", ("f",), {}, {"weight": "w"}))
    no_sites = Model(Graph(nodes, (1, 28, 28), "l", {"w": np.ones((10, 784), np.float32)}))
    with pytest.raises(StatsError, match="no activation site"):
        api.locality(no_sites, classes=(0, 1), samples=8)
    from velcro_ref.experiments import locality as compare

    empty = collect_stats(no_sites, np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(StatsError, match="no activation site"):  # the demo's path, no model at hand
        compare(empty, empty)


def test_a_ratios_file_that_cannot_be_read_is_bad_data_exit_1(small_model, tmp_path, capsys):
    """A missing --ratios TOML exited 2 (usage), where an unreadable input file is exit 1 (README)."""
    from velcro_ref import cli
    from velcro_ref.stats import collect_stats, save_stats

    x = np.random.default_rng(0).standard_normal((6, 1, 28, 28)).astype(np.float32)
    save_stats(collect_stats(small_model, x), tmp_path / "s.h5")
    args = ["compress", str(tmp_path / "s.h5"), "--ratios", str(tmp_path / "none.toml"), "-o", str(tmp_path / "k.h5")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot read ratios TOML" in err and err.count("\n") == 1, err
    (tmp_path / "bad.toml").write_text("default = 'x'")
    args[3] = str(tmp_path / "bad.toml")
    assert cli.main(args) == 2  # a file read whose content is a bad argument stays a usage error


def test_the_checks_for_macs_and_sites_come_before_the_runs_and_name_the_file(tmp_path, monkeypatch):
    """eval --masks ran its dense pass, and sweep its profile, before refusing a model without MACs;
    sweep ran a model without sites (compress and locality refuse it)."""
    from velcro_ref import api, evaluation, experiments
    from velcro_ref.engine import load_model
    from velcro_ref.errors import ModelError, StatsError
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.model_io import save_model
    from velcro_ref.stats import collect_stats

    save_model(
        Graph((Node("f", "flatten", (INPUT,)), Node("r", "relu", ("f",))), (1, 28, 28), "r", {}), tmp_path / "m.h5"
    )
    model = load_model(tmp_path / "m.h5")
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    masks = api.compress(collect_stats(model, x), 0.5)

    def ran(*a, **k):
        raise AssertionError("the work ran before the check")

    monkeypatch.setattr(evaluation, "evaluate", ran)
    monkeypatch.setattr(experiments, "profile_task", ran)
    with pytest.raises(ModelError, match=f"{tmp_path / 'm.h5'}: the model executes no MAC"):
        api.evaluate(model, x, np.zeros(4, np.int64), (0, 1), masks=masks)
    with pytest.raises(ModelError, match="executes no MAC"):
        api.sweep(model, classes=(0, 1), ratios=[0.0, 0.5])
    nodes = (Node("f", "flatten", (INPUT,)), Node("l", "linear", ("f",), {}, {"weight": "w"}))
    no_sites = Model(Graph(nodes, (1, 28, 28), "l", {"w": np.ones((10, 784), np.float32)}))
    with pytest.raises(StatsError, match="no activation site"):
        api.sweep(no_sites, classes=(0, 1), ratios=[0.0, 0.5])


def test_a_task_class_past_the_scores_is_named_as_a_task_class(small_model):
    """With labels drawn from the task, the refusal named the labels ("labels name class 12")."""
    from velcro_ref import api
    from velcro_ref.errors import InputError

    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(InputError, match="task classes name class 12"):
        api.evaluate(small_model, x, np.array([5, 12]), (5, 12))


def test_locality_refuses_site_variances_of_a_network_that_overflowed_and_takes_an_overflowed_output(tmp_path, capsys):
    """fc1's first output is 1e38 x pixel (1, 12), fc2 takes it 4 times: +inf on the images bright
    there (some of the first 200 of the ten classes), on no sandal or sneaker of the first 200 (at most
    1/255 there). `velcro locality` printed a median from the NaN variance of site a2 with exit 0.
    With fc1's weight 1 instead, only the scores overflow (fc3 = 1e38 x the sum of a2): the sites'
    variances are finite and the locality is computed, as before."""
    from velcro_ref import cli
    from velcro_ref.errors import StatsError
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.model_io import save_model

    def model(big, w3):
        w1 = np.zeros((8, 784), np.float32)
        w1[0, 1 * 28 + 12] = big
        w1[1:] = np.random.default_rng(0).normal(0.0, 0.05, (7, 784))
        w2 = np.eye(8, dtype=np.float32)
        w2[0, 0] = 4.0
        nodes = (
            Node("f", "flatten", (INPUT,)),
            Node("fc1", "linear", ("f",), {}, {"weight": "w1"}),
            Node("a1", "relu", ("fc1",)),
            Node("fc2", "linear", ("a1",), {}, {"weight": "w2"}),
            Node("a2", "relu", ("fc2",)),
            Node("fc3", "linear", ("a2",), {}, {"weight": "w3"}),
        )
        meta = {"preprocessing": {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}}  # pixels 0 .. 1
        params = {"w1": w1, "w2": w2, "w3": np.full((10, 8), w3, np.float32)}
        return Model(Graph(nodes, (1, 28, 28), "fc3", params, meta))

    sites_overflow = model(1e38, 1.0)
    x_task, _ = task_images(sites_overflow, (5, 7), "train", 200)
    x_all, _ = task_images(sites_overflow, tuple(range(10)), "train", 200)
    assert float(x_task[:, 0, 1, 12].max()) * 4e38 < float(np.finfo(np.float32).max)  # the task's images stay finite
    assert np.isinf(sites_overflow.run(x_all)).any()  # some of the general ones do not
    task, general = profile_task(sites_overflow, (5, 7), 200), profile_task(sites_overflow, tuple(range(10)), 200)
    with pytest.raises(StatsError, match="site 'a2': the statistics are NaN .* on the images of every class"):
        locality(task, general)
    save_model(sites_overflow.graph, tmp_path / "m.h5")
    code = cli.main(["locality", str(tmp_path / "m.h5"), "--classes", "sandal,sneaker", "--samples", "200"])
    out, err = capsys.readouterr()
    assert code == 1 and "median" not in out and err.startswith("error: ") and len(err.splitlines()) == 1
    assert "site 'a2'" in err and "no locality computed" in err

    scores_overflow = model(1.0, 1e38)
    assert np.isinf(scores_overflow.run(x_all)).any()
    res = locality(profile_task(scores_overflow, (5, 7), 200), profile_task(scores_overflow, tuple(range(10)), 200))
    assert np.isfinite(res["median_variance_ratio"]) and np.isfinite(res["general_variances"]).all()


def test_a_ratio_range_keeps_its_stop_where_the_steps_do_not_divide_it_exactly():
    # (0.3 - 0) / 0.1 is 2.9999999999999996 in binary: the stop is still a point
    assert parse_ratios("0:0.3:0.1") == [0.0, 0.1, 0.2, 0.3]
    assert parse_ratios("0:0.7:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert parse_ratios("0.1:0.7:0.3") == [0.1, 0.4, 0.7]


def test_the_largest_accuracy_gain_goes_to_the_lowest_ratio_and_counts_whole_images():
    """docs/demo.md: equal gains go to the lower ratio; the gain in images is the accuracy difference
    times the images, rounded (407/500 against 400/500 is 7 images, 6.99999... in binary)."""
    from velcro_ref.experiments import sweep_summary

    def point(correct, macs):
        return {"accuracy": correct / 500, "accuracy_task": correct / 500, "macs": macs, "inf_images": 0}

    dense = point(400, 1000)
    flat = sweep_summary(dense, [0.0, 0.05, 0.1], [point(400, 1000), point(400, 900), point(400, 800)], "uniform",
                         (5, 7, 9), 0.01, 500, 100)  # fmt: skip
    assert flat["best_accuracy_gain"]["ratio"] == 0.0 and flat["best_accuracy_gain"]["gain_images"] == 0
    up = sweep_summary(dense, [0.1, 0.3, 0.5], [point(399, 900), point(407, 700), point(407, 500)], "uniform",
                       (5, 7, 9), 0.01, 500, 100)  # fmt: skip
    assert up["best_accuracy_gain"]["ratio"] == 0.3
    assert up["best_accuracy_gain"]["gain_images"] == 7


def test_locality_counts_elements_constant_on_the_task_in_its_median_ratio():
    """The median variance ratio is over the elements whose general variance is not zero, those
    with no task variance included (docs/demo.md): ratios 0, 1, 2, 3 have the median 1.5."""
    from velcro_ref.stats import SiteStats, Stats

    def stats(variances):
        site = SiteStats.empty((4,))
        site.count[:] = 10
        site.m2[:] = 10 * np.asarray(variances, np.float64)
        return Stats("f" * 16, {"s": site}, (), 10)

    res = locality(stats([0.0, 1.0, 2.0, 3.0]), stats([1.0, 1.0, 1.0, 1.0]))
    assert res["median_variance_ratio"] == 1.5
    assert res["share_zero_variance_task"] == 0.25


def test_images_with_several_infinite_scores_count_once():
    """inf_images counts images, not infinite scores: two overflowing scores of one image are one."""
    from velcro_ref.evaluation import evaluate
    from velcro_ref.graph import INPUT, Graph, Node

    w = np.array([[3e38] * 4, [3e38] * 4, [-1] * 4], np.float32)
    nodes = (Node("f", "flatten", (INPUT,)), Node("l", "linear", ("f",), {}, {"weight": "w"}))
    model = Model(Graph(nodes, (1, 2, 2), "l", {"w": w}))
    x = np.concatenate([np.ones((1, 1, 2, 2), np.float32), np.full((2, 1, 2, 2), 1e-38, np.float32)])
    assert int(np.isinf(model.run(x)).sum()) == 2  # image 0's two scores, none of the others
    assert evaluate(model, x, np.array([0, 2, 2]), (0, 2))["inf_images"] == 1
