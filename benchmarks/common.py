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


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"


def fp32_peak_gflops(threads, n=2048, repeat=5) -> float:
    """Practical fp32 peak with `threads` threads: the median of an n^3 NumPy matmul (its BLAS)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
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
