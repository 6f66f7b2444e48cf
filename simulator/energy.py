"""Energy: action counts x the accelerator's energy table, by component."""

from __future__ import annotations

# Register-file accesses per MAC: the two operand registers are read and the accumulator is
# updated (a dataflow count, not a hardware figure; the figure per access is [energy].rf).
RF_ACCESSES_PER_MAC = 3
COMPONENTS = ("mac", "rf", "ifmap_sram", "filter_sram", "ofmap_sram", "dram", "mask", "vector", "leakage")
# The compute-only view (docs/simulator.md): the work done on the chip. With the mask-table reads
# (the on-chip half of `mask`), it leaves out DRAM (operands and bitmaps) and leakage, whose
# cycles include the stalls on DRAM.
ON_CHIP = ("mac", "rf", "ifmap_sram", "filter_sram", "ofmap_sram", "vector")


def mask_table_energy(arch, traffic) -> float:
    """pJ of the mask-table bytes written and read for one layer (per image): the on-chip part of `mask`."""
    return traffic.mask_table_bytes * arch.energy_pj["mask_table"]


def layer_energy(arch, comp, traffic, cycles, mask_stall=0) -> dict[str, float]:
    """pJ per component for one layer (per image); the mask bitmap's DRAM and table bytes, and the
    leakage of the `mask_stall` cycles its load adds to the stall, count under mask."""
    e = arch.energy_pj
    return {
        "mac": comp.macs * e["mac"],
        "rf": (RF_ACCESSES_PER_MAC * comp.macs + comp.acc_accesses) * e["rf"],
        "ifmap_sram": traffic.ifmap_sram_bytes * e["ifmap_sram"],
        "filter_sram": traffic.filter_sram_bytes * e["filter_sram"],
        "ofmap_sram": traffic.ofmap_sram_bytes * e["ofmap_sram"],
        "dram": (traffic.dram_bytes - traffic.mask_dram_bytes) * e["dram"],
        "mask": traffic.mask_dram_bytes * e["dram"] + mask_table_energy(arch, traffic) + mask_stall * e["leakage"],
        "vector": comp.ops * e["vector_op"],
        "leakage": (cycles - mask_stall) * e["leakage"],
    }
