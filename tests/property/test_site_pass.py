"""A profiling run computes its relu / relu6 sites in one pass with their statistics and the range of
their input (`StatsCollector.run_site`, `moments.clamp_welford_add`): the kernels equal their NumPy
twins bit for bit, the range equals `value_range` to the sign of a zero, and a whole profile equals
statistics and ranges worked out with NumPy from every node's output of a plain instrumented run.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_util import NodeOutputs, zoo_graph

from velcro_ref.engine import Model, load_model
from velcro_ref.graph import INPUT
from velcro_ref.kernels import moments
from velcro_ref.masks import build_masks, uniform_ratios
from velcro_ref.quant import dequantize_linear
from velcro_ref.reference import moments as ref
from velcro_ref.stats import FIELDS, SiteStats, StatsCollector, collect_stats

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
SPECIALS = ["none", "nan", "inf", "-inf", "zeros", "negative", "nonpositive"]


def _batch(rng, n, elements, offset, special):
    """(n, elements) float32 around offset; special puts a NaN or an infinity at one value, makes
    every value >= 0 with a -0.0 among them (a zero minimum), every value < 0 (a zero site), or
    every value <= 0 with a 0.0 among them (a zero maximum)."""
    x = (offset + 3 * rng.standard_normal((n, elements))).astype(np.float32)
    at = (rng.integers(n), rng.integers(elements))
    if special == "nan":
        x[at] = np.nan
    elif special in ("inf", "-inf"):
        x[at] = np.float32(special)
    elif special == "zeros":
        x = np.abs(x)
        x[at] = -0.0
    elif special == "negative":
        x = -np.abs(x) - 1
    elif special == "nonpositive":
        x = -np.abs(x)
        x[at] = 0.0
    return x


def _same(a, b) -> bool:
    """Equal floats, a NaN equal to a NaN, and a zero's sign compared."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@given(
    st.integers(0, 2**31),
    st.lists(st.sampled_from([1, 3, 4, 5, 8, 9, 17]), min_size=1, max_size=3),
    st.sampled_from([1, 7, 511, 513, 1300, 2 * 512 + 77, 4097, 20000]),  # blocks of 8 .. 2000 elements
    st.sampled_from([np.float32(6.0), np.float32(np.inf)]),
    st.sampled_from([0.0, 2.0, 1e5]),
    st.sampled_from(SPECIALS),
    st.booleans(),
)
def test_clamp_welford_add_equals_its_numpy_twin(seed, sizes, elements, top, offset, special, over):
    """Batches merged one after the other (the first into empty stats), the activation into a
    buffer of its own or written over the input (over): the activation, every moment and the
    input's range as the twin computes them; the range's zeros as `value_range` gives them."""
    rng = np.random.default_rng(seed)
    got, want = SiteStats.empty((elements,)), SiteStats.empty((elements,))
    for n in sizes:
        x = _batch(rng, n, elements, offset, special)
        vr = moments.value_range(x)
        x_in = x.copy()
        out, out_ref = (x_in if over else np.full_like(x, 7.0)), np.full_like(x, -7.0)
        lo, hi = got.add_clamped(x_in, top, out)
        lo_ref, hi_ref = ref.clamp_welford_add(x, top, out_ref, *(getattr(want, f) for f in FIELDS))
        assert out.tobytes() == out_ref.tobytes()
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert (lo == lo_ref or math.isnan(lo_ref)) and (hi == hi_ref or math.isnan(hi_ref))
        assert _same(lo, vr[0]) and _same(hi, vr[1])


def test_clamp_welford_add_refuses_an_output_overlapping_its_input_elsewhere():
    """out may be x itself; a view of x shifted by a row would read values already clamped."""
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    stats = SiteStats.empty((64,))
    with pytest.raises(ValueError, match="overlaps"):
        stats.add_clamped(x[:4], np.float32(6.0), x[1:])


def test_clamp_welford_add_refuses_an_output_of_another_shape():
    """The pass finds out's rows by x's width: an out of wider rows is refused, not written askew."""
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="shape"):
        SiteStats.empty((64,)).add_clamped(x, np.float32(6.0), np.empty((5, 80), np.float32))


@given(
    st.integers(0, 2**31),
    st.lists(st.sampled_from([1, 4, 5, 9]), min_size=1, max_size=3),
    st.sampled_from([1, 513, 2 * 512 + 77]),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["none", "nan", "inf"]),
)
def test_welford_add_equals_its_numpy_twin(seed, sizes, elements, dtype, special):
    rng = np.random.default_rng(seed)
    got, want = SiteStats.empty((elements,)), SiteStats.empty((elements,))
    for n in sizes:
        y = _batch(rng, n, elements, 1e3, special).astype(dtype)
        got.add_batch(y)
        ref.welford_add(y, *(getattr(want, f) for f in FIELDS))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def _numpy_profile(model, x, batch, masks=None):
    """Site statistics (the NumPy twin over each batch of the site's output) and the range of the
    input and of every other float tensor (NumPy's min and max), from a plain instrumented run."""
    sites = {s: SiteStats.empty(shape) for s, shape in model.sites.items()}
    ranges = {}
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        seen = NodeOutputs()
        model.run(xb, masks=masks, observer=seen)
        tensors = {INPUT: xb, **seen.values}
        for st_ in model.steps:
            if st_.opdef.site:
                y, q = tensors[st_.name], st_.q  # a quantized site's statistics are of its real values
                y = y if q is None else dequantize_linear(y, q.scale, q.zero_point)
                ref.welford_add(y.reshape(len(xb), -1), *(getattr(sites[st_.name], f).reshape(-1) for f in FIELDS))
        for t in [INPUT, *(s.name for s in model.steps if not s.opdef.site and s.q is None)]:
            lo, hi = float(np.min(tensors[t])), float(np.max(tensors[t]))
            old = ranges.get(t, (lo, hi))
            ranges[t] = (min(old[0], lo), max(old[1], hi))
    return sites, ranges


def _models():
    yield "shipped/mobilenet_v2", load_model(ROOT / "weights" / "mobilenet_v2.h5")  # relu6 after convs
    yield "shipped/resnet18", load_model(ROOT / "weights" / "resnet18.h5")  # relu after convs and adds
    yield "shipped/resnet18_int8", load_model(ROOT / "weights" / "resnet18_int8.h5")  # quantized sites
    g = zoo_graph("googlenet", input_size=32, width=0.25, num_classes=10, seed=5)
    yield "zoo/googlenet", Model(g)


@pytest.mark.parametrize("key,model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_profile_equals_numpy_over_every_node(key, model):
    """Batches of 16 and a last one of 5 (the pass's 4-image steps and its tail): every site's
    statistics bit for bit and every range, in the order the tensors are computed."""
    x = np.random.default_rng(4).standard_normal((37, *model.input_shape)).astype(np.float32)
    stats = collect_stats(model, x, batch=16)
    sites, ranges = _numpy_profile(model, x, 16)
    for s in model.sites:
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(stats.sites[s], name), getattr(sites[s], name), err_msg=f"{s} {name}")
    assert list(stats.ranges) == list(ranges)
    assert stats.ranges == ranges
    apart = _Apart(model)  # every site run by the engine, every range by value_range: zeros' signs too
    for i in range(0, len(x), 16):
        apart.add_batch(x[i : i + 16])
    assert all(_same(a, b) for t in ranges for a, b in zip(stats.ranges[t], apart.stats.ranges[t], strict=True))


class _Apart(StatsCollector):
    def run_site(self, step, x, out):
        return None


def test_a_masked_run_with_the_collector_takes_the_ranges_apart():
    """With masks the engine computes the masked sites itself (no `run_site`): the ranges of their
    inputs are taken at the site's node, equal to NumPy's over that run's tensors."""
    model = load_model(ROOT / "weights" / "mobilenet_v2.h5")
    x = np.random.default_rng(5).standard_normal((12, *model.input_shape)).astype(np.float32)
    stats = collect_stats(model, x, batch=12)
    masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
    col = StatsCollector(model)
    col._extend(INPUT, x)
    model.run(x, masks=masks, observer=col)
    sites, ranges = _numpy_profile(model, x, 12, masks)
    assert col.stats.ranges == ranges
    for s in model.sites:
        np.testing.assert_array_equal(col.stats.sites[s].m2, sites[s].m2, err_msg=s)


def test_an_observer_computing_sites_still_shows_every_node():
    """on_node sees every node in order with the outputs of a plain instrumented run, bit for bit,
    and the run returns the dense output."""

    class Both(StatsCollector):
        def __init__(self, model):
            super().__init__(model)
            self.seen = NodeOutputs()

        def on_node(self, step, inputs, out, skip):
            super().on_node(step, inputs, out, skip)
            self.seen.on_node(step, inputs, out, skip)

    model = load_model(ROOT / "weights" / "mobilenet_v2.h5")
    x = np.random.default_rng(6).standard_normal((9, *model.input_shape)).astype(np.float32)
    both, plain = Both(model), NodeOutputs()
    y = model.run(x, observer=both)
    assert model.run(x, observer=plain).tobytes() == y.tobytes() == model.run(x).tobytes()
    assert list(both.seen.values) == [s.name for s in model.steps]
    assert both.seen.digests() == plain.digests()


def _shared_input_graph():
    """A site on the run's input (r0), one whose input another node reads too (r1), and one that
    alone reads its input (r2)."""
    from velcro_ref.graph import Graph, Node

    rng = np.random.default_rng(8)
    params = {"w": rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "b": rng.normal(0, 0.1, 4).astype(np.float32)}
    nodes = [
        Node("r0", "relu", ("input",)),
        Node("conv", "conv2d", ("r0",), {"out_channels": 4, "kernel": [3, 3], "pads": 1}, {"weight": "w", "bias": "b"}),
        Node("r1", "relu6", ("conv",)),
        Node("add", "add", ("conv", "r1")),
        Node("r2", "relu", ("add",)),
    ]
    return Graph(tuple(nodes), (2, 6, 6), "r2", params)


def test_the_collector_writes_a_site_over_the_input_only_that_site_reads(monkeypatch):
    """Only r2 is written over its input (`Plan.overwritable`); the profile still equals NumPy's over
    every node's output, and the run's output is the dense one."""
    import velcro_ref.stats as stats_mod

    model = Model(_shared_input_graph())
    over = {s: model.plan.overwritable(model.plan.node(s).inputs[0], s) for s in model.sites}
    assert over == {"r0": False, "r1": False, "r2": True}
    written_over, real = [], stats_mod.clamp_welford_add

    def spy(x, top, out, *arrays):
        written_over.append(out is x)
        return real(x, top, out, *arrays)

    monkeypatch.setattr(stats_mod, "clamp_welford_add", spy)
    x = np.random.default_rng(9).standard_normal((11, 2, 6, 6)).astype(np.float32)
    col = StatsCollector(model)
    col._extend(INPUT, x)
    x_before = x.copy()
    y = model.run(x, observer=col)
    assert written_over == [False, False, True]
    assert x.tobytes() == x_before.tobytes()  # r0 reads the run's input: never written over
    assert y.tobytes() == model.run(x).tobytes()
    sites, ranges = _numpy_profile(model, x, 11)
    assert col.stats.ranges == ranges
    for s in model.sites:
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(col.stats.sites[s], name), getattr(sites[s], name), err_msg=s)


@pytest.mark.parametrize("where", ["shared input", "new array", "listed over its input", "unlisted, shared buffers"])
def test_a_site_written_where_the_plan_does_not_allow_it_is_refused(where):
    """An observer's run_site may return out, or x where the plan lets the site overwrite it;
    x another node still reads, or an array of its own, ends the run with an error. A site the
    observer lists in `over_input` against the plan does not get its input's buffer: written over
    that input, it is refused as well. On shared buffers a site the observer did not list may not
    be written over its input either (the plan freed that buffer at the site)."""
    site = "r2" if where.startswith("unlisted") else "r1"

    class Writer(StatsCollector):
        def __init__(self, model):
            super().__init__(model)
            if where == "listed over its input":
                self.over_input = {"r1", "r2"}
            elif where.startswith("unlisted"):
                self.over_input = set()

        def run_site(self, step, x, out):
            if step.name != site or where == "listed over its input":
                return super().run_site(step, x, out)
            np.clip(x, 0, 6, out=x if site == "r2" else out)
            return x if where in ("shared input", "unlisted, shared buffers") else out.copy()

    model = Model(_shared_input_graph())
    x = np.random.default_rng(10).standard_normal((3, 2, 6, 6)).astype(np.float32)
    with pytest.raises(RuntimeError, match=f"site '{site}'"):
        model.run(x, observer=Writer(model))


def test_observers_listing_the_same_usable_sites_share_one_plan():
    """A collector that lists sites the plan does not let it write over their input (r0, r1)
    and a name of no site runs on the plan of one that lists only the usable site (r2), with the
    same statistics: a dense run's plan, made first, is still kept after both (SHARED_PLANS)."""

    class Wider(StatsCollector):
        def __init__(self, model):
            super().__init__(model)
            self.usable, self.over_input = self.over_input, self.over_input | {"r0", "r1", "no such site"}

        def run_site(self, step, x, out):  # writes over x where the plan allows it, as the collector
            listed, self.over_input = self.over_input, self.usable
            try:
                return super().run_site(step, x, out)
            finally:
                self.over_input = listed

    model = Model(_shared_input_graph())
    x = np.random.default_rng(11).standard_normal((3, 2, 6, 6)).astype(np.float32)
    model.run(x)
    plain, wider = StatsCollector(model), Wider(model)
    assert plain.over_input == {"r2"}
    model.run(x, observer=plain)
    model.run(x, observer=wider)
    assert len(model._shared) == 2 and any(not observed for _, observed, *_ in model._shared)
    for name, a in plain.stats.sites.items():
        b = wider.stats.sites[name]
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


class _Own(StatsCollector):
    keeps_arrays = True  # every tensor in its own buffer


class _Left(StatsCollector):
    """Lists every site as one it writes over its input (`over_input`), also where the plan does not
    allow it, then leaves every site to the engine."""

    def __init__(self, model):
        super().__init__(model)
        self.over_input = set(model.sites)

    def run_site(self, step, x, out):
        return None


@st.composite
def _site_graphs(draw):
    """Random graphs of convs and runs of activations (a site written over a site, relu6 over relu,
    silu between), adds, a tensor read by two nodes, concats, pools, and a site as graph output."""
    from velcro_ref.graph import Graph
    from velcro_ref.zoo import _Builder

    b = _Builder(draw(st.sampled_from([1, 3, 8])), np.random.default_rng(draw(st.integers(0, 2**31))))
    x, size = INPUT, draw(st.integers(4, 9))
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["acts", "res", "two_readers", "concat", "pool"]))
        k = draw(st.sampled_from([1, 3]))
        y = b.conv(x, f"c{i}", draw(st.sampled_from([2, 8, 16])), k, 1, k // 2)
        if kind == "acts":
            for j in range(draw(st.integers(1, 3))):
                y = b.act(y, f"a{i}.{j}", draw(st.sampled_from(["relu", "relu6", "relu", "relu6", "silu"])))
            if draw(st.booleans()):
                y = b.pool(y, f"p{i}", "max_pool", 3, 1, 1)
        elif kind == "res":
            y = b.act(b.add(y, b.conv(x, f"d{i}", b.channels[y], 1), f"add{i}"), f"a{i}", "relu")
        elif kind == "two_readers":  # the conv read by its site and by the add
            y = b.add(b.act(y, f"a{i}", "relu6"), y, f"add{i}")
        elif kind == "concat":
            y = b.concat([b.act(y, f"a{i}", "relu"), b.act(b.conv(x, f"e{i}", 2, 1), f"b{i}", "relu6")], f"cat{i}")
        else:
            y = b.act(b.pool(b.act(y, f"a{i}", "relu"), f"p{i}", "max_pool", 3, 1, 1), f"b{i}", "relu")
        x = y
    if draw(st.booleans()):
        x = b.act(b.conv(x, "last", 4, 1), "last.act", "relu")  # a site as graph output
    return Graph(tuple(b.nodes), (b.channels[INPUT], size, size), x, b.params)


@settings(max_examples=200, deadline=None)
@given(_site_graphs(), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**31))
def test_a_profile_on_shared_buffers_equals_one_on_the_tensors_own(graph, batches, seed):
    """The collector keeps no array (`keeps_arrays` false): its runs write the tensors into shared
    buffers, each site it writes over its input into that input's buffer. On one Model, batch after
    batch of changing sizes between dense runs, the statistics, every range and every output are
    the bits of a profile on one buffer per tensor; and an observer that lists the same sites but
    leaves them to the engine, or lists sites whose input another node reads, sees each site's
    input as it was (ranges and outputs equal too)."""
    rng = np.random.default_rng(seed)
    model = Model(graph)
    xs = [rng.standard_normal((n, *model.input_shape)).astype(np.float32) for n in batches]
    cols = {kind: cls(model) for kind, cls in (("shared", StatsCollector), ("own", _Own), ("left", _Left))}
    for x in xs:
        dense = model.run(x).tobytes()
        for kind, col in cols.items():
            col._extend(INPUT, x)
            assert model.run(x, observer=col).tobytes() == dense, kind
    got, want = cols["shared"].stats, cols["own"].stats
    for s in model.sites:
        for name in FIELDS:
            np.testing.assert_array_equal(
                getattr(got.sites[s], name), getattr(want.sites[s], name), err_msg=f"{s} {name}"
            )
    for other in ("own", "left"):
        ranges = cols[other].stats.ranges
        assert list(got.ranges) == list(ranges)
        assert all(_same(a, b) for t in ranges for a, b in zip(got.ranges[t], ranges[t], strict=True)), other


def test_sites_written_over_sites_keep_their_buffer_to_the_last():
    """conv -> relu -> relu6 -> max pool: both sites are written over their input, in one buffer
    (the last site's). The output and ranges are those of a run on one buffer per tensor and the
    dense output: a pool given the buffer the sites still live in would write over its input."""
    from velcro_ref.graph import Graph
    from velcro_ref.zoo import _Builder

    b = _Builder(3, np.random.default_rng(0))
    y = b.act(b.act(b.conv(INPUT, "c0", 8, 3, 1, 1), "a0", "relu"), "a1", "relu6")
    y = b.act(b.conv(b.pool(y, "p", "max_pool", 3, 1, 1), "c1", 4, 1), "a2", "relu")
    model = Model(Graph(tuple(b.nodes), (3, 6, 6), y, b.params))
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    col, own = StatsCollector(model), _Own(model)
    assert col.over_input == {"a0", "a1", "a2"}
    assert model.run(x, observer=col).tobytes() == model.run(x, observer=own).tobytes() == model.run(x).tobytes()
    assert col.stats.ranges == own.stats.ranges


def test_a_profiling_run_shares_buffers_and_writes_sites_over_their_input():
    """MobileNet-V2's profiling run writes its tensors into a few buffers, as a dense run does, and
    each relu6 site the collector writes over its input lies in the buffer its input's conv wrote."""
    model = load_model(ROOT / "weights" / "mobilenet_v2.h5")
    x = np.random.default_rng(11).standard_normal((3, *model.input_shape)).astype(np.float32)
    col = StatsCollector(model)
    assert col.over_input
    seen = {}

    def run_site(step, xin, out):
        seen[step.name] = (xin.__array_interface__["data"][0], out.__array_interface__["data"][0])
        return StatsCollector.run_site(col, step, xin, out)

    col.run_site = run_site
    outputs = {}  # node -> the address of the array it wrote
    col.on_node = lambda step, inputs, out, skip: (
        StatsCollector.on_node(col, step, inputs, out, skip),
        outputs.setdefault(step.name, out.__array_interface__["data"][0]),
    )
    col.add_batch(x)
    assert {s for s, (a, b) in seen.items() if a == b} == col.over_input
    assert len(outputs) > 50 and len(set(outputs.values())) <= 8
