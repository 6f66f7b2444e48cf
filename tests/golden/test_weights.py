"""The shipped weights: files match the manifest, and a model reaches its manifest accuracy."""

import hashlib
import json
from pathlib import Path

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
