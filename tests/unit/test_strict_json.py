"""JSON that commands print is strict JSON (no bare NaN or Infinity), and `velcro infer` says when float32
overflow turned a finite input into NaN or Inf."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import oracle64

from velcro_ref.jsonout import clean, dumps

ROOT = Path(__file__).resolve().parents[2]
F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38


def strict(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def velcro(*args):
    return subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def test_non_finite_numbers_become_null_at_any_depth():
    doc = {
        "a": math.nan,
        "b": [1.5, math.inf, {"c": -math.inf}],
        "d": (np.float32("nan"), np.float64(2.0)),
        "e": np.array([1.0, np.inf]),
        "f": np.int64(3),
        "g": True,
        "h": "NaN",
    }
    want = {"a": None, "b": [1.5, None, {"c": None}], "d": [None, 2.0], "e": [1.0, None], "f": 3, "g": True}
    want["h"] = "NaN"  # text stays text
    assert clean(doc) == want
    assert strict(dumps(doc)) == want
    assert type(clean(doc)["f"]) is int and type(clean(doc)["d"][1]) is float


def test_plain_documents_are_unchanged():
    doc = {"x": [1, 2.5, None, "s"], "y": {"z": False}}
    assert strict(dumps(doc)) == doc
    assert json.loads(dumps(doc, indent=None)) == doc


def overflow_model(path):
    """input (1, 1, 2) -> flatten -> 'big' = linear near the float32 maximum -> 'fc' = linear.

    For x = (1, 1): big = (2 * 3e38, 3e38 - 3e38) = (6e38, 0): beyond float32 in its first element, though
    every parameter and the input are finite; fc = (big0, 0 * big0 + big1, big0 + big1)."""
    nodes = [
        {"name": "flat", "op": "flatten", "inputs": ["input"], "attrs": {}, "params": {}},
        {"name": "big", "op": "linear", "inputs": ["flat"], "attrs": {}, "params": {"weight": "big.w"}},
        {"name": "fc", "op": "linear", "inputs": ["big"], "attrs": {}, "params": {"weight": "fc.w"}},
    ]
    params = {"big.w": [[3e38, 3e38], [3e38, -3e38]], "fc.w": [[1, 0], [0, 1], [1, 1]]}
    oracle64.write_model(path, (1, 1, 2), "fc", nodes, params)
    return path


def test_infer_warns_and_counts_outputs_that_overflowed(tmp_path):
    model = overflow_model(tmp_path / "m.h5")
    x = np.ones((2, 1, 1, 2), np.float32)
    np.save(tmp_path / "x.npy", x)
    exact = oracle64.run(oracle64.read_model(model), x)["fc"]
    assert np.all(np.isfinite(exact)) and np.abs(exact).max() > F32_MAX  # finite, but not in float32
    res = velcro("infer", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--json")
    assert res.returncode == 0, res.stderr
    y = np.load(tmp_path / "y.npy")
    n_bad = int(np.count_nonzero(~np.isfinite(y)))
    assert n_bad >= 2  # big0 overflows in both images, and with it fc0 and fc2
    doc = strict(res.stdout)
    assert doc["nonfinite_outputs"] == n_bad
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and f"{n_bad} of {y.size} output values are NaN or Inf" in warnings[0], res.stderr
    assert "Traceback" not in res.stderr

    text = velcro("infer", model, "--input", tmp_path / "x.npy")
    assert text.returncode == 0 and sum(ln.startswith("warning: ") for ln in text.stderr.splitlines()) == 1


def test_infer_of_finite_outputs_counts_none_and_warns_not(tmp_path):
    model = overflow_model(tmp_path / "m.h5")
    x = np.zeros((1, 1, 1, 2), np.float32)
    np.save(tmp_path / "x.npy", x)
    res = velcro("infer", model, "--input", tmp_path / "x.npy", "--json")
    assert res.returncode == 0, res.stderr
    assert strict(res.stdout)["nonfinite_outputs"] == 0
    assert "warning" not in res.stderr


def constant_model(path):
    """A Fashion-MNIST-shaped model whose every activation is 0 for any image: every variance is 0."""
    conv = {"out_channels": 2, "kernel": [3, 3], "stride": [2, 2], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    nodes = [
        {"name": "conv", "op": "conv2d", "inputs": ["input"], "attrs": conv, "params": {"weight": "conv.w"}},
        {"name": "act", "op": "relu", "inputs": ["conv"], "attrs": {}, "params": {}},
        {"name": "gap", "op": "global_avg_pool", "inputs": ["act"], "attrs": {}, "params": {}},
        {"name": "flat", "op": "flatten", "inputs": ["gap"], "attrs": {}, "params": {}},
        {"name": "fc", "op": "linear", "inputs": ["flat"], "attrs": {}, "params": {"weight": "fc.w"}},
    ]
    params = {"conv.w": np.zeros((2, 1, 3, 3)), "fc.w": np.ones((10, 2))}
    meta = {"preprocessing": {"scale": 1 / 255, "mean": [0.5], "std": [0.5]}}
    oracle64.write_model(path, (1, 28, 28), "fc", nodes, params, meta)
    return path


def test_locality_of_a_constant_model_prints_strict_json(tmp_path):
    model = constant_model(tmp_path / "c.h5")
    res = velcro("locality", model, "--classes", "1,3", "--samples", "8", "--json")
    assert res.returncode == 0, res.stderr
    doc = strict(res.stdout)
    assert doc["median_variance_ratio"] is None  # no element varies in the general case: no ratio at all
    assert doc["share_zero_variance_task"] == 1.0
