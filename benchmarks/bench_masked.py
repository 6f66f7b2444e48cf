"""Masked vs dense inference, and profiling vs dense inference, each side in its own process.

The masked table runs ResNet-18 224x224 unless --models says otherwise; the sides alternate.

Every measurement is a fresh worker process (this script with --worker) that imports NumPy
first, as a user's script does. Masks: uniform at R = 0.3, 0.5, 0.7 from statistics over 16
random images (fixed seed, so every worker builds the same masks; fine for timing). Dense and
masked workers alternate for `rounds` rounds; printed per R and batch: the medians of the
per-round median times, the achieved speedup (dense / masked, paired per round), the ideal one
(dense MACs / executed MACs, both counted by the kernels) and achieved / ideal with its spread.
--models takes zoo names (224x224: resnet18, mobilenet_v2, googlenet) and shipped/<name> (the
28x28 models in weights/). Then a per-layer table of the first model at R = 0.5, batch 1, the
cost of a MaskSet's first run, and profiling
(inference plus statistics, `velcro profile`'s loop) against dense inference of the same images
for the shipped 28x28 models and ResNet-18 224x224. Nothing is asserted.

    python benchmarks/bench_masked.py [--models resnet18] [--batches 1,8] [--ratios 0.3,0.5,0.7]
        [--rounds 5] [--threads 2] [--no-profile | --profile-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OpTimer, machine, median_ms, positive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPEAT = {1: 11, 8: 5}
PROFILE_IMAGES = {"shipped": (1024, 256), "resnet18": (16, 8)}  # images, batch


def _model(name):
    from velcro_ref.engine import Model, load_model
    from velcro_ref.zoo import build_zoo

    if name.startswith("shipped/"):
        return load_model(ROOT / "weights" / f"{name.split('/')[1]}.h5")
    return Model(build_zoo(name, seed=0))


def _masks(model, ratio):
    from velcro_ref.masks import build_masks, uniform_ratios
    from velcro_ref.stats import collect_stats

    rng = np.random.default_rng(0)
    stats = collect_stats(model, rng.standard_normal((16, *model.input_shape), dtype=np.float32), batch=8)
    return build_masks(stats, uniform_ratios(stats, ratio), {"name": "uniform", "ratio": ratio})


def worker(args):
    """One side of one measurement; prints one JSON line."""
    import numba

    from velcro_ref.stats import StatsCollector

    numba.set_num_threads(args.threads)
    model = _model(args.model)
    if args.worker in ("dense", "masked", "layers"):
        masks = None if args.worker == "dense" else _masks(model, args.ratio)
        x = np.random.default_rng(1).standard_normal((args.batch, *model.input_shape), dtype=np.float32)
        out = {"ms": median_ms(lambda: model.run(x, masks=masks), args.repeat, warmup=2)}
        out["macs"] = sum(model.last_macs.values())
        if args.worker == "layers":
            dense, masked = OpTimer().run(model, x, None, 7), OpTimer().run(model, x, masks, 7)
            model.run(x)
            dense_macs = dict(model.last_macs)
            model.run(x, masks=masks)
            rows = [
                (k, dense[k] * 1e3, masked[k] * 1e3, dense_macs[k] / max(1, v))
                for k, v in model.last_macs.items()
                if dense_macs[k]
            ]
            firsts = []
            for _ in range(3):
                fresh = _masks(model, args.ratio)
                start = time.perf_counter()
                model.run(x, masks=fresh)
                firsts.append((time.perf_counter() - start) * 1e3)
            out.update(rows=rows, first_ms=float(np.median(firsts)))
    else:  # dense inference of n images in batches, or profiling them
        n, batch = args.images, args.batch
        x = np.random.default_rng(1).standard_normal((n, *model.input_shape), dtype=np.float32)

        def dense():
            for i in range(0, n, batch):
                model.run(x[i : i + batch])

        def profile():
            col = StatsCollector(model)
            for i in range(0, n, batch):
                col.add_batch(x[i : i + batch])

        out = {"ms": median_ms(dense if args.worker == "infer" else profile, args.repeat, warmup=2)}
    print(json.dumps(out))


def spawn(side, model, threads, **kw):
    cmd = [sys.executable, __file__, "--worker", side, "--model", model, "--threads", str(threads)]
    for key, value in kw.items():
        cmd += [f"--{key}", str(value)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="resnet18", help="comma list: resnet18, mobilenet_v2, googlenet, shipped/<name>"
    )
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument(
        "--rounds",
        type=positive,
        default=5,
        help="pairs of worker processes (dense / masked, dense / profile) per point",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true", help="skip the profiling comparison")
    ap.add_argument("--profile-only", action="store_true", help="only the profiling comparison")
    ap.add_argument("--worker", choices=["dense", "masked", "layers", "infer", "profile"], help=argparse.SUPPRESS)
    ap.add_argument("--model", default="resnet18", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=16, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"machine: {machine()}; {args.threads} threads; each side in its own process, NumPy imported first")
    if not args.profile_only:
        masked_tables(args)
    if not args.no_profile:
        profile_table(args)


def masked_tables(args):
    models = args.models.split(",")
    head = f"{'model':<22} {'batch':>5} {'R':>4} {'dense ms':>9} {'masked ms':>10} {'achieved':>9} {'ideal':>6}"
    print(f"\n{head} {'ach/ideal':>10} {'spread':>11} {'load':>9}")
    for name in models:
        for b in map(int, args.batches.split(",")):
            for r in map(float, args.ratios.split(",")):
                load0 = os.getloadavg()[0]
                dense, masked, ratios = [], [], []
                for _ in range(args.rounds):
                    d = spawn("dense", name, args.threads, batch=b, repeat=REPEAT.get(b, 5))
                    m = spawn("masked", name, args.threads, batch=b, ratio=r, repeat=REPEAT.get(b, 5))
                    dense.append(d["ms"])
                    masked.append(m["ms"])
                    ideal = d["macs"] / m["macs"]
                    ratios.append(d["ms"] / m["ms"] / ideal)
                achieved = np.median([d / m for d, m in zip(dense, masked, strict=True)])  # paired per round
                load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
                print(
                    f"{name:<22} {b:>5} {r:>4.1f} {np.median(dense):>9.1f} {np.median(masked):>10.1f} "
                    f"{achieved:>8.2f}x {ideal:>5.2f}x {np.median(ratios):>10.2f} {min(ratios):.2f}-{max(ratios):.2f} "
                    f"{load:>9}",
                    flush=True,
                )
    lay = spawn("layers", models[0], args.threads, batch=1, ratio=0.5, repeat=3)
    print(f"\nper layer, {models[0]}, batch 1, R = 0.5 (one process, each node's time a run, median of fused runs):")
    print(f"{'layer':<24} {'dense ms':>9} {'masked ms':>10} {'achieved':>9} {'ideal':>6}")
    for name, d, m, ideal in lay["rows"]:
        print(f"{name:<24} {d:>9.2f} {m:>10.2f} {d / m:>8.2f}x {ideal:>5.2f}x")
    print(f"first run with a new MaskSet (batch 1, R = 0.5): {lay['first_ms']:.1f} ms, later runs {lay['ms']:.1f} ms")


def profile_table(args):
    print("\nprofiling (inference + statistics) vs dense inference of the same images:")
    print(f"{'model':<22} {'images':>6} {'batch':>5} {'dense ms':>9} {'profile ms':>11} {'ratio':>6} {'spread':>11}")
    for name in ("shipped/resnet18", "shipped/mobilenet_v2", "shipped/googlenet", "resnet18"):
        n, batch = PROFILE_IMAGES["shipped" if name.startswith("shipped/") else name]
        dense, prof, ratios = [], [], []
        for _ in range(args.rounds):
            d = spawn("infer", name, args.threads, images=n, batch=batch, repeat=3)["ms"]
            p = spawn("profile", name, args.threads, images=n, batch=batch, repeat=3)["ms"]
            dense.append(d)
            prof.append(p)
            ratios.append(p / d)
        print(
            f"{name:<22} {n:>6} {batch:>5} {np.median(dense):>9.0f} {np.median(prof):>11.0f} {np.median(ratios):>6.2f} "
            f"{min(ratios):.2f}-{max(ratios):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
