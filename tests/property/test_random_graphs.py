"""Random graphs of the model format, written to a file, run by the engine and by `velcro infer`, equal the
float64 interpreter of the file as written (tests/oracle64.py), dense and with random masks.

The graphs are built to stress the load path: tensors with several readers (one node may read a
tensor twice), the graph output read by other nodes (a batch_norm, a relu, a conv reading the
output conv2d or linear), dead branches, batch norms in every position (after a conv read once or
twice, after add, concat, the input, another batch norm), parameters shared between nodes, and
parameter keys and node names that collide with what a loader derives (`<bn>.folded_weight`,
`<bn>.folded_bias`) or with each other once encoded ('/', '%2F', '%', '.', names that differ only by
'/' vs '%2F'). With masks, every activation site (dead ones too) gets a random mask and random
constants; the oracle overwrites the masked elements after computing the site and goes on. Sites
on a dead branch are never run: the engine takes masks of the live sites (masks of a dead site
would change nothing, and a mask file naming one is refused). A profiling run of each graph (the
collector computes relu / relu6 sites, over their input where `Plan.overwritable` allows it) returns
the dense output bit for bit, and its statistics and ranges equal the NumPy twin and NumPy's min and
max over a plain instrumented run.

Tolerance: per element, tests/oracle64.py's bound for a float32 evaluation of the same graph
(2 x the sum of (terms + 4) x 2**-24 along the longest chain of ops, times the magnitude of the
terms that reach the element). Wrong folding, a skipped output or a parameter read under the wrong
key moves values by a fraction of their magnitude, orders of magnitude beyond it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import oracle64
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_util import NodeOutputs

import velcro_ref
from velcro_ref.graph import INPUT
from velcro_ref.masks import MaskSet, save_masks
from velcro_ref.reference import moments as ref_moments
from velcro_ref.stats import FIELDS, SiteStats, StatsCollector

ROOT = Path(__file__).resolve().parents[2]
STEMS = ("n", "norm", "a.b", "blk")
SEPS = ("", "/", "%2F", ".", "%", "%25")
ODD_NAMES = ("/", ".", "%2F", "%", "..", "%252F")
MAX_CHANNELS = 12
MAX_SIDE = 12
BODY = (
    "conv",
    "conv_bn",
    "conv_bn_shared",
    "bn",
    "bn_chain",
    "input_bn",
    "act",
    "pool",
    "gap",
    "add",
    "residual",
    "act_shared",
    "concat",
    "flatten",
    "dropout",
    "linear",
    "softmax",
)
TAILS = ("last", "mid", "conv_out_bn", "conv_out_bn_relu", "conv_out_relu", "linear_out_relu", "linear_out_linear")


@dataclass
class Case:
    """A model as the format writes it, an input batch and one random mask per activation site."""

    input_shape: tuple
    output: str
    nodes: list
    params: dict
    x: np.ndarray
    masks: dict = field(default_factory=dict)

    def __repr__(self):
        lines = [f"Case(input {self.input_shape}, batch {len(self.x)}, output {self.output!r}:"]
        for n in self.nodes:
            attrs = json.dumps(n["attrs"], separators=(",", ":")) if n["attrs"] else ""
            prm = ", ".join(f"{r}={k!r}{list(self.params[k].shape)}" for r, k in n["params"].items())
            lines.append(f"  {n['name']!r} = {n['op']}({', '.join(map(repr, n['inputs']))}) {attrs} {prm}".rstrip())
        masked = {s: int(m.sum()) for s, (m, _) in self.masks.items()}
        lines.append(f"  masked elements per site: {masked})")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # how hypothesis prints a falsifying example
        p.text(repr(self))


class _Builder:
    """Draws one random graph; `draw` decides the structure (so hypothesis shrinks it), `rng` the values."""

    def __init__(self, draw, rng):
        self.draw, self.rng = draw, rng
        self.nodes, self.params, self.shape = [], {}, {}
        self.order: list[str] = []

    # names, parameters, inputs

    def name(self):
        d = self.draw
        used = {n["name"] for n in self.nodes}
        twins = [n.replace("/", "%2F") for n in used if "/" in n and n.replace("/", "%2F") not in used]
        if twins and d(st.booleans()):
            return d(st.sampled_from(twins))  # differs from a name in the graph only by '/' vs '%2F'
        if d(st.integers(0, 7)) == 7:
            name = d(st.sampled_from(ODD_NAMES))
        else:
            name = d(st.sampled_from(STEMS)) + d(st.sampled_from(SEPS)) + str(d(st.integers(0, 2)))
        while name in used or name == oracle64.INPUT:
            name = f"{name}~{len(self.nodes)}"
        return name

    def param(self, node, role, value):
        value = np.asarray(value, dtype=np.float32)
        variances = {n["params"]["var"] for n in self.nodes if n["op"] == "batch_norm"}
        same = [k for k, v in self.params.items() if v.shape == value.shape and k not in variances]
        if role != "var" and same and self.draw(st.integers(0, 5)) == 5:
            return self.draw(st.sampled_from(same))  # shared with another node (any role)
        key = f"{node}.{role}"
        while key in self.params:
            key += "~"
        self.params[key] = value
        return key

    def pick(self, rank):
        """An existing tensor of the given per-image rank (shrinks towards the most recent)."""
        cands = [t for t in self.order if len(self.shape[t]) == rank]
        if not cands:
            return None
        return cands[-1 - self.draw(st.integers(0, len(cands) - 1))]

    def add_node(self, op, inputs, shape, attrs=None, params=None):
        name = self.name()
        prm = {role: self.param(name, role, v) for role, v in (params or {}).items()}
        self.nodes.append({"name": name, "op": op, "inputs": list(inputs), "attrs": attrs or {}, "params": prm})
        self.shape[name] = tuple(int(s) for s in shape)
        self.order.append(name)
        return name

    # ops

    def conv(self, x):
        d, r = self.draw, self.rng
        c, h, w = self.shape[x]
        groups = d(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        cout = groups * d(st.integers(1, max(1, min(3, MAX_CHANNELS // groups))))
        kernel = [d(st.integers(1, 3)), d(st.integers(1, 3))]
        stride = [d(st.integers(1, 2)), d(st.integers(1, 2))]
        dilation = [d(st.integers(1, 2)), d(st.integers(1, 2))]
        pads = [d(st.integers(0, 2)) for _ in range(4)]
        out = []
        for i, size in enumerate((h, w)):
            lo, hi = pads[i], pads[i + 2]
            if size + lo + hi > MAX_SIDE:
                pads[i] = pads[i + 2] = lo = hi = 0
            if size + lo + hi < dilation[i] * (kernel[i] - 1) + 1:
                kernel[i], dilation[i] = 1, 1
            out.append(oracle64.out_size(size, kernel[i], stride[i], lo, hi, dilation[i]))
        fan_in = c // groups * kernel[0] * kernel[1]
        params = {"weight": r.normal(0, 1 / np.sqrt(fan_in), (cout, c // groups, *kernel))}
        if d(st.booleans()):
            params["bias"] = r.normal(0, 0.5, cout)
        attrs = {
            "out_channels": cout,
            "kernel": kernel,
            "stride": stride,
            "dilation": dilation,
            "pads": pads,
            "groups": groups,
        }
        return self.add_node("conv2d", [x], (cout, *out), attrs, params)

    def same_conv(self, x):
        """A conv whose output has x's shape: stride 1, a 1x1 or padded 3x3 filter, c filters."""
        c, h, w = self.shape[x]
        k = self.draw(st.sampled_from([1, 3])) if max(h, w) + 2 <= MAX_SIDE else 1
        groups = self.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        params = {"weight": self.rng.normal(0, 1 / np.sqrt(c // groups * k * k), (c, c // groups, k, k))}
        if self.draw(st.booleans()):
            params["bias"] = self.rng.normal(0, 0.5, c)
        attrs = {"out_channels": c, "kernel": [k, k], "stride": [1, 1], "dilation": [1, 1], "pads": [k // 2] * 4}
        return self.add_node("conv2d", [x], (c, h, w), {**attrs, "groups": groups}, params)

    def bn(self, x):
        r, c = self.rng, self.shape[x][0]
        params = {  # far from the identity, so that applying it twice or not at all shows
            "gamma": r.uniform(0.5, 2.0, c) * r.choice([-1.0, 1.0], c),
            "beta": r.normal(0, 0.5, c),
            "mean": r.normal(0, 0.5, c),
            "var": r.uniform(0.05, 2.0, c),
        }
        eps = self.draw(st.sampled_from([1e-5, 1e-3, 0.1, 1.0]))
        return self.add_node("batch_norm", [x], self.shape[x], {"eps": eps}, params)

    def act(self, x):
        return self.add_node(self.draw(st.sampled_from(["relu", "relu6"])), [x], self.shape[x])

    def pool(self, x):
        d = self.draw
        c, h, w = self.shape[x]
        op = d(st.sampled_from(["max_pool", "avg_pool"]))
        kernel, stride, pads, out = [0, 0], [0, 0], [0] * 4, []
        for i, size in enumerate((h, w)):
            k = d(st.integers(1, 3))
            lo, hi = d(st.integers(0, k // 2)), d(st.integers(0, k // 2))
            if size + lo + hi < k:
                k, lo, hi = 1, 0, 0
            kernel[i], stride[i], pads[i], pads[i + 2] = k, d(st.integers(1, 3)), lo, hi
        ceil_mode = d(st.booleans())
        for i, size in enumerate((h, w)):
            out.append(oracle64.out_size(size, kernel[i], stride[i], pads[i], pads[i + 2], 1, ceil_mode))
        attrs = {"kernel": kernel, "stride": stride, "pads": pads, "ceil_mode": ceil_mode}
        if op == "avg_pool":
            attrs["count_include_pad"] = d(st.booleans())
        return self.add_node(op, [x], (c, *out), attrs)

    def any_rank(self):
        """A tensor of either rank (flat ones only once there are some)."""
        has_flat = any(len(self.shape[t]) == 1 for t in self.order)
        return self.pick(self.draw(st.sampled_from([3, 1])) if has_flat else 3)

    def flat(self):
        """A flat tensor: an existing one, or a new flatten."""
        has_flat = any(len(self.shape[t]) == 1 for t in self.order)
        if has_flat and self.draw(st.integers(0, 3)):
            return self.pick(1)
        src = self.pick(3)
        return self.add_node("flatten", [src], (int(np.prod(self.shape[src])),))

    def linear(self, x):
        fin, fout = self.shape[x][0], self.draw(st.integers(1, 6))
        params = {"weight": self.rng.normal(0, 1 / np.sqrt(fin), (fout, fin))}
        if self.draw(st.booleans()):
            params["bias"] = self.rng.normal(0, 0.5, fout)
        return self.add_node("linear", [x], (fout,), {}, params)

    def step(self, kind):
        d = self.draw
        if kind == "conv":
            self.conv(self.pick(3))
        elif kind == "conv_bn":  # folding candidate: the conv has one reader
            self.bn(self.conv(self.pick(3)))
        elif kind == "conv_bn_shared":  # the conv has a second reader, before or after the batch norm
            c = self.conv(self.pick(3))
            if d(st.booleans()):
                self.act(c)
                self.bn(c)
            else:
                b = self.bn(c)
                self.add_node("add", [b, c], self.shape[c])
        elif kind == "bn":  # after whatever tensor: an add, a concat, a pool, the input
            self.bn(self.pick(3))
        elif kind == "bn_chain":
            self.bn(self.bn(self.pick(3)))
        elif kind == "input_bn":
            self.bn(oracle64.INPUT)
        elif kind == "act":
            self.act(self.any_rank())
        elif kind == "pool":
            self.pool(self.pick(3))
        elif kind == "gap":
            x = self.pick(3)
            self.add_node("global_avg_pool", [x], (self.shape[x][0], 1, 1))
        elif kind == "add":
            a = self.any_rank()
            b = d(st.sampled_from([t for t in self.order if self.shape[t] == self.shape[a]]))  # maybe a itself
            y = self.add_node("add", [a, b], self.shape[a])
            if len(self.shape[y]) == 3 and d(st.booleans()):
                self.bn(y)
        elif kind == "residual":  # conv (-> bn) -> add of a tensor computed before -> relu/relu6
            r = self.pick(3)
            y = self.same_conv(r)
            if d(st.booleans()):
                y = self.bn(y)
            self.act(self.add_node("add", [y, r] if d(st.booleans()) else [r, y], self.shape[r]))
        elif kind == "act_shared":  # relu/relu6 of a tensor a later add reads too: it must stay as it was
            x = self.any_rank()
            a = self.act(x)
            self.add_node("add", [x, a] if d(st.booleans()) else [a, x], self.shape[x])
        elif kind == "concat":
            a = self.pick(3)
            same = [t for t in self.order if len(self.shape[t]) == 3 and self.shape[t][1:] == self.shape[a][1:]]
            xs = [a] + [d(st.sampled_from(same)) for _ in range(d(st.integers(0, 2)))]
            c = sum(self.shape[t][0] for t in xs)
            if c <= MAX_CHANNELS:
                y = self.add_node("concat", xs, (c, *self.shape[a][1:]))
                if d(st.booleans()):
                    self.bn(y)
        elif kind == "flatten":
            x = self.any_rank()
            self.add_node("flatten", [x], (int(np.prod(self.shape[x])),))
        elif kind == "dropout":
            x = self.any_rank()
            self.add_node("dropout", [x], self.shape[x], {"p": 0.5} if d(st.booleans()) else {})
        elif kind == "linear":
            self.linear(self.flat())
        elif kind == "softmax":
            x = self.flat()
            self.add_node("softmax", [x], self.shape[x])
        else:
            raise AssertionError(kind)

    def tail(self, kind):
        """Append the graph output; return its name. Nodes after it are dead (none can lie on its path)."""
        d = self.draw
        if kind == "last":
            return self.order[-1]
        if kind == "mid":
            return d(st.sampled_from(self.order[1:]))
        if kind.startswith("conv_out"):
            out = self.conv(self.pick(3))
            if kind == "conv_out_relu":
                self.act(out)
            else:
                b = self.bn(out)
                if kind == "conv_out_bn_relu":
                    self.act(b)
            return out
        out = self.linear(self.flat())
        reader = self.act(out)
        if kind == "linear_out_linear":
            self.linear(reader)
        return out

    def collide(self):
        """Move some parameters to the keys a loader could derive from a batch norm's name."""
        d = self.draw
        bns = [n for n in self.nodes if n["op"] == "batch_norm"]
        refs = [(i, role) for i, n in enumerate(self.nodes) for role in n["params"]]
        for _ in range(d(st.integers(0, 3)) if bns and refs else 0):
            bn = d(st.sampled_from(bns))
            suffix = d(st.sampled_from(["weight", "bias"]))
            new = f"{bn['name']}.folded_{suffix}"
            src = next((n for n in self.nodes if n["name"] == bn["inputs"][0]), None)
            want = None  # the shape the derived parameter would have
            if src is not None and src["op"] == "conv2d":
                want = self.params[src["params"]["weight"]].shape if suffix == "weight" else self.shape[src["name"]][:1]
            fits = [(i, role) for i, role in refs if self.params[self.nodes[i]["params"][role]].shape == want]
            i, role = d(st.sampled_from(fits if fits and d(st.booleans()) else refs))
            old = self.nodes[i]["params"][role]
            if new in self.params:
                continue
            self.params[new] = self.params.pop(old)
            for n in self.nodes:
                n["params"] = {r: (new if k == old else k) for r, k in n["params"].items()}


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = _Builder(draw, rng)
    b.shape[oracle64.INPUT] = (draw(st.integers(1, 4)), draw(st.integers(3, 9)), draw(st.integers(3, 9)))
    b.order.append(oracle64.INPUT)
    for _ in range(draw(st.integers(1, 8))):
        b.step(draw(st.sampled_from(BODY)))
    output = b.tail(draw(st.sampled_from(TAILS)))
    for _ in range(draw(st.integers(0, 2))):  # dead nodes, often reading the output
        b.step(draw(st.sampled_from(BODY)))
    b.collide()
    x = rng.standard_normal((draw(st.integers(1, 3)), *b.shape[oracle64.INPUT])).astype(np.float32)
    masks = {}
    for n in b.nodes:
        if n["op"] in oracle64.ACTIVATIONS:
            shape = b.shape[n["name"]]
            density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
            masks[n["name"]] = (rng.random(shape) < density, rng.normal(0, 1, shape).astype(np.float32))
    return Case(b.shape[oracle64.INPUT], output, b.nodes, b.params, x, masks)


def assert_matches(got, run, name, what):
    """got (float32 engine result) equals the oracle's tensor `name` within its per-element tolerance."""
    want = run[name]
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    err = np.abs(got.astype(np.float64) - want)
    tol = run.tolerance(name)
    bad = ~(err <= tol)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err / tol, -1))), got.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.size} elements of {name!r} off; worst at {i}: "
            f"engine {got[i]!r}, oracle {want[i]!r}, tolerance {tol[i]:.3g} (max |oracle| {np.abs(want).max():.3g})"
        )


def write_case(case, folder):
    path = Path(folder) / "model.h5"
    fp = oracle64.write_model(path, case.input_shape, case.output, case.nodes, case.params)
    return path, fp


class _Sites:
    def __init__(self):
        self.seen = {}

    def on_site(self, name, y):
        self.seen[name] = y.copy()


def check_profile(model, x):
    """A profiling run (relu / relu6 sites computed by the collector, written over their input where
    `Plan.overwritable` allows it) returns the dense output, and its statistics and ranges equal the
    NumPy twin and NumPy's min and max over a plain instrumented run's node outputs."""
    plain = NodeOutputs()
    want = model.run(x, observer=plain)
    col = StatsCollector(model)
    col._extend(INPUT, x)
    x_before = x.tobytes()
    assert model.run(x, observer=col).tobytes() == want.tobytes(), "profiling run: output"
    assert x.tobytes() == x_before, "profiling run: the input array changed"
    n = len(x)
    for s, got_s in col.stats.sites.items():
        if s not in plain.values:  # a site on a dead branch: never run
            continue
        twin = SiteStats.empty(got_s.count.shape)
        ref_moments.welford_add(plain.values[s].reshape(n, -1), *(getattr(twin, f).reshape(-1) for f in FIELDS))
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got_s, f), getattr(twin, f), err_msg=f"profiling run: site {s!r} {f}")
    tensors = {INPUT: x, **plain.values}
    for t, (lo, hi) in col.stats.ranges.items():
        got, expect = np.array([lo, hi]), np.array([np.min(tensors[t]), np.max(tensors[t])], np.float64)
        assert np.array_equal(got, expect, equal_nan=True), f"profiling run: range of {t!r} {got} against {expect}"


def check_in_process(case, folder):
    path, fp = write_case(case, folder)
    mf = oracle64.read_model(path)  # the oracle reads the file as written
    dense, masked = oracle64.run(mf, case.x), oracle64.run(mf, case.x, case.masks)
    model = velcro_ref.load_model(path)
    assert_matches(model.run(case.x), dense, mf.output, "dense output")
    sites = _Sites()
    live = oracle64.live_nodes(mf)
    got = model.run(case.x, masks=MaskSet(fp, live_masks(case, live)), observer=sites)
    assert_matches(got, masked, mf.output, "masked output")
    missing = sorted(s for s in mf.sites() if s in live and s not in sites.seen)
    assert not missing, f"live activation sites not observed: {missing}"
    for s, y in sites.seen.items():
        assert_matches(y, masked, s, f"masked site {s!r}")
    check_profile(model, case.x)


def live_masks(case, live):
    return {s: m for s, m in case.masks.items() if s in live}


def strict_json(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def check_cli(case, folder, with_masks):
    path, fp = write_case(case, folder)
    mf = oracle64.read_model(path)
    np.save(Path(folder) / "x.npy", case.x)
    args = ["infer", path, "--input", Path(folder) / "x.npy", "-o", Path(folder) / "y.npy", "--json"]
    if with_masks:
        live = oracle64.live_nodes(mf)
        save_masks(MaskSet(fp, live_masks(case, live), complete=True), Path(folder) / "masks.h5")
        args += ["--masks", Path(folder) / "masks.h5"]
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    doc = strict_json(res.stdout)
    want = oracle64.run(mf, case.x, case.masks if with_masks else None)
    assert doc["output_shape"] == list(want[mf.output].shape)
    assert_matches(
        np.load(Path(folder) / "y.npy"), want, mf.output, "velcro infer" + (" --masks" if with_masks else "")
    )


@settings(max_examples=150)
@given(cases())
def test_engine_equals_float64_oracle_dense_and_masked(case):
    with tempfile.TemporaryDirectory() as folder:
        check_in_process(case, folder)


@settings(max_examples=12)  # a process each: about 1 s on an idle core
@given(cases(), st.booleans())
def test_velcro_infer_equals_float64_oracle(case, with_masks):
    with tempfile.TemporaryDirectory() as folder:
        check_cli(case, folder, with_masks)
