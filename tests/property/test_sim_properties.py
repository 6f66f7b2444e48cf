"""Simulator properties over random graphs, masks and accelerators.

- a superset mask never adds cycles, traffic or energy (per layer and in total), between masks
  that mask the same sites: switching a site from no mask to some mask adds its fixed bitmap
  load, which is a real cost; compute cycles and operand traffic never grow even then;
- more DRAM bandwidth never adds cycles;
- an empty mask reproduces the dense numbers exactly;
- unknown or invalid TOML keys give one ArchError listing all of them.
"""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim_util import arch_toml

from simulator.arch import parse_arch, with_changes
from simulator.compute import column_chunks
from simulator.simulate import simulate
from velcro_ref.engine import Model
from velcro_ref.errors import ArchError
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet, empty_masks

archs = st.builds(
    lambda *a: parse_arch(arch_toml(*a)),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from(["output_stationary", "weight_stationary"]),
    st.sampled_from([0.0625, 0.25, 1, 4]),
    st.sampled_from([0.0625, 0.25, 1, 4]),
    st.sampled_from([0.0625, 0.25, 1, 4]),
    st.sampled_from([0.5, 2, 16]),
    st.sampled_from([1, 2, 3, 64]),
)


@st.composite
def models(draw):
    """conv -> relu -> grouped conv (+ 1x1 shortcut) -> add -> relu -> gap -> linear -> relu."""
    cin, c1, g = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 2]))
    c1 *= g
    c2 = g * draw(st.integers(1, 4))
    size, k, stride = draw(st.integers(3, 8)), draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    params = {}

    def conv(name, x, ci, co, kk, s=1, groups=1):
        params[f"{name}.w"] = rng.standard_normal((co, ci // groups, kk, kk)).astype(np.float32)
        attrs = {"out_channels": co, "kernel": kk, "stride": s, "pads": kk // 2, "groups": groups}
        return Node(name, "conv2d", (x,), attrs, {"weight": f"{name}.w"})

    params["fc.w"] = rng.standard_normal((5, c2)).astype(np.float32)
    nodes = (
        conv("a", INPUT, cin, c1, k),
        Node("ra", "relu", ("a",)),
        conv("b", "ra", c1, c2, k, stride, groups=g),
        conv("sc", "ra", c1, c2, 1, stride),
        Node("add", "add", ("b", "sc")),
        Node("rb", "relu", ("add",)),
        Node("gap", "global_avg_pool", ("rb",)),
        Node("flat", "flatten", ("gap",)),
        Node("fc", "linear", ("flat",), {}, {"weight": "fc.w"}),
        Node("rc", "relu", ("fc",)),
    )
    return Model(Graph(nodes, (cin, size, size), "rc", params))


def mask_pair(model, seed, base_ratio, extra_ratio, every_site):
    """(A, B) with B a superset of A; with every_site, A masks at least one element of each site."""
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for site, shape in model.sites.items():
        m = rng.random(shape) < base_ratio
        if every_site:
            m.flat[rng.integers(m.size)] = True
        extra = rng.random(shape) < extra_ratio
        if len(shape) == 3 and rng.random() < 0.5:
            extra[rng.integers(shape[0])] = True  # a whole channel
        const = np.zeros(shape, np.float32)
        a[site], b[site] = (m, const), (m | extra, const)
    return MaskSet(model.fingerprint, a), MaskSet(model.fingerprint, b)


ratios = st.sampled_from([0.0, 0.1, 0.5, 0.9])


def assert_not_more(small, big, fields):
    for f in fields:
        assert getattr(small, f) <= getattr(big, f), f
    assert small.energy_pj <= big.energy_pj * (1 + 1e-12)


@given(models(), archs, st.integers(0, 2**16), ratios, ratios)
def test_superset_mask_never_adds_cycles_traffic_or_energy(model, arch, seed, base, extra):
    a, b = mask_pair(model, seed, base, extra, every_site=True)
    ra, rb = simulate(model, arch, a), simulate(model, arch, b)
    fields = (
        "macs",
        "compute_cycles",
        "cycles",
        "dram_bytes",
        "ifmap_sram_bytes",
        "filter_sram_bytes",
        "ofmap_sram_bytes",
        "mask_bytes",
    )
    for sa, sb in zip(ra.compressed, rb.compressed, strict=True):
        assert_not_more(sb, sa, fields)
    assert_not_more(rb.total_compressed, ra.total_compressed, fields)


@given(models(), archs, st.integers(0, 2**16), ratios)
def test_any_superset_never_adds_compute_cycles_or_operand_traffic(model, arch, seed, extra):
    a, b = mask_pair(model, seed, 0.0, extra, every_site=False)  # A is empty: B adds bitmaps
    ra, rb = simulate(model, arch, a), simulate(model, arch, b)
    for sa, sb in zip(ra.compressed, rb.compressed, strict=True):
        assert sb.compute_cycles <= sa.compute_cycles
        assert sb.macs <= sa.macs
        assert sb.dram_bytes - sb.mask_bytes <= sa.dram_bytes - sa.mask_bytes


@given(models(), archs, st.integers(0, 2**16), st.sampled_from([1.5, 2, 10]))
def test_more_dram_bandwidth_never_adds_cycles(model, arch, seed, factor):
    _, masks = mask_pair(model, seed, 0.3, 0.2, every_site=False)
    slow = simulate(model, arch, masks)
    fast = simulate(model, with_changes(arch, dram_bytes_per_cycle=arch.dram_bytes_per_cycle * factor), masks)
    for side in ("dense", "compressed"):
        for s, f in zip(getattr(slow, side), getattr(fast, side), strict=True):
            assert f.cycles <= s.cycles
            assert f.compute_cycles == s.compute_cycles


@given(models(), archs)
def test_empty_mask_reproduces_dense_exactly(model, arch):
    result = simulate(model, arch, empty_masks(model))
    assert result.compressed == result.dense
    assert result.to_json()["total"]["speedup"] == 1.0


MUTATIONS = {
    "unknown_top": (lambda t: "colour = 3\n" + t, "unknown key colour"),
    "unknown_array": (lambda t: t.replace("[array]\n", "[array]\nbanks = 2\n"), "unknown key [array].banks"),
    "rows": (lambda t: t.replace("rows = 4", "rows = -1"), "[array].rows must be a positive integer, got -1"),
    "dataflow": (lambda t: t.replace('"output_stationary"', '"is"'), "[array].dataflow must be one of"),
    "bits": (lambda t: t.replace("operand_bits = 8", "operand_bits = 12"), "[precision].operand_bits must be"),
    "buffer": (lambda t: t.replace("ifmap_kib = 1", 'ifmap_kib = "big"'), "[buffers].ifmap_kib must be"),
    "bw": (lambda t: t.replace("bytes_per_cycle = 4", "bytes_per_cycle = 0"), "[dram].bytes_per_cycle must be"),
    "pe_weights": (lambda t: t.replace("pe_weights = 1", "pe_weights = 0"), "[array].pe_weights must be"),
    "energy_key": (lambda t: t.replace("[energy]\n", "[energy]\nsram = 1\n"), "unknown key [energy].sram"),
    "energy_pj": (lambda t: t.replace("mac = { pj = 0.5", "mac = { pj = true"), "[energy].mac.pj must be"),
    "energy_extra": (
        lambda t: t.replace('rf = { pj = 1.5, source = "test" }', 'rf = { pj = 1.5, source = "x", n = 1 }'),
        "unknown key [energy].rf.n",
    ),
    "format": (lambda t: t.replace("velcro-arch/1", "velcro-arch/2"), "format must be 'velcro-arch/1'"),
}


@given(st.sets(st.sampled_from(sorted(MUTATIONS)), min_size=1))
def test_bad_toml_lists_every_problem_in_one_error(names):
    text = arch_toml()
    for name in sorted(names):
        text = MUTATIONS[name][0](text)
    with pytest.raises(ArchError) as e:
        parse_arch(text, "bad.toml")
    msg = str(e.value)
    assert msg.startswith(f"bad.toml: {len(names)} problem(s): ")
    for name in names:
        assert MUTATIONS[name][1] in msg, name


def _chunks_by_definition(skip, groups, cols):
    """(needed, live, used) per (group, chunk of `cols` filters), counted filter by filter from
    docs/simulator.md's definitions: pixels with an unmasked element in the chunk, filters with
    one, unmasked elements."""
    kg = skip.shape[0] // groups
    keep = ~skip.reshape(groups, kg, -1)
    n_chunks = -(-kg // cols)
    out = np.zeros((3, groups, n_chunks), np.int64)
    for gi in range(groups):
        for ci in range(n_chunks):
            part = keep[gi, ci * cols : (ci + 1) * cols]
            out[:, gi, ci] = part.any(axis=0).sum(), part.any(axis=1).sum(), part.sum()
    return out


@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 30), st.integers(1, 50), st.data())
def test_column_chunks_count_by_their_definition(groups, kg, pixels, cols, data):
    n = groups * kg * pixels
    skip = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(groups * kg, 1, pixels)
    layer = SimpleNamespace(groups=groups, k=groups * kg, oy=1, ox=pixels, skip=skip)
    got = column_chunks(layer, cols)
    want = _chunks_by_definition(skip, groups, cols)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.int64 and np.array_equal(g, w)


def test_column_chunks_of_a_masked_depthwise_layer_on_wide_columns_take_the_masks_memory():
    """One filter per group on 1024 columns was padded to 1024 filters: MobileNet-V2's masked depthwise
    layers at --batch 1024 asked for 37 GiB and were refused as out of memory."""
    skip = np.random.default_rng(0).random((64, 1, 20000)) < 0.5
    layer = SimpleNamespace(groups=64, k=64, oy=1, ox=20000, skip=skip)
    tracemalloc.start()
    try:
        needed, live, used = column_chunks(layer, 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * skip.nbytes  # padded: 1024 times the mask
    assert needed.tolist() == used.tolist() == [[int(n)] for n in (~skip).sum(axis=(1, 2))]
    assert live.tolist() == [[1]] * 64
