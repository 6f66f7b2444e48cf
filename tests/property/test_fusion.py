"""A run with the plan's fusions (a conv with the add and relu/relu6, or a relu with attribute max,
after it in its epilogue) writes the same bits as the same run with every node apart (`Model.fuse =
False`), dense and masked, and counts the same MACs; tensors another node or the graph output reads
are never fused away.

The expected fusions come from how the graphs are built (each block says whether its conv can take
the nodes after it), not from the plan.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_util import zoo_graph

from velcro_ref.engine import Model, load_model
from velcro_ref.graph import INPUT, Graph
from velcro_ref.masks import MaskSet, build_masks, uniform_ratios
from velcro_ref.stats import collect_stats
from velcro_ref.zoo import _Builder

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
FUSABLE = ("relu", "relu6", "relu_max")
LARGEST = float(np.finfo(np.float32).max)


def _act(b, x, name, act):
    """act after x: "relu_max" a relu with attribute max (as an ONNX Clip(x, 0) imports)."""
    if act == "relu_max":
        return b._add(name, "relu", [x], b.channels[x], {"max": LARGEST})
    return b.act(x, name, act)


@st.composite
def graphs(draw):
    """(graph, {conv: (add or None, act or None)} expected fused, seed)."""
    seed = draw(st.integers(0, 2**31))
    b = _Builder(draw(st.sampled_from([1, 3, 8, 16])), np.random.default_rng(seed))
    size = draw(st.integers(5, 10))
    x, want = INPUT, {}
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv_act", "res", "conv_add", "shared", "depthwise", "inception"]))
        act = draw(st.sampled_from(["relu", "relu6", "relu_max", "silu", None]))
        cin = b.channels[x]
        if kind in ("conv_act", "depthwise"):
            groups, cout = (cin, cin) if kind == "depthwise" else (1, draw(st.sampled_from([2, 8, 16])))
            y = b.conv(x, f"b{i}.conv", cout, 3, draw(st.integers(1, 2)), 1, groups, bias=draw(st.booleans()))
            if draw(st.booleans()):
                y = b.bn(y, f"b{i}.bn")  # folded: the conv keeps its name
            if act is not None:
                y = _act(b, y, f"b{i}.act", act)
                if act in FUSABLE:
                    want[f"b{i}.conv"] = (None, y)
            x = y
        elif kind == "res":
            y = b.bn(b.conv(x, f"b{i}.conv1", draw(st.sampled_from([cin, 8])), 3, 1, 1), f"b{i}.bn1")
            if b.channels[y] == cin and draw(st.booleans()):
                short, later = x, f"b{i}.conv1"  # identity: computed before the conv
            else:
                short = b.bn(b.conv(x, f"b{i}.down", b.channels[y], 1), f"b{i}.down_bn")
                later = f"b{i}.down"  # built after conv1, so conv1 is the residual
            x = b.add(y, short, f"b{i}.add")
            if act is not None:
                x = _act(b, x, f"b{i}.act", act)
            want[later] = (f"b{i}.add", x if act in FUSABLE else None)
        elif kind == "conv_add":  # the add reads the conv twice: nothing fused
            y = b.conv(x, f"b{i}.conv", cin, 1)
            x = _act(b, b.add(y, y, f"b{i}.add"), f"b{i}.act", act or "relu")
        elif kind == "inception":  # branches joined by a concat (on one image, written into its channels)
            branches = []
            for j in range(draw(st.integers(1, 3))):
                how = draw(st.sampled_from(["conv", "conv_act", "pool", "same", "read_twice"]))
                if how == "same" and branches:  # a tensor twice in the concat
                    branches.append(branches[-1])
                    continue
                src = b.pool(x, f"b{i}.{j}.pool", "max_pool", 3, 1, 1) if how == "pool" else x
                y = b.conv(src, f"b{i}.{j}.conv", draw(st.sampled_from([1, 8, 16])), 1)
                if how in ("conv_act", "pool"):
                    y = b.act(y, f"b{i}.{j}.act", "relu")
                    want[f"b{i}.{j}.conv"] = (None, y)
                branches.append(y)
            if draw(st.booleans()):  # the input itself as a branch
                branches.insert(draw(st.integers(0, len(branches))), x)
            y = b.concat(branches, f"b{i}.cat")
            if any(h != x for h in branches) and draw(st.booleans()):  # a branch read after the concat too
                h = next(h for h in reversed(branches) if h != x)
                y = b.concat([y, h], f"b{i}.cat2")
            x = y
        else:  # the conv's output read by the activation and by an add: kept, nothing fused
            y = b.conv(x, f"b{i}.conv", 8, 1)
            a = _act(b, y, f"b{i}.act", act or "relu")
            x = b.add(a, y, f"b{i}.add")
    if draw(st.booleans()):  # the graph output is a fusable activation after a conv
        x = b.act(b.conv(x, "last.conv", 4, 1), "last.act", "relu")
        want["last.conv"] = (None, x)
    else:
        x = b._add("flat", "flatten", [x], b.channels[x])
    return Graph(tuple(b.nodes), (b.channels[INPUT], size, size), x, b.params), want, seed


def random_masks(model, rng, fraction):
    sites = {}
    for s, shape in model.sites.items():
        sites[s] = (rng.random(shape) < fraction, rng.normal(0, 1, shape).astype(np.float32))
    return MaskSet(model.fingerprint, sites)


def same_runs(model, x, masks):
    """Fused and unfused outputs and MACs of one run, asserted equal bit for bit."""
    got = {}
    for fuse in (True, False):
        model.fuse = fuse
        got[fuse] = (model.run(x, masks=masks).tobytes(), dict(model.last_macs))
    model.fuse = True
    assert got[True][0] == got[False][0]
    assert got[True][1] == got[False][1]


@settings(max_examples=60, deadline=None)
@given(graphs(), st.integers(1, 9), st.sampled_from([0.0, 0.3, 1.0]), st.booleans())
def test_fused_runs_equal_unfused_bit_for_bit(case, n, fraction, huge):
    g, want, seed = case
    model = Model(g)
    made = {c: (f.add, f.output if f.act else None) for c, f in model.plan.fusions.items()}
    assert made == want
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, *model.input_shape)).astype(np.float32)
    if huge:  # convs that overflow: +inf for a relu with attribute max to clamp
        x.reshape(-1)[::7] = np.copysign(np.float32(3e38), x.reshape(-1)[::7])
    same_runs(model, x, None)
    masks = random_masks(model, rng, fraction)
    same_runs(model, x, masks)
    same_runs(model, x, masks)  # the mask plan's constants kept from the run before


def _models():
    for name in ("resnet18", "mobilenet_v2", "googlenet"):
        yield f"shipped/{name}", load_model(ROOT / "weights" / f"{name}.h5")
        yield f"zoo/{name}", Model(zoo_graph(name, input_size=32, width=0.25, num_classes=10, seed=5))


@pytest.mark.parametrize("key,model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_zoo_and_shipped_models_fused_equal_unfused(key, model):
    """Every relu/relu6 site and every add of these networks follows a conv (or an add of conv
    branches) that nothing else reads, so each is computed in a conv's epilogue."""
    absorbed = {a for f in model.plan.fusions.values() for a in f.absorbed}
    fused_nodes = {st.name for st in model.steps if st.op in ("relu", "relu6", "add")}
    assert fused_nodes and absorbed == fused_nodes
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, *model.input_shape)).astype(np.float32)
    stats = collect_stats(model, x[:16], batch=16)
    for b in (3, 50):  # 50: the masked kernels' images-in-lanes path
        same_runs(model, x[:b], None)
        for ratio in (0.3, 0.7):
            masks = build_masks(stats, uniform_ratios(stats, ratio), {"name": "uniform", "ratio": ratio})
            same_runs(model, x[:b], masks)


def test_an_observer_sees_every_node_of_a_fusable_model():
    """An instrumented run is never fused: every node's output is there for the observer, equal to
    what the fused run's nodes would hold."""

    class Seen:
        def __init__(self):
            self.nodes, self.sites = [], []

        def on_site(self, name, y):
            self.sites.append(name)

        def on_node(self, step, inputs, out, skip):
            self.nodes.append(step.name)

    model = load_model(ROOT / "weights" / "resnet18.h5")
    assert model.plan.fusions
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    seen = Seen()
    y = model.run(x, observer=seen)
    assert seen.nodes == [st.name for st in model.steps]
    assert seen.sites == list(model.sites)
    assert y.tobytes() == model.run(x).tobytes()


class _Sites:
    def on_site(self, name, y):
        pass


@settings(max_examples=40, deadline=None)
@given(graphs(), st.integers(1, 5), st.sampled_from([0.3, 1.0]))
def test_dense_runs_on_shared_buffers_equal_runs_on_the_tensors_own(case, n, fraction):
    """Dense runs without observer write their tensors into buffers they share (`_shared_buffers`);
    interleaved with masked runs (which keep the masks' constants in the tensors' own buffers),
    with observed runs and with other batch sizes, every run gives the bits it gives alone."""
    g, _, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n + 1, *Model(g).input_shape)).astype(np.float32)
    masks = random_masks(Model(g), rng, fraction)
    alone = {  # dense: on the tensors' own buffers (an observed run; fusions change no bit)
        "dense": Model(g).run(x[:n], observer=_Sites()).tobytes(),
        "dense+1": Model(g).run(x, observer=_Sites()).tobytes(),
        "masked": Model(g).run(x[:n], masks=masks).tobytes(),
    }
    observed = alone["dense"]
    model = Model(g)
    for key in ("dense", "masked", "dense", "dense+1", "masked", "dense", "masked"):
        xs = x if key == "dense+1" else x[:n]
        assert model.run(xs, masks=masks if key == "masked" else None).tobytes() == alone[key], key
        assert model.run(x[:n], observer=_Sites()).tobytes() == observed


def test_googlenet_branches_write_into_their_concat_on_one_image(monkeypatch):
    """On one image each inception's branches write straight into their concat's channels and the
    concat is not run; on two images the concats copy. Both equal the run on the tensors' own."""
    model = load_model(ROOT / "weights" / "googlenet.h5")
    concat = next(st.opdef for st in model.steps if st.op == "concat")
    ran, run = [], type(concat).run
    monkeypatch.setattr(type(concat), "run", lambda self, *a: ran.append(1) or run(self, *a))
    n_concats = sum(st.op == "concat" for st in model.steps)
    assert n_concats == 9
    for n in (1, 2):
        x = np.random.default_rng(n).standard_normal((n, *model.input_shape)).astype(np.float32)
        ran.clear()
        y = model.run(x)
        assert len(ran) == (0 if n == 1 else n_concats)
        ran.clear()
        assert y.tobytes() == model.run(x, observer=_Sites()).tobytes()
        assert len(ran) == n_concats
        model.fuse = False  # unfused, the same placement of the concats' inputs
        assert model.run(x).tobytes() == y.tobytes()
        model.fuse = True


def _concat_graph(kind):
    """(graph, concats a dense run on one image runs): branches of 1x1 convs joined by concats."""
    b = _Builder(8, np.random.default_rng(3))
    a, c = b.conv(INPUT, "a", 8, 1), b.conv(INPUT, "c", 8, 1)
    if kind == "branches":  # a and c written into the concat's channels
        y, runs = b.concat([a, c], "cat"), 0
    elif kind == "twice":  # a twice: copied
        y, runs = b.concat([a, c, a], "cat"), 1
    elif kind == "read_later":  # a read again after the concat's buffer is free: copied
        z = b.conv(b.conv(b.concat([a, c], "cat"), "z", 8, 1), "w", 8, 1)
        y, runs = b.add(z, a, "add"), 1
    elif kind == "input":  # the input, which no step writes, is read by the concat alone: copied
        y, runs = b.concat([INPUT], "cat"), 1  # (a and c are left dead)
    else:  # nested: the inner concat left out, so the outer one copies it
        y, runs = b.concat([b.concat([a, c], "cat"), b.conv(INPUT, "d", 8, 1)], "cat2"), 1
    y = b._add("flat", "flatten", [b.conv(y, "last", 4, 1)], 4)
    return Graph(tuple(b.nodes), (8, 5, 5), y, b.params), runs


@pytest.mark.parametrize("kind", ["branches", "twice", "read_later", "input", "nested"])
def test_concats_left_out_on_one_image_give_the_bits_of_concats_run(kind, monkeypatch):
    """A concat is left out on one image only where its inputs' steps can write into its channels;
    a model's dense runs give the bits of runs on the tensors' own buffers, at 1 and 3 images."""
    g, runs = _concat_graph(kind)
    concat = next(st.opdef for st in Model(g).steps if st.op == "concat")
    ran, run = [], type(concat).run
    monkeypatch.setattr(type(concat), "run", lambda self, *a: ran.append(1) or run(self, *a))
    x = np.random.default_rng(0).standard_normal((3, 8, 5, 5)).astype(np.float32)
    model = Model(g)
    for n in (1, 1, 3, 1):
        want = Model(g).run(x[:n], observer=_Sites()).tobytes()
        ran.clear()
        assert model.run(x[:n]).tobytes() == want
        assert len(ran) == (runs if n == 1 else sum(st.op == "concat" for st in model.steps))


def test_a_dense_run_shares_buffers_between_its_tensors():
    """MobileNet-V2's dense run writes its 50-odd tensors into a few buffers, and later runs,
    also after a masked run or a profiling run, into the same ones."""
    model = load_model(ROOT / "weights" / "mobilenet_v2.h5")
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    seen = {}

    def record(op, meth):
        run = getattr(op, meth)

        def wrapped(xs, args, skip, out, *rest):
            seen.setdefault(id(args), out.__array_interface__["data"][0])
            return run(xs, args, skip, out, *rest)

        setattr(op, meth, wrapped)

    for op in {id(step.opdef): step.opdef for step in model.steps}.values():
        for meth in ("run", "run_fused"):
            if hasattr(op, meth):
                record(op, meth)
    model.run(x)
    first = dict(seen)
    seen.clear()
    model.run(x)
    assert seen == first
    assert len(first) > 50 and len(set(first.values())) <= 8
    model.run(x, masks=random_masks(model, np.random.default_rng(1), 0.5))  # own buffers
    seen.clear()
    model.run(x)
    assert seen == first  # the same shared buffers again, not a new set
    collect_stats(model, x)  # a profiling run: shared buffers of its own plan
    seen.clear()
    model.run(x)
    assert seen == first  # the dense plan was kept beside the profiling one
