"""conv2d: the one entry of the conv kernels; picks the path for a call and sizes its scratch.
A dense call copies its input and runs its kernel in one jitted call (`PLANES_RUNS`).

Paths (docs/kernels.md, "Paths"): dense, every output (`dense.conv_tiles` and `conv_direct` with
outputs in SIMD lanes, `dense.conv_lanes` / `conv_short_lanes` with filters in the lanes,
`depthwise.conv_depth_bands` / `conv_depthwise`); masked where the SkipPlan carries bits
(`schedule.lane_bits_kernel`, or per mask `schedule.dense_cheaper`: channels or filters in SIMD
lanes), the dense kernel storing only
the unmasked outputs; other masked convs with one chain per output (`masked.conv_runs`, runs of
unmasked outputs in SIMD lanes) or CHAINS chains (`masked.conv_sampled` / `conv_images8`, taps
in SIMD lanes). Every path sums an output in the same order, so a masked call writes the same
bits as a dense one at its unmasked outputs.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numba
import numpy as np
from numba.extending import register_jitable

from ..jit import njit
from . import masked
from .dense import (
    LANE_K,
    conv_direct,
    conv_lanes,
    conv_short_lanes,
    conv_tiles,
    direct_split,
    direct_tiles,
    planes_floats,
    planes_input,
    short_chains,
    work_split,
)
from .depthwise import band_rows, conv_depth_bands, conv_depthwise, is_depthwise
from .geom import ConvGeom
from .layouts import BLOCKS, ROWS, Planes, aligned_floats, copy_threads
from .prepare import ConvWeights, planes
from .schedule import plan_skip

# Images per call of a kernel: at most this many floats of input copy (32 MiB of scratch).
CHUNK_FLOATS = 1 << 23

ACT_NONE, ACT_RELU, ACT_RELU6, ACT_RELU_MAX = 0, 1, 2, 3


class Epilogue(NamedTuple):
    """What a conv applies to its outputs after the bias: residual (N, K, OH, OW) float32 added
    (None: nothing), then act: ACT_NONE, ACT_RELU (NumPy's maximum(y, 0)), ACT_RELU6 (then
    minimum(y, 6)) or ACT_RELU_MAX (then minimum(y, float32's largest value): a relu with
    attribute max). The same float32 operations, in the same order, as the separate add and
    activation ops."""

    residual: np.ndarray | None = None
    act: int = ACT_NONE


def conv2d(x, weights: ConvWeights, geom: ConvGeom, skip, out, scratch=None, epilogue=None) -> int:
    """Convolution of x (N, C, H, W) float32 into out (N, K, OH, OW) float32; returns the MACs
    executed (those of the outputs computed).

    skip: None (dense), a bool (K, OH, OW) array or its `plan_skip`; masked outputs are not
    computed and keep what out holds. scratch: a float32 1-D array of at least
    `scratch_floats(geom, N)` floats, or None (allocated here). epilogue: an Epilogue or None.
    The kernels read and write C-contiguous arrays: x and the residual are copied where they are
    not, and an out that is not is written through a C-contiguous copy of it. out may be x or
    the residual (or overlap them): they are then copied before the kernels read them.
    """
    if not out.flags.c_contiguous:
        whole = np.ascontiguousarray(out)  # masked outputs keep what out holds
        n_macs = conv2d(x, weights, geom, skip, whole, scratch, epilogue)
        out[...] = whole
        return n_macs
    x, n_n = (x.copy() if np.may_share_memory(x, out) else np.ascontiguousarray(x)), x.shape[0]
    # a plan by its bits, not its class (a plan made by a reloaded `schedule` is of another SkipPlan)
    plan = skip if skip is None or hasattr(skip, "bits") else plan_skip(skip, weights, geom)
    dense_path = plan is None or plan.bits is not None  # with bits: the dense kernel, some outputs stored
    # the floats the path taken needs (`scratch_floats`, what callers size it by, is the larger)
    call = _dense_call(weights, geom, n_n) if dense_path else None
    need = call.need if call else masked.scratch_floats(geom, n_n, weights)
    if scratch is None or scratch.size < need:
        scratch = aligned_floats(need)
    if epilogue is None or epilogue.residual is None:
        ep_k = (out, 0, 0 if epilogue is None else int(epilogue.act))
    else:
        res = epilogue.residual
        ep_k = (res.copy() if np.may_share_memory(res, out) else np.ascontiguousarray(res), 1, int(epilogue.act))
    if dense_path:
        return _dense(call, x, weights, geom, out, scratch, ep_k, None if plan is None else plan.bits)
    return masked.conv_masked(x, weights, geom, plan, out, scratch, ep_k)


def chunk_images(per_image, n_n):
    """Images per kernel call when each needs per_image floats of scratch (CHUNK_FLOATS at most)."""
    return n_n if per_image == 0 else max(1, min(n_n, CHUNK_FLOATS // per_image))


def scratch_floats(geom: ConvGeom, n_n, weights: ConvWeights) -> int:
    """Floats of scratch a call with n_n images needs, dense or masked."""
    return max(_dense_call(weights, geom, n_n).need, masked.scratch_floats(geom, n_n, weights))


def _dense_floats(pl, geom):
    """Floats of scratch per image of a dense call: none on BLOCKS (the depthwise kernel copies
    bands of rows into buffers of its own)."""
    return 0 if pl.kind == BLOCKS else planes_floats(pl, geom)


def dense_kernel(weights: ConvWeights, geom: ConvGeom):
    """The kernel of a dense conv on the ROWS, FLAT or DIRECT input: `conv_tiles` (output
    positions in lanes), `conv_short_lanes` (filters in lanes, chains short enough that a
    block's weights stay in L1) or `conv_lanes`."""
    if weights.tile_m != LANE_K:
        return conv_tiles
    return conv_short_lanes if short_chains(weights, geom) else conv_lanes


# The kernels run on a dense conv's input copy (`_DenseCall.path`: index into PLANES_RUNS).
RUN_LANES, RUN_SHORT, RUN_TILES, RUN_DEPTHWISE, RUN_DIRECT = range(5)


class _DenseCall(NamedTuple):
    """What a dense call of a conv on n images with t threads works out before its kernels:
    the scratch it needs, the input layout, the kernel it runs on its input copy (RUN_*; RUN_DEPTHWISE
    on BLOCKS: `conv_depth_bands`) and the chunks of images it runs it on, (first, count, work
    split, `conv_direct`'s tiles per item or 0 where it does not take the conv, threads of the
    input copy)."""

    tiles: weakref.ref  # the conv's packed filters: tells the conv from a later one at its id
    need: int
    pl: Planes
    path: int
    chunks: tuple
    band: int  # output rows per band of `conv_depth_bands` (`band_rows`)


# _DenseCall by (id of the packed filters, geom, images, threads), made at a conv's first call
# with those: a few microseconds of Python a call, which the 52 convs of MobileNet-V2 at batch
# 1 (7 ms) would spend at every run. Dropped whole when CALLS_MAX are kept.
_CALLS: dict = {}
CALLS_MAX = 1024


def _dense_call(weights, geom, n_n) -> _DenseCall:
    threads = numba.get_num_threads()
    key = (id(weights.tiles), geom, n_n, threads)
    call = _CALLS.get(key)
    if call is not None and call.tiles() is weights.tiles:
        return call
    pl = planes(weights)
    per_image = _dense_floats(pl, geom)
    chunk = chunk_images(per_image, n_n)
    depthwise = pl.kind == BLOCKS or (is_depthwise(geom) and pl.kind == ROWS)
    path = RUN_DEPTHWISE if depthwise else _RUNS[dense_kernel(weights, geom)]
    direct = not depthwise and direct_tiles(weights, geom)
    chunks = []
    for n0 in range(0, n_n, chunk):
        m = min(chunk, n_n - n0)
        split = (0, 0, 0) if depthwise else work_split(weights, geom, m, threads)
        copy = copy_threads(m * per_image, threads)
        chunks.append((n0, m, split, direct_split(geom, m, threads) if direct else 0, copy))
    chunks = tuple(chunks)
    call = _DenseCall(weakref.ref(weights.tiles), chunk * per_image, pl, path, chunks, band_rows(geom))
    if len(_CALLS) >= CALLS_MAX:
        _CALLS.clear()
    _CALLS[key] = call
    return call


def _images(a, n0, m):
    """Images n0 .. n0 + m - 1 of a: a itself when they are all of it (a call of one chunk, no
    slice made)."""
    return a if m == a.shape[0] else a[n0 : n0 + m]


def _dense(call, x, weights, geom, out, scratch, ep, bits):
    """The dense kernels (`call`, the conv's `_dense_call`); with bits (a `lane_bits`), storing
    only the outputs they name. The records go to the jitted entries as plain tuples (`_records`)."""
    res, has_res, act = ep
    wt, gt = tuple(weights), tuple(geom)
    n_macs = 0
    for n0, m, split, tpi, copy in call.chunks:
        xs, o = _images(x, n0, m), _images(out, n0, m)
        r = _images(res, n0, m) if has_res else o
        if call.pl.kind == BLOCKS:
            xf = np.ascontiguousarray(xs).reshape(-1)
            n_macs += _run_bands(xf, wt, gt, call.band, r.reshape(-1), has_res, act, o.reshape(-1), bits)
            continue
        path = RUN_DIRECT if tpi and bits is None else call.path
        n_macs += PLANES_RUNS[path](xs, wt, gt, tuple(call.pl), scratch, copy, r, has_res, act, o, split, tpi, bits)
    return n_macs


# A dense conv's input copy (`planes_input`) and its kernel in one call from Python, one function
# a kernel: the Python layers and the second dispatch between them cost 2 - 4 us a conv (57 convs
# in a GoogLeNet run). One function for all kernels took 14 s more to compile on a fresh cache
# (every kernel compiled and linked into it), these 8 s. Arguments: x, res and out (N, ...)
# C-contiguous; threads of the input copy (`copy_threads`); split the kernel's `work_split`, tpi
# `conv_direct`'s tiles per item; bits None or `lane_bits` (the filters-in-lanes kernels). The
# ConvWeights, ConvGeom and Planes come as plain tuples (`_records`).
@register_jitable
def _records(wt, gt, pt):
    """The ConvWeights, ConvGeom and Planes of a call from their fields. Passed as plain tuples,
    they cost Numba's dispatcher about 1.2 us a call to type, as NamedTuples 3.7 us (57 conv calls
    in a GoogLeNet run)."""
    return ConvWeights(*wt), ConvGeom(*gt), Planes(*pt)


@njit(cache=True)
def _run_direct(x, wt, gt, pt, scratch, threads, res, has_res, act, out, split, tpi, bits):
    weights, geom, planes = _records(wt, gt, pt)
    xp = planes_input(x, geom, planes, weights.plane_of, scratch, threads)
    return conv_direct(xp, weights, geom, res.reshape(-1), has_res, act, out.reshape(-1), tpi)


@njit(cache=True)
def _run_depthwise(x, wt, gt, pt, scratch, threads, res, has_res, act, out, split, tpi, bits):
    weights, geom, planes = _records(wt, gt, pt)
    xp = planes_input(x, geom, planes, weights.plane_of, scratch, threads)
    return conv_depthwise(xp, weights, geom, res.reshape(-1), has_res, act, out.reshape(-1))


@njit(cache=True)
def _run_tiles(x, wt, gt, pt, scratch, threads, res, has_res, act, out, split, tpi, bits):
    weights, geom, planes = _records(wt, gt, pt)
    xp = planes_input(x, geom, planes, weights.plane_of, scratch, threads)
    return conv_tiles(xp, weights, geom, res.reshape(-1), has_res, act, out.reshape(-1), split)


@njit(cache=True)
def _run_short(x, wt, gt, pt, scratch, threads, res, has_res, act, out, split, tpi, bits):
    weights, geom, planes = _records(wt, gt, pt)
    xp = planes_input(x, geom, planes, weights.plane_of, scratch, threads)
    return conv_short_lanes(xp, weights, geom, res.reshape(-1), has_res, act, out.reshape(-1), split, bits)


@njit(cache=True)
def _run_lanes(x, wt, gt, pt, scratch, threads, res, has_res, act, out, split, tpi, bits):
    weights, geom, planes = _records(wt, gt, pt)
    xp = planes_input(x, geom, planes, weights.plane_of, scratch, threads)
    return conv_lanes(xp, weights, geom, res.reshape(-1), has_res, act, out.reshape(-1), split, bits)


@njit(cache=True)
def _run_bands(xf, wt, gt, band, res, has_res, act, out, bits):
    """`conv_depth_bands` on the BLOCKS input xf, its records as plain tuples (`_records`)."""
    return conv_depth_bands(xf, ConvWeights(*wt), ConvGeom(*gt), band, res, has_res, act, out, bits)


PLANES_RUNS = (_run_lanes, _run_short, _run_tiles, _run_depthwise, _run_direct)  # by RUN_*


_RUNS = {conv_lanes: RUN_LANES, conv_short_lanes: RUN_SHORT, conv_tiles: RUN_TILES}
