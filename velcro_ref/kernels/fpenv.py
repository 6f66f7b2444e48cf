"""C's default floating-point environment in every thread of Numba's pool (velcro_ref/fpenv.py
says why): a parallel loop whose iterations call C's `fesetenv(FE_DFL_ENV)`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import njit

FE_DFL_ENV = -1  # glibc's and musl's (const fenv_t *) -1


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


_fesetenv = _libm_call("fesetenv")


@njit(cache=True, parallel=True)
def default_env_all(n):
    """The default environment in every thread that takes one of n iterations: n a few times
    the pool's threads, each takes some (Numba hands each thread a share up front). Returns the
    number of failed calls."""
    failed = np.zeros(n, np.int32)
    for i in prange(n):
        failed[i] = _fesetenv(FE_DFL_ENV) != 0
    return failed.sum()
