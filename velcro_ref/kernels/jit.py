"""`njit` for every kernel of the package: Numba's, with an on-disk cache keyed by all the kernels'
sources.

Numba checks a cached function only against the file that defines it (a limitation its
documentation states): a kernel that inlines an intrinsic of kernels/simd.py, calls a jitted
helper of another module or reads another module's constant would load its old machine code
after only that other file changed, an editable install's `git pull` for one, and compute with
the old arithmetic without a word. Here each cached function's index key also holds `SOURCES`,
a digest of every source that jitted code is built from (velcro_ref/kernels/ and
velcro_ref/threads.py), so a change in any of them compiles afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
from numba.core.caching import FunctionCache

_PACKAGE = Path(__file__).resolve().parents[1]


def kernel_sources(package: Path = _PACKAGE) -> list[Path]:
    """The sources jitted code may be built from, sorted: velcro_ref/kernels/ and threads.py."""
    return sorted([*(package / "kernels").rglob("*.py"), package / "threads.py"])


def sources_digest(package: Path = _PACKAGE, paths=None) -> str:
    """SHA-256 over the paths (relative to `package`) and bytes of `paths`, in order; by default the
    package's `kernel_sources`."""
    h = hashlib.sha256()
    for path in kernel_sources(package) if paths is None else paths:
        h.update(path.relative_to(package).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


SOURCES = sources_digest()


class _SourcesCache(FunctionCache):
    """Numba's cache of one function, its index key extended by `SOURCES`."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), SOURCES)


def njit(**options):
    """`numba.njit(**options)`; with cache=True the cache is keyed by `SOURCES` as well."""

    def wrap(fn):
        dispatcher = numba.njit(**options)(fn)
        if options.get("cache") and not numba.config.DISABLE_JIT:  # disabled: fn itself
            dispatcher._cache = _SourcesCache(dispatcher.py_func)
        return dispatcher

    return wrap


def check_compiled() -> None:
    """Refuse, in one line, to run the engine with Numba's compiler turned off: its kernels call
    LLVM intrinsics (`simd`), which exist only compiled."""
    if numba.config.DISABLE_JIT:
        from ..errors import UsageError

        raise UsageError("NUMBA_DISABLE_JIT is set: the engine's kernels run only compiled by Numba; unset it")
