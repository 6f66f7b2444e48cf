"""velcro-ref: the reference implementation of VELCRO and its NumPy/Numba inference engine."""

from .engine import Model, load_model
from .errors import VelcroError
from .masks import MaskSet

__all__ = ["Model", "MaskSet", "VelcroError", "load_model"]
__version__ = "0.1.0"
