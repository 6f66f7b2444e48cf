"""velcro-ref: the reference implementation of VELCRO and its NumPy/Numba inference engine.

The functions below mirror the `velcro` commands (velcro_ref/api.py); the simulator's is
`simulator.simulate(model, accel, masks=None)`. They are imported when first used, so that
`import velcro_ref` (and the `velcro` command's start-up) stays light. Loaded first, velcro_ref.fpenv
has the package's modules compiled in C's default floating-point environment, whatever the caller's
(docs/design.md, "Data path"). The `velcro` command runs this module before its entry point
(velcro_ref.launch) can take an interrupt: there it calls nothing (an interrupt that came meanwhile is
taken at a call's return), so only its first instruction may take one, and fpenv is loaded by launch.
"""

import sys as _sys

try:  # the `velcro` command (its script's path) or `python -m velcro_ref.cli` (argv[0] is "-m" while the
    # package is found; a script of one's own named velcro is taken for it): read without a call
    _launched = _sys.argv[0] == "-m" or _sys.argv[0][-7:] == "/velcro" or _sys.argv[0] == "velcro"
except Exception:  # no argv[0], or not a str (an embedding application's)
    _launched = False
if not _launched:
    from . import fpenv  # noqa: F401

# name -> module that defines it, in sorted order (the order of __all__)
_EXPORTS = {
    "MaskSet": "masks",
    "Model": "engine",
    "VelcroError": "errors",
    "build_masks": "masks",
    "collect_stats": "stats",
    "compress": "api",
    "evaluate": "api",
    "golden": "api",
    "load_masks": "masks",
    "load_model": "engine",
    "load_stats": "stats",
    "locality": "api",
    "profile": "api",
    "quantize": "api",
    "save_masks": "masks",
    "save_model": "model_io",
    "save_stats": "stats",
    "sweep": "api",
    "task_classes": "api",
    "task_images": "data",
}
__all__ = [*_EXPORTS]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        from .fpenv import default_env

        with default_env():  # HDF5's start-up crashed under a rounding mode other than the default
            value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
