"""Masked inference equals dense inference with the masked activations overwritten.

Random small graphs are built with their producer chains known by construction; the oracle is a
plain NumPy walk over the unfolded graph (reference twins, batch norm applied separately) that
computes every element, then overwrites masked activations with their constants and goes on.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from robust_util import zoo_graph

from velcro_ref import ops
from velcro_ref.engine import Model
from velcro_ref.errors import MaskError, ModelError
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.kernels.conv import conv_geom, prepare_conv
from velcro_ref.masks import MaskSet, empty_masks
from velcro_ref.reference import conv2d as rconv
from velcro_ref.reference import linear as rlin
from velcro_ref.reference import pool as rpool
from velcro_ref.zoo import _Builder

FLOAT_ACTIVATIONS = [a for a in ops.ACTIVATIONS if a not in ops.QUANTIZED]
ORACLE_ACTIVATIONS = {
    "relu": lambda v: np.maximum(v, 0),
    "relu6": lambda v: np.clip(v, 0, 6),
    "silu": lambda v: (v / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32),
    "hardswish": lambda v: (v * np.clip(v.astype(np.float64) / 6.0 + 0.5, 0.0, 1.0)).astype(np.float32),
}


@st.composite
def graphs(draw):
    """A random graph and {site: [conv/linear nodes whose elements a mask of the site skips]}."""
    seed = draw(st.integers(0, 2**31))
    # 16 channels (per group) take the kernels' in-place paths, fewer the im2col ones
    b = _Builder(draw(st.sampled_from([1, 2, 3, 4, 16])), np.random.default_rng(seed))
    size = draw(st.integers(6, 11))
    chains, x, i = {}, INPUT, 0

    def conv_act(x, name, cout, k, stride, pad, groups, bn, act):
        y = b.conv(x, f"{name}.conv", cout, k, stride, pad, groups, bias=not bn)
        if bn:
            y = b.bn(y, f"{name}.bn")
        site = b.act(y, f"{name}.act", act)
        chains[site] = [f"{name}.conv"]
        return site

    for _ in range(draw(st.integers(1, 4))):
        i += 1
        kind = draw(st.sampled_from(["conv", "res", "concat", "pool"]))
        cin = b.channels[x]
        act = draw(st.sampled_from(FLOAT_ACTIVATIONS))  # every float activation the engine knows
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, 3, cin) if cin % g == 0]))
            cout = groups * draw(st.sampled_from([1, 2, 3] if groups > 3 else [1, 2, 3, 16]))
            k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
            x = conv_act(x, f"b{i}", cout, k, s, p, groups, draw(st.booleans()), act)
        elif kind == "res":
            cout, s = draw(st.sampled_from([1, 2, 3, 4, 5, 16])), draw(st.integers(1, 2))
            y = b.bn(b.conv(x, f"b{i}.conv1", cout, 3, s, 1), f"b{i}.bn1")
            chain = [f"b{i}.conv1"]
            if s == 1 and cout == cin and draw(st.booleans()):
                short = x  # identity: read by other nodes too, so never skipped
            else:
                short = b.bn(b.conv(x, f"b{i}.down", cout, 1, s), f"b{i}.down_bn")
                chain.append(f"b{i}.down")
            x = b.act(b.add(y, short, f"b{i}.add"), f"b{i}.act", act)
            chains[x] = chain
        elif kind == "concat":
            left = conv_act(x, f"b{i}.l", draw(st.integers(1, 3)), 3, 1, 1, 1, True, act)
            right = conv_act(x, f"b{i}.r", draw(st.integers(1, 3)), 1, 1, 0, 1, False, act)
            x = b.concat([left, right], f"b{i}.cat")
        else:
            op = draw(st.sampled_from(["max_pool", "avg_pool"]))
            k = draw(st.integers(2, 3))
            x = b.pool(
                x, f"b{i}.pool", op, k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)), draw(st.booleans())
            )
    x = b._add("flat", "flatten", [x], b.channels[x])
    from velcro_ref.graph import Graph

    return Graph(tuple(b.nodes), (b.channels[INPUT], size, size), x, b.params), chains, seed


def _add_head(g, shapes, rng):
    """Append linear -> relu (a site whose chain is the linear) -> linear, sized to the features."""
    from velcro_ref.graph import Graph, Node

    feat, hidden = int(np.prod(shapes["flat"])), int(rng.integers(2, 7))
    params = dict(g.params)
    params["fc1.weight"] = rng.normal(0, 0.3, (hidden, feat)).astype(np.float32)
    params["fc1.bias"] = rng.normal(0, 0.1, hidden).astype(np.float32)
    params["fc2.weight"] = rng.normal(0, 0.3, (3, hidden)).astype(np.float32)
    nodes = g.nodes + (
        Node("fc1", "linear", ("flat",), {}, {"weight": "fc1.weight", "bias": "fc1.bias"}),
        Node("fc1.act", "relu", ("fc1",)),
        Node("fc2", "linear", ("fc1.act",), {}, {"weight": "fc2.weight"}),
    )
    return Graph(nodes, g.input_shape, "fc2", params)


def build_case(case):
    g, chains, seed = case
    from velcro_ref.graph import infer_shapes

    try:
        shapes = infer_shapes(g)
    except ModelError:
        return None
    rng = np.random.default_rng(seed + 1)
    return _add_head(g, shapes, rng), dict(chains, **{"fc1.act": ["fc1"]}), rng


def reference_walk(g, x, masks):
    """Every element computed in NumPy, masked activations overwritten with their constants."""
    env = {INPUT: x}
    for n in g.nodes:
        ins = [env[t] for t in n.inputs]
        p = {role: g.params[key] for role, key in n.params.items()}
        a = n.attrs
        if n.op == "conv2d":
            (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
            geom = conv_geom(
                *ins[0].shape[1:], a["out_channels"], (kh, kw), (sh, sw), (pt, pl, pb, pr), (1, 1), a["groups"]
            )
            out = np.empty((x.shape[0], a["out_channels"], geom.oh, geom.ow), np.float32)
            bias = p.get("bias", np.zeros(a["out_channels"], np.float32))
            rconv.conv2d(ins[0], prepare_conv(p["weight"], bias, geom), geom, None, out)
        elif n.op == "batch_norm":
            scale = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + a["eps"])
            out = ((ins[0] - p["mean"][:, None, None]) * scale[:, None, None] + p["beta"][:, None, None]).astype(
                np.float32
            )
        elif n.op in ops.ACTIVATIONS:
            out = ORACLE_ACTIVATIONS[n.op](ins[0])  # a new activation needs an entry here too
            if n.name in masks.sites:
                mask, const = masks.sites[n.name]
                out = np.where(mask[None], const[None], out).astype(np.float32)
        elif n.op == "add":
            out = ins[0] + ins[1]
        elif n.op == "concat":
            out = np.concatenate(ins, axis=1)
        elif n.op in ("max_pool", "avg_pool"):
            (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
            from velcro_ref.ops.base import window_out_size as pool_out_size

            oh = pool_out_size(ins[0].shape[2], kh, sh, pt, pb, a["ceil_mode"])
            ow = pool_out_size(ins[0].shape[3], kw, sw, pl, pr, a["ceil_mode"])
            out = np.empty((x.shape[0], ins[0].shape[1], oh, ow), np.float32)
            if n.op == "max_pool":
                rpool.max_pool(ins[0], kh, kw, sh, sw, pt, pl, out)
            else:
                rpool.avg_pool(ins[0], kh, kw, sh, sw, pt, pl, pb, pr, False, out)
        elif n.op == "flatten":
            out = ins[0].reshape(x.shape[0], -1)
        elif n.op == "linear":
            out = np.empty((x.shape[0], p["weight"].shape[0]), np.float32)
            rlin.linear(ins[0], p["weight"], p.get("bias", np.zeros(p["weight"].shape[0], np.float32)), None, out)
        else:
            raise AssertionError(n.op)
        env[n.name] = out
    return env


def random_masks(model, rng, full_site=None):
    sites = {}
    for s, shape in model.sites.items():
        density = rng.choice([0.0, 0.2, 0.6, 1.0]) if s != full_site else 1.0
        mask = rng.random(shape) < density
        sites[s] = (mask, rng.normal(0, 1, shape).astype(np.float32))
    return MaskSet(model.fingerprint, sites)


@given(graphs(), st.sampled_from([1, 2, 9, 67]))  # 9: a block of 8 images and 1 alone; 67: SIMD lanes
def test_masked_equals_dense_with_overwrite_and_macs_match(case, batch):
    built = build_case(case)
    assume(built is not None)
    g, chains, rng = built
    model = Model(g)
    x = rng.standard_normal((batch, *g.input_shape)).astype(np.float32)
    masks = random_masks(model, rng)
    got = model.run(x, masks=masks)
    ref = reference_walk(g, x, masks)
    want = ref[g.output]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)

    # executed MACs = dense MACs - per-element cost of every skipped element, from the shapes alone
    cost = {
        n.name: int(np.prod(g.params[n.params["weight"]].shape[1:])) for n in g.nodes if n.op in ("conv2d", "linear")
    }
    dense = {name: batch * c * int(np.prod(ref[name].shape[1:])) for name, c in cost.items()}
    skipped = {name: 0 for name in cost}
    for site, chain in chains.items():
        for node in chain:
            skipped[node] += batch * cost[node] * int(masks.sites[site][0].sum())
    assert model.last_macs == {name: dense[name] - skipped[name] for name in cost}


@given(graphs())
def test_empty_masks_are_bit_identical_to_dense(case):
    built = build_case(case)
    assume(built is not None)
    g, _, rng = built
    model = Model(g)
    x = rng.standard_normal((2, *g.input_shape)).astype(np.float32)
    dense = model.run(x)
    dense_macs = dict(model.last_macs)
    masked = model.run(x, masks=empty_masks(model))
    assert np.array_equal(dense, masked)
    assert model.last_macs == dense_macs


@given(graphs())
def test_fully_masked_site_outputs_exactly_its_constants(case):
    built = build_case(case)
    assume(built is not None)
    g, _, rng = built
    model = Model(g)
    site = list(model.sites)[int(rng.integers(len(model.sites)))]
    masks = random_masks(model, rng, full_site=site)

    class Grab:
        def on_site(self, name, y):
            if name == site:
                self.y = y.copy()

    grab = Grab()
    model.run(rng.standard_normal((2, *g.input_shape)).astype(np.float32), masks=masks, observer=grab)
    assert np.array_equal(grab.y, np.broadcast_to(masks.sites[site][1], grab.y.shape))


def test_a_masked_pointwise_conv_computes_only_its_unmasked_outputs():
    """A 1x1 stride-1 conv of 16 filters on 16 channels of 8x8 (the shape `conv_direct` takes
    dense, and whose masked calls run the filters-in-lanes kernel storing only the unmasked
    outputs), relu site masked at half its elements. Against float64 arithmetic: unmasked outputs
    are the conv's, masked ones the constants, executed MACs the unmasked outputs x 16 taps
    (docs/design.md, "Definitions"). Running `conv_direct` there too computed and stored every
    output (masked ones overwritten, 2 x 16 x 64 x 16 = 32768 MACs reported)."""
    rng = np.random.default_rng(3)
    c, k, h = 16, 16, 8
    w = rng.standard_normal((k, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": k, "kernel": 1}, {"weight": "c.w", "bias": "c.b"})
    model = Model(Graph((conv, Node("r", "relu", ("c",))), (c, h, h), "r", {"c.w": w, "c.b": b}))
    mask = rng.random((k, h, h)) < 0.5
    const = rng.normal(0, 1, (k, h, h)).astype(np.float32)
    x = rng.standard_normal((2, c, h, h)).astype(np.float32)
    got = model.run(x, masks=MaskSet(model.fingerprint, {"r": (mask, const)}))
    y = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64)) + b[:, None, None]
    want = np.where(mask, const, np.maximum(y, 0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got[:, mask], np.broadcast_to(const[mask], (2, int(mask.sum()))))
    assert model.last_macs == {"c": 2 * int((~mask).sum()) * c}


def test_masks_of_another_model_are_refused_naming_both_fingerprints():

    a = Model(zoo_graph("resnet18", input_size=16, width=0.125, seed=1))
    b = Model(zoo_graph("resnet18", input_size=16, width=0.125, seed=2))
    with pytest.raises(MaskError) as e:
        a.run(np.zeros((1, 3, 16, 16), np.float32), masks=empty_masks(b))
    assert a.fingerprint in str(e.value) and b.fingerprint in str(e.value)
