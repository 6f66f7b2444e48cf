"""Accelerator descriptions for the simulator tests, written as velcro-arch/1 TOML text."""

from simulator.arch import ENERGY_KEYS


def arch_toml(
    rows=4,
    cols=4,
    dataflow="output_stationary",
    ifmap_kib=1,
    filter_kib=1,
    ofmap_kib=1,
    bw=4,
    pe=1,
    *,
    lanes=3,
    energy=None,
    name=None,
):
    """A small accelerator; `energy` maps every key of ENERGY_KEYS to its pJ (default: 0.5 plus
    the key's index, so that no two costs are alike)."""
    if energy is None:
        energy = {k: 0.5 + i for i, k in enumerate(ENERGY_KEYS)}
    lines = "".join(f'{k} = {{ pj = {pj}, source = "test" }}\n' for k, pj in energy.items())
    head = "" if name is None else f'name = "{name}"\n'
    return f"""
format = "velcro-arch/1"
{head}[array]
rows = {rows}
cols = {cols}
dataflow = "{dataflow}"
clock_mhz = 100
pe_weights = {pe}
[precision]
operand_bits = 8
accumulator_bits = 32
[buffers]
ifmap_kib = {ifmap_kib}
filter_kib = {filter_kib}
ofmap_kib = {ofmap_kib}
[dram]
bytes_per_cycle = {bw}
[vector]
lanes = {lanes}
[energy]
{lines}"""
