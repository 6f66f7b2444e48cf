"""The simulator's text report: units that show every figure, savings only where they mean something,
the mask overhead on lines of its own that add up with the layers to the total; strict JSON."""

import json
import math

import numpy as np
import pytest
from robust_util import zoo_graph

from simulator import simulate
from simulator.report import _bytes, _count, _energy, _saving, _time, json_text
from velcro_ref.engine import Model
from velcro_ref.masks import MaskSet


@pytest.mark.parametrize(
    "pj, shown",
    [
        (0, "0"),
        (0.263, "0.263 pJ"),
        (0.69, "0.690 pJ"),  # three significant digits below 1, trailing zero kept
        (12, "12.00 pJ"),
        (376.3, "376.3 pJ"),
        (999.96, "1.000 nJ"),  # rounds up into the next unit, never "1000.0 pJ"
        (4183, "4.183 nJ"),
        (12.57e6, "12.57 uJ"),
        (418.25e6 + 1, "418.3 uJ"),
        (3.2e9, "3.200 mJ"),
        (5e12, "5.000 J"),
        (9999e12, "9999 J"),
        (221117.4e12, "2.211e+05 J"),  # past the last unit: still 4 significant digits
        (10000e12, "1.000e+04 J"),  # trailing zeros kept, as 0.690 pJ
    ],
)
def test_energy_is_shown_in_the_unit_that_shows_it(pj, shown):
    assert _energy(pj) == shown


@pytest.mark.parametrize(
    "n, shown",
    [
        (0, "0"),
        (6, "6 B"),
        (0.75, "0.750 B"),  # below 1 of the smallest unit: 3 significant digits, as 0.690 pJ
        (0.0048828125, "0.00488 B"),  # a fraction of a byte per image at a batch is not 0
        (123.456, "123.5 B"),
        (999, "999 B"),
        (1000, "0.9766 KiB"),  # 4 significant digits in the larger units
        (1023.5, "0.9995 KiB"),
        (13516.8, "13.20 KiB"),
    ],
)
def test_bytes_are_shown_in_the_unit_that_shows_them(n, shown):
    assert _bytes(n) == shown


def test_time_in_the_unit_that_shows_it():
    assert (_time(0.726), _time(176 / 100e3), _time(5.417)) == ("726.0 us", "1.760 us", "5.417 ms")
    assert (_time(9999e3), _time(216531.2e3), _time(20000e3)) == ("9999 s", "2.165e+05 s", "2.000e+04 s")


@pytest.mark.parametrize("saving, shown", [(None, ""), (0.0, "0.0%"), (0.3, "30.0%"), (-0.5, "-50.0%")])
def test_saving_as_a_percentage_where_defined(saving, shown):
    assert _saving(saving) == shown


def test_a_cost_above_twice_the_dense_one_reads_as_a_multiple():
    # 376 pJ of work against 4183 pJ: 1 - 4183 / 376 = -1012.5%, shown as 11.1 times the dense cost.
    assert _saving(1 - 4183 / 376) == "11.1x dense"
    assert _saving(1 - 250 / 100) == "2.5x dense"  # between twice and three times: -150.0% before
    assert _saving(1 - 200 / 100) == "-100.0%"  # twice the dense cost, the last percentage


def test_json_text_writes_nonfinite_figures_as_null_with_a_reason():
    text, bad = json_text({"a": 1.5, "b": [math.inf, 2], "c": {"d": math.nan}})

    def refuse(constant):
        raise AssertionError(constant)

    doc = json.loads(text, parse_constant=refuse)
    assert doc["a"] == 1.5 and doc["b"] == [None, 2] and doc["c"] == {"d": None}
    assert bad == ["b[0] (inf)", "c.d (nan)"] and doc["not_finite"]["fields"] == bad
    assert "null" in doc["not_finite"]["reason"]


def test_json_text_of_finite_figures_is_json_dumps():
    doc = {"x": [1, 2.5, {"y": "z"}], "w": 0.1}
    assert json_text(doc) == (json.dumps(doc, indent=2) + "\n", [])


@pytest.fixture(scope="module")
def masked_result():
    model = Model(zoo_graph("resnet18", input_size=32, width=0.25, num_classes=10))
    rng = np.random.default_rng(1)
    sites = {s: (rng.random(sh) < 0.4, np.zeros(sh, np.float32)) for s, sh in model.sites.items()}
    return simulate(model, "edge16", MaskSet(model.fingerprint, sites))


@pytest.mark.parametrize("view", ["full", "compute"])
def test_layer_and_mask_lines_add_up_to_the_total(masked_result, view):
    lines = masked_result.lines(view)
    total = lines[-1]
    body = lines[:-1]
    assert total.kind == "total" and {ln.kind for ln in body} == {"layer", "mask"}
    # one mask line per masked site, after the last layer that uses the site
    sites = {layer.site for layer in masked_result.layers if layer.site}
    assert sorted(ln.name for ln in body if ln.kind == "mask") == sorted(f"{s} mask" for s in sites)
    assert sum(ln.energy_pj_vc for ln in body) == pytest.approx(total.energy_pj_vc, rel=1e-12)
    assert sum(ln.dram_bytes_vc for ln in body) == total.dram_bytes_vc
    assert sum(ln.energy_pj for ln in body if ln.kind == "layer") == pytest.approx(total.energy_pj, rel=1e-12)
    full = masked_result.total_compressed.energy_pj if view == "full" else None
    if full is not None:
        assert total.energy_pj_vc == full


def test_the_table_has_no_saving_below_minus_100_percent(masked_result):
    from simulator.report import format_result

    text = format_result(masked_result)
    for line in text.splitlines()[2:-5]:
        cells = line.split()
        if cells[-1].endswith("%"):
            assert float(cells[-1][:-1]) > -100, line


@pytest.mark.parametrize("value, shown", [(12, "12"), (12.0, "12"), (32 / 3, "10.7"), (0.05, "0.1"), (2 / 3, "0.7")])
def test_a_per_image_count_shows_one_decimal_where_the_batch_does_not_divide_it(value, shown):
    assert _count(value) == shown


def test_csv_rows_carry_each_layer_s_own_figures_and_sweep_rows_the_totals(masked_result):
    """A CSV row of layer L holds L's dense and compressed counts (a row shifted by one held its
    neighbour's); a sweep row's energy is the total energy of all components, compute only apart."""
    from simulator.report import result_rows, sweep_rows

    r = masked_result
    rows = result_rows(r, compute_only=True)
    assert [row["name"] for row in rows] == [layer.name for layer in r.layers] + ["total"]
    for row, d, c in zip(rows[:-1], r.dense, r.compressed, strict=True):  # the layer rows
        assert (row["cycles"], row["macs"], row["dram_bytes"]) == (d.cycles, d.macs, d.dram_bytes)
        assert (row["compressed_cycles"], row["compressed_macs"]) == (c.cycles, c.macs)
        assert row["compressed_energy_pj"] == pytest.approx(sum(c.energy.values()), rel=1e-12)
    assert sum(row["compressed_macs"] for row in rows[:-1]) == rows[-1]["compressed_macs"]
    (s,) = sweep_rows([({"rows": 16}, r)], compute_only=True)
    d, c = r.total_dense, r.total_compressed
    assert s["energy_pj"] == pytest.approx(sum(d.energy.values()), rel=1e-12)
    assert s["compressed_energy_pj"] == pytest.approx(sum(c.energy.values()), rel=1e-12)
    assert s["compute_energy_pj"] == d.compute_energy_pj < s["energy_pj"]
    assert s["cycles"] == d.cycles and s["compressed_cycles"] == c.cycles
