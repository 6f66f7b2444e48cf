"""velcro-ref: the reference implementation of VELCRO and its NumPy/Numba inference engine.

The functions below mirror the `velcro` commands (velcro_ref/api.py); the simulator's is
`simulator.simulate(model, accel, masks=None)`.
"""

from . import threads  # noqa: F401  (first: thread-pool defaults must precede NumPy's BLAS)
from .api import compress, evaluate, golden, locality, profile, sweep, task_classes
from .data import task_images
from .engine import Model, load_model
from .errors import VelcroError
from .masks import MaskSet, build_masks, load_masks, save_masks
from .stats import collect_stats, load_stats, save_stats

__all__ = [
    "MaskSet",
    "Model",
    "VelcroError",
    "build_masks",
    "collect_stats",
    "compress",
    "evaluate",
    "golden",
    "load_masks",
    "load_model",
    "load_stats",
    "locality",
    "profile",
    "save_masks",
    "save_stats",
    "sweep",
    "task_classes",
    "task_images",
]
__version__ = "0.1.0"
