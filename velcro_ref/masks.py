"""Compression stage: per-site boolean masks and float32 constants, and their HDF5 file.

The `uniform` policy is the paper's: every site masks floor(r x elements) of its
lowest-variance elements (r as written: 0.29 of 100 is 29, `ratio_count`), equal variances broken
by flat index, constants = means.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction

import h5py
import numpy as np

from . import h5io
from .errors import MaskError, StatsError, UsageError
from .fileio import atomic_path, checked_path
from .fpenv import default_env
from .h5io import attr_json, attr_str, check_dataset, check_format, member, read_dataset, site_groups

FORMAT = "velcro-masks"
FORMAT_VERSION = 1


@dataclass
class MaskSet:
    """Masks of one model. `sites` maps site name -> (mask bool, constants float32), same shape.

    `complete` means every site of the model is listed (masks read from a file must be).
    """

    fingerprint: str
    sites: dict
    policy: dict = field(default_factory=dict)
    source: str = "<memory>"
    provenance: dict = field(default_factory=dict)
    complete: bool = False

    def n_masked(self) -> dict[str, int]:
        return {s: int(m.sum()) for s, (m, _) in self.sites.items()}


def empty_masks(model) -> MaskSet:
    """A MaskSet that masks nothing (runs exactly as dense)."""
    sites = {s: (np.zeros(shape, bool), np.zeros(shape, np.float32)) for s, shape in model.sites.items()}
    return MaskSet(model.fingerprint, sites, {"name": "empty"}, complete=True)


def check_ratio(r, what="ratio") -> float:
    """`r` as a float if it is a number in [0, 1] (not a bool); else UsageError naming `what` (e.g. "--ratio")."""
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, numbers.Real):
        raise UsageError(f"{what} must be a number in [0, 1], got {r!r}")
    r = _written(r)
    if not 0.0 <= r <= 1.0:
        raise UsageError(f"{what} must be in [0, 1], got {r}")
    return r


def _written(r) -> float:
    """A ratio as it is written: the float of its shortest decimal in its own type (a NumPy
    float32 0.7 prints as 0.7, and is 0.699999988 as a float)."""
    return float(str(r)) if isinstance(r, np.floating) else float(r)


def ratio_count(ratio, n) -> int:
    """floor(ratio x n) for the ratio as it is written, its shortest decimal (0.29 is 29/100): the
    float product 0.29 * 100 is 28.999999999999996, which would mask one element too few."""
    return math.floor(Fraction(repr(_written(ratio))) * int(n))


def lowest_variance(variance: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k lowest-variance elements; ties broken by flat index (stable order)."""
    order = np.argsort(variance.ravel(), kind="stable")
    mask = np.zeros(variance.shape, bool)  # its own memory: a run keeps its plan while it is read-only
    mask.reshape(-1)[order[:k]] = True
    return mask


@default_env()
def build_masks(stats, ratios: dict, policy: dict) -> MaskSet:
    """Masks from stats with a ratio per site (sites absent from `ratios` are not masked). StatsError
    for a site masked from statistics that hold NaN or Inf (`check_finite_sites`)."""
    stats.check_counts("no masks made", whole=False)
    sites = {}
    for name, s in stats.sites.items():
        r = check_ratio(ratios.get(name, 0.0), f"ratio of site '{name}'")
        k = ratio_count(r, s.mean.size)
        if k:
            check_finite_sites(stats, [name])
        sites[name] = (lowest_variance(s.variance, k), s.mean.astype(np.float32))
    prov = {"stats_classes": list(stats.classes), "stats_n_images": stats.n_images, "stats_source": stats.source}
    return MaskSet(stats.fingerprint, sites, policy, provenance=prov, complete=True)


def check_finite_sites(
    stats, names, images="the profiled images", outcome="no mask is made from them (exclude the site)"
) -> None:
    """StatsError for the first of the sites `names` whose variance or mean hold NaN or Inf (in
    memory only: `save_stats` writes none; their order of variances names no elements to mask),
    saying the network overflowed on `images` and ending with `outcome` (what the caller does not do)."""
    for name in names:
        site = stats.sites[name]
        bad = int(np.count_nonzero(~(np.isfinite(site.variance) & np.isfinite(site.mean))))
        if bad:
            raise StatsError(
                f"site '{name}': the statistics are NaN or infinite at {bad} element(s) (float32 overflowed in "
                f"the network on {images}, or the model's parameters hold NaN or Inf); {outcome}"
            )


def uniform_ratios(stats, ratio, exclude=()) -> dict:
    """The paper's policy: one ratio for every site except the excluded ones."""
    ratio = check_ratio(ratio)
    unknown = sorted(set(exclude) - set(stats.sites))
    if unknown:
        raise UsageError(f"--exclude: unknown site(s) {', '.join(unknown)}; sites: {', '.join(stats.sites)}")
    return {s: (0.0 if s in exclude else ratio) for s in stats.sites}


def check_bool_bytes(mask, where, why=" (a bool array viewed from other bytes: make it with astype(bool))"):
    """MaskError unless every byte of the bool array `mask` is 0 or 1. NumPy reads another byte as True,
    but a file stores the byte as it is, and `load_masks` refuses it."""
    not_bool = int(np.count_nonzero(mask.view(np.uint8) > 1))
    if not_bool:
        raise MaskError(f"{where}mask holds {not_bool} byte(s) that are neither 0 nor 1{why}")


def save_masks(masks: MaskSet, path, model=None) -> None:
    """Write a mask file atomically: attrs fingerprint/policy/provenance, `sites/<site>/{mask,constants}`.

    Written like a model file (h5io: checksummed metadata, fixed-length text attributes), with a
    Fletcher-32 checksum on every dataset so that a flipped bit in a mask or constant is found when read.
    A file read with its model must list every site (`load_masks`); a MaskSet made by hand may
    leave sites out: with its `model`, it is checked against it and the sites it leaves out are
    written unmasked.
    """
    if model is not None:
        model.check_masks(masks)
        sites = dict(masks.sites)
        for s, shape in model.sites.items():
            sites.setdefault(s, (np.zeros(shape, bool), np.zeros(shape, np.float32)))
        masks = MaskSet(masks.fingerprint, sites, masks.policy, masks.source, masks.provenance, complete=True)
    with atomic_path(path) as tmp, h5io.create(tmp) as f:
        h5io.write_header(
            f, FORMAT, FORMAT_VERSION, masks.fingerprint, policy=masks.policy, provenance=masks.provenance
        )
        g = f.create_group("sites")
        for name, (mask, const) in masks.sites.items():
            check_bool_bytes(np.asarray(mask, dtype=bool), f"{masks.source}: site '{name}': ")
            sg = g.create_group(h5io.escape_key(name))
            h5io.write_text_attr(sg, "name", name)
            sg.create_dataset("mask", data=np.asarray(mask, dtype=bool), fletcher32=True)
            sg.create_dataset("constants", data=np.asarray(const, dtype=np.float32), fletcher32=True)


def load_masks(path, model=None) -> MaskSet:
    """Read a mask file; with a model, also check that it was made for that model (engine.check_masks).

    Every dataset is checked before it is read (mask bool, constants float32, one shape, at
    most MAX_ELEMENTS elements); constants at masked elements must be finite and a policy ratio
    must lie in [0, 1]. Raises MaskError naming the file and the site or attribute at fault.
    """
    path = checked_path(path, MaskError, "mask file")  # its name in messages and in `source`
    masks = h5io.load_checked(path, MaskError, FORMAT, "mask", lambda f: _read_masks(f, path))
    # arrays of their own (the read hands them over as views of its buffer): a run keeps its plan
    masks.sites = {s: (m.copy(), c.copy()) for s, (m, c) in masks.sites.items()}
    if model is not None:
        model.check_masks(masks)
    return masks


def _read_masks(f, path):
    check_format(f, FORMAT, FORMAT_VERSION, MaskError)
    fingerprint = attr_str(f, "fingerprint", MaskError)
    policy = attr_json(f, "policy", MaskError, dict, default={})
    ratio = policy.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise MaskError(f"policy ratio expects a number in [0, 1], found {ratio!r}")
    provenance = attr_json(f, "provenance", MaskError, dict, default={})
    sites = {}
    for name, sg, where in site_groups(f, MaskError):
        mask = check_dataset(member(sg, "mask", h5py.Dataset, MaskError, where), MaskError, f"{where}mask ")
        const = check_dataset(member(sg, "constants", h5py.Dataset, MaskError, where), MaskError, f"{where}constants ")
        if mask.dtype != np.bool_:
            raise MaskError(f"{where}mask expects dtype bool, found {mask.dtype}")
        if const.dtype != np.float32:
            raise MaskError(f"{where}constants expect float32, found {const.dtype}")
        if mask.shape != const.shape:
            raise MaskError(f"{where}mask {mask.shape} and constants {const.shape} differ in shape")
        m = np.asarray(read_dataset(mask, MaskError, f"{where}mask "))
        c = read_dataset(const, MaskError, f"{where}constants ")
        check_bool_bytes(m, where, " (corrupt file)")
        bad = int(np.count_nonzero(~np.isfinite(c[m])))
        if bad:
            raise MaskError(f"{where}{bad} NaN/Inf constant(s) at masked elements")
        sites[name] = (np.asarray(m, dtype=bool), np.asarray(c, dtype=np.float32))
    return MaskSet(fingerprint, sites, policy, str(path), provenance, complete=True)
