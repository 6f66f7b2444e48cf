#!/usr/bin/env python3
"""Replay RTL vector directories through the reference array (rtl/) with cocotb.

    .venv/bin/python scripts/rtl_replay.py VECTOR_DIR [VECTOR_DIR ...] [--sim icarus|verilator]

Builds the array at the size the manifests give, streams every tile of every layer, checks every
result bit for bit and prints per layer the cycles and issued MACs. Exit 0 when all results
match, 1 on a mismatch or bad vectors, 2 for bad usage. docs/rtl.md describes the vectors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "rtl"), str(ROOT)]

import rtl_runner  # noqa: E402

from velcro_ref.errors import VelcroError  # noqa: E402
from velcro_ref.rtl_vectors import read_rtl_vectors  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("vectors", nargs="+", help="directories written by write_rtl_vectors")
    p.add_argument("--sim", choices=rtl_runner.SIMULATORS, default="icarus", help="simulator (default icarus)")
    p.add_argument("--build-dir", help="where to build and run (default: a temporary directory)")
    a = p.parse_args(argv)
    try:
        vecs = [read_rtl_vectors(d) for d in a.vectors]
    except VelcroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shapes = sorted({(v.rows, v.cols) for v in vecs})
    if len(shapes) > 1:
        print(f"error: the vectors are for arrays of different sizes {shapes}; replay them apart", file=sys.stderr)
        return 2
    message = rtl_runner.missing(a.sim)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 1
    rows, cols = shapes[0]
    with tempfile.TemporaryDirectory() as tmp:
        build_dir = Path(a.build_dir or tmp).resolve()
        runner = rtl_runner.build(a.sim, "velcro_os_array", build_dir, {"ROWS": rows, "COLS": cols})
        results = rtl_runner.run(
            runner,
            "velcro_os_array",
            "cocotb_array",
            build_dir,
            {"layers": [str(Path(d).resolve()) for d in a.vectors]},
        )
    bad = 0
    for r in results:
        status = "bit-exact" if not r["mismatches"] else f"{len(r['mismatches'])} mismatches"
        print(
            f"{r['layer']}: {r['tiles']} tiles, {r['rows_compared']} result rows {status}; "
            f"cycles {r['cycles_issue']} (folds) {r['cycles_total']} (to the last result), MACs {r['macs']}"
        )
        for m in r["mismatches"][:20]:
            print(f"  {m}")
        bad += bool(r["mismatches"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
