"""Shared helpers for the benchmarks: timing medians and a one-line machine description."""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def median_ms(fn, repeat=15, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def interleaved_medians(fns, repeat=15) -> list[float]:
    """Median ms of each of `fns`, timed in turns (fn 0, fn 1, ..., fn 0, ...) so that the drift
    of a shared machine falls on all of them alike. Each timed call follows an untimed call of
    the same fn: every one is timed in its steady state (warm caches, and the engine's state for
    the masks it was last given)."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times, strict=True):
            fn()
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"


def sgemm_peak_gflops(n=2048, repeat=5) -> float:
    """Practical fp32 peak: the median of an n^3 numpy matmul (OpenBLAS)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ms = median_ms(lambda: a @ b, repeat=repeat, warmup=1)
    return 2 * n**3 / (ms * 1e-3) / 1e9


class StepTimer:
    """Engine observer: the time between consecutive on_node calls is the op of the later node."""

    def __init__(self):
        self.times, self.last = {}, 0.0

    def on_site(self, name, y):
        pass

    def on_node(self, step, inputs, out, skip):
        self.times.setdefault(step.name, []).append(time.perf_counter() - self.last)
        self.last = time.perf_counter()

    def run(self, model, x, masks=None, repeat=7) -> dict:
        """Median seconds per node over `repeat` runs."""
        self.times = {}
        for _ in range(repeat):
            self.last = time.perf_counter()
            model.run(x, masks=masks, observer=self)
        return {k: float(np.median(v)) for k, v in self.times.items()}
