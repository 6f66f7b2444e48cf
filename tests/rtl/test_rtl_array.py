"""The reference RTL array (rtl/) driven by RTL vectors, on Icarus Verilog and on Verilator.

Every tile of each layer streams through the array (tests/rtl/cocotb_array.py); every result is
compared bit for bit with the oracle's int32 accumulators and int8 outputs (tests/rtl/rtl_oracle.py),
the MACs the array issued with the executed MACs, and the cycles counted in RTL with the simulator's
cycle model on simulator/archs/rtl_ref.toml, dense and masked.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import rtl_oracle
import rtl_runner

from simulator.arch import load_arch, with_changes
from simulator.simulate import simulate_layer
from simulator.workload import Layer
from velcro_ref.rtl_vectors import read_rtl_vectors, unpack_words, write_rtl_vectors

ROWS, COLS = 8, 8
# After its last fold the array copies the accumulators out (3 cycles), sends one array row per
# cycle (ROWS) through the 3-stage requantizer: docs/rtl.md, "Cycles".
TAIL = 6
# ResNet-18-like layers at a width and size that run in seconds: layer1's 3x3 conv and layer2's
# 1x1 stride-2 downsample at width 16 on 14x14 (uint8 input, ReLU folded into the clamp; once with
# uint8 output too), a MobileNet-V2-like depthwise 3x3, and a layer whose requantization
# parameters sit at the edges of the fixed-point arithmetic.
LAYERS = {
    "layer1.conv3x3": dict(seed=1, c=16, hw=14, k=16, kernel=3, pad=1),
    "layer1.conv3x3.masked": dict(seed=2, c=16, hw=14, k=16, kernel=3, pad=1, mask_ratio=0.3),
    "layer2.downsample1x1": dict(seed=3, c=16, hw=14, k=32, kernel=1, stride=2, in_dtype=np.uint8, relu=True),
    "layer2.downsample1x1.masked": dict(
        seed=4, c=16, hw=14, k=32, kernel=1, stride=2, in_dtype=np.uint8, relu=True, mask_ratio=0.3, structured=True
    ),
    "layer2.downsample1x1.uint8": dict(
        seed=10, c=16, hw=14, k=32, kernel=1, stride=2, in_dtype=np.uint8, out_dtype=np.uint8, relu=True
    ),
    "dw3x3": dict(seed=5, c=32, hw=7, k=32, kernel=3, pad=1, groups=32),
    "dw3x3.masked": dict(seed=6, c=32, hw=7, k=32, kernel=3, pad=1, groups=32, mask_ratio=0.3),
    "requant_edges": dict(seed=7, c=4, hw=4, k=16, kernel=1, requant_edges=True),
}


@pytest.fixture(scope="module")
def layers():
    return {name: rtl_oracle.make_layer(name, **kw) for name, kw in LAYERS.items()}


@pytest.fixture(scope="module")
def vector_dirs(layers, tmp_path_factory):
    root = tmp_path_factory.mktemp("rtl_vectors")
    dirs = {}
    for name, layer in layers.items():
        write_rtl_vectors(layer, root / name, ROWS, COLS)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="module", params=rtl_runner.SIMULATORS)
def rtl_results(request, vector_dirs, tmp_path_factory):
    """One simulation per simulator streaming every layer; {layer: result}."""
    sim = request.param
    rtl_runner.require(sim)
    build_dir = tmp_path_factory.mktemp(f"build_{sim}")
    runner = rtl_runner.build(sim, "velcro_os_array", build_dir, {"ROWS": ROWS, "COLS": COLS})
    results = rtl_runner.run(
        runner, "velcro_os_array", "cocotb_array", build_dir, {"layers": [str(d) for d in vector_dirs.values()]}
    )
    return sim, {r["layer"]: r for r in results}


def test_every_output_is_bit_exact(rtl_results):
    sim, results = rtl_results
    assert set(results) == set(LAYERS)
    problems = [p for r in results.values() for p in r["mismatches"]]
    assert not problems, f"{sim}: " + "\n".join(problems[:20])
    for r in results.values():
        assert r["rows_compared"] == r["tiles"] * ROWS


def test_issued_macs_equal_executed_macs(rtl_results, layers):
    sim, results = rtl_results
    for name, layer in layers.items():
        k, cg, kh, kw = layer.weight.shape
        unmasked = layer.acc.size - (0 if layer.skip is None else int(layer.skip.sum()))
        assert results[name]["macs"] == unmasked * cg * kh * kw, (sim, name)


def _sim_layer(layer) -> Layer:
    k, cg, kh, kw = layer.weight.shape
    _, oh, ow = layer.acc.shape
    skip = None if layer.skip is None else layer.skip.reshape(k, oh * ow)
    return Layer(
        layer.name, "conv2d", "array", k, cg, oh, ow, kh, kw,
        groups=layer.groups, in_elems=layer.x.size, macs=k * oh * ow * cg * kh * kw, skip=skip,
    )  # fmt: skip


def test_rtl_cycles_match_the_simulator(rtl_results, layers):
    """Per layer, dense and masked: the cycles from a layer's first operand row to the array's
    readiness for another tile equal the simulator's compute cycles on rtl_ref.toml; the last
    result leaves ROWS + TAIL cycles later (docs/simulator.md, "RTL agreement")."""
    sim, results = rtl_results
    arch = load_arch("rtl_ref")
    assert (arch.rows, arch.cols, arch.dataflow) == (ROWS, COLS, "output_stationary")
    lines = []
    for name, layer in layers.items():
        model = simulate_layer(_sim_layer(layer), arch).compute_cycles
        r = results[name]
        lines.append(
            f"{sim} {name}: simulator {model}; RTL folds {r['cycles_issue']} "
            f"({(r['cycles_issue'] - model) / model:+.2%}), to the last result {r['cycles_total']} "
            f"({(r['cycles_total'] - model) / model:+.2%}); {r['seconds']} s"
        )
        assert r["cycles_issue"] == model, lines[-1]
        assert r["cycles_total"] == model + ROWS + TAIL, lines[-1]
    print("\n".join(lines))


def test_masks_that_empty_folds_save_cycles_in_rtl(rtl_results):
    """Depthwise chunks hold one filter, so a masked pixel drops out of its fold: fewer cycles."""
    _, results = rtl_results
    for dense, masked in (("dw3x3", "dw3x3.masked"), ("layer2.downsample1x1", "layer2.downsample1x1.masked")):
        assert results[masked]["cycles_total"] < results[dense]["cycles_total"]


def test_a_wrong_expected_value_is_reported_with_layer_tile_element_and_both_values(layers, tmp_path):
    """A corrupted expected output fails the run, and the report names the layer, the tile, the
    PE, the output element and both values."""
    rtl_runner.require("icarus")
    layer = layers["requant_edges"]
    vec_dir = tmp_path / "vectors"
    write_rtl_vectors(layer, vec_dir, ROWS, COLS)
    vec = read_rtl_vectors(vec_dir)
    n, c = 2 * ROWS + 3, 5  # tile 2, array row 3, column 5
    words = vec.words("tile_out")
    lanes = unpack_words([words[n]], COLS, 8, True)[0]
    true_value = int(lanes[c])
    wrong = (true_value + 77 + 128) % 256 - 128  # another int8 value
    words[n] = (words[n] & ~(0xFF << (8 * c))) | ((wrong & 0xFF) << (8 * c))
    (vec_dir / "tile_out.hex").write_text("".join(f"{w:016x}\n" for w in words))
    tile = vec.tiles[2]
    k, oy, ox = tile.element(3, c, layer.acc.shape[2])

    build_dir = tmp_path / "build"
    runner = rtl_runner.build("icarus", "velcro_os_array", build_dir, {"ROWS": ROWS, "COLS": COLS})
    with pytest.raises(SystemExit):  # cocotb's runner: the test failed
        rtl_runner.run(runner, "velcro_os_array", "cocotb_array", build_dir, {"layers": [str(vec_dir)]})
    results = (build_dir / "velcro_results.json").read_text()
    expected = (
        f"layer requant_edges: tile 2, PE (r=3, c={c}), output element (k={k}, oy={oy}, ox={ox}): "
        f"output expected {wrong}, RTL {true_value}"
    )
    assert expected in results
    assert results.count("expected") == 1


def test_other_array_shapes_stream_partial_tiles(tmp_path):
    """A 3x5 array (Icarus): 7 filters in chunks of 5 and 2, 36 pixels in folds of 3, masked."""
    rtl_runner.require("icarus")
    layer = rtl_oracle.make_layer("small.masked", seed=8, c=4, hw=6, k=7, kernel=3, pad=1, mask_ratio=0.3)
    write_rtl_vectors(layer, tmp_path / "v", 3, 5)
    build_dir = tmp_path / "build"
    runner = rtl_runner.build("icarus", "velcro_os_array", build_dir, {"ROWS": 3, "COLS": 5})
    (r,) = rtl_runner.run(runner, "velcro_os_array", "cocotb_array", build_dir, {"layers": [str(tmp_path / "v")]})
    assert r["mismatches"] == []
    model = simulate_layer(_sim_layer(layer), with_changes(load_arch("rtl_ref"), rows=3, cols=5)).compute_cycles
    assert (r["cycles_issue"], r["cycles_total"]) == (model, model + 3 + TAIL)


def test_the_rtl_lints_clean_with_verilator():
    rtl_runner.require("verilator")

    for params in ([], ["-GROWS=3", "-GCOLS=5"], ["-GROWS=2", "-GCOLS=16"]):
        p = subprocess.run(
            [shutil.which("verilator"), "--lint-only", "-Wall", *params, "--top-module", "velcro_os_array",
             *map(str, rtl_runner.SOURCES)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert p.returncode == 0 and not p.stderr.strip(), p.stderr
