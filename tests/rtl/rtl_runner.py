"""Build rtl/ with a simulator and run a cocotb test module on it (cocotb's Python runner).

A missing simulator or cocotb is a test failure with a one-line message, never a skip: the suite
needs Icarus Verilog, Verilator and cocotb (scripts/setup.sh installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RTL = ROOT / "rtl"
SOURCES = [RTL / "velcro_delay.v", RTL / "velcro_pe.v", RTL / "velcro_requant.v", RTL / "velcro_os_array.v"]
SIMULATORS = ("icarus", "verilator")
TOOLS = {"icarus": ("iverilog", "vvp"), "verilator": ("verilator",)}
PACKAGES = {"icarus": "iverilog", "verilator": "verilator"}
HERE = Path(__file__).resolve().parent


def missing(sim: str) -> str | None:
    """A one-line message if `sim` or cocotb is not installed, else None."""
    tools = [t for t in TOOLS[sim] if shutil.which(t) is None]
    if tools:
        return (
            f"{sim}: {', '.join(tools)} not on PATH; install the Debian package {PACKAGES[sim]} (scripts/setup.sh does)"
        )
    try:
        import cocotb  # noqa: F401
    except ImportError:
        return "cocotb is not installed in this Python; scripts/setup.sh installs the pinned version (extra rtl)"
    return None


def require(sim: str) -> None:
    """Fail the calling test in one line when `sim` or cocotb is not installed."""
    message = missing(sim)
    if message:
        import pytest

        pytest.fail(message, pytrace=False)


def build(sim: str, toplevel: str, build_dir: Path, parameters: dict, extra_sources=()):
    """Compile the RTL (and `extra_sources`, e.g. another root module) for `sim`; returns the runner."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cocotb 1.8 calls its runner experimental
        from cocotb.runner import get_runner
    runner = get_runner(sim)
    args = ["-g2005"] if sim == "icarus" else []
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The runner compiles Verilator's C++ with make; unoptimised it compiles in about half the
        # time, and the runs are short.
        os.environ["MAKEFLAGS"] = "-j2 OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"
    try:
        runner.build(
            verilog_sources=[*SOURCES, *extra_sources],
            hdl_toplevel=toplevel,
            parameters=parameters,
            build_args=args,
            build_dir=build_dir,
            always=True,
        )
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    return runner


def run(runner, toplevel: str, test_module: str, build_dir: Path, run_env: dict) -> list:
    """Run `test_module` (in tests/rtl) on a built simulator; returns its results file's JSON."""
    results = build_dir / "velcro_results.json"
    if results.exists():
        results.unlink()
    env = {"VELCRO_RTL_RUN": json.dumps({**run_env, "results": str(results)})}
    # The simulator's Python gets this process's sys.path as its PYTHONPATH: add tests/rtl and the
    # repository for the length of the run.
    saved = list(sys.path)
    sys.path[:0] = [str(HERE), str(ROOT)]
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir, extra_env=env)
    finally:
        sys.path[:] = saved
    if not results.exists():
        raise RuntimeError(f"{test_module}: the simulation wrote no results ({results})")
    return json.loads(results.read_text())
