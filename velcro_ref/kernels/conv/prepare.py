"""A conv's filters and the tables its kernels follow, prepared once when a model loads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .geom import ConvGeom
from .layouts import Planes, pack_tiles, plane_order, planes_of, segments, tap_offsets, taps_last

# Filters per register tile of the dense kernels: a tile is TILE_K filters by 3 segments of 8
# outputs, 12 vector accumulators. Groups of fewer filters (depthwise) take tiles of one.
TILE_K = 4


class ConvWeights(NamedTuple):
    """What the conv kernels read besides the input: w (K, C/groups, KH, KW) and b (K,) float32
    as the model holds them; rows (K, J) `taps_last(w)`; tiles, w packed for the dense kernels
    (`pack_tiles`, blocks of tile_m filters); offs (taps,) int64 and starts, each tap's offset in
    the dense input copy in summation order and where each chain begins (`tap_offsets`); segs
    (S, 3) int64 the output segments (`segments`); plane_of (C/groups,) int64 and the Planes
    fields flat, hp, q, plane of the dense input copy (`to_planes`)."""

    w: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    tiles: np.ndarray
    tile_m: int
    offs: np.ndarray
    starts: np.ndarray
    segs: np.ndarray
    plane_of: np.ndarray
    flat: int
    hp: int
    q: int
    plane: int


def prepare_conv(w, b, geom: ConvGeom) -> ConvWeights:
    """The ConvWeights of filters w (K, C/groups, KH, KW) and bias b (K,) (None: zeros) of a
    conv with this geometry."""
    w = np.ascontiguousarray(w, np.float32)
    b = np.zeros(w.shape[0], np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    tile_m = TILE_K if geom.k_out // geom.groups >= TILE_K else 1
    planes = planes_of(geom)
    plane_of = plane_order(geom.c_in // geom.groups)
    offs, starts = tap_offsets(geom, planes, plane_of)
    return ConvWeights(
        w, b, taps_last(w), pack_tiles(w, geom, tile_m), tile_m, offs, starts, segments(geom, planes), plane_of, *planes
    )


def planes(cw: ConvWeights) -> Planes:
    return Planes(cw.flat, cw.hp, cw.q, cw.plane)
