"""Energy of one ResNet-18 conv layer against ZigZag on its bundled `tpu_like` accelerator.

ZigZag lives in its own venv, outside the repo:
    python3 -m venv /tmp/zigzag-venv && /tmp/zigzag-venv/bin/pip install zigzag-dse six
    ZIGZAG_PYTHON=/tmp/zigzag-venv/bin/python python benchmarks/bench_simulator_zigzag.py
Our side prices the same layer on simulator/archs/zigzag_tpu_like.toml (that file's figures,
converted) in both dataflows; ZigZag searches its own mapping (optimising energy). Prints total
energy, ZigZag's breakdown by memory level, and both sides by our energy components. No asserts:
target is total energy within 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from simulator.arch import load_arch, with_changes
from simulator.energy import COMPONENTS
from simulator.simulate import simulate_layer
from simulator.workload import build_workload
from velcro_ref.engine import Model
from velcro_ref.zoo import build_zoo

DRIVER = r"""
import json, logging, os, sys, tempfile
import zigzag
from zigzag.api import get_hardware_performance_zigzag
logging.disable(logging.CRITICAL)
job = json.load(sys.stdin)
k, c, oy, ox, fy, fx, s = job["loops"]
layer = f'''- id: 0
  operator_type: Conv
  equation: O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]
  dimension_relations: [ix={s}*ox+1*fx, iy={s}*oy+1*fy]
  loop_dims: [B, K, C, OY, OX, FY, FX]
  loop_sizes: [1, {k}, {c}, {oy}, {ox}, {fy}, {fx}]
  operand_precision: {{W: 8, I: 8, O: 16, O_final: 8}}
  operand_source: {{I: 0, W: 0}}
'''
d = tempfile.mkdtemp()
path = os.path.join(d, "layer.yaml")
open(path, "w").write(layer)
inputs = os.path.join(os.path.dirname(zigzag.__file__), "inputs")
energy, latency, cmes = get_hardware_performance_zigzag(
    path, os.path.join(inputs, "hardware", "tpu_like.yaml"), os.path.join(inputs, "mapping", "tpu_like.yaml"),
    opt="energy", dump_folder=os.path.join(d, "out"), loma_show_progress_bar=False)
cme = cmes[0][0]
layer_cme = cmes[0][1][0][0]  # the one layer's own evaluation, which knows the memory names
levels = {str(op): [float(x) for x in v] for op, v in cme.mem_energy_breakdown.items()}
# Per operand and memory level (innermost first): the level's name and its energy per direction.
further = {}
for op, v in cme.mem_energy_breakdown_further.items():
    mem_op = layer_cme.memory_operand_links.layer_to_mem_op(op)
    names = [m.name for m in layer_cme.mem_hierarchy_dict[mem_op]]
    further[str(op)] = [[n, {str(d.value): float(x.get(d)) for d in x.data}] for n, x in zip(names, v)]
json.dump({"energy_pj": float(energy), "latency": float(latency), "mac_pj": float(cme.mac_energy),
           "levels_pj": levels, "further_pj": further}, sys.stdout)
"""


# Where each ZigZag (memory, operand, direction) energy lands in our components, as
# zigzag_tpu_like.toml re-describes tpu_like: the 2 MB SRAM is our ifmap (I) and ofmap (O)
# buffer, the weight register files' fill is our filter buffer, their reads and the output
# registers are our PE registers (rf).
SRAM_OF = {"I": "ifmap_sram", "O": "ofmap_sram"}


def zigzag_component(memory, operand, direction):
    if memory == "dram":
        return "dram"
    if memory == "sram_2MB":
        return SRAM_OF[operand]
    if memory == "rf_128B" and direction == "wr_in_by_high":
        return "filter_sram"
    return "rf"


def zigzag_components(zz) -> dict:
    """ZigZag's energy (pJ) regrouped into our energy components."""
    out = {"mac": zz["mac_pj"]}
    for operand, levels in zz["further_pj"].items():
        for memory, by_direction in levels:
            for direction, pj in by_direction.items():
                comp = zigzag_component(memory, operand, direction)
                out[comp] = out.get(comp, 0.0) + pj
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zigzag-python", default=os.environ.get("ZIGZAG_PYTHON", "/tmp/zigzag-venv/bin/python"))
    p.add_argument("--layer", default="layer1.0.conv1", help="ResNet-18 conv layer (torchvision name)")
    args = p.parse_args()
    model = Model(build_zoo("resnet18"))
    layer = next(x for x in build_workload(model) if x.name == args.layer)
    stride = model.plan.node(layer.name).attrs["stride"][0]
    job = {"loops": [layer.k, layer.c, layer.oy, layer.ox, layer.fy, layer.fx, stride]}
    run = subprocess.run(
        [args.zigzag_python, "-c", DRIVER], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if run.returncode:
        sys.exit(f"ZigZag driver failed ({args.zigzag_python}):\n{run.stderr[-2000:]}")
    zz = json.loads(run.stdout)
    print(f"{args.layer}: {layer.loops}, {layer.macs} MACs")
    print(f"ZigZag tpu_like: {zz['energy_pj'] / 1e6:.2f} uJ (MAC {zz['mac_pj'] / 1e6:.2f}), {zz['latency']:.0f} cycles")
    for op, levels in zz["levels_pj"].items():
        print(f"  operand {op}: " + ", ".join(f"{v / 1e6:.2f}" for v in levels) + " uJ (innermost level first)")
    base = load_arch("zigzag_tpu_like")
    ours = {}
    for dataflow in ("weight_stationary", "output_stationary"):
        s = simulate_layer(layer, with_changes(base, dataflow=dataflow))
        ours[dataflow] = s.energy
        diff = s.energy_pj / zz["energy_pj"] - 1
        parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in s.energy.items() if v)
        print(f"velcro {dataflow}: {s.energy_pj / 1e6:.2f} uJ ({diff:+.1%} vs ZigZag), {s.cycles} cycles: {parts} uJ")
    theirs = zigzag_components(zz)
    print(f"\n{'component (uJ)':16} {'ZigZag':>8} {'ours WS':>8} {'ours OS':>8}")
    for comp in (*COMPONENTS, "total"):
        z = theirs.get(comp, 0.0) if comp != "total" else sum(theirs.values())
        w, o = (sum(e.values()) if comp == "total" else e[comp] for e in ours.values())
        if z or w or o:
            print(f"{comp:16} {z / 1e6:>8.3f} {w / 1e6:>8.3f} {o / 1e6:>8.3f}")


if __name__ == "__main__":
    main()
