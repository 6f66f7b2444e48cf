"""A conv's filters and the tables its kernels follow, prepared once when a model loads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..simd import VEC
from .dense import LANE_K, TILE_K
from .geom import ConvGeom
from .layouts import (
    BLOCKS,
    Planes,
    aligned_floats,
    pack_tiles,
    plane_order,
    planes_of,
    position_bases,
    segments,
    tap_offsets,
    taps_last,
)


class ConvWeights(NamedTuple):
    """What the conv kernels read besides the input: w (K, C/groups, KH, KW) and b (K,) float32
    as the model holds them; rows (K, J) `taps_last(w)`; tiles, w packed for the dense kernels
    (`pack_tiles`, blocks of tile_m filters); offs (taps,) int64 and starts, each tap's offset in
    the dense input copy in summation order and where each chain begins (`tap_offsets`); segs
    (S, 4) int64 the output segments (`segments`); pbase (P,) int64 each output position's base
    (`position_bases`); plane_of (C/groups,) int64 and the Planes
    fields kind, hp, q, plane, phases of the dense kernels' input (`to_planes`; rows of one
    phase where the filters go in SIMD lanes)."""

    w: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    tiles: np.ndarray
    tile_m: int
    offs: np.ndarray
    starts: np.ndarray
    segs: np.ndarray
    pbase: np.ndarray
    plane_of: np.ndarray
    kind: int
    hp: int
    q: int
    plane: int
    phases: int


def prepare_conv(w, b, geom: ConvGeom) -> ConvWeights:
    """The ConvWeights of filters w (K, C/groups, KH, KW) and bias b (K,) (None: zeros) of a
    conv with this geometry."""
    w = np.ascontiguousarray(w, np.float32)
    b = np.zeros(w.shape[0], np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    tile_m = VEC if planes_of(geom).kind == BLOCKS else tile_filters(geom)
    planes = planes_of(geom, lanes=tile_m == LANE_K)
    plane_of = plane_order(geom.c_in // geom.groups, planes.kind)
    offs, starts = tap_offsets(geom, planes, plane_of)
    segs, pbase = segments(geom, planes), position_bases(geom, planes)
    if planes.kind == BLOCKS:  # 8 channels' filters side by side, tap after tap
        tiles = aligned_floats(w.size)
        tiles[:] = w.reshape(-1, VEC, geom.kh * geom.kw).transpose(0, 2, 1).reshape(-1)
    else:
        tiles = pack_tiles(w, geom, tile_m)
    return ConvWeights(w, b, taps_last(w), tiles, tile_m, offs, starts, segs, pbase, plane_of, *planes)


def tile_filters(geom: ConvGeom) -> int:
    """Filters per register tile of the conv's dense kernel: LANE_K for `conv_lanes` (filters in
    SIMD lanes) wherever the filters of a group fill whole tiles of LANE_K, else TILE_K or 1 for
    `conv_tiles` (output positions in SIMD lanes). Filters in lanes measured 4-13% faster on
    every such conv of ResNet-18 and MobileNet-V2 tried, 3x3, 7x7 and 1x1, strided or not, in
    chains or one chain (docs/kernels.md, "Paths")."""
    kg = geom.k_out // geom.groups
    if kg % LANE_K == 0:
        return LANE_K
    return TILE_K if kg >= TILE_K else 1


def planes(cw: ConvWeights) -> Planes:
    return Planes(cw.kind, cw.hp, cw.q, cw.plane, cw.phases)
