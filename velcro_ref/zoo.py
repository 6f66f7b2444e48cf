"""Randomly initialised ResNet-18, MobileNet-V2 and GoogLeNet graphs with torchvision's topology.

Layer names follow torchvision's module names, with one node per use of a shared module
(torchvision's single `relu` of a block becomes relu1 and relu2). GoogLeNet has no auxiliary
classifiers. Initialisation: Kaiming-normal (fan out) convs, random batch-norm statistics so
that folding is exercised, uniform linear layers.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError
from .graph import INPUT, MAX_TOTAL_ELEMENTS, Graph, Node

ZOO = ("resnet18", "mobilenet_v2", "googlenet")
# The smallest input each network keeps every plane non-empty for (whatever its width; 1 where not listed):
# GoogLeNet's stride-2 stem, pools and ceil-mode pools leave maxpool3 no plane from 14 x 14.
MIN_INPUT_SIZE = {"googlenet": 15}


class _Builder:
    """Appends nodes and parameters; tracks the channel count of every tensor."""

    def __init__(self, in_channels, rng, draw=True):
        self.nodes, self.params, self.rng, self.drawing, self.n_params = [], {}, rng, draw, 0
        self.channels = {INPUT: in_channels}

    def _add(self, name, op, inputs, channels, attrs=None, params=None):
        self.nodes.append(Node(name, op, tuple(inputs), attrs or {}, params or {}))
        self.channels[name] = channels
        return name

    def _param(self, key, draw, *args):
        """Parameter `key`, float32 of draw(*args) (args[-1] its shape); without `draw` only counted."""
        self.n_params += int(np.prod(args[-1]))
        if self.drawing:
            self.params[key] = np.asarray(draw(*args), dtype=np.float32)
        return key

    def conv(self, x, name, cout, k, stride=1, pad=0, groups=1, bias=False):
        cin = self.channels[x]
        std = np.sqrt(2.0 / (cout * k * k // groups))
        prm = {"weight": self._param(f"{name}.weight", self.rng.normal, 0, std, (cout, cin // groups, k, k))}
        if bias:
            prm["bias"] = self._param(f"{name}.bias", self.rng.normal, 0, 0.01, cout)
        attrs = {
            "out_channels": cout,
            "kernel": [k, k],
            "stride": [stride, stride],
            "pads": [pad] * 4,
            "groups": groups,
        }
        return self._add(name, "conv2d", [x], cout, attrs, prm)

    def bn(self, x, name, eps=1e-5):
        c = self.channels[x]
        r = self.rng
        prm = {
            "gamma": self._param(f"{name}.gamma", r.uniform, 0.5, 1.5, c),
            "beta": self._param(f"{name}.beta", r.normal, 0, 0.1, c),
            "mean": self._param(f"{name}.mean", r.normal, 0, 0.1, c),
            "var": self._param(f"{name}.var", r.uniform, 0.5, 1.5, c),
        }
        return self._add(name, "batch_norm", [x], c, {"eps": eps}, prm)

    def act(self, x, name, op="relu"):
        return self._add(name, op, [x], self.channels[x])

    def add(self, a, b, name):
        return self._add(name, "add", [a, b], self.channels[a])

    def concat(self, xs, name):
        return self._add(name, "concat", xs, sum(self.channels[x] for x in xs))

    def pool(self, x, name, op, k, stride, pad=0, ceil_mode=False):
        attrs = {"kernel": [k, k], "stride": [stride, stride], "pads": [pad] * 4, "ceil_mode": ceil_mode}
        return self._add(name, op, [x], self.channels[x], attrs)

    def head(self, x, num_classes, dropout=None):
        x = self._add("avgpool", "global_avg_pool", [x], self.channels[x])
        x = self._add("flatten", "flatten", [x], self.channels[x])
        if dropout is not None:
            x = self._add("dropout", "dropout", [x], self.channels[x], {"p": dropout})
        fan_in = self.channels[x]
        bound = 1.0 / np.sqrt(fan_in)
        prm = {
            "weight": self._param("fc.weight", self.rng.uniform, -bound, bound, (num_classes, fan_in)),
            "bias": self._param("fc.bias", self.rng.uniform, -bound, bound, num_classes),
        }
        return self._add("fc", "linear", [x], num_classes, {}, prm)


def _scaled(c, width):
    return max(1, int(round(c * width)))


def make_divisible(v, divisor=8):
    """Round a channel count to the nearest multiple of `divisor`, never dropping more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _resnet18(b, width, num_classes):
    c = _scaled(64, width)
    x = b.conv(INPUT, "conv1", c, 7, 2, 3)
    x = b.act(b.bn(x, "bn1"), "relu")
    x = b.pool(x, "maxpool", "max_pool", 3, 2, 1)
    for li, base in enumerate((64, 128, 256, 512), start=1):
        cout = _scaled(base, width)
        for bi in range(2):
            p = f"layer{li}.{bi}"
            stride = 2 if li > 1 and bi == 0 else 1
            y = b.conv(x, f"{p}.conv1", cout, 3, stride, 1)
            y = b.act(b.bn(y, f"{p}.bn1"), f"{p}.relu1")
            y = b.bn(b.conv(y, f"{p}.conv2", cout, 3, 1, 1), f"{p}.bn2")
            if stride != 1 or b.channels[x] != cout:
                x = b.bn(b.conv(x, f"{p}.downsample.0", cout, 1, stride), f"{p}.downsample.1")
            x = b.act(b.add(y, x, f"{p}.add"), f"{p}.relu2")
    return b.head(x, num_classes)


# (expansion t, output channels c, repeats n, first stride s) of MobileNet-V2's inverted residuals
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _mobilenet_v2(b, width, num_classes):
    def conv_bn(x, name, cout, k, stride, groups=1, act=True):
        x = b.bn(b.conv(x, f"{name}.0", cout, k, stride, (k - 1) // 2, groups), f"{name}.1")
        return b.act(x, f"{name}.2", "relu6") if act else x

    cin = make_divisible(32 * width)
    x = conv_bn(INPUT, "features.0", cin, 3, 2)
    i = 1
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        cout = make_divisible(c * width)
        for j in range(n):
            stride = s if j == 0 else 1
            hidden = int(round(cin * t))
            p, y, li = f"features.{i}.conv", x, 0
            if t != 1:
                y = conv_bn(y, f"{p}.{li}", hidden, 1, 1)
                li += 1
            y = conv_bn(y, f"{p}.{li}", hidden, 3, stride, groups=hidden)
            y = b.bn(b.conv(y, f"{p}.{li + 1}", cout, 1), f"{p}.{li + 2}")
            x = b.add(x, y, f"features.{i}.add") if stride == 1 and cin == cout else y
            cin, i = cout, i + 1
    x = conv_bn(x, f"features.{i}", make_divisible(1280 * max(1.0, width)), 1, 1)
    return b.head(x, num_classes, dropout=0.2)


# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of torchvision's nine Inception modules
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _googlenet(b, width, num_classes):
    def basic(x, name, cout, k, stride=1, pad=0):
        x = b.bn(b.conv(x, f"{name}.conv", _scaled(cout, width), k, stride, pad), f"{name}.bn", eps=1e-3)
        return b.act(x, f"{name}.relu")

    def inception(x, name, c1, c3r, c3, c5r, c5, pp):
        b1 = basic(x, f"{name}.branch1", c1, 1)
        b2 = basic(basic(x, f"{name}.branch2.0", c3r, 1), f"{name}.branch2.1", c3, 3, pad=1)
        # torchvision's "5x5" branch uses a 3x3 kernel; the topology follows torchvision
        b3 = basic(basic(x, f"{name}.branch3.0", c5r, 1), f"{name}.branch3.1", c5, 3, pad=1)
        b4 = b.pool(x, f"{name}.branch4.0", "max_pool", 3, 1, 1, ceil_mode=True)
        b4 = basic(b4, f"{name}.branch4.1", pp, 1)
        return b.concat([b1, b2, b3, b4], f"{name}.concat")

    x = basic(INPUT, "conv1", 64, 7, 2, 3)
    x = b.pool(x, "maxpool1", "max_pool", 3, 2, ceil_mode=True)
    x = basic(x, "conv2", 64, 1)
    x = basic(x, "conv3", 192, 3, pad=1)
    x = b.pool(x, "maxpool2", "max_pool", 3, 2, ceil_mode=True)
    for key, pool in (("3a", None), ("3b", ("maxpool3", 3)), ("4a", None), ("4b", None), ("4c", None)):
        x = inception(x, f"inception{key}", *INCEPTION[key])
        if pool:
            x = b.pool(x, pool[0], "max_pool", pool[1], 2, ceil_mode=True)
    x = inception(x, "inception4d", *INCEPTION["4d"])
    x = inception(x, "inception4e", *INCEPTION["4e"])
    x = b.pool(x, "maxpool4", "max_pool", 2, 2, ceil_mode=True)
    x = inception(x, "inception5a", *INCEPTION["5a"])
    x = inception(x, "inception5b", *INCEPTION["5b"])
    return b.head(x, num_classes, dropout=0.2)


_BUILDERS = {"resnet18": _resnet18, "mobilenet_v2": _mobilenet_v2, "googlenet": _googlenet}


def build_zoo(name, input_size=224, in_channels=3, num_classes=1000, width=1.0, seed=0) -> Graph:
    """A randomly initialised zoo model as a Graph (not yet validated; save_model validates).

    Raises UsageError for an unknown name, a non-positive size or an input too small for the network.
    """
    if name not in _BUILDERS:
        raise UsageError(f"unknown zoo model '{name}'; choose from {', '.join(ZOO)}")
    for what, v in (("input size", input_size), ("in channels", in_channels), ("num classes", num_classes)):
        if not isinstance(v, int) or v < 1:
            raise UsageError(f"{what} must be a positive integer, got {v!r}")
    if not width > 0:
        raise UsageError(f"width must be positive, got {width!r}")
    if input_size < MIN_INPUT_SIZE.get(name, 1):
        raise UsageError(f"input size {input_size} is too small for {name}: at least {MIN_INPUT_SIZE[name]}")
    counted = _Builder(in_channels, np.random.default_rng(seed), draw=False)
    _BUILDERS[name](counted, width, num_classes)  # the parameters' count, before any is drawn
    if counted.n_params > MAX_TOTAL_ELEMENTS:
        limit = f"more than {MAX_TOTAL_ELEMENTS} (choose a smaller width)"
        raise UsageError(f"the parameters would hold {counted.n_params} elements, {limit}")
    b = _Builder(in_channels, np.random.default_rng(seed))
    out = _BUILDERS[name](b, width, num_classes)
    # Random models have no training statistics; they take images scaled to [-1, 1].
    pre = {"scale": 1.0 / 255.0, "mean": [0.5] * in_channels, "std": [0.5] * in_channels}
    meta = {"name": name, "source": "zoo", "seed": seed, "width": width, "preprocessing": pre}
    return Graph(tuple(b.nodes), (in_channels, input_size, input_size), out, b.params, meta)
