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


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_smallest_input_of_each_network_is_the_one_it_refuses_below(name, monkeypatch):
    """`zoo googlenet --input-size 1` failed when the model was saved (exit 1, "non-positive dimension");
    an input below MIN_INPUT_SIZE is a usage error when the model is built, and that size itself builds
    a valid model at any width."""
    import velcro_ref.zoo as zoo
    from velcro_ref.errors import ModelError, UsageError
    from velcro_ref.graph import infer_shapes

    smallest = zoo.MIN_INPUT_SIZE.get(name, 1)
    for width, channels in ((0.05, 1), (1.0, 3)):
        infer_shapes(build_zoo(name, smallest, channels, 10, width))
        if smallest > 1:
            with pytest.raises(UsageError, match=f"input size {smallest - 1} is too small for {name}: at least"):
                build_zoo(name, smallest - 1, channels, 10, width)
    if smallest > 1:  # the limit is the network's own: one size less leaves a plane empty
        monkeypatch.setattr(zoo, "MIN_INPUT_SIZE", {})
        with pytest.raises(ModelError, match="non-positive dimension"):
            infer_shapes(build_zoo(name, smallest - 1, 1, 10, 0.05))
