"""Shared helpers for the benchmarks: timing medians and a one-line machine description."""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def positive(text) -> int:
    """An argparse type: a whole number of at least 1 (a median of no rounds is no figure)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number of at least 1, got {text!r}")
    return n


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


def fma_peak_gflops(threads, taps=72, reps=20000) -> float:
    """fp32 multiply-add peak with `threads` threads, measured on the engine's own register tile:
    each thread runs `simd.lane_pass` of 4 blocks of 16 filters by 6 positions (24 independent
    16-lane fused multiply-adds a tap) over `taps` taps whose weights and inputs stay in L1, 2
    flops a lane. A large sgemm (`fp32_peak_gflops`) stays below it: BLAS also moves data."""
    import numba

    from velcro_ref.kernels.simd import lane_pass

    w1, w2, w3 = taps * 16, 2 * taps * 16, 3 * taps * 16

    @numba.njit(parallel=True)
    def run(wts, xp, offs, parts, reps):
        for i in numba.prange(parts.shape[0]):
            for _ in range(reps):
                lane_pass(wts, (0, w1, w2, w3), xp, (0, 1, 2, 3, 4, 5), offs, (0, taps, 1), parts[i], (0, 96, 192, 288))

    rng = np.random.default_rng(0)
    wts, xp = rng.random(4 * 16 * taps, np.float32), rng.random(1024, np.float32)
    offs = (np.arange(taps, dtype=np.int64) * 7) % 900
    parts = np.zeros((threads, 512), np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        run(wts, xp, offs, parts, 10)
        secs = []
        for _ in range(3):
            t = time.perf_counter()
            run(wts, xp, offs, parts, reps)
            secs.append(time.perf_counter() - t)
    finally:
        numba.set_num_threads(before)
    return threads * reps * taps * 24 * 16 * 2 / float(np.median(secs)) / 1e9


class OpTimer:
    """Seconds per node in ordinary runs (no observer, so with the fusions a user's run makes: a
    fused conv's time, its add and activation included, under the conv's name), the median over
    the runs of each node's calls in a run summed. Each op's run methods are wrapped for the runs
    and restored after; a call is named by its op and its node's args object (nodes of one op whose
    args are one object, such as None, go together under the op's class name)."""

    METHODS = ("run", "run_fused", "unmasked")

    def run(self, model, x, masks=None, repeat=7) -> dict:
        names = {}
        for st in model.steps:
            key = (id(st.opdef), id(st.args))
            names[key] = type(st.opdef).__name__ if key in names else st.name
        in_run, runs, wrapped = {}, [], []
        for op in {id(st.opdef): st.opdef for st in model.steps}.values():
            for meth in self.METHODS:
                if hasattr(op, meth):
                    setattr(op, meth, self._timed(getattr(op, meth), names, in_run))
                    wrapped.append((op, meth))
        try:
            for _ in range(repeat):
                in_run.clear()
                model.run(x, masks=masks)
                runs.append(dict(in_run))
        finally:
            for op, meth in wrapped:
                delattr(op, meth)
        return {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in {k for r in runs for k in r}}

    @staticmethod
    def _timed(fn, names, in_run):
        op = fn.__self__

        def timed(*args):
            start = time.perf_counter()
            result = fn(*args)
            elapsed = time.perf_counter() - start
            name = next((names[(id(op), id(a))] for a in args if (id(op), id(a)) in names), type(op).__name__)
            in_run[name] = in_run.get(name, 0.0) + elapsed
            return result

        return timed
