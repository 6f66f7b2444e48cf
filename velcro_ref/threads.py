"""Spin-wait defaults for the two thread pools the engine uses, set before NumPy loads its BLAS.

The engine alternates NumPy's BLAS (an OpenBLAS thread pool) and Numba's parallel kernels (an
OpenMP thread pool). By default an OpenBLAS thread busy-waits for 2^28 cycles after each call
and an OpenMP thread for a while after each parallel region, so with one thread per core the
other pool's threads wait for the scheduler to preempt a spinning one. Measured on 2 cores:
masked ResNet-18 (224x224, batch 1, R = 0.5) took 236 ms with the defaults and 58 ms with
both pools sleeping at once. OMP_WAIT_POLICY matters under Numba's OpenMP threading layer (the
one pip's Numba picks on Linux); its TBB layer does not read it. Only unset variables are set,
and only a process that imports velcro_ref before NumPy gets them (the `velcro` command and the
benchmarks do).

A sleeping OpenMP thread, though, takes 45-55 us to wake (an empty 2-thread `prange` region),
and a masked run at batch 1 opens a region per conv, 0.5-1 ms apart. GOMP_SPINCOUNT (which
overrides the passive policy's 0) keeps the threads spinning for 30000 turns, about 0.6 ms on
the 2-core machine of docs/kernels.md, before they sleep: an empty region then takes 2 us.
Measured on ResNet-18 (224x224, batch 1, R = 0.7), six alternating pairs of processes:
achieved/ideal 0.707-0.808 without it and 0.726-0.815 with it, higher in all six pairs.

The spin is paid where a BLAS call follows a region within 0.6 ms. A dense run below 48 images
opens no region unless a max pool reaches 1M input elements (kernels/pool.py): a parallel max
pool at batch 1 had made GoogLeNet's dense run 40-43 ms instead of 32-35. With it serial there,
alternating processes with and without the spin gave the same dense times within the noise for
ResNet-18 at batch 1, 8 and 64 and GoogLeNet at batch 1 and 64. The spin count is set only
with the passive policy set here: a user's own OMP_WAIT_POLICY keeps its libgomp default.
"""

from __future__ import annotations

import os

SPIN_DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
PASSIVE_SPINCOUNT = "30000"

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", PASSIVE_SPINCOUNT)
for _name, _value in SPIN_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
