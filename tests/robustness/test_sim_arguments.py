"""`velcro simulate` against hostile accelerator files and arguments: one line, exit 1 or 2, strict JSON.

Each case here ended in a traceback, a silent default or an absurd figure (4.6e18 cycles, bare
Infinity in JSON) before the accelerator fields had plausible ranges (docs/simulator.md).
"""

import json
import os

import pytest
from robust_util import velcro_process

from simulator.arch import ARCH_DIR

GOOD = (ARCH_DIR / "edge16.toml").read_text()

# (edit of edge16.toml, the message part naming the field, its range and the value)
OUT_OF_RANGE = {
    "tiny-bandwidth": (
        ("bytes_per_cycle = 16", "bytes_per_cycle = 1e-320"),
        "[dram].bytes_per_cycle must be from 0.01 to 65,536 (its plausible range), got 1e-320",
    ),
    "huge-rows": (("rows = 16", "rows = 4611686018427387904"), "[array].rows must be from 1 to 1,024"),
    "huge-energy": (
        ("dram = { pj = 325.0,", "dram = { pj = 1e308,"),
        "[energy].dram.pj must be from 0 to 1,000,000 pJ",
    ),
    "tiny-clock": (("clock_mhz = 200", "clock_mhz = 1e-300"), "[array].clock_mhz must be from 1 to 10,000"),
    "huge-buffer": (("ifmap_kib = 32", "ifmap_kib = 1e300"), "[buffers].ifmap_kib must be from 0.0625 to 1,048,576"),
    "huge-lanes": (("lanes = 16", "lanes = 1000000"), "[vector].lanes must be from 1 to 4,096"),
    "huge-pe-weights": (("pe_weights = 1 ", "pe_weights = 1000000000 "), "[array].pe_weights must be from 1 to 65,536"),
    "wide-operands": (("operand_bits = 8", "operand_bits = 1024"), "[precision].operand_bits must be from 8 to 64"),
    # integers too large for a float, in float fields
    "huge-int-buffer": (("ofmap_kib = 32", "ofmap_kib = 1" + "0" * 400), "[buffers].ofmap_kib must be from 0.0625"),
    "huge-int-energy": (("mac = { pj = 0.3,", "mac = { pj = 1" + "0" * 400 + ","), "[energy].mac.pj must be from"),
    # beyond Python's 4300 digits for str(int): written in hex, which TOML reads
    "hex-int-beyond-str": (
        ("cols = 16", "cols = 0x1" + "0" * 4000),
        "[array].cols must be from 1 to 1,024 (its plausible range), got an integer of 16,001 bits",
    ),
}


def arch_file(tmp_path, text, name="accel.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def edited(*edits):
    text = GOOD
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def strict_json(text):
    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_implausible_arch_figure_is_one_error_line(velcro, tmp_path, model_file, case):
    edit, needle = OUT_OF_RANGE[case]
    path = arch_file(tmp_path, edited(edit))
    velcro("simulate", model_file, "--accel", path, "--json").error_line(str(path), "1 problem(s)", needle)


def test_every_implausible_figure_is_listed_at_once(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, edited(*(edit for edit, _ in OUT_OF_RANGE.values())))
    line = velcro("simulate", model_file, "--accel", path).error_line(f"{len(OUT_OF_RANGE)} problem(s)")
    for _, needle in OUT_OF_RANGE.values():
        assert needle in line, needle


def test_deeply_nested_toml_is_one_error_line(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n")
    velcro("simulate", model_file, "--accel", path).error_line(str(path), "nested too deeply")


def test_long_value_is_cut_in_the_message(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, edited(("rows = 16", "rows = " + "[" * 300 + "]" * 300)))
    line = velcro("simulate", model_file, "--accel", path).error_line("[array].rows must be a positive integer")
    assert "got [[[[" in line and "..." in line and len(line) < 300, line


def test_fifo_as_accelerator_is_refused_not_waited_on(tmp_path, model_file):
    fifo = tmp_path / "accel.toml"
    os.mkfifo(fifo)
    velcro_process("simulate", model_file, "--accel", fifo, timeout=60).error_line(str(fifo), "not a regular file")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--sweep", "rows=8", "rows=16"], "--sweep: key 'rows' given twice"),
        (["--sweep", "rows=8,4096"], "--sweep: rows must be from 1 to 1,024 (its plausible range), got 4096"),
        (["--sweep", "clock_mhz=nan,inf"], "clock_mhz must be a positive number, got nan; clock_mhz must be"),
        (["--sweep", "rows=" + ",".join(map(str, range(1, 41))), "cols=" + ",".join(map(str, range(1, 41)))], "1,600"),
        (["--csv", ""], "--csv expects a file name, got ''"),
        (["--plot", ""], "--plot expects a file name, got ''"),
        (["--masks", ""], "--masks expects a file name, got ''"),
        (["--batch", "0"], "--batch must be an integer from 1 to 1024, got 0"),
        (["--batch", "1025"], "--batch must be an integer from 1 to 1024, got 1025"),
        (["--batch", "-3"], "--batch must be an integer from 1 to 1024, got -3"),
    ],
    ids=[
        "sweep-repeated-key",
        "sweep-implausible",
        "sweep-nonfinite",
        "sweep-too-many-points",
        "empty-csv",
        "empty-plot",
        "empty-masks",
        "batch-0",
        "batch-too-large",
        "batch-negative",
    ],
)
def test_bad_arguments_are_usage_errors(velcro, tmp_path, model_file, argv, needle):
    velcro("simulate", model_file, "--accel", "edge16", *argv).error_line(needle, code=2)


def test_empty_accel_is_a_usage_error(velcro, model_file):
    velcro("simulate", model_file, "--accel", "").error_line("--accel expects a preset or file name, got ''", code=2)


EXTREME = edited(
    ("rows = 16", "rows = 1024"),
    ("cols = 16", "cols = 1024"),
    ("clock_mhz = 200", "clock_mhz = 1"),
    ("bytes_per_cycle = 16", "bytes_per_cycle = 0.01"),
    ("ifmap_kib = 32", "ifmap_kib = 0.0625"),
    ("lanes = 16", "lanes = 1"),
    ("dram = { pj = 325.0,", "dram = { pj = 1000000,"),
    ("leakage = { pj = 20.0,", "leakage = { pj = 1000000,"),
)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--masks", "MASKS"],
        ["--masks", "MASKS", "--batch", "8", "--compute-only"],
        ["--sweep", "rows=1,1024", "dataflow=weight_stationary,output_stationary"],
        ["--masks", "MASKS", "--sweep", "dram_bytes_per_cycle=0.01,65536", "--compute-only", "--batch", "3"],
    ],
    ids=["dense", "masked", "batch-compute-only", "sweep", "sweep-masked"],
)
@pytest.mark.parametrize("accel", ["edge16", "EXTREME"])
def test_every_json_output_is_strict_and_finite(velcro, tmp_path, model_file, mask_file, argv, accel):
    accel = arch_file(tmp_path, EXTREME) if accel == "EXTREME" else accel
    argv = [mask_file if a == "MASKS" else a for a in argv]
    res = velcro("simulate", model_file, "--accel", accel, "--json", *argv)
    assert res.code == 0 and res.err == "", res.err
    doc = strict_json(res.out)
    assert "not_finite" not in doc


def test_accumulator_narrower_than_operands_is_listed_with_the_other_problems(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, edited(("rows = 16", "rows = 0"), ("operand_bits = 8", "operand_bits = 64")))
    line = velcro("simulate", model_file, "--accel", path).error_line("2 problem(s)", "[array].rows")
    assert "accumulator_bits (32) must be at least operand_bits (64)" in line


@pytest.mark.parametrize("flag", ["--csv", "--plot"])
def test_an_output_naming_the_accelerator_file_is_refused(velcro, tmp_path, model_file, flag):
    path = arch_file(tmp_path, GOOD)
    velcro("simulate", model_file, "--accel", path, flag, tmp_path / "." / "accel.toml").error_line(
        "names the input", code=2
    )
    assert path.read_text() == GOOD


def test_a_decimal_integer_beyond_pythons_digit_limit_is_one_error_line(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, edited(("clock_mhz = 200", "clock_mhz = 1" + "0" * 5000)))
    velcro("simulate", model_file, "--accel", path).error_line(str(path), "not an accelerator description")


def test_an_output_named_as_a_preset_is_not_taken_for_the_input(velcro, tmp_path, model_file, monkeypatch):
    """No file named edge16 is read: writing one is no clash (it was refused as "names the input")."""
    monkeypatch.chdir(tmp_path)
    assert velcro("simulate", model_file, "--accel", "edge16", "--csv", "edge16").code == 0
    assert (tmp_path / "edge16").read_text().startswith("name,op,")


def test_a_huge_integer_inside_a_list_is_one_error_line(velcro, tmp_path, model_file):
    path = arch_file(tmp_path, edited(("cols = 16", "cols = [0x1" + "0" * 4000 + "]")))
    velcro("simulate", model_file, "--accel", path).error_line(str(path), "[array].cols must be a positive integer")
