"""The shipped weights: files match the manifest, and a model reaches its manifest accuracy."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from velcro_ref.data import load_fashion_mnist, preprocess
from velcro_ref.engine import load_model
from velcro_ref.evaluation import evaluate

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
MANIFEST = json.loads((WEIGHTS / "manifest.json").read_text())


def test_manifest_lists_the_three_families_within_limits():
    names = {m["name"] for m in MANIFEST["models"]}
    assert {"resnet18", "mobilenet_v2", "googlenet"} <= names
    for m in MANIFEST["models"]:
        path = WEIGHTS / m["file"]
        assert path.stat().st_size <= 10_000_000
        assert hashlib.sha256(path.read_bytes()).hexdigest() == m["sha256"]
        assert m["test_accuracy"] >= 0.92, m["name"]


@pytest.mark.parametrize("name", ["resnet18"])
def test_model_reaches_its_manifest_accuracy_on_the_test_split(name):
    entry = next(m for m in MANIFEST["models"] if m["name"] == name)
    model = load_model(WEIGHTS / entry["file"])
    assert model.fingerprint == entry["fingerprint"]
    images, labels = load_fashion_mnist("test")
    res = evaluate(model, preprocess(images, model.meta["preprocessing"]), labels, tuple(range(10)))
    assert res["n_images"] == 10000
    assert abs(res["accuracy"] - entry["test_accuracy"]) <= 0.001


INT8 = {m["name"]: m for m in MANIFEST.get("int8_models", [])}


def test_manifest_lists_int8_versions_of_the_three_families():
    floats = {m["file"]: m for m in MANIFEST["models"]}
    assert {f"{m['name']}_int8" for m in MANIFEST["models"]} == set(INT8)
    for m in INT8.values():
        path = WEIGHTS / m["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == m["sha256"]
        model = load_model(path)
        assert model.fingerprint == m["fingerprint"]
        assert m["float_fingerprint"] == floats[m["float_model"]]["fingerprint"]
        q = model.meta["quantization"]
        assert (q["activations"], q["per_channel"], q["requant"]) == ("int8", True, "fixed_point")
        assert q["float_fingerprint"] == m["float_fingerprint"]
        assert m["test_accuracy"] >= floats[m["float_model"]]["test_accuracy"] - 0.005, m["name"]


def test_the_int8_resnet18_rebuilds_bit_for_bit_and_reaches_its_manifest_accuracy():
    """scripts/build_int8_weights.py's recipe: statistics of the first 1000 train images, then
    velcro quantize (int8, per-channel, fixed_point): the same file contents (fingerprint)."""
    import velcro_ref

    entry = INT8["resnet18_int8"]
    fmodel = load_model(WEIGHTS / entry["float_model"])
    x, y = velcro_ref.task_images(fmodel, tuple(range(10)), "train", 1000)
    assert np.bincount(y, minlength=10).tolist() == entry["calibration"]["per_class"]
    stats = velcro_ref.profile(fmodel, x)
    q = velcro_ref.quantize(fmodel, stats, per_channel=True, activations="int8", requant="fixed_point")
    shipped = load_model(WEIGHTS / entry["file"])
    assert [(n.name, n.op, n.attrs) for n in q.graph.nodes] == [(n.name, n.op, n.attrs) for n in shipped.graph.nodes]
    for key, a in q.graph.params.items():
        assert np.array_equal(shipped.graph.params[key], a), key
    images, labels = load_fashion_mnist("test")
    res = evaluate(shipped, preprocess(images, shipped.meta["preprocessing"]), labels, tuple(range(10)), batch=500)
    assert res["n_images"] == 10000
    assert abs(res["accuracy"] - entry["test_accuracy"]) <= 0.001
