"""C's default floating-point environment for the engine's arithmetic, as Numba functions.

A library built with -Ofast or -ffast-math sets flush-to-zero and denormals-are-zero in the
thread that loads it (its start-up code writes MXCSR), and `fesetround` changes how every later
operation rounds: float32 results then differ from IEEE 754's with no error (a subnormal
intermediate read as 0, a quantized value one code off). C's `fesetenv(FE_DFL_ENV)` puts a
thread back in the default environment (round to nearest even, subnormals kept, exceptions
masked); `fegetenv` / `fesetenv` save and restore a caller's. FE_DFL_ENV is the address -1 in
glibc and musl; `DEFAULT_ENV` is False elsewhere, and the functions are then not called
(threads.default_env).
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import njit

DEFAULT_ENV = sys.platform.startswith("linux")
FE_DFL_ENV = -1
ENV_BYTES = 64  # room for a fenv_t: 32 bytes on x86-64, 8 on aarch64


def _libm_call(name):
    """An intrinsic int32 name(void *address) of the C library, the address an int64."""

    @intrinsic
    def call(typingctx, address):
        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(8).as_pointer()])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            return builder.call(fn, [builder.inttoptr(args[0], ir.IntType(8).as_pointer())])

        return types.int32(types.int64), codegen

    return call


_fegetenv, _fesetenv = _libm_call("fegetenv"), _libm_call("fesetenv")


@njit(cache=True)
def save_env(buf):
    """The calling thread's environment into buf (uint8, ENV_BYTES), then the default put in its
    place; 0 if both calls succeeded."""
    return _fegetenv(buf.ctypes.data) | _fesetenv(FE_DFL_ENV)


@njit(cache=True)
def restore_env(buf):
    """The environment `save_env` kept in buf put back in the calling thread; 0 on success."""
    return _fesetenv(buf.ctypes.data)


@njit(cache=True, parallel=True)
def default_env_all(n):
    """The default environment in every thread that takes one of n iterations: n a few times
    the pool's threads, each takes some (Numba hands each thread a share up front). Returns the
    number of failed calls."""
    failed = np.zeros(n, np.int32)
    for i in prange(n):
        failed[i] = _fesetenv(FE_DFL_ENV) != 0
    return failed.sum()
