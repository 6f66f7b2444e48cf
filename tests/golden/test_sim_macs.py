"""One source of truth for MACs: the simulator's counts equal the engine's executed MACs.

Engine: Model.run, then sum(model.last_macs.values()) / batch, dense and with masks.
"""

import numpy as np
import pytest
from robust_util import zoo_graph

from simulator import build_workload, simulate
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet, empty_masks

BATCH = 2


def hand_graph():
    """conv -> relu -> grouped conv -> relu -> depthwise conv + 1x1 downsample -> add -> relu
    -> max_pool -> global_avg_pool -> flatten -> linear -> relu -> linear."""
    rng = np.random.default_rng(1)
    params = {}

    def conv(name, x, cin, cout, k, stride=1, pad=0, groups=1):
        params[f"{name}.w"] = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
        params[f"{name}.b"] = rng.standard_normal(cout).astype(np.float32)
        attrs = {"out_channels": cout, "kernel": k, "stride": stride, "pads": pad, "groups": groups}
        return Node(name, "conv2d", (x,), attrs, {"weight": f"{name}.w", "bias": f"{name}.b"})

    def linear(name, x, fin, fout):
        params[f"{name}.w"] = rng.standard_normal((fout, fin)).astype(np.float32)
        return Node(name, "linear", (x,), {}, {"weight": f"{name}.w"})

    nodes = (
        conv("c1", INPUT, 3, 8, 3, pad=1),
        Node("r1", "relu", ("c1",)),
        conv("c2", "r1", 8, 8, 3, stride=2, pad=1, groups=2),
        Node("r2", "relu", ("c2",)),
        conv("dw", "r2", 8, 8, 3, pad=1, groups=8),
        conv("ds", "r1", 8, 8, 1, stride=2),
        Node("add", "add", ("dw", "ds")),
        Node("r3", "relu6", ("add",)),
        Node("mp", "max_pool", ("r3",), {"kernel": 2}),
        Node("gap", "global_avg_pool", ("mp",)),
        Node("flat", "flatten", ("gap",)),
        linear("fc1", "flat", 8, 6),
        Node("r4", "relu", ("fc1",)),
        linear("fc2", "r4", 6, 5),
    )
    return Graph(nodes, (3, 9, 9), "fc2", params)


def random_masks(model, seed, ratio=0.4):
    """Random element masks plus a few whole channels, so folds and filters can drop out."""
    rng = np.random.default_rng(seed)
    sites = {}
    for site, shape in model.sites.items():
        mask = rng.random(shape) < ratio
        if len(shape) == 3:
            mask[rng.random(shape[0]) < 0.3] = True
        mask.flat[0] = True
        sites[site] = (mask, rng.standard_normal(shape).astype(np.float32))
    return MaskSet(model.fingerprint, sites)


def engine_macs(model, masks=None):
    x = np.random.default_rng(0).standard_normal((BATCH, *model.input_shape)).astype(np.float32)
    model.run(x, masks)
    assert all(v % BATCH == 0 for v in model.last_macs.values())
    return {k: v // BATCH for k, v in model.last_macs.items()}


def check_equal(model, masks):
    dense = engine_macs(model)
    masked = engine_macs(model, masks)
    result = simulate(model, "edge16", masks)
    sim_dense = {
        layer.name: s.macs for layer, s in zip(result.layers, result.dense, strict=True) if layer.unit == "array"
    }
    sim_comp = {
        layer.name: s.macs for layer, s in zip(result.layers, result.compressed, strict=True) if layer.unit == "array"
    }
    assert sim_dense == dense
    assert sim_comp == masked
    assert result.total_dense.macs == sum(dense.values())
    assert result.total_compressed.macs == sum(masked.values()) < sum(dense.values())


def test_hand_graph_macs_equal_engine():
    model = Model(hand_graph())
    check_equal(model, random_masks(model, 0))
    # The residual site skips both branches: the depthwise conv and the downsample.
    skipped = {layer.name for layer in build_workload(model, random_masks(model, 0)) if layer.skip is not None}
    assert {"dw", "ds", "add", "r3", "c1", "c2", "fc1"} <= skipped


def test_empty_masks_price_exactly_dense():
    model = Model(hand_graph())
    result = simulate(model, "ws32", empty_masks(model))
    assert result.compressed == result.dense
    assert result.mask_storage_bytes == 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_zoo_macs_equal_engine(name):
    model = Model(zoo_graph(name, input_size=32, width=0.25, num_classes=10, seed=2))
    check_equal(model, random_masks(model, 5))
