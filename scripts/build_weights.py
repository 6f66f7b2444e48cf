"""Turn trained ONNX models into the shipped weights/: HDF5 models and weights/manifest.json.

For each <model>.onnx + <model>.json (from scripts/train_fashion.py) in the build folder: import
through velcro's ONNX importer, record the preprocessing and class names in the model's meta,
write weights/<model>.h5, measure its 10-class test accuracy with the velcro engine, and list file,
sha256, accuracy, recipe and training time in the manifest.

    python scripts/build_weights.py [--build weights/build] [--out weights]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from velcro_ref.data import CLASS_NAMES, load_fashion_mnist, preprocess
from velcro_ref.demo import MANIFEST_FORMAT
from velcro_ref.engine import load_model
from velcro_ref.evaluation import evaluate
from velcro_ref.fileio import write_text
from velcro_ref.model_io import save_model
from velcro_ref.onnx_import import import_onnx

MAX_BYTES = 10_000_000
MODELS = ("resnet18", "mobilenet_v2", "googlenet")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build weights/*.h5 and weights/manifest.json from trained ONNX files.")
    ap.add_argument("--build", default="weights/build", help="folder with <model>.onnx and <model>.json")
    ap.add_argument("--out", default="weights", help="output folder")
    args = ap.parse_args(argv)
    build, out = Path(args.build), Path(args.out)
    images, labels = load_fashion_mnist("test")
    entries = []
    for name in MODELS:
        rec_path = build / f"{name}.json"
        if not rec_path.exists():
            print(f"skip {name}: {rec_path} missing", file=sys.stderr)
            continue
        rec = json.loads(rec_path.read_text())
        g = import_onnx(build / f"{name}.onnx")
        meta = {
            "name": name,
            "dataset": "fashion-mnist",
            "classes": list(CLASS_NAMES),
            "preprocessing": rec["preprocessing"],
            "recipe": rec["recipe"],
            "source": "scripts/train_fashion.py, imported from ONNX",
        }
        path = out / f"{name}.h5"
        save_model(replace(g, meta=meta), path)
        size = path.stat().st_size
        model = load_model(path)
        x = preprocess(images, rec["preprocessing"])
        res = evaluate(model, x, labels, tuple(range(10)), batch=500)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append(
            {
                "name": name,
                "file": path.name,
                "sha256": sha,
                "bytes": size,
                "fingerprint": model.fingerprint,
                "test_accuracy": res["accuracy"],
                "test_images": res["n_images"],
                "macs_per_image": int(res["macs"]),
                "params": int(sum(np.prod(p.shape) for p in model.graph.params.values())),
                "test_accuracy_torch": rec["test_accuracy_torch"],
                "test_accuracy_onnxruntime": rec["test_accuracy_onnxruntime"],
                "train_wall_s": rec["train_wall_s"],
                "recipe": rec["recipe"],
            }
        )
        flag = "" if size <= MAX_BYTES else f"  (over the {MAX_BYTES} byte limit)"
        print(
            f"{name}: {size / 1e6:.2f} MB{flag}, engine test accuracy {res['accuracy']:.4f} "
            f"(torch {rec['test_accuracy_torch']:.4f}, onnxruntime {rec['test_accuracy_onnxruntime']:.4f}), "
            f"{res['macs'] / 1e6:.1f} MMACs/image, trained in {rec['train_wall_s']:.0f} s"
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": "fashion-mnist (Debian package dataset-fashion-mnist)",
        "accuracy": "top-1 on the 10000 test images, measured by the velcro engine",
        "models": entries,
    }
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {out / 'manifest.json'}")


if __name__ == "__main__":
    main()
