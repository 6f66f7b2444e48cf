"""Profiling on a local Dask cluster: one single-threaded worker against two, in the same run.

1. Profile N Fashion-MNIST train images (all classes) on weights/resnet18.h5 on a LocalCluster of
   one worker process and on one of two (one thread each), in turns (1, 2, 1, 2, ...); the
   one-process profile at one BLAS thread is timed in the same turns as the yardstick. Medians, the
   ratio per turn, the CPU time each run got (cores = CPU s / wall s: what the shared machine gave
   it) and the load average.
2. Task overhead per shard: shards of one small batch on the one-worker cluster against the same
   batches in this process; and a dask no-op task's round trip.
3. Projection to an ImageNet-sized preprocessing set (1.28 M images at 224x224): the per-image cost
   of profiling a zoo ResNet-18 at 224x224 (one thread, in this process), the size and client-side
   merge time of its statistics, and the time on 1, 8 and 64 workers.

    python benchmarks/bench_distributed.py [--images 10000] [--turns 3] [--shard-batches 4]
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np  # first, as users import it
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from threadpoolctl import threadpool_limits  # noqa: E402

import velcro_ref  # noqa: E402
from velcro_ref.distributed import connect  # noqa: E402
from velcro_ref.engine import Model, load_model  # noqa: E402
from velcro_ref.stats import collect_stats  # noqa: E402
from velcro_ref.zoo import build_zoo  # noqa: E402

from common import machine  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "resnet18.h5"
IMAGENET = 1_281_167  # ILSVRC-2012 training images


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def worker_cpu(client) -> float:
    """CPU seconds (user + system) the client's worker processes have used so far."""
    total = 0.0
    for pid in client.run(os.getpid).values():
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def timed_on(client, fn):
    """(wall s, CPU s of the workers, result) of fn()."""
    cpu = worker_cpu(client)
    wall, out = timed(fn)
    return wall, worker_cpu(client) - cpu, out


def noop():
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--shard-batches", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}; {load()}")
    model = load_model(WEIGHTS)
    x, _ = velcro_ref.task_images(model, tuple(range(10)), "train", args.images)
    shard = f"{args.shard_batches} batches a shard"
    print(f"{len(x)} Fashion-MNIST train images on {WEIGHTS.name}, batch {args.batch}, {shard}")

    with connect(workers=1) as one, connect(workers=2) as two, threadpool_limits(limits=1):
        import numba

        numba.set_num_threads(1)  # the one-process yardstick at one thread, as a worker
        # warm-up: the model plugin, the kernels' JIT cache loaded in every worker
        for client in (one, two):
            velcro_ref.profile(model, x[: 2 * args.batch], args.batch, client=client, shard_batches=1)
        times = {"1 worker": [], "2 workers": [], "one process": []}
        k = args.shard_batches
        for turn in range(args.turns):
            t1, c1, s1 = timed_on(one, lambda: velcro_ref.profile(model, x, args.batch, client=one, shard_batches=k))
            t2, c2, s2 = timed_on(two, lambda: velcro_ref.profile(model, x, args.batch, client=two, shard_batches=k))
            cpu = time.process_time()
            t0, _ = timed(lambda: collect_stats(model, x, batch=args.batch))
            c0 = time.process_time() - cpu
            assert s1.n_images == s2.n_images == len(x)
            times["1 worker"].append(t1)
            times["2 workers"].append(t2)
            times["one process"].append(t0)
            print(
                f"  turn {turn + 1}: 1 worker {t1:.1f} s (CPU {c1:.1f} s, {c1 / t1:.2f} cores), "
                f"2 workers {t2:.1f} s (CPU {c2:.1f} s, {c2 / t2:.2f} cores), "
                f"one process {t0:.1f} s (CPU {c0:.1f} s, {c0 / t0:.2f} cores); {load()}"
            )
        med = {k: float(np.median(v)) for k, v in times.items()}
        ratios = [a / b for a, b in zip(times["1 worker"], times["2 workers"], strict=True)]
        print("profile of", len(x), "images, median of", args.turns, "turns:")
        for k, v in med.items():
            print(f"  {k:<12} {v:7.1f} s  {len(x) / v:7.0f} images/s")
        print(
            f"  speed-up 2 workers / 1 worker: median {np.median(ratios):.2f}x "
            f"(per turn {', '.join(f'{r:.2f}' for r in ratios)}); target 1.7x"
        )
        print(f"  1 worker / one process: {med['1 worker'] / med['one process']:.3f}")

        # task overhead per shard: shards of one batch of 16 images on one worker against the same batches here
        small, n_shards = 16, 64
        xs = x[: small * n_shards]
        dist, here = [], []
        for _ in range(3):
            dist.append(timed(lambda: velcro_ref.profile(model, xs, small, client=one, shard_batches=1))[0])
            here.append(timed(lambda: collect_stats(model, xs, batch=small))[0])
        per_shard_ms = (np.median(dist) - np.median(here)) / n_shards * 1e3
        rt = []
        for _ in range(3):
            t = time.perf_counter()
            one.gather([one.submit(noop, pure=False) for _ in range(200)])
            rt.append((time.perf_counter() - t) / 200 * 1e3)
        print(
            f"task overhead: {per_shard_ms:.1f} ms a shard ({n_shards} shards of {small} images: "
            f"{np.median(dist):.2f} s on 1 worker, {np.median(here):.2f} s in this process); "
            f"a no-op dask task {np.median(rt):.2f} ms"
        )
        stats_mb = len(pickle.dumps(s1)) / 1e6
        merge_ms = float(np.median([timed(lambda: s1.merge(s2))[0] for _ in range(5)]) * 1e3)
        print(f"  a shard's statistics: {stats_mb:.1f} MB; the client folds one in {merge_ms:.1f} ms")

    # ImageNet-sized projection: per-image cost at 224x224, one thread, in this process
    with threadpool_limits(limits=1):
        big = Model(build_zoo("resnet18", input_size=224, in_channels=3, num_classes=1000, seed=0))
        rng = np.random.default_rng(0)
        xb = rng.standard_normal((24, 3, 224, 224), dtype=np.float32)
        collect_stats(big, xb[:8], batch=8)  # warm-up
        per_image = float(np.median([timed(lambda: collect_stats(big, xb, batch=8))[0] for _ in range(3)])) / len(xb)
        sb = collect_stats(big, xb[:8], batch=8)
        big_mb = len(pickle.dumps(sb)) / 1e6
        big_merge = float(np.median([timed(lambda: sb.merge(sb))[0] for _ in range(3)]))
    shard = 1024
    n_shards = math.ceil(IMAGENET / shard)
    print(
        f"ResNet-18 224x224 (zoo, random weights), profiling at one thread: {per_image * 1e3:.0f} ms an image "
        f"({1 / per_image:.1f} images/s); statistics {big_mb:.0f} MB, client merge {big_merge * 1e3:.0f} ms"
    )
    print(f"projected preprocessing of {IMAGENET:,} images in shards of {shard} ({n_shards} shards):")
    for workers in (1, 8, 64):
        compute = math.ceil(n_shards / workers) * shard * per_image + per_shard_ms / 1e3 * n_shards / workers
        client = n_shards * big_merge  # the fold is serial on the client, overlapped with the workers
        mb_s = big_mb / (shard * per_image / workers)
        print(
            f"  {workers:>2} workers: {compute / 3600:6.2f} h of work; client folds {client / 3600:.2f} h "
            f"(overlapped), receives {mb_s:.0f} MB/s of statistics"
        )


if __name__ == "__main__":
    main()
