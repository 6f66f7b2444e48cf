"""Toggle counts of the reference array (Icarus, VCD) dense and masked, beside the simulator's energy.

A PE whose output element is masked in every tile never toggles its multiplier inputs, its
accumulator or its result register; masking cuts the toggles of the others with the MACs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import rtl_oracle
import rtl_runner

from simulator.arch import load_arch
from simulator.simulate import simulate_layer
from simulator.workload import Layer
from velcro_ref.rtl_vectors import QConvLayer, write_rtl_vectors

PE_SCOPE = re.compile(r"g_pe_row\[(\d+)\]\.g_pe\[(\d+)\]\.pe$")
WATCHED = ("op_a", "op_w", "acc", "result")


def pe_toggles(vcd: Path) -> dict:
    """{(row, col, signal): 0<->1 bit flips} of the watched registers of every PE in a VCD file."""
    names = {}  # id code -> (row, col, signal)
    scope = []
    lines = iter(vcd.read_text().splitlines())
    for line in lines:
        words = line.split()
        if words[:1] == ["$scope"]:
            scope.append(words[2])
        elif words[:1] == ["$upscope"]:
            scope.pop()
        elif words[:1] == ["$var"]:
            m = PE_SCOPE.search(".".join(scope))
            if m and words[4] in WATCHED:
                names[words[3]] = (int(m[1]), int(m[2]), words[4])
        elif words[:1] == ["$enddefinitions"]:
            break
    last, flips = {}, defaultdict(int)
    for line in lines:
        if not line or line[0] in "#$":
            continue
        if line[0] == "b":
            value, code = line[1:].split()
        else:
            value, code = line[0], line[1:]
        if code not in names:
            continue
        old = last.get(code)
        if old is not None:
            width = max(len(old), len(value))
            a, b = old.rjust(width, "0"), value.rjust(width, "0")
            flips[names[code]] += sum(1 for x, y in zip(a, b, strict=True) if x != y and x in "01" and y in "01")
        last[code] = value
    for key in names.values():
        flips.setdefault(key, 0)
    return dict(flips)


def _sim_layer(layer) -> Layer:
    k, cg, kh, kw = layer.weight.shape
    _, oh, ow = layer.acc.shape
    skip = None if layer.skip is None else layer.skip.reshape(k, oh * ow)
    macs = k * oh * ow * cg * kh * kw
    return Layer(layer.name, "conv2d", "array", k, cg, oh, ow, kh, kw, in_elems=layer.x.size, macs=macs, skip=skip)


def test_masked_pes_do_not_toggle_and_toggles_fall_with_the_macs(tmp_path):
    rtl_runner.require("icarus")
    shape = dict(seed=9, c=4, hw=6, k=8, kernel=3, pad=1)
    dense = rtl_oracle.make_layer("toggles.dense", **shape)
    drawn = rtl_oracle.make_layer("toggles.masked", **shape, mask_ratio=0.3)
    skip = drawn.skip.copy()
    skip[[2, 5]] = True  # filters 2 and 5 (array columns 2 and 5) masked everywhere
    masked = QConvLayer(**{**drawn.__dict__, "skip": skip, "y": np.where(skip, drawn.constants, dense.y)})
    np.testing.assert_array_equal(masked.x, dense.x)  # same data, only the mask differs

    build_dir = tmp_path / "build"
    vcd = rtl_runner.HERE / "vcd_dump.v"
    runner = rtl_runner.build("icarus", "velcro_os_array", build_dir, {"ROWS": 8, "COLS": 8}, [vcd])
    toggles, results = {}, {}
    for layer in (dense, masked):
        write_rtl_vectors(layer, tmp_path / layer.name, 8, 8)
        (r,) = rtl_runner.run(
            runner, "velcro_os_array", "cocotb_array", build_dir, {"layers": [str(tmp_path / layer.name)]}
        )
        assert r["mismatches"] == []
        toggles[layer.name] = pe_toggles(build_dir / "velcro_array.vcd")
        results[layer.name] = r

    assert len(toggles["toggles.masked"]) == 8 * 8 * len(WATCHED)
    quiet = {key: n for key, n in toggles["toggles.masked"].items() if key[1] in (2, 5)}
    assert quiet and all(n == 0 for n in quiet.values()), {k: n for k, n in quiet.items() if n}
    assert all(toggles["toggles.dense"][(r, c, s)] > 0 for r in range(8) for c in (2, 5) for s in ("op_a", "op_w"))

    arch = load_arch("rtl_ref")
    lines = []
    for layer in (dense, masked):
        t = toggles[layer.name]
        mult = sum(n for (_, _, s), n in t.items() if s in ("op_a", "op_w"))
        acc = sum(n for (_, _, s), n in t.items() if s == "acc")
        energy = simulate_layer(_sim_layer(layer), arch).energy
        lines.append(
            f"{layer.name}: MACs {results[layer.name]['macs']}, multiplier-input toggles {mult}, "
            f"accumulator toggles {acc}; simulator mac {energy['mac']:.1f} pJ, rf {energy['rf']:.1f} pJ"
        )
    print("\n".join(lines))
    t_dense, t_masked = (
        sum(n for (_, _, s), n in toggles[name].items() if s in ("op_a", "op_w"))
        for name in ("toggles.dense", "toggles.masked")
    )
    assert t_masked < t_dense
