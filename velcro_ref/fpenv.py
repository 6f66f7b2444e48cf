"""C's default floating-point environment for velcro_ref's arithmetic, whatever the process set.

A library built with -Ofast or -ffast-math sets flush-to-zero and denormals-are-zero in the
thread that loads it (its start-up code writes MXCSR), and `fesetround` changes how every later
operation rounds, Python's own reading of decimal numbers included: float32 results then differ
from IEEE 754's with no error (a subnormal intermediate read as 0, a quantized value one code off,
a ratio of 0.1 read as 0.09999999999999999). `default_env()` puts the calling thread in C's
default environment (round to nearest even, subnormals kept, exceptions masked: `fesetenv` of
FE_DFL_ENV) for a block and the caller's back after; `set_default()` does it for good (the
`velcro` command, whose process it is). The threads of a calling thread's Numba pool take it at
that thread's first engine run (`threads`). FE_DFL_ENV is the address -1 in glibc and musl on x86-64 and aarch64 Linux;
elsewhere (`DEFAULT_ENV` False) nothing is changed. Plain ctypes, so that the command sets it before
its imports. Python reads a decimal literal in the current rounding mode (0.7 and zoo's 1/255 one
ulp up under upward rounding) and keeps the compiled module in `__pycache__` for later processes:
from this module's import on, the package's modules and the simulator's compile and run in the
default environment (`scripts/setup.sh` compiles them all in it). The package's __init__ loads this
module first, but in the `velcro` command, which loads it once its start-up takes interrupts
(`velcro_ref.launch`); so does the simulator's.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
import sys

# where C's FE_DFL_ENV is the address -1 (glibc and musl on these machines; not glibc on PowerPC)
DEFAULT_ENV = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")
FE_DFL_ENV = ctypes.c_void_p(-1)
ENV_BYTES = 64  # room for a fenv_t: 32 bytes on x86-64, 8 on aarch64
_libm = ctypes.CDLL("libm.so.6") if DEFAULT_ENV else None


def set_default() -> None:
    """The calling thread in C's default floating-point environment from now on."""
    if DEFAULT_ENV and _libm.fesetenv(FE_DFL_ENV):
        raise OSError("could not set C's default floating-point environment")


@contextlib.contextmanager
def default_env():
    """The calling thread in C's default floating-point environment for the block, its own put back
    after (also a decorator: the public functions that compute take it)."""
    if not DEFAULT_ENV:
        yield
        return
    saved = ctypes.create_string_buffer(ENV_BYTES)
    if _libm.fegetenv(saved):
        raise OSError("could not read the floating-point environment")
    set_default()
    try:
        yield
    finally:
        _libm.fesetenv(saved)


class _Loader(importlib.machinery.SourceFileLoader):
    """The path finder's loader of a source file, compiling and running the module in the default
    environment."""

    def get_code(self, fullname):  # also called alone, by runpy (`python -m`)
        with default_env():
            return super().get_code(fullname)

    def exec_module(self, module):
        with default_env():
            super().exec_module(module)


class _Finder:
    """A meta path finder: finds the submodules of `packages` as the path finder does, with `_Loader`
    to load them (no importlib.abc base: importing it takes about 15 ms)."""

    def __init__(self, packages):
        self.packages = packages

    def find_spec(self, name, path, target=None):
        if "." not in name or name.partition(".")[0] not in self.packages:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _Loader(spec.loader.name, spec.loader.path)
        return spec


if DEFAULT_ENV:
    sys.meta_path.insert(0, _Finder(frozenset(("velcro_ref", "simulator"))))
