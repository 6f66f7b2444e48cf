"""Quantize the shipped float models to int8: weights/<model>_int8.h5 and the manifest's "int8_models".

For each float model of weights/manifest.json: the statistics of the first 1000 Fashion-MNIST train
images (all ten classes, about 100 each) give the calibration ranges, `velcro quantize` makes the
int8 model (int8 activations, per-channel int8 weights, fixed_point requantization: the integer
multiplier and shift an RTL datapath computes, so `velcro rtl-vectors` can use every layer), and its
10-class accuracy is measured by the velcro engine on the 10000 test images. The same by hand:

    velcro profile weights/resnet18.h5 --data fashion-mnist --classes 0,1,2,3,4,5,6,7,8,9 \\
        --samples 1000 -o resnet18.calib.h5
    velcro quantize weights/resnet18.h5 --calib resnet18.calib.h5 --per-channel --activations int8 \\
        --requant fixed_point -o weights/resnet18_int8.h5
    velcro eval weights/resnet18_int8.h5 --data fashion-mnist --classes 0,1,2,3,4,5,6,7,8,9 --json

    python scripts/build_int8_weights.py [--weights weights] [--samples 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import velcro_ref
from velcro_ref.data import load_fashion_mnist, preprocess
from velcro_ref.evaluation import evaluate
from velcro_ref.fileio import write_text
from velcro_ref.model_io import save_model

ALL = tuple(range(10))
OPTIONS = {"activations": "int8", "per_channel": True, "requant": "fixed_point"}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build weights/*_int8.h5 and the manifest's int8_models.")
    ap.add_argument("--weights", default="weights", help="folder with manifest.json and the float models")
    ap.add_argument("--samples", type=int, default=1000, help="calibration images (the first of the train split)")
    args = ap.parse_args(argv)
    root = Path(args.weights)
    manifest = json.loads((root / "manifest.json").read_text())
    images, labels = load_fashion_mnist("test")
    entries = []
    for m in manifest["models"]:
        t0 = time.perf_counter()
        model = velcro_ref.load_model(root / m["file"])
        x, y = velcro_ref.task_images(model, ALL, "train", args.samples)
        stats = velcro_ref.profile(model, x, classes=ALL, source=f"fashion-mnist train, first {len(x)} images")
        qmodel = velcro_ref.quantize(model, stats, **OPTIONS)
        path = root / f"{m['name']}_int8.h5"
        qmodel.graph.meta["name"] = f"{m['name']}_int8"
        fp = save_model(qmodel.graph, path)
        qmodel = velcro_ref.load_model(path)
        res = evaluate(qmodel, preprocess(images, qmodel.meta["preprocessing"]), labels, ALL, batch=500)
        entries.append(
            {
                "name": f"{m['name']}_int8",
                "file": path.name,
                "float_model": m["file"],
                "float_fingerprint": m["fingerprint"],
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "bytes": path.stat().st_size,
                "fingerprint": fp,
                "test_accuracy": res["accuracy"],
                "float_test_accuracy": m["test_accuracy"],
                "test_images": res["n_images"],
                "macs_per_image": int(res["macs"]),
                "quantization": OPTIONS,
                "calibration": {
                    "images": f"fashion-mnist train split, the first {len(x)} images",
                    "per_class": np.bincount(y, minlength=10).tolist(),
                },
                "build_s": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{path}: int8 test accuracy {res['accuracy']:.4f} (float {m['test_accuracy']:.4f}), "
            f"{path.stat().st_size / 1e6:.2f} MB, {entries[-1]['build_s']} s",
            flush=True,
        )
    manifest["int8_models"] = entries
    manifest["int8"] = (
        "made by scripts/build_int8_weights.py: velcro quantize from velcro profile statistics of the calibration "
        "images; accuracy: top-1 on the 10000 test images, measured by the velcro engine"
    )
    write_text(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {root / 'manifest.json'}")


if __name__ == "__main__":
    main()
