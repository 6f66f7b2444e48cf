"""The thread pools during an engine run: Numba's kernels get the threads, BLAS stays in its caller;
and every thread computes in C's default floating-point environment.

The engine's kernels are Numba functions; the ones with parallel loops run on Numba's thread
pool (an OpenMP pool under the OpenMP threading layer). The engine calls no BLAS routine, but a
BLAS pool (NumPy's OpenBLAS) woken during a run, by an observer say, would busy-wait after the
call on the cores Numba's threads need, and those would wait for the scheduler in turn
(docs/kernels.md, "Threads"). `run_threads` sets, for the length of one run and whatever was
imported first:

- every BLAS pool that threadpoolctl finds to 1 thread (a BLAS call runs in the calling thread);
- Numba's threads to the smaller of `numba.get_num_threads()` (NUMBA_NUM_THREADS, or the
  caller's `numba.set_num_threads`) and the OpenMP runtimes' limit (the caller's
  `threadpoolctl.threadpool_limits(n, user_api="openmp")`),
- the threads of the calling thread's pool to C's default floating-point environment (round to
  nearest even, subnormals kept, exceptions masked; velcro_ref/fpenv.py says why; the calling
  thread is in it already, `Model.run_counted`) at that thread's first run (GNU OpenMP keeps a
  pool per thread that starts parallel loops; a pool started under other settings keeps them:
  threads inherit the environment of the thread that starts them),

and puts back what it found when the run ends, also when it raises; in a process forked after
Numba's threading layer started under GNU OpenMP (which does not survive a fork: Numba ends such a
child at its first parallel kernel) it refuses the run in one line instead. Nothing is read from or
written to the environment. Numba sets its OpenMP runtime to NUMBA_NUM_THREADS threads when its
pool starts (at the first parallel kernel), so OMP_NUM_THREADS, and an OpenMP limit set before
that, do not reach the kernels: NUMBA_NUM_THREADS does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numba
from numba import prange
from threadpoolctl import ThreadpoolController

from .errors import VelcroError
from .fpenv import DEFAULT_ENV
from .kernels.fpenv import default_env_all
from .kernels.jit import njit


@njit(cache=True, parallel=True)
def _start_pool(n):
    """A parallel loop: its first call loads Numba's threading layer (and its OpenMP runtime)."""
    total = 0
    for i in prange(n):
        total += i
    return total


@functools.lru_cache(maxsize=1)
def _pools():
    """(BLAS, OpenMP) threadpoolctl controllers of the libraries loaded once Numba's threading
    layer is: found at the first run, then kept (a library loaded later is not seen)."""
    _start_pool(2)
    ctl = ThreadpoolController()
    return tuple(ctl.select(user_api="blas").lib_controllers), tuple(ctl.select(user_api="openmp").lib_controllers)


_calling = threading.local()  # `pool_env`: this thread's pool was put in the default environment


def _pool_default_env():
    """Every thread of the calling thread's pool (GNU OpenMP keeps one per thread that starts
    parallel loops) in C's default floating-point environment, at the thread's first run."""
    if not DEFAULT_ENV or getattr(_calling, "pool_env", False):
        return
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # the whole pool, whatever the caller's count
    try:
        failed = default_env_all(64 * numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(before)
    if failed:
        raise VelcroError("could not set the engine's threads to C's default floating-point environment")
    _calling.pool_env = True


_forked_pool = False  # this process was forked from one whose threading layer had started


def _after_fork():
    global _forked_pool
    try:
        numba.threading_layer()  # ValueError until a parallel loop has run
    except ValueError:
        return
    _forked_pool = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def check_not_forked():
    """VelcroError in a process forked after the engine's GNU OpenMP pool started (module docstring)."""
    if _forked_pool and numba.threading_layer() == "omp" and any(c.prefix == "libgomp" for c in _pools()[1]):
        raise VelcroError(
            "this process was forked after velcro_ref ran, and its GNU OpenMP thread pool does not survive a "
            "fork: start worker processes with the 'spawn' or 'forkserver' method (multiprocessing.get_context)"
        )


def chosen_threads() -> int:
    """The threads the engine's kernels get in a run started now (see the module docstring)."""
    _, openmp = _pools()
    return min([numba.get_num_threads(), *(c.get_num_threads() for c in openmp)])


@contextlib.contextmanager
def run_threads():
    """The thread settings of one engine run (module docstring), restored on exit; yields the
    number of threads the kernels get. Entered in C's default floating-point environment
    (`Model.run_counted` puts its thread there before the run's input check and mask plan), so
    that a pool it starts inherits it."""
    blas, _ = _pools()
    numba_before = numba.get_num_threads()
    chosen = chosen_threads()
    blas_before = [c.get_num_threads() for c in blas]
    try:
        for c, n in zip(blas, blas_before, strict=True):
            if n != 1:
                c.set_num_threads(1)
        if chosen != numba_before:
            numba.set_num_threads(chosen)
        _pool_default_env()
        yield chosen
    finally:
        numba.set_num_threads(numba_before)
        for c, n in zip(blas, blas_before, strict=True):
            if n != 1:
                c.set_num_threads(n)
