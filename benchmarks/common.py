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


def sgemm_peak_gflops(n=2048, repeat=5) -> float:
    """Practical fp32 peak: the median of an n^3 numpy matmul (OpenBLAS)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ms = median_ms(lambda: a @ b, repeat=repeat, warmup=1)
    return 2 * n**3 / (ms * 1e-3) / 1e9
