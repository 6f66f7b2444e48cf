"""The budget policy: variance-per-MAC order, the global MAC budget, exclusions, determinism."""

import numpy as np
import pytest
from robust_util import zoo_graph

from velcro_ref.data import task_images
from velcro_ref.engine import Model
from velcro_ref.evaluation import evaluate
from velcro_ref.experiments import profile_task, sweep
from velcro_ref.policies import make_masks
from velcro_ref.stats import SiteStats, Stats, load_stats, save_stats


def _site(variance):
    """One-image-count stats whose variance is `variance` exactly (m2 / count with count 1), means 0."""
    v = np.asarray(variance, np.float64)
    z = np.zeros_like(v)
    return SiteStats(np.ones_like(v), z.copy(), z.copy(), v, z.copy(), z.copy())


def test_budget_masks_lowest_variance_share_per_mac_first():
    # deep: normalised variances [0, 0, 0, 4] (mean variance 4) at 4 MACs an element -> [0, 0, 0, 1] per MAC;
    # cheap: [0.5, 0.5, 1.5, 1.5] (mean 1) at 1 MAC -> the same per MAC. Budget 0.7 x 20 MACs = 14:
    # the three free deep elements (12), then the two 0.5 cheap ones (14); the last deep element
    # (1.0 per MAC, 4 MACs) no longer fits. Scored by standard deviation per MAC instead, that deep
    # element (2 / 4 = 0.5) would come before the cheap ones (0.71).
    stats = Stats("fp", {"deep": _site([0, 0, 0, 16]), "cheap": _site([0.5, 0.5, 1.5, 1.5])})
    masks = make_masks("budget", stats, 0.7, {"deep": 4, "cheap": 1})
    assert masks.sites["deep"][0].tolist() == [True, True, True, False]
    assert masks.sites["cheap"][0].tolist() == [True, True, False, False]
    assert masks.policy["site_ratios"] == {"deep": 0.75, "cheap": 0.5}


def test_budget_scores_divide_by_the_mean_variance_of_the_site():
    """An element's score is its variance over its site's mean variance (not the median or the max)."""
    # a: variances [1, 1, 4, 10], mean 4 (median 2.5, max 10) -> scores [0.25, 0.25, 1, 2.5];
    # b: [2, 2, 2, 2], mean 2 -> [1, 1, 1, 1]. One MAC each, budget 0.5 x 8 = 4 elements: a0, a1,
    # then the scores of 1 in site order and flat index: a2, b0
    stats = Stats("fp", {"a": _site([1, 1, 4, 10]), "b": _site([2, 2, 2, 2])})
    masks = make_masks("budget", stats, 0.5, {"a": 1, "b": 1})
    assert masks.sites["a"][0].tolist() == [True, True, True, False]
    assert masks.sites["b"][0].tolist() == [True, False, False, False]


def test_channel_masks_take_the_channel_of_the_lowest_mean_variance():
    """Channels of variances [0, 12], [3, 7], [6, 6]: means 6, 5, 6, minima 0, 3, 6, maxima 12, 7, 6;
    at R = 0.34 (1 of 3 channels) the channel of the lowest mean variance, channel 1, is masked."""
    stats = Stats("fp", {"c": _site(np.array([0, 12, 3, 7, 6, 6], float).reshape(3, 1, 2))})
    mask = make_masks("channel", stats, 0.34).sites["c"][0]
    assert mask.reshape(3, -1).all(axis=1).tolist() == [False, True, False] and mask.sum() == 2


def test_budget_ties_between_sites_follow_the_model_order_not_the_statistics_order():
    # every variance 0: all four elements score 0; the budget (0.5 x 4 MACs) takes two of them,
    # those of the model's first site, whichever order the statistics list the sites in
    costs = {"a": 1, "b": 1}
    for order in (("a", "b"), ("b", "a")):
        stats = Stats("fp", {s: _site([0.0, 0.0]) for s in order})
        masks = make_masks("budget", stats, 0.5, costs)
        assert masks.sites["a"][0].tolist() == [True, True], order
        assert masks.sites["b"][0].tolist() == [False, False], order


def test_channel_and_budget_policies_count_a_ratio_as_written():
    """0.29 of 100 channels is 29, and 0.29 of a budget of 100 MACs takes 29 one-MAC elements (the
    float product 0.29 * 100 is 28.999999999999996)."""
    stats = Stats("fp", {"c": _site(np.arange(100.0).reshape(100, 1, 1)), "e": _site(np.arange(100.0))})
    assert make_masks("channel", stats, 0.29).sites["c"][0].sum() == 29
    budget = make_masks("budget", Stats("fp", {"e": _site(np.arange(100.0))}), 0.29, {"e": 1})
    assert budget.sites["e"][0].sum() == 29


def test_channel_masks_record_the_share_of_channels_each_site_masks():
    # floor(R x C) channels of every 3-D site: 2 of 4 and 1 of 3 at R = 0.5; a 1-D site none
    stats = Stats(
        "fp",
        {
            "four": _site(np.arange(16.0).reshape(4, 2, 2)),
            "three": _site(np.arange(12.0).reshape(3, 2, 2)),
            "flat": _site([1.0, 2.0]),
        },
    )
    masks = make_masks("channel", stats, 0.5)
    assert masks.sites["four"][0][:, 0, 0].tolist() == [True, True, False, False]
    assert masks.policy["site_ratios"] == {"four": 0.5, "three": 1 / 3, "flat": 0.0}


@pytest.fixture(scope="module")
def small():
    model = Model(zoo_graph("resnet18", input_size=28, in_channels=1, num_classes=10, width=0.25, seed=4))
    return model, profile_task(model, (5, 7, 9), 200)


@pytest.mark.parametrize("ratio", [0.1, 0.35, 0.6, 0.9])
def test_budget_masks_skip_at_most_r_of_the_maskable_macs_as_the_kernels_count(small, ratio):
    model, stats = small
    costs = model.site_costs()
    masks = make_masks("budget", stats, ratio, costs)
    total = sum(costs[s] * st.mean.size for s, st in stats.sites.items())
    skipped = sum(costs[s] * int(m.sum()) for s, (m, _) in masks.sites.items())
    assert ratio * total - max(costs.values()) < skipped <= ratio * total
    x, y = task_images(model, (5, 7, 9), "test", 8)
    dense = evaluate(model, x, y, (5, 7, 9))
    masked = evaluate(model, x, y, (5, 7, 9), masks=masks)
    assert dense["macs"] - masked["macs"] == pytest.approx(skipped)


def test_budget_masks_leave_excluded_sites_alone(small):
    model, stats = small
    keep = list(stats.sites)[:3]
    masks = make_masks("budget", stats, 0.5, model.site_costs(), exclude=keep)
    assert all(not masks.sites[s][0].any() for s in keep)
    assert sum(int(m.sum()) for m, _ in masks.sites.values()) > 0


def test_budget_masks_come_from_the_statistics_alone(small):
    # the same stats give the same masks, and sweeps on two disjoint evaluation sets execute the
    # same MACs at every ratio: the evaluation images take no part in the choice
    model, stats = small
    a = make_masks("budget", stats, 0.4, model.site_costs())
    b = make_masks("budget", stats, 0.4, model.site_costs())
    for s in a.sites:
        np.testing.assert_array_equal(a.sites[s][0], b.sites[s][0])
        np.testing.assert_array_equal(a.sites[s][1], b.sites[s][1])
    x, y = task_images(model, (5, 7, 9), "test", 40)
    ratios = [0.0, 0.3, 0.6]
    first = sweep(model, stats, x[:20], y[:20], (5, 7, 9), ratios, "budget")
    second = sweep(model, stats, x[20:], y[20:], (5, 7, 9), ratios, "budget")
    assert [p["macs"] for p in first["points"]] == [p["macs"] for p in second["points"]]


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.05])
def test_budget_masks_from_a_stats_file_equal_those_from_the_same_statistics_in_memory(small, tmp_path, ratio):
    # a stats file lists its sites by name; the masks must not depend on it (zero variances tie)
    model, stats = small
    path = tmp_path / "s.h5"
    save_stats(stats, path)
    loaded = load_stats(path)
    assert list(loaded.sites) != list(stats.sites)  # the case that matters: another order
    a = make_masks("budget", stats, ratio, model.site_costs())
    b = make_masks("budget", loaded, ratio, model.site_costs())
    assert a.sites.keys() == b.sites.keys()
    for s in a.sites:
        np.testing.assert_array_equal(a.sites[s][0], b.sites[s][0], err_msg=s)


@pytest.mark.parametrize("policy", ["uniform", "budget"])  # channel masks no site after a linear layer
def test_statistics_that_overflowed_make_no_masks(policy):
    """A profile in memory (the CLI writes none) whose site overflowed float32 in one image: the budget
    policy's scale came out NaN and it masked the two highest-variance elements, with no error."""
    import velcro_ref
    from velcro_ref.errors import StatsError
    from velcro_ref.graph import INPUT, Graph, Node

    n = 8
    nodes = (
        Node("f", "flatten", (INPUT,)),
        Node("l", "linear", ("f",), {}, {"weight": "w"}),
        Node("r", "relu", ("l",)),
    )
    model = Model(Graph(nodes, (1, 1, n), "r", {"w": (np.eye(n) * 4).astype(np.float32)}, {}))
    x = np.zeros((6, 1, 1, n), np.float32)
    x[:, 0, 0, :3] = np.arange(6)[:, None]  # variance 46.67; elements 3 - 6 constant
    x[:, 0, 0, 7] = [1, 2, 3e38, 1, 2, 1]  # 4 * 3e38 overflows: inf, then a NaN variance
    stats = velcro_ref.profile(model, x)
    assert np.isnan(stats.sites["r"].variance[7])
    with pytest.raises(StatsError, match="site 'r': the statistics are NaN or infinite at 1 element"):
        velcro_ref.compress(stats, 0.25, policy=policy, model=model)
    with pytest.raises(StatsError, match="NaN or infinite"):
        make_masks(policy, stats, 0.25, model.site_costs())


def test_statistics_that_overflowed_at_an_excluded_or_unmasked_site_still_make_masks():
    """Only the site that overflowed is refused: excluded, or given no ratio, it is not masked, and
    the other sites' masks are made as before."""
    import velcro_ref
    from velcro_ref.graph import INPUT, Graph, Node

    n = 8
    w = (np.eye(n) * 4).astype(np.float32)
    nodes = (
        Node("f", "flatten", (INPUT,)),
        Node("l", "linear", ("f",), {}, {"weight": "w"}),
        Node("r", "relu", ("l",)),
        Node("l2", "linear", ("r",), {}, {"weight": "w2"}),
        Node("r2", "relu", ("l2",)),
    )
    w2 = np.eye(n, dtype=np.float32) * np.float32(3e38)  # r2 overflows where r is above 1
    model = Model(Graph(nodes, (1, 1, n), "r2", {"w": w, "w2": w2}, {}))
    x = np.zeros((6, 1, 1, n), np.float32)
    x[:, 0, 0, :3] = np.arange(6)[:, None]  # r: variance 46.67 at 0 - 2, constant at 3 - 7
    stats = velcro_ref.profile(model, x)
    assert np.isfinite(stats.sites["r"].variance).all() and not np.isfinite(stats.sites["r2"].variance).all()
    for masks in (
        velcro_ref.compress(stats, 0.25, exclude="r2"),
        velcro_ref.compress(stats, ratios={"r": 0.25}),
        velcro_ref.compress(stats, 0.25, policy="budget", model=model, exclude="r2"),
    ):
        assert masks.sites["r"][0].tolist() == [False] * 3 + [True] * 2 + [False] * 3
        assert not masks.sites["r2"][0].any()


def test_channel_masks_of_statistics_that_overflowed_are_refused():
    """A channel's mean variance NaN sorts last, so the policy would mask the other channel whatever its
    variance: refused where a channel is masked; at a ratio that masks none the masks are made."""
    import velcro_ref
    from velcro_ref.errors import StatsError
    from velcro_ref.graph import INPUT, Graph, Node

    w = (np.eye(2) * 4).astype(np.float32).reshape(2, 2, 1, 1)
    nodes = (
        Node("c", "conv2d", (INPUT,), {"out_channels": 2, "kernel": [1, 1]}, {"weight": "w"}),
        Node("r", "relu", ("c",)),
    )
    model = Model(Graph(nodes, (2, 1, 2), "r", {"w": w}, {}))
    x = np.zeros((6, 2, 1, 2), np.float32)
    x[:, 0, 0, :] = np.arange(6)[:, None]  # channel 0 varies
    x[2, 1, 0, 0] = 3e38  # channel 1 overflows in one image
    stats = velcro_ref.profile(model, x)
    with pytest.raises(StatsError, match="site 'r': the statistics are NaN or infinite"):
        velcro_ref.compress(stats, 0.5, policy="channel")
    assert not velcro_ref.compress(stats, 0.4, policy="channel").sites["r"][0].any()  # no channel masked: taken


def test_budget_masks_order_by_variance_per_mac_not_variance_times_macs():
    """Scored by normalised variance times MACs, the cheap site's elements came first: a's two
    elements (normalised variance 1, 10 MACs each: 0.1 per MAC) come before b's (0.5 and 1.5 per
    MAC at 1 MAC). Budget 0.5 x 22 MACs = 11: a0 (10 MACs); a1 would pass it, and the budget takes
    a prefix of the order, so b's elements stay."""
    stats = Stats("fp", {"a": _site([1.0, 1.0]), "b": _site([0.5, 1.5])})
    masks = make_masks("budget", stats, 0.5, {"a": 10, "b": 1})
    assert masks.sites["a"][0].tolist() == [True, False]
    assert masks.sites["b"][0].tolist() == [False, False]


def test_channel_masks_leave_excluded_sites_alone():
    """The channel policy masked a site named in `exclude` like any other."""
    v = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)
    stats = Stats("fp", {"c": _site(v), "d": _site(v)})
    masks = make_masks("channel", stats, 0.5, exclude=("c",))
    assert not masks.sites["c"][0].any()
    assert masks.sites["d"][0].tolist() == [[[True] * 3] * 3, [[False] * 3] * 3]
