"""Digests of what the engine, statistics, masks and simulator produce for fixed models and inputs.

`python tests/golden/pinned.py --write` stores them in pinned.json; test_pinned.py recomputes them
and compares. They guard reshaping the code: a change of layout must not change one bit. A change
that means to alter the numbers (a new summation order) writes them anew and says why.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("pinned.json")
SHIPPED = ("resnet18", "mobilenet_v2", "googlenet")
ZOO = ("resnet18", "mobilenet_v2", "googlenet")
BATCHES = (3, 50)  # 50: the SIMD-lanes path of convs (48 images and more)


def digest(a) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:24]


def json_digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def models():
    """(key, Model) of the shipped weights and three small zoo models."""
    from velcro_ref.engine import Model, load_model
    from velcro_ref.zoo import build_zoo

    for name in SHIPPED:
        yield f"shipped/{name}", load_model(ROOT / "weights" / f"{name}.h5")
    for name in ZOO:
        yield f"zoo/{name}", Model(build_zoo(name, input_size=32, width=0.25, num_classes=10, seed=5))


def model_pins(model) -> dict:
    from velcro_ref.masks import build_masks, uniform_ratios
    from velcro_ref.stats import FIELDS, collect_stats

    rng = np.random.default_rng(7)
    x = rng.standard_normal((max(BATCHES), *model.input_shape)).astype(np.float32)
    out = {}
    stats = collect_stats(model, x, batch=16)
    out["stats"] = json_digest({s: [digest(getattr(st, f)) for f in FIELDS] for s, st in stats.sites.items()})
    for ratio in (0.3, 0.7):
        masks = build_masks(stats, uniform_ratios(stats, ratio), {"name": "uniform", "ratio": ratio})
        out[f"masks_{ratio}"] = json_digest({s: [digest(m), digest(c)] for s, (m, c) in masks.sites.items()})
        for b in BATCHES:
            y = model.run(x[:b], masks=masks)
            out[f"masked_{ratio}_b{b}"] = digest(y)
            out[f"masked_{ratio}_b{b}_macs"] = json_digest(model.last_macs)
    for b in BATCHES:
        out[f"dense_b{b}"] = digest(model.run(x[:b]))
        out[f"dense_b{b}_macs"] = json_digest(model.last_macs)
    return out


def simulator_pins() -> dict:
    from simulator.simulate import simulate
    from velcro_ref.engine import load_model
    from velcro_ref.masks import build_masks, uniform_ratios
    from velcro_ref.stats import collect_stats

    model = load_model(ROOT / "weights" / "resnet18.h5")
    x = np.random.default_rng(3).standard_normal((16, *model.input_shape)).astype(np.float32)
    stats = collect_stats(model, x, batch=16)
    masks = build_masks(stats, uniform_ratios(stats, 0.3), {"name": "uniform", "ratio": 0.3})
    return {f"simulate/{a}": json_digest(simulate(model, a, masks).to_json()) for a in ("edge16", "ws32")}


def compute() -> dict:
    pins = {}
    for key, model in models():
        for k, v in model_pins(model).items():
            pins[f"{key}/{k}"] = v
    pins.update(simulator_pins())
    return pins


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden/pinned.py --write")
    PINS.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}")
