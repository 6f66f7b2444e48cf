"""Work items shared by the calling thread and helper threads, the caller doing whatever is left.

A kernel's items are handed out through an atomic counter: the calling thread and NUMBA's thread
count minus one helper threads (a Python thread pool running `nogil` Numba code) each take the
next run of items until none is left; the caller then waits only for runs a helper has started.
A helper that the scheduler has not run yet finds nothing to do, so the call never waits for a
thread to wake. On a busy machine this matters: with Numba's OpenMP regions, where each thread
owns a fixed share and a region ends at a barrier, a 2-thread conv took 10-20 ms where one
thread took 2-3 ms (ResNet-18's layer1 at a load average of 6 on 2 cores).

Kernels using this take `counters` (int64 (4,): next item, items finished, elements computed, READY)
and run `grab` loops themselves (see kernels/int8/conv.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import get_num_threads, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import njit

NEXT, FINISHED, DONE = 0, 1, 2
# A fourth counter a kernel may use for its own hand-over between items (conv: input rows packed).
READY = 3


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """arr[index] += value atomically (sequentially consistent); returns the old value.
    arr: a C-contiguous int64 1-D array."""
    ok = isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1 and arr.layout == "C"
    if not (ok and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(arr, index, value)

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(a.data, [i]), v, "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr[index] read atomically (sequentially consistent); arr as in atomic_add."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(index, types.Integer)):
        return None
    sig = types.int64(arr, index)

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ld = builder.load_atomic(builder.gep(a.data, [i]), "seq_cst", 8)
        return ld

    return sig, codegen


# Turns of the wait loop before it starts giving its core away: a helper finishing its last run
# on the other core is usually done within them; one waiting for a core gets it sooner.
SPIN = 2000


@intrinsic
def _sched_yield(typingctx):
    """POSIX sched_yield(): give the core to another runnable thread."""
    sig = types.int32()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(fn, [])

    return sig, codegen


@njit(cache=True, nogil=True)
def wait_count(counters, slot, n):
    """Wait (without the GIL) until counters[slot] reaches n: spin, then yield the core."""
    turns = 0
    while atomic_load(counters, slot) < n:
        turns += 1
        if turns > SPIN:
            _sched_yield()


@njit(cache=True, nogil=True)
def wait_finished(counters, n_items):
    """Wait (without the GIL) until n_items items are finished."""
    wait_count(counters, FINISHED, n_items)


_pool = {"executor": None, "size": 0}
_pool_lock = threading.Lock()


def _helpers(n):
    """A thread pool of at least n threads, made once (and again if more are needed)."""
    with _pool_lock:
        if _pool["size"] < n:
            _pool["executor"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="velcro-int8")
            _pool["size"] = n
        return _pool["executor"]


def run(grab, args, n_items, per):
    """Run the items 0 .. n_items - 1 in runs of `per` through grab(counters, n_items, per,
    *args), on the calling thread and get_num_threads() - 1 helpers. Returns counters[DONE],
    what the grab loops added there."""
    counters = np.zeros(4, np.int64)
    n_helpers = min(get_num_threads() - 1, (n_items + per - 1) // per - 1)
    if n_helpers > 0:
        pool = _helpers(n_helpers)
        for _ in range(n_helpers):
            pool.submit(grab, counters, n_items, per, *args)
    grab(counters, n_items, per, *args)
    wait_finished(counters, n_items)
    return int(counters[DONE])
