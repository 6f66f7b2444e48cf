"""Edge-accelerator cycle and energy model pricing dense against VELCRO-compressed inference."""

from .arch import Arch, load_arch, parse_arch, presets
from .simulate import SimResult, simulate, sweep
from .workload import Layer, build_workload

__all__ = ["Arch", "Layer", "SimResult", "build_workload", "load_arch", "parse_arch", "presets", "simulate", "sweep"]
