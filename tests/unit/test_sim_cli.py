"""`velcro simulate`: table, JSON, CSV, plot, sweep and one-line errors."""

import csv
import json

import numpy as np
import pytest
from robust_util import zoo_graph

import velcro_ref.cli as vcli
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet, save_masks
from velcro_ref.model_io import save_model

LAYER_FIELDS = {"name", "op", "macs", "compute_cycles", "stall_cycles", "cycles", "energy_pj"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    graph = zoo_graph("resnet18", input_size=32, width=0.25, num_classes=10)
    save_model(graph, d / "m.h5")
    model = Model(graph)
    rng = np.random.default_rng(0)
    sites = {s: (rng.random(sh) < 0.5, np.zeros(sh, np.float32)) for s, sh in model.sites.items()}
    save_masks(MaskSet(model.fingerprint, sites), d / "masks.h5")
    return d


def run(capsys, *argv):
    code = vcli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_without_masks_has_flat_layer_entries(files, capsys):
    code, out, _ = run(capsys, "simulate", files / "m.h5", "--accel", "edge16", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) >= {"layers", "total"}
    assert all(LAYER_FIELDS <= set(entry) for entry in doc["layers"])
    assert doc["total"]["macs"] == sum(e["macs"] for e in doc["layers"])


def test_json_with_masks_has_dense_and_compressed(files, capsys):
    code, out, _ = run(capsys, "simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", "ws32", "--json")
    assert code == 0
    doc = json.loads(out)
    for entry in doc["layers"]:
        assert LAYER_FIELDS - {"name", "op"} <= set(entry["dense"]) and {"name", "op"} <= set(entry)
        assert LAYER_FIELDS - {"name", "op"} <= set(entry["compressed"])
    total = doc["total"]
    assert total["macs_saved"] == total["dense"]["macs"] - total["compressed"]["macs"] > 0
    assert total["speedup"] >= 1.0 and 0 < total["energy_saving"] < 1


def test_table_csv_and_plot(files, capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "simulate",
        files / "m.h5",
        "--masks",
        files / "masks.h5",
        "--accel",
        "eyeriss",
        "--csv",
        tmp_path / "r.csv",
        "--plot",
        tmp_path / "r.png",
    )
    assert code == 0
    assert "speedup" in out and "macs_saved" in out and out.count("\n") > 20
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert rows[-1]["name"] == "total" and "compressed_cycles" in rows[0]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("compute_only", [False, True])
def test_csv_rows_carry_the_comparisons_of_the_json(files, capsys, tmp_path, compute_only):
    extra = ["--compute-only"] if compute_only else []
    argv = ["simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", "edge16", *extra]
    code, out, _ = run(capsys, *argv, "--json", "--csv", tmp_path / "r.csv")
    assert code == 0
    doc, rows = json.loads(out), list(csv.DictReader(open(tmp_path / "r.csv")))
    keys = ["macs_saved", "speedup", "energy_saving"] + (["compute_energy_saving"] if compute_only else [])
    for entry, row in zip([*doc["layers"], doc["total"]], rows, strict=True):
        assert [float(row[k]) for k in keys] == [float(entry[k]) for k in keys], row["name"]


@pytest.mark.parametrize("batch", ["1", "4"])
def test_csv_total_carries_the_latencies_of_the_json(files, capsys, tmp_path, batch):
    argv = ["simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", "edge16", "--batch", batch]
    code, out, _ = run(capsys, *argv, "--json", "--csv", tmp_path / "r.csv")
    assert code == 0
    total, row = json.loads(out)["total"], list(csv.DictReader(open(tmp_path / "r.csv")))[-1]
    keys = ["latency_ms"] + (["batch_latency_ms"] if batch != "1" else [])
    for side, prefix in (("dense", ""), ("compressed", "compressed_")):
        assert [float(row[prefix + k]) for k in keys] == [total[side][k] for k in keys]
    assert ("batch_latency_ms" in row) == (batch != "1")


@pytest.mark.parametrize("batch", ["1", "4"])
def test_sweep_csv_and_table_carry_the_latencies_of_the_json(files, capsys, tmp_path, batch):
    argv = ["simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", "edge16", "--batch", batch]
    argv += ["--sweep", "clock_mhz=100,200"]
    code, out, _ = run(capsys, *argv, "--json", "--csv", tmp_path / "s.csv")
    assert code == 0
    points, rows = json.loads(out)["points"], list(csv.DictReader(open(tmp_path / "s.csv")))
    keys = ["latency_ms"] + (["batch_latency_ms"] if batch != "1" else [])
    for point, row in zip(points, rows, strict=True):
        for side, prefix in (("dense", ""), ("compressed", "compressed_")):
            assert [float(row[prefix + k]) for k in keys] == [point[side][k] for k in keys]
    code, out, _ = run(capsys, *argv)
    header = out.splitlines()[0].split()
    assert "latency" in header and ("batch_latency" in header) == (batch != "1")


def test_sweep_prints_every_point(files, capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "simulate",
        files / "m.h5",
        "--accel",
        "edge16",
        "--sweep",
        "rows=8,16",
        "cols=4,8",
        "dataflow=weight_stationary",
        "--csv",
        tmp_path / "s.csv",
        "--plot",
        tmp_path / "s.png",
    )
    assert code == 0
    assert len(out.strip().splitlines()) == 2 + 4
    assert len(list(csv.DictReader(open(tmp_path / "s.csv")))) == 4
    assert (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--accel", "nope"], "error: unknown accelerator 'nope'; presets: "),
        (["--accel", "edge16", "--sweep", "depth=3"], "error: --sweep: unknown key 'depth'"),
        (["--accel", "edge16", "--sweep", "rows=a"], "error: --sweep: rows expects int values"),
        (["--accel", "edge16", "--sweep", "rows=0"], "rows must be a positive integer, got 0"),
        (["--accel", "edge16", "--sweep", "rows=8,16,8"], "error: --sweep: rows gives 8 twice"),
        (["--accel", "edge16", "--sweep", "dataflow=weight_stationary,weight_stationary"], "gives weight_stationary"),
    ],
)
def test_errors_are_one_line(files, capsys, argv, message):
    code, out, err = run(capsys, "simulate", files / "m.h5", *argv)
    assert code != 0 and out == ""
    assert message in err and err.count("\n") == 1


def test_masks_of_another_model_are_refused(files, capsys, tmp_path):
    other = zoo_graph("resnet18", input_size=32, width=0.25, num_classes=10, seed=9)
    save_model(other, tmp_path / "other.h5")
    code, _, err = run(capsys, "simulate", tmp_path / "other.h5", "--masks", files / "masks.h5", "--accel", "edge16")
    assert code == 1 and "masks were made for model" in err


def test_help(capsys):
    assert vcli.main(["simulate", "--help"]) == 0
    assert "--sweep" in capsys.readouterr().out


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5), (7,)])
def test_a_model_of_tensors_of_any_rank_is_priced_per_element(tmp_path, capsys, shape):
    """The engine runs element-wise models on tensors of rank 2 or 4; simulate gave a traceback
    (a loop nest unpacked three axes), with masks as without."""
    graph = Graph((Node("a", "add", (INPUT, INPUT)), Node("r", "relu", ("a",))), shape, "r", {})
    save_model(graph, tmp_path / "m.h5")
    model = Model(graph)
    mask = np.zeros(shape, bool)
    mask.reshape(-1)[::3] = True
    save_masks(MaskSet(model.fingerprint, {"r": (mask, np.zeros(shape, np.float32))}), tmp_path / "k.h5")
    code, out, err = run(
        capsys, "simulate", tmp_path / "m.h5", "--accel", "edge16", "--masks", tmp_path / "k.h5", "--json"
    )
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    n = int(np.prod(shape))
    for name in ("a", "r"):
        loops = layers[name]["loops"]
        assert loops["k"] * loops["oy"] * loops["ox"] == n
        assert layers[name]["dense"]["ops"] == n
    assert layers["r"]["compressed"]["ops"] == n - int(mask.sum())  # the site skips its masked elements


def test_the_sweep_table_leaves_an_undefined_saving_blank_as_the_layer_table_does(files, tmp_path, capsys):
    """With every energy 0 the saving is undefined: the report said so, the sweep table printed 0.0%
    (the JSON's stand-in, which JSON and CSV keep)."""
    from sim_util import ENERGY_KEYS, arch_toml

    arch = tmp_path / "zero.toml"
    arch.write_text(arch_toml(energy={k: 0 for k in ENERGY_KEYS}))
    args = ("simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", arch, "--compute-only")
    code, out, err = run(capsys, *args, "--sweep", "rows=4,8", "--csv", tmp_path / "s.csv")
    assert code == 0, err
    header, _, *rows = out.splitlines()
    at = header.index("energy_saving")
    assert len(rows) == 2 and all(r[at : at + len("energy_saving")].strip() == "" for r in rows), out
    assert "%" not in out, out
    with open(tmp_path / "s.csv") as f:
        assert {r["energy_saving"] for r in csv.DictReader(f)} == {"0.0"}  # the stand-in, as in the JSON


def test_python_m_simulator_cli_runs_velcro_simulate(files):
    """`python -m simulator.cli ARGS` ran nothing and exited 0 whatever ARGS said."""
    import subprocess
    import sys

    args = [files / "m.h5", "--accel", "edge16", "--json"]
    ran = [subprocess.run([sys.executable, "-m", m, *cmd, *map(str, args)], capture_output=True, text=True)
           for m, cmd in (("simulator.cli", []), ("velcro_ref.cli", ["simulate"]))]  # fmt: skip
    assert [r.returncode for r in ran] == [0, 0], ran[0].stderr
    assert ran[0].stdout == ran[1].stdout and json.loads(ran[0].stdout)["layers"]
    bad = subprocess.run([sys.executable, "-m", "simulator.cli", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("error: ") == 1, bad.stderr
