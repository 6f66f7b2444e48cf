"""velcro-ref: the reference implementation of VELCRO and its NumPy/Numba inference engine."""

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
    "load_masks",
    "load_model",
    "load_stats",
    "save_masks",
    "save_stats",
]
__version__ = "0.1.0"
