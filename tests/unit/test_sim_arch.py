"""Accelerator TOML: presets load, every problem is reported at once, sweeps validate."""

import dataclasses
import re

import pytest
from sim_util import arch_toml

from simulator.arch import ENERGY_KEYS, load_arch, parse_arch, presets, with_changes
from velcro_ref.errors import ArchError

GOOD = arch_toml(2, 3, "weight_stationary", pe=4, lanes=2, energy=dict.fromkeys(ENERGY_KEYS, 1.0))


def test_presets_cover_the_three_required_arrays():
    archs = {p: load_arch(p) for p in presets()}
    shapes = {(a.rows, a.cols, a.dataflow, a.operand_bits) for a in archs.values()}
    assert (16, 16, "output_stationary", 8) in shapes
    assert any(a.rows == 32 and a.cols == 32 and a.dataflow == "weight_stationary" for a in archs.values())
    assert any((a.rows, a.cols) == (12, 14) for a in archs.values())
    for a in archs.values():
        assert set(a.energy_pj) == set(ENERGY_KEYS)
        assert all(len(s) > 10 for s in a.energy_source.values())


def test_good_document_parses():
    a = parse_arch(GOOD, "good.toml")
    assert (a.name, a.rows, a.cols, a.operand_bytes, a.accumulator_bytes) == ("good", 2, 3, 1, 4)
    assert a.pe_weights == 4


def test_every_problem_is_listed_in_one_error():
    bad = (
        GOOD.replace("rows = 2", "rows = 0\ncolour = 1")
        .replace('dataflow = "weight_stationary"', 'dataflow = "row_stationary"')
        .replace('mac = { pj = 1.0, source = "test" }', 'mac = { pj = -1, source = "" }')
        .replace("[vector]\nlanes = 2", "[vectors]\nlanes = 2")
        .replace('format = "velcro-arch/1"', 'format = "velcro-arch/9"\nspeed = 3')
    )
    with pytest.raises(ArchError) as e:
        parse_arch(bad, "bad.toml")
    msg = str(e.value)
    assert msg.startswith("bad.toml: ")
    for part in (
        "[array].rows must be a positive integer, got 0",
        "unknown key [array].colour",
        "[array].dataflow must be one of output_stationary, weight_stationary, got 'row_stationary'",
        "[energy].mac.pj must be a non-negative number, got -1",
        "[energy].mac.source must name the publication",
        "unknown key vectors",
        "[vector] is missing",
        "format must be 'velcro-arch/1'",
        "unknown key speed",
    ):
        assert part in msg, part
    assert "\n" not in msg


def test_missing_energy_entry_and_bad_toml():
    with pytest.raises(ArchError, match=r"\[energy\].leakage is missing"):
        parse_arch(GOOD.replace('leakage = { pj = 1.0, source = "test" }', ""))
    with pytest.raises(ArchError, match=r"\[array\].pe_weights is missing \(a positive integer\)"):
        parse_arch(GOOD.replace("pe_weights = 4\n", ""))
    with pytest.raises(ArchError, match="not valid TOML"):
        parse_arch("rows = = 1", "x.toml")


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ArchError, match="unknown accelerator 'nope'; presets: "):
        load_arch("nope")
    with pytest.raises(ArchError, match="unknown accelerator ''; presets: "):  # not the folder "."
        load_arch("")
    with pytest.raises(ArchError, match="cannot be read"):
        load_arch(tmp_path / "missing.toml")
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    assert load_arch(path).name == "mine"


def test_with_changes_validates_like_a_file():
    a = parse_arch(GOOD)
    assert with_changes(a, rows=8, dataflow="output_stationary").rows == 8
    assert with_changes(a, pe_weights=16).pe_weights == 16
    with pytest.raises(ArchError, match="rows must be a positive integer, got 0; cannot change 'energy'"):
        with_changes(a, rows=0, energy=1)


def test_a_file_with_another_suffix_case_or_none_is_read_as_a_file(tmp_path, monkeypatch):
    """X.TOML and a file without suffix were taken for preset names: "unknown accelerator", exit 2."""
    for name in ("mine.TOML", "mine"):
        path = tmp_path / name
        path.write_text(GOOD)
        assert load_arch(path).name == path.stem
    preset = load_arch("edge16")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edge16").write_text(GOOD)  # a preset's name stays the preset's
    assert load_arch("edge16") == preset != load_arch(tmp_path / "edge16")


def test_a_file_starting_with_a_byte_order_mark_reads_as_without_one(tmp_path):
    """Some editors save UTF-8 with a byte order mark; tomllib refused it ("Invalid statement (at
    line 1, column 1)")."""
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(GOOD, encoding="utf-8")
    marked.write_text(GOOD, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    same = {"name": "", "source": ""}
    assert dataclasses.replace(load_arch(marked), **same) == dataclasses.replace(load_arch(plain), **same)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"dataflow": "row_stationary"}, "[array].dataflow must be one of"),
        ({"operand_bits": 12}, "[precision].operand_bits must be a positive multiple of 8"),
        ({"accumulator_bits": 8, "operand_bits": 16}, "accumulator_bits (8) must be at least operand_bits (16)"),
        ({"rows": 0}, "[array].rows must be a positive integer"),
        ({"clock_mhz": 0}, "[array].clock_mhz must be a positive number"),
        ({"dram_bytes_per_cycle": 0}, "[dram].bytes_per_cycle must be a positive number"),
        ({"energy": ("dram", -325.0)}, "[energy].dram.pj must be a non-negative number"),
        ({"energy": ("sram", 1.0)}, "unknown key [energy].sram"),
        ({"name": None}, "name must be a string"),
    ],
)
def test_an_arch_made_in_code_is_checked_as_a_file_is(change, says):
    """simulate() takes an Arch as it is: one made in code priced an unknown dataflow as weight
    stationary, 12-bit operands as one byte and a negative energy as negative; a zero clock or bandwidth
    raised ZeroDivisionError. It is refused as the same figures in a TOML file are."""
    from dataclasses import fields

    from simulator import Arch

    base = parse_arch(GOOD, "good.toml")
    values = {f.name: getattr(base, f.name) for f in fields(Arch)}
    bad = {**values, **change}
    if "energy" in change:
        key, pj = bad.pop("energy")
        bad["energy_pj"] = {**base.energy_pj, key: pj}
        bad["energy_source"] = {**base.energy_source, key: "test"}
    with pytest.raises(ArchError, match=re.escape(says)):
        Arch(**bad)
    assert Arch(**values) == base  # the unchanged fields pass


def test_an_arch_made_in_code_takes_numpy_numbers_and_copies_its_energies():
    """NumPy numbers pass as they did before the checks (a sweep over np.arange), stored as Python's;
    its energies are read-only copies (an edit after the checks was priced unchecked: a negative
    energy, a NaN) that still pickle, copy and dump to JSON (a read-only mapping did not)."""
    import copy
    import dataclasses
    import json
    import pickle
    from dataclasses import replace

    import numpy as np

    a = parse_arch(GOOD, "good.toml")
    b = replace(a, rows=np.int64(8), clock_mhz=np.float32(250.0), ifmap_kib=np.int32(4))
    assert (b.rows, b.clock_mhz, b.ifmap_kib) == (8, 250.0, 4)
    assert type(b.rows) is int and type(b.clock_mhz) is float and type(b.ifmap_kib) is int
    with pytest.raises(ArchError, match="rows must be a positive integer"):
        replace(a, rows=np.float64(8.0))
    energy = dict(a.energy_pj)
    c = replace(a, energy_pj=energy)
    energy["dram"] = -325.0  # the caller's dict, changed after the check
    assert c.energy_pj["dram"] == 1.0
    for edit in (lambda e: e.__setitem__("dram", -325.0), lambda e: e.update(dram=float("nan")), lambda e: e.clear()):
        with pytest.raises(TypeError, match="read-only"):  # the checked figures are the priced ones
            edit(c.energy_pj)
    assert c.energy_pj["dram"] == 1.0
    for twin in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c), copy.copy(c)):
        assert twin == c
        with pytest.raises(TypeError, match="read-only"):
            twin.energy_pj["dram"] = -325.0
    assert json.loads(json.dumps(c.to_json()))["energy"]["dram"]["pj"] == 1.0
    assert json.loads(json.dumps(dataclasses.asdict(c)))["energy_pj"]["dram"] == 1.0
