"""Masked vs dense ResNet-18 (224x224) in the same run, and profiling overhead.

For R = 0.3, 0.5, 0.7 (uniform masks from statistics over random inputs, which is fine for
timing), batch 1 and 8: end-to-end and per-layer masked time next to dense time, the achieved
speedup (dense / masked) and the ideal one (dense MACs / executed MACs, both counted by the
kernels). End to end, dense and the masked runs are timed in turns, each in its steady state
(the engine derives what it needs from a MaskSet at its first run). Then images/s of dense
inference vs profiling (inference + statistics).

    python benchmarks/bench_masked.py [--repeat 7] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# isort: off
import velcro_ref.threads  # noqa: F401  (before NumPy: see velcro_ref/threads.py)

# isort: on
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from velcro_ref.engine import Model  # noqa: E402
from velcro_ref.masks import build_masks, uniform_ratios  # noqa: E402
from velcro_ref.stats import StatsCollector, collect_stats  # noqa: E402
from velcro_ref.zoo import build_zoo  # noqa: E402

from common import StepTimer, interleaved_medians, machine, median_ms  # noqa: E402


def layer_times(model, x, masks, repeat):
    times = StepTimer().run(model, x, masks, repeat)
    return times, dict(model.last_macs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--per-layer", action="store_true", help="print the per-layer table for every ratio")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    rng = np.random.default_rng(0)
    model = Model(build_zoo("resnet18", seed=0))
    stats = collect_stats(model, rng.standard_normal((16, 3, 224, 224), dtype=np.float32), batch=8)
    ratios = [float(r) for r in args.ratios.split(",")]
    for b in map(int, args.batches.split(",")):
        x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
        mask_sets = [build_masks(stats, uniform_ratios(stats, r), {"name": "uniform", "ratio": r}) for r in ratios]
        # dense and every R in turns, each in its steady state (see interleaved_medians)
        runs = [lambda x=x, m=m: model.run(x, masks=m) for m in [None, *mask_sets]]
        dense_ms, *masked_ms = interleaved_medians(runs, repeat=args.repeat)
        dense_layers, dense_macs = layer_times(model, x, None, args.repeat)
        print(f"\nbatch {b}: dense {dense_ms:.1f} ms")
        print(f"{'R':>5} {'masked ms':>10} {'achieved':>9} {'ideal':>7} {'achieved/ideal':>15}")
        for r, masks, m_ms in zip(ratios, mask_sets, masked_ms, strict=True):
            layers, macs = layer_times(model, x, masks, args.repeat)
            ideal = sum(dense_macs.values()) / sum(macs.values())
            achieved = dense_ms / m_ms
            print(f"{r:>5.1f} {m_ms:>10.1f} {achieved:>8.2f}x {ideal:>6.2f}x {achieved / ideal:>15.2f}")
            if args.per_layer or r == 0.5:
                head = f"{'layer':<24} {'dense ms':>9} {'masked ms':>10} {'achieved':>9} {'ideal':>7}"
                print(f"   per layer at R={r}: {head}")
                for name, m in macs.items():
                    if dense_macs[name] == 0 or m == 0:
                        continue
                    d, k = dense_layers[name], layers[name]
                    row = f"{name:<24} {d * 1e3:>9.2f} {k * 1e3:>10.2f} {d / k:>8.2f}x {dense_macs[name] / m:>6.2f}x"
                    print(f"   {'':<15} {row}")
    # the one-off cost of a new MaskSet: its first run derives indices and schedules
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    firsts = []
    for _ in range(3):
        masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
        start = time.perf_counter()
        model.run(x, masks=masks)
        firsts.append((time.perf_counter() - start) * 1e3)
    later = median_ms(lambda: model.run(x, masks=masks), repeat=args.repeat)
    print(f"\nbatch 1, R=0.5: first run with a new MaskSet {np.median(firsts):.1f} ms, later runs {later:.1f} ms")
    # profiling throughput: inference plus per-element statistics, vs inference alone
    x = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    col = StatsCollector(model)
    dense_ms, prof_ms = interleaved_medians([lambda: model.run(x), lambda: col.add_batch(x)], repeat=args.repeat)
    print(
        f"\nprofiling, batch 8: dense {8e3 / dense_ms:.1f} images/s, profiling {8e3 / prof_ms:.1f} images/s, "
        f"overhead {prof_ms / dense_ms - 1:+.1%} (target <= 25%)"
    )


if __name__ == "__main__":
    main()
