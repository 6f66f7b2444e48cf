"""Memory: buffer and DRAM traffic of one layer with tiling for the buffer sizes, and stall cycles.

Each layer reads its inputs and filters from DRAM and writes its outputs back (layer by layer).
Buffers are double-buffered: half of each holds the tile in use, half the one being fetched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .compute import ceil_div


@dataclass(frozen=True)
class Traffic:
    """Bytes per image. SRAM counts every byte written into or read out of each buffer."""

    ifmap_sram_bytes: int = 0
    filter_sram_bytes: int = 0
    ofmap_sram_bytes: int = 0
    ifmap_dram_bytes: int = 0
    filter_dram_bytes: int = 0
    ofmap_dram_bytes: int = 0
    mask_dram_bytes: int = 0
    mask_table_bytes: int = 0

    @property
    def dram_bytes(self) -> int:
        return self.ifmap_dram_bytes + self.filter_dram_bytes + self.ofmap_dram_bytes + self.mask_dram_bytes


def _tilings(ifmap_bytes, filter_bytes, ifmap_cap, filter_cap):
    """(filters outer, ifmap outer), each (ifmap, filter) DRAM bytes."""
    a = (ifmap_bytes * ceil_div(filter_bytes, filter_cap), filter_bytes)
    b = (ifmap_bytes, filter_bytes * ceil_div(ifmap_bytes, ifmap_cap))
    return a, b


def operand_dram(ifmap_bytes, filter_bytes, ifmap_cap, filter_cap, dense_filter_bytes):
    """(ifmap, filter) DRAM bytes of one GEMM that needs `filter_bytes` of its
    `dense_filter_bytes` of filters.

    Filters outer: a buffer-half of filters stays while the whole ifmap streams past it, so the
    ifmap is fetched once per filter tile. Ifmap outer: the mirror image. The compiler picks the
    loop order with fewer DRAM bytes for the dense layer; a mask only drops filters from its
    tiles, so it never changes the order and never adds bytes to either operand. A dead GEMM (no
    filter needed) fetches nothing.
    """
    if filter_bytes == 0:
        return 0, 0
    dense_a, dense_b = _tilings(ifmap_bytes, dense_filter_bytes, ifmap_cap, filter_cap)
    a, b = _tilings(ifmap_bytes, filter_bytes, ifmap_cap, filter_cap)
    return a if sum(dense_a) <= sum(dense_b) else b


def layer_traffic(layer, arch, comp) -> Traffic:
    """Traffic of `layer` given its Compute `comp` on `arch`."""
    ob = arch.operand_bytes
    half = 1024 // 2
    mask = {}
    if layer.skip is not None and layer.reads_mask:
        # The bitmap comes from DRAM once per site into the mask table; each user reads it.
        table_read = ceil_div(layer.out_elems, 8)
        mask = {"mask_dram_bytes": layer.bitmap_bytes, "mask_table_bytes": layer.bitmap_bytes + table_read}
    if layer.unit == "vector":
        return Traffic(
            ifmap_sram_bytes=2 * comp.ifmap_reads,
            ofmap_sram_bytes=2 * comp.ofmap_writes,
            ifmap_dram_bytes=comp.ifmap_reads,
            ofmap_dram_bytes=comp.ofmap_writes,
            **mask,
        )
    t = layer.c * layer.fy * layer.fx
    ob, out_b = layer.in_bytes or ob, layer.out_bytes or ob  # a float layer of an int8 model: float32 all through
    ifmap_g = layer.in_elems // layer.groups * ob
    icap, fcap, ocap = (max(1, int(kib * half)) for kib in (arch.ifmap_kib, arch.filter_kib, arch.ofmap_kib))
    ifmap_dram = filter_dram = 0
    for live in comp.live:
        i, f = operand_dram(ifmap_g, live * t * ob, icap, fcap, layer.k // layer.groups * t * ob)
        ifmap_dram += i
        filter_dram += f
    # Masked outputs are never written: their constants already sit in the activation's DRAM buffer.
    ofmap_dram = layer.active_elems * out_b
    psum_dram = comp.psum_bytes if comp.psum_tile_bytes > ocap else 0
    return Traffic(
        ifmap_sram_bytes=comp.ifmap_reads + ifmap_dram,
        filter_sram_bytes=comp.filter_reads + filter_dram,
        ofmap_sram_bytes=comp.ofmap_writes + comp.psum_bytes + ofmap_dram + psum_dram,  # spilled: out and back in
        ifmap_dram_bytes=ifmap_dram,
        filter_dram_bytes=filter_dram,
        ofmap_dram_bytes=ofmap_dram + psum_dram,
        **mask,
    )


def stall_cycles(dram_bytes, compute_cycles, arch) -> int:
    """Cycles the layer waits for DRAM: transfers overlap compute (double buffering), so the
    layer takes max(compute, transfer) cycles and the excess over compute is stall. The bandwidth
    is the decimal written in the arch file (the shortest one that reads back as the float), so
    the ceiling is exact: 10584 bytes at 0.7 bytes a cycle are 15120 cycles, where the float
    quotient is 15120.000000000002."""
    transfer = math.ceil(Fraction(dram_bytes) / Fraction(repr(float(arch.dram_bytes_per_cycle))))
    return max(0, transfer - compute_cycles)
