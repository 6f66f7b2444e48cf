"""Zoo MAC totals equal the published figures and the MACs the kernels count while running."""

import numpy as np
import pytest

from velcro_ref.engine import Model
from velcro_ref.zoo import build_zoo

# Published multiply-accumulates at 224x224, 1000 classes (torchvision model documentation:
# ResNet-18 1.81 GFLOPS, MobileNet-V2 0.30, GoogLeNet 1.50; fvcore/ptflops counts 1.814, 0.301, 1.50).
PUBLISHED = {"resnet18": 1.814e9, "mobilenet_v2": 0.301e9, "googlenet": 1.50e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_macs_match_published_and_executed(name):
    model = Model(build_zoo(name, seed=3))
    total = sum(model.layer_macs().values())
    assert abs(total - PUBLISHED[name]) / PUBLISHED[name] < 0.01
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    model.run(x)
    assert sum(model.last_macs.values()) == 2 * total
    assert set(model.last_macs) == set(model.layer_macs())


def test_zoo_options_change_shapes():
    g = build_zoo("resnet18", input_size=32, in_channels=1, num_classes=7, width=0.25)
    model = Model(g)
    y = model.run(np.zeros((1, 1, 32, 32), np.float32))
    assert y.shape == (1, 7)
    assert model.graph.node("conv1").attrs["out_channels"] == 16
