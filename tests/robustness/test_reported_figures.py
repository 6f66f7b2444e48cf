"""Figures the commands print or draw, against what they stand for: a parameter shared by several
nodes, golden-vector groups past 999 nodes, the sweep's plot and text table."""

import json

import h5py
import numpy as np
from robust_util import ROOT

from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.model_io import save_model

CONV = {"out_channels": 2, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0, 0, 0, 0], "groups": 1}


def test_info_counts_a_parameter_shared_by_several_nodes_once(velcro, tmp_path):
    """Three convs (one dead) read one 4-value weight: the file stores 4 values, not 12."""
    nodes = (
        Node("c1", "conv2d", (INPUT,), CONV, {"weight": "w"}),
        Node("c2", "conv2d", ("c1",), CONV, {"weight": "w"}),
        Node("dead", "conv2d", ("c1",), CONV, {"weight": "w"}),
        Node("flat", "flatten", ("c2",)),
    )
    save_model(Graph(nodes, (2, 3, 3), "flat", {"w": np.ones((2, 2, 1, 1), np.float32)}), tmp_path / "s.h5")
    res = velcro("info", tmp_path / "s.h5", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["total_params"] == 4


def test_golden_groups_list_in_execution_order_past_999_nodes(velcro, tmp_path):
    """`/nodes/<k>_<name>`: k was padded to at least 3 digits, so 1000_r1000 listed before 100_r100."""
    nodes = [Node(f"r{i}", "relu", (f"r{i - 1}" if i else INPUT,)) for i in range(1003)]
    save_model(Graph((*nodes, Node("flat", "flatten", ("r1002",))), (1, 2, 2), "flat"), tmp_path / "big.h5")
    np.save(tmp_path / "x.npy", np.ones((1, 1, 2, 2), np.float32))
    res = velcro("golden", tmp_path / "big.h5", "--input", tmp_path / "x.npy", "-o", tmp_path / "g.h5")
    assert res.code == 0, res.err
    with h5py.File(tmp_path / "g.h5") as f:
        order = json.loads(f.attrs["node_order"])
        listed = list(f["nodes"])  # HDF5 lists a group's members by name
    assert [name.split("_", 1)[1] for name in listed] == order
    assert listed[0] == "0000_r0" and listed[-1] == "1003_flat"


def test_golden_warns_of_nodes_whose_outputs_hold_nan_or_inf_and_lists_them(velcro, tmp_path):
    """A conv overflowing float32 inside the network wrote inf into the vectors with exit 0 and no word;
    the relu6 after it hides it from the output."""
    nodes = (
        Node("c1", "conv2d", (INPUT,), CONV, {"weight": "w"}),
        Node("r1", "relu6", ("c1",)),
        Node("flat", "flatten", ("r1",)),
    )
    w = np.array([3e38, 3e38, 1.0, 1.0], np.float32).reshape(2, 2, 1, 1)
    save_model(Graph(nodes, (2, 3, 3), "flat", {"w": w}), tmp_path / "m.h5")
    np.save(tmp_path / "x.npy", np.full((1, 2, 3, 3), 2.0, np.float32))
    res = velcro("golden", tmp_path / "m.h5", "--input", tmp_path / "x.npy", "-o", tmp_path / "g.h5")
    assert res.code == 0, res.err
    (line,) = res.err.splitlines()
    assert line.startswith("warning: 1 node output(s) hold NaN or Inf, first 'c1'"), line
    with h5py.File(tmp_path / "g.h5") as f:
        assert json.loads(f.attrs["nonfinite_nodes"]) == ["c1"]
        assert np.isinf(f["nodes/000_c1/output"][0, 0]).all() and np.isfinite(f["nodes/001_r1/output"]).all()
    np.save(tmp_path / "x.npy", np.full((1, 2, 3, 3), 1e-38, np.float32))
    res = velcro("golden", tmp_path / "m.h5", "--input", tmp_path / "x.npy", "-o", tmp_path / "g.h5")
    assert res.code == 0 and res.err == "", res.err
    with h5py.File(tmp_path / "g.h5") as f:
        assert json.loads(f.attrs["nonfinite_nodes"]) == []


def test_the_sweep_plot_shows_every_measured_point(monkeypatch, tmp_path):
    """A gain of 8 points and a loss of 30 lay outside the y-axis, which stopped 5 above and 15 below dense."""
    from velcro_ref import plots

    limits = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: limits.append(fig.axes[0].get_ylim()))
    points = [{"ratio": r, "csr": r, "accuracy": a} for r, a in ((0, 0.9), (0.3, 0.98), (0.6, 0.6))]
    plots.plot_sweep([{"policy": "uniform", "baseline_accuracy": 0.9, "points": points, "n_eval_images": 50}], "p", "t")
    lo, hi = limits[0]
    assert lo < 60 and hi > 98


def test_the_sweep_table_prints_each_ratio_as_given(velcro):
    """0.001 and 0.125 were printed 0.00 and 0.12 (two decimals) while the JSON held them."""
    args = ["sweep", ROOT / "weights" / "resnet18.h5", "--classes", "5,7,9", "--ratios", "0.001,0.125"]
    res = velcro(*args, "--profile-samples", "30", "--samples", "20")
    assert res.code == 0, res.err
    ratios = [line.split()[0] for line in res.out.splitlines() if line[:6].strip().replace(".", "").isdigit()]
    assert ratios == ["0.001", "0.125"]
