"""Simulation time of ResNet-18 (224x224), dense and VELCRO-compressed together, on every preset.

Masks are random (30% of each site's elements) with a quarter of the channels masked whole, a
stand-in for real value-locality masks. Prints medians; target <= 1 s per preset. No asserts.
    python benchmarks/bench_simulator.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from simulator import presets, simulate
from velcro_ref.engine import Model
from velcro_ref.masks import MaskSet
from velcro_ref.zoo import build_zoo


def random_masks(model, ratio=0.3, channel_ratio=0.25, seed=0):
    rng = np.random.default_rng(seed)
    sites = {}
    for site, shape in model.sites.items():
        mask = rng.random(shape) < ratio
        if len(shape) == 3:
            mask[rng.random(shape[0]) < channel_ratio] = True
        sites[site] = (mask, np.zeros(shape, np.float32))
    return MaskSet(model.fingerprint, sites)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    model = Model(build_zoo("resnet18"))
    masks = random_masks(model)
    print(
        f"{'preset':16} {'median_s':>9} {'dense_cycles':>13} {'vc_cycles':>11} {'speedup':>8} {'energy_mJ':>10} "
        f"{'vc_mJ':>8} {'saving':>7} {'macs_saved':>11}"
    )
    for name in presets():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = simulate(model, name, masks)
            times.append(time.perf_counter() - t0)
        t = result.to_json()["total"]
        d, c = t["dense"], t["compressed"]
        print(
            f"{name:16} {statistics.median(times):>9.3f} {d['cycles']:>13} {c['cycles']:>11} {t['speedup']:>8.3f} "
            f"{d['energy_pj'] / 1e9:>10.3f} {c['energy_pj'] / 1e9:>8.3f} {t['energy_saving']:>7.1%} "
            f"{t['macs_saved'] / d['macs']:>11.1%}"
        )


if __name__ == "__main__":
    main()
