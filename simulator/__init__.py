"""Edge-accelerator cycle and energy model pricing dense against VELCRO-compressed inference."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m simulator.cli` imports this package first (its argv[0] is "-m" then):
    import velcro_ref.launch  # noqa: F401  # the `velcro` entry point's signal handling, before the imports below
import velcro_ref.fpenv  # noqa: F401, I001  # first: the modules below compile in C's default environment

from .arch import Arch, load_arch, parse_arch, presets
from .simulate import SimResult, simulate, sweep
from .workload import Layer, build_workload

__all__ = ["Arch", "Layer", "SimResult", "build_workload", "load_arch", "parse_arch", "presets", "simulate", "sweep"]
