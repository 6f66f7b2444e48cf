"""The paper's uniform policy, mask files and their refusal for another model."""

import numpy as np
import pytest
from robust_util import zoo_graph

from velcro_ref.engine import Model
from velcro_ref.errors import MaskError, StatsError, UsageError
from velcro_ref.masks import build_masks, load_masks, lowest_variance, ratio_count, save_masks, uniform_ratios
from velcro_ref.stats import SiteStats, Stats, collect_stats, load_stats, save_stats


def test_lowest_variance_breaks_ties_by_flat_index():
    var = np.array([[0.5, 0.1, 0.1], [0.1, 0.9, 0.0]])
    # sorted: 0.0 (idx 5), then the 0.1 ties in flat order 1, 2, 3
    assert np.flatnonzero(lowest_variance(var, 3)).tolist() == [1, 2, 5]
    assert np.flatnonzero(lowest_variance(var, 4)).tolist() == [1, 2, 3, 5]


def _stats(shape=(2, 3, 3)):
    rng = np.random.default_rng(0)
    s = SiteStats.of_batch(rng.standard_normal((10, *shape)))
    return Stats("fp", {"a": s, "b": s}, (1, 2), 10, "test")


def test_uniform_policy_masks_floor_r_elements_with_means_as_constants():
    stats = _stats()
    masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform"})
    for name, (mask, const) in masks.sites.items():
        assert mask.sum() == 9  # floor(0.5 * 18)
        var = stats.sites[name].variance
        assert var[mask].max() <= var[~mask].min()
        np.testing.assert_array_equal(const, stats.sites[name].mean.astype(np.float32))
    ex = build_masks(stats, uniform_ratios(stats, 0.5, exclude=["b"]), {})
    assert ex.sites["b"][0].sum() == 0


def test_ratio_outside_unit_interval_is_refused():
    with pytest.raises(UsageError):
        uniform_ratios(_stats(), 1.5)
    with pytest.raises(UsageError):
        uniform_ratios(_stats(), 0.5, exclude=["nope"])


def test_stats_and_mask_files_round_trip_and_refuse_another_model(tmp_path):
    model = Model(zoo_graph("resnet18", input_size=16, width=0.125, num_classes=4, seed=1))
    other = Model(zoo_graph("resnet18", input_size=16, width=0.125, num_classes=4, seed=2))
    x = np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32)
    stats = collect_stats(model, x, batch=7, classes=(0, 1))
    save_stats(stats, tmp_path / "s.h5")
    back = load_stats(tmp_path / "s.h5", model)
    assert back.n_images == 20 and back.classes == (0, 1)
    for s in model.sites:
        np.testing.assert_array_equal(back.sites[s].m2, stats.sites[s].m2)
    with pytest.raises(StatsError) as e:
        load_stats(tmp_path / "s.h5", other)
    assert model.fingerprint in str(e.value) and other.fingerprint in str(e.value)
    masks = build_masks(back, uniform_ratios(back, 0.3), {"name": "uniform", "ratio": 0.3})
    save_masks(masks, tmp_path / "m.h5")
    loaded = load_masks(tmp_path / "m.h5")
    assert loaded.policy["ratio"] == 0.3
    y1 = model.run(x, masks=masks)
    y2 = model.run(x, masks=loaded)
    assert np.array_equal(y1, y2)
    with pytest.raises(MaskError) as e:
        other.run(x, masks=loaded)
    assert model.fingerprint in str(e.value) and other.fingerprint in str(e.value)


@pytest.mark.parametrize("n", [1, 7, 50, 100, 300, 1600, 4999])
def test_a_ratio_counts_as_written_not_as_its_float_product(n):
    """floor(r x n) for r = k / 100 as the user writes it (0.29, 0.57): the float product
    0.29 * 100 = 28.999999999999996 floored one element short."""
    for k in range(101):
        r = float(f"0.{k:02d}") if k < 100 else 1.0
        assert ratio_count(r, n) == k * n // 100, (r, n)


def test_uniform_policy_masks_29_of_100_elements_at_ratio_029():
    rng = np.random.default_rng(1)
    stats = Stats("fp", {"a": SiteStats.of_batch(rng.standard_normal((5, 100)))}, (), 5, "test")
    assert 0.29 * 100 < 29  # the float product this guards against
    assert build_masks(stats, uniform_ratios(stats, 0.29), {}).sites["a"][0].sum() == 29


def test_a_one_input_concat_passes_a_producer_chain_as_in_the_int8_model():
    """A float concat of one input stopped a site's producer chain, while the qconcat `quantize` makes
    of it passed it: the same masks skipped MACs in the int8 model and none in the float one. Both pass
    it now; the masked run still equals the dense one with the masked elements overwritten."""
    import velcro_ref
    from velcro_ref.graph import INPUT, Graph, Node

    rng = np.random.default_rng(3)
    conv = {"out_channels": 8, "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    nodes = (
        Node("c", "conv2d", (INPUT,), conv, {"weight": "w", "bias": "b"}),
        Node("k", "concat", ("c",)),
        Node("s", "relu", ("k",)),
    )
    params = {"w": rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "b": np.zeros(8, np.float32)}
    model = Model(Graph(nodes, (2, 5, 5), "s", params))
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    qmodel = velcro_ref.quantize(model, velcro_ref.profile(model, x))
    assert model.chains == qmodel.chains == {"s": ("c",)}
    mask = rng.random((8, 5, 5)) < 0.5
    const = rng.standard_normal((8, 5, 5)).astype(np.float32)
    masks = velcro_ref.MaskSet(model.fingerprint, {"s": (mask, const)}, {"name": "hand"})
    for n in (1, 3):  # on one image the conv writes into the concat's buffer, on more the concat copies
        dense = model.run(x[:n])
        got = model.run(x[:n], masks=masks)
        assert np.array_equal(got, np.where(mask, const, dense))
        assert model.last_macs["c"] == n * 18 * int((~mask).sum())  # 18 MACs an output
