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


class OpTimer:
    """Median seconds per node of ordinary runs (no observer, so with the fusions a user's run
    makes: a fused conv's time, its add and activation included, under the conv's name). Each
    op's run methods are wrapped for the runs and restored after; a call is named by its node's
    args object (ops whose args are shared, such as an empty tuple, go under the op's class)."""

    METHODS = ("run", "run_fused", "unmasked")

    def run(self, model, x, masks=None, repeat=7) -> dict:
        names = {}
        for st in model.steps:
            names[id(st.args)] = type(st.opdef).__name__ if id(st.args) in names else st.name
        times, wrapped = {}, []
        for op in {id(st.opdef): st.opdef for st in model.steps}.values():
            for meth in self.METHODS:
                if hasattr(op, meth):
                    setattr(op, meth, self._timed(getattr(op, meth), names, times))
                    wrapped.append((op, meth))
        try:
            for _ in range(repeat):
                model.run(x, masks=masks)
        finally:
            for op, meth in wrapped:
                delattr(op, meth)
        return {k: float(np.median(v)) for k, v in times.items()}

    @staticmethod
    def _timed(fn, names, times):
        def timed(*args):
            start = time.perf_counter()
            result = fn(*args)
            elapsed = time.perf_counter() - start
            name = next((names[id(a)] for a in args if id(a) in names), type(fn.__self__).__name__)
            times.setdefault(name, []).append(elapsed)
            return result

        return timed
