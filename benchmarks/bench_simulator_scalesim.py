"""Per-layer compute cycles of ResNet-18 (224x224) against SCALE-Sim 3.0.0, os/ws on 16x16 and 32x32.

SCALE-Sim needs numpy<2.4, so it lives in its own venv, outside the repo:
    python3 -m venv /tmp/scalesim-venv && /tmp/scalesim-venv/bin/pip install "numpy<2.4" scalesim==3.0.0
    SCALESIM_PYTHON=/tmp/scalesim-venv/bin/python python benchmarks/bench_simulator_scalesim.py
For each conv layer the SCALE-Sim side builds its operand matrices (ifmap Sr x T, filter T x Sc,
ofmap Sr x Sc; the topology's padded input size (OH-1)*stride + kernel gives Sr = OH*OW) and runs
its systolic_compute_os/ws classes; its compute cycles are the rows of the demand matrices it
produces (the memory model, which only adds stall cycles, is not run: ~15 minutes per dataflow).
Prints a per-layer table and the largest relative difference. No asserts: target is within 1%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from simulator.arch import load_arch, with_changes
from simulator.compute import array_compute
from simulator.workload import build_workload
from velcro_ref.engine import Model
from velcro_ref.zoo import build_zoo

DRIVER = r"""
import json, sys
import numpy as np
from scalesim.scale_config import scale_config
from scalesim.compute.systolic_compute_os import systolic_compute_os
from scalesim.compute.systolic_compute_ws import systolic_compute_ws

job = json.load(sys.stdin)
out = {}
for rows, cols, df in job["configs"]:
    cfg = scale_config()
    cfg.array_rows, cfg.array_cols, cfg.df = rows, cols, df
    cfg.valid_conf_flag = True
    for layer in job["layers"]:
        # Topology row: ifmap h, w (padded), filter h, w, channels, filters, stride.
        h, w, fh, fw, c, k, s = layer["topology"]
        oh, ow = (h - fh) // s + 1, (w - fw) // s + 1
        sr, t = oh * ow, fh * fw * c
        ifm = np.arange(sr * t).reshape(sr, t)
        fil = np.arange(t * k).reshape(t, k) + 10**8
        ofm = np.arange(sr * k).reshape(sr, k) + 2 * 10**8
        comp = systolic_compute_os() if df == "os" else systolic_compute_ws()
        comp.set_params(config_obj=cfg, ifmap_op_mat=ifm, filter_op_mat=fil, ofmap_op_mat=ofm)
        i_demand, _, _ = comp.get_demand_matrices()
        out[f"{rows}x{cols}/{df}/{layer['name']}"] = int(i_demand.shape[0])
json.dump(out, sys.stdout)
"""

CONFIGS = [(16, 16, "os"), (16, 16, "ws"), (32, 32, "os"), (32, 32, "ws")]
DATAFLOW = {"os": "output_stationary", "ws": "weight_stationary"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scalesim-python", default=os.environ.get("SCALESIM_PYTHON", "/tmp/scalesim-venv/bin/python"))
    p.add_argument("--input-size", type=int, default=224)
    args = p.parse_args()
    model = Model(build_zoo("resnet18", input_size=args.input_size))
    layers = [x for x in build_workload(model) if x.op == "conv2d"]
    job_layers = []
    for x in layers:
        sh = model.plan.node(x.name).attrs["stride"][0]
        job_layers.append(
            {"name": x.name, "topology": [(x.oy - 1) * sh + x.fy, (x.ox - 1) * sh + x.fx, x.fy, x.fx, x.c, x.k, sh]}
        )
    job = {"configs": CONFIGS, "layers": job_layers}
    t0 = time.perf_counter()
    run = subprocess.run(
        [args.scalesim_python, "-c", DRIVER], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if run.returncode:
        sys.exit(f"SCALE-Sim driver failed ({args.scalesim_python}):\n{run.stderr[-2000:]}")
    theirs = json.loads(run.stdout)
    print(f"SCALE-Sim compute model: {time.perf_counter() - t0:.1f} s for {len(CONFIGS)} configs")
    base = load_arch("edge16")
    worst = 0.0
    for rows, cols, df in CONFIGS:
        arch = with_changes(base, rows=rows, cols=cols, dataflow=DATAFLOW[df])
        print(f"\n{rows}x{cols} {df}")
        print(f"{'layer':24} {'velcro':>10} {'scalesim':>10} {'diff':>8}")
        for x in layers:
            ours = array_compute(x, arch).compute_cycles
            ref = theirs[f"{rows}x{cols}/{df}/{x.name}"]
            diff = (ours - ref) / ref
            worst = max(worst, abs(diff))
            print(f"{x.name:24} {ours:>10} {ref:>10} {diff:>8.3%}")
    print(f"\nlargest per-layer difference: {worst:.3%} (target 1%)")


if __name__ == "__main__":
    main()
