"""Compute: cycles and buffer reads of one layer on the PE array or the vector unit.

Array layers are GEMMs per group: Sr = oy*ox output pixels, T = c*fy*fx window, Sc = k/groups
filters. Fold and fill/drain arithmetic follows SCALE-Sim (Samajdar et al., ISPASS 2020);
docs/simulator.md derives every formula. With masks, the compiler packs each column chunk's
needed pixels densely into its folds (a pixel is needed if any filter of the chunk keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ceil_div(a, b):
    """ceil(a / b) for non-negative integers (and integer arrays), exact at any size."""
    return -(-a // b)


@dataclass(frozen=True)
class Compute:
    """Per image: cycles of the unit, executed MACs/ops, bytes the unit moves to/from buffers.

    `live` (per group) counts filters with at least one unmasked element, for DRAM filter traffic;
    `psum_bytes` is weight-stationary partial-sum traffic between fold groups and `psum_tile_bytes`
    the largest per-chunk partial-sum tile, which decides whether it stays in the ofmap buffer;
    `acc_accesses` counts reads and writes of the column-foot output registers that accumulate
    partial sums across the row folds of one group (register accesses beyond those per MAC).
    """

    compute_cycles: int
    macs: int
    ops: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    live: tuple = ()
    psum_bytes: int = 0
    psum_tile_bytes: int = 0
    acc_accesses: int = 0


def column_chunks(layer, cols):
    """(needed, live, used) per column chunk, each shaped (groups, chunks).

    A chunk is `cols` consecutive filters of one group. needed: output pixels with at least one
    unmasked element in the chunk; live: filters with at least one unmasked element; used:
    unmasked output elements.
    """
    g, p = layer.groups, layer.oy * layer.ox
    kg = layer.k // g
    n_chunks = ceil_div(kg, cols)
    if layer.skip is None:
        width = np.minimum(cols, kg - cols * np.arange(n_chunks))
        live = np.broadcast_to(width, (g, n_chunks)).astype(np.int64)
        return np.full((g, n_chunks), p, np.int64), live, live * p
    # Each chunk from its first filter, not padded to whole chunks: padded, a depthwise layer's one
    # filter per group would take `cols` times the mask's memory.
    keep = ~layer.skip.reshape(g, kg, p)
    starts = np.arange(0, kg, cols)
    needed = np.logical_or.reduceat(keep, starts, axis=1).sum(axis=-1)
    live = np.add.reduceat(keep.any(axis=2), starts, axis=1, dtype=np.int64)
    used = np.add.reduceat(keep.sum(axis=2, dtype=np.int64), starts, axis=1)
    return needed.astype(np.int64), live, used


def array_compute(layer, arch) -> Compute:
    """Cycles and buffer reads of a conv2d/linear layer on a rows x cols systolic array."""
    r, c = arch.rows, arch.cols
    t = layer.c * layer.fy * layer.fx
    ob, ab = layer.in_bytes or arch.operand_bytes, arch.accumulator_bytes  # input and weights alike
    out_b = layer.out_bytes or arch.operand_bytes
    needed, live, used = column_chunks(layer, c)
    psum = psum_tile = acc = 0
    if arch.dataflow == "output_stationary":
        # Pixels on rows, filters on columns, the window streams through in T cycles.
        folds = ceil_div(needed, r)
        cycles = folds * (r + c + t - 2)
        filter_reads = folds * t * live
    else:
        # Window on rows (row folds of r), filters on columns, pixels stream through. A PE holds
        # pe_weights weights, so that many row folds form a group: their weights load together,
        # each pixel passes through the group's folds on consecutive cycles and its partial sum
        # accumulates in the output register at the foot of its column (read and written once
        # per fold after the first). Only between groups do partial sums leave the array for the
        # ofmap buffer and come back. With one weight per PE every fold is a group (SCALE-Sim).
        row_folds = ceil_div(t, r)
        fold_groups = ceil_div(row_folds, arch.pe_weights)
        cycles = np.where(needed > 0, row_folds * (r + needed) + fold_groups * (r + c - 2), 0)
        filter_reads = t * live
        psum = int(2 * (fold_groups - 1) * used.sum()) * ab
        psum_tile = int((needed * live).max()) * ab if fold_groups > 1 else 0
        acc = int(2 * (row_folds - fold_groups) * used.sum())
    return Compute(
        compute_cycles=int(cycles.sum()),
        macs=layer.active_macs,
        ops=0,
        ifmap_reads=int((needed * t).sum()) * ob,
        filter_reads=int(filter_reads.sum()) * ob,
        ofmap_writes=int(used.sum()) * out_b,
        live=tuple(int(x) for x in live.sum(axis=1)),
        psum_bytes=psum,
        psum_tile_bytes=psum_tile,
        acc_accesses=acc,
    )


def vector_compute(layer, arch) -> Compute:
    """A pooling/element-wise layer on `vector_lanes` lanes, reading inputs from the ifmap buffer
    and writing outputs to the ofmap buffer. A fused activation runs on its producer's output
    path: no cycles and no buffer traffic of its own.
    """
    ops = layer.ops
    if layer.fused:
        return Compute(compute_cycles=0, macs=0, ops=ops, ifmap_reads=0, filter_reads=0, ofmap_writes=0)
    ob, active = arch.operand_bytes, layer.active_elems
    return Compute(
        compute_cycles=ceil_div(ops, arch.vector_lanes),
        macs=0,
        ops=ops,
        ifmap_reads=layer.in_elems * active // layer.out_elems * (layer.in_bytes or ob),
        filter_reads=0,
        ofmap_writes=active * (layer.out_bytes or ob),
    )
