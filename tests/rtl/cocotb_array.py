"""cocotb testbench of rtl/velcro_os_array.v: streams every tile of each vector directory through the
array and compares every result row with the expected accumulators and outputs, bit for bit.

Run by tests/rtl/test_rtl_array.py through cocotb's runner. The environment variable
VELCRO_RTL_RUN holds JSON {"layers": [vector dirs], "results": path}: per layer the results file
gets the cycle counts, the MACs the array issued and every mismatch (layer, tile, PE, output
element, expected and RTL values).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from velcro_ref.rtl_vectors import read_rtl_vectors, unpack_words

MAX_REPORTED = 20


def _u(value: int, bits: int) -> int:
    return value & ((1 << bits) - 1)


def _read(handle):
    """Unsigned integer value of a signal, or None where it holds x or z."""
    try:
        return handle.value.integer
    except ValueError:
        return None


async def _reset(dut, quant):
    dut.rst_n.value = 0
    dut.in_valid.value = 0
    dut.in_last.value = 0
    dut.in_act.value = 0
    dut.in_wgt.value = 0
    for name in ("tile_skip", "tile_const", "tile_bias", "tile_mult", "tile_shift"):
        getattr(dut, name).value = 0
    dut.cfg_in_signed.value = int(quant["input_dtype"] == "int8")
    dut.cfg_in_zero_point.value = _u(quant["input_zero_point"], 9)
    dut.cfg_out_zero_point.value = _u(quant["output_zero_point"], 9)
    dut.cfg_out_min.value = _u(quant["output_min"], 9)
    dut.cfg_out_max.value = _u(quant["output_max"], 9)
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst_n.value = 1
    await FallingEdge(dut.clk)


def _describe(vec, tile, r, c, what, want, got):
    ow = vec.manifest["conv"]["out_width"]
    k, oy, ox = tile.element(r, c, ow)
    return (
        f"layer {vec.layer}: tile {tile.index}, PE (r={r}, c={c}), output element (k={k}, oy={oy}, ox={ox}): "
        f"{what} expected {want}, RTL {got}"
    )


async def run_layer(dut, vec) -> dict:
    """Stream all tiles of `vec`; returns cycle counts, issued MACs and mismatch reports."""
    q = vec.manifest["quant"]
    rows, cols, window = vec.rows, vec.cols, vec.window
    n_tiles = len(vec.tiles)
    await _reset(dut, q)
    act, wgt = vec.words("tile_act"), vec.words("tile_wgt")
    cfg = {name: vec.words(f"tile_{name}") for name in ("skip", "const", "bias", "mult", "shift")}
    mac0 = _read(dut.mac_count)
    start = time.perf_counter()

    got = []  # (out_row, acc word, q word, skip word) per result row
    tile = t = cycle = 0
    first = ready_again = last_out = None
    budget = n_tiles * (window + rows + cols) + 4 * (rows + cols) + 64
    while len(got) < n_tiles * rows:
        await FallingEdge(dut.clk)
        if dut.out_valid.value == 1:
            got.append((_read(dut.out_row), _read(dut.out_acc), _read(dut.out_q), _read(dut.out_skip)))
            last_out = cycle
        ready = dut.in_ready.value == 1
        if tile < n_tiles and ready:
            if t == 0:
                for name in ("skip", "const", "bias", "mult", "shift"):
                    getattr(dut, f"tile_{name}").value = cfg[name][tile]
            i = tile * window + t
            dut.in_act.value = act[i]
            dut.in_wgt.value = wgt[i]
            dut.in_last.value = int(t == window - 1)
            dut.in_valid.value = 1
            first = cycle if first is None else first
            t += 1
            if t == window:
                t, tile = 0, tile + 1
        else:
            dut.in_valid.value = 0
            if tile == n_tiles and ready and ready_again is None:
                ready_again = cycle
        cycle += 1
        if cycle > budget:
            break
    macs = (_read(dut.mac_count) - mac0) % 2**32

    problems = _compare(vec, got)
    if len(got) < n_tiles * rows:
        problems.insert(0, f"layer {vec.layer}: {len(got)} of {n_tiles * rows} result rows after {cycle} cycles")
    return {
        "layer": vec.layer,
        "tiles": n_tiles,
        "cycles_issue": None if ready_again is None else ready_again - first,
        "cycles_total": None if last_out is None else last_out - first + 1,
        "macs": macs,
        "rows_compared": len(got),
        "seconds": round(time.perf_counter() - start, 2),
        "mismatches": problems,
    }


def _compare(vec, got) -> list[str]:
    """Every result row against tile_acc/tile_out, then every output element of the layer
    against acc.hex/output.hex through the manifest's tile map."""
    rows, cols = vec.rows, vec.cols
    conv = vec.manifest["conv"]
    k, oh, ow = conv["out_channels"], conv["out_height"], conv["out_width"]
    want_acc, want_out = vec.words("tile_acc"), vec.words("tile_out")
    acc_signed = True
    out_signed = vec.manifest["files"]["tile_out"]["signed"]
    problems = []
    rtl_acc = np.zeros((k, oh, ow), np.int64)
    rtl_out = np.zeros((k, oh, ow), np.int64)
    seen = np.zeros((k, oh, ow), np.int64)
    for n, (row, acc_w, q_w, skip_w) in enumerate(got):
        tile = vec.tiles[n // rows]
        r = n % rows
        if row != r or None in (acc_w, q_w, skip_w):
            problems.append(
                f"layer {vec.layer}: tile {tile.index}: result row {r} came out as row {row} "
                f"(acc {acc_w}, out {q_w}, skip {skip_w})"
            )
            continue
        a = unpack_words([acc_w], cols, 32, acc_signed)[0]
        o = unpack_words([q_w], cols, 8, out_signed)[0]
        wa = unpack_words([want_acc[n]], cols, 32, acc_signed)[0]
        wo = unpack_words([want_out[n]], cols, 8, out_signed)[0]
        for c in range(cols):
            active = r < len(tile.pixels) and c < tile.n_cols
            if a[c] != wa[c]:
                problems.append(
                    _describe(vec, tile, r, c, "acc", int(wa[c]), int(a[c]))
                    if active
                    else f"layer {vec.layer}: tile {tile.index}, unused PE (r={r}, c={c}): acc expected "
                    f"{int(wa[c])}, RTL {int(a[c])}"
                )
            if o[c] != wo[c]:
                problems.append(
                    _describe(vec, tile, r, c, "output", int(wo[c]), int(o[c]))
                    if active
                    else f"layer {vec.layer}: tile {tile.index}, unused PE (r={r}, c={c}): output expected "
                    f"{int(wo[c])}, RTL {int(o[c])}"
                )
            if active and not (skip_w >> c) & 1:
                kk, oy, ox = tile.element(r, c, ow)
                rtl_acc[kk, oy, ox], rtl_out[kk, oy, ox] = a[c], o[c]
                seen[kk, oy, ox] += 1
    skip = vec.tensor("skip")
    exp_acc, exp_out, const = vec.tensor("acc"), vec.tensor("output"), vec.tensor("constants")
    rtl_out = np.where(skip, const, rtl_out)  # masked elements: the constant table, never computed
    for kk, oy, ox in np.argwhere(~skip & (seen != 1))[:MAX_REPORTED]:
        problems.append(
            f"layer {vec.layer}: output element (k={kk}, oy={oy}, ox={ox}) computed "
            f"{seen[kk, oy, ox]} times, expected once"
        )
    for kk, oy, ox in np.argwhere(~skip & (seen == 1) & ((rtl_acc != exp_acc) | (rtl_out != exp_out)))[:MAX_REPORTED]:
        problems.append(
            f"layer {vec.layer}: output element (k={kk}, oy={oy}, ox={ox}): acc/output expected "
            f"{exp_acc[kk, oy, ox]}/{exp_out[kk, oy, ox]}, RTL {rtl_acc[kk, oy, ox]}/{rtl_out[kk, oy, ox]}"
        )
    return problems


@cocotb.test()
async def stream_layers(dut):
    """Every tile of every layer, bit-exact; cycle counts and issued MACs to the results file."""
    run = json.loads(os.environ["VELCRO_RTL_RUN"])
    cocotb.start_soon(Clock(dut.clk, 2, units="step").start())
    results = []
    for path in run["layers"]:
        results.append(await run_layer(dut, read_rtl_vectors(path)))
    Path(run["results"]).write_text(json.dumps(results, indent=1))
    problems = [p for r in results for p in r["mismatches"]]
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:MAX_REPORTED])
