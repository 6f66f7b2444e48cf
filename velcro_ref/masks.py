"""Compression stage: per-site boolean masks and float32 constants, and their HDF5 file.

The `uniform` policy is the paper's: every site masks floor(r x elements) of its
lowest-variance elements, equal variances broken by flat index, constants = means.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from .errors import MaskError, UsageError
from .fileio import atomic_path

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
    if not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
        raise UsageError(f"{what} must be in [0, 1], got {r!r}")
    return float(r)


def lowest_variance(variance: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k lowest-variance elements; ties broken by flat index (stable order)."""
    flat = variance.ravel()
    order = np.argsort(flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:k]] = True
    return mask.reshape(variance.shape)


def build_masks(stats, ratios: dict, policy: dict) -> MaskSet:
    """Masks from stats with a ratio per site (sites absent from `ratios` are not masked)."""
    sites = {}
    for name, s in stats.sites.items():
        r = check_ratio(ratios.get(name, 0.0), f"ratio of site '{name}'")
        k = int(np.floor(r * s.mean.size))
        sites[name] = (lowest_variance(s.variance, k), s.mean.astype(np.float32))
    prov = {"stats_classes": list(stats.classes), "stats_n_images": stats.n_images, "stats_source": stats.source}
    return MaskSet(stats.fingerprint, sites, policy, provenance=prov, complete=True)


def uniform_ratios(stats, ratio, exclude=()) -> dict:
    """The paper's policy: one ratio for every site except the excluded ones."""
    ratio = check_ratio(ratio)
    unknown = sorted(set(exclude) - set(stats.sites))
    if unknown:
        raise UsageError(f"--exclude: unknown site(s) {', '.join(unknown)}; sites: {', '.join(stats.sites)}")
    return {s: (0.0 if s in exclude else ratio) for s in stats.sites}


def _key(name):
    return name.replace("%", "%25").replace("/", "%2F")


def save_masks(masks: MaskSet, path) -> None:
    """Write a mask file atomically: attrs fingerprint/policy/provenance, `sites/<site>/{mask,constants}`."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = masks.fingerprint
        f.attrs["policy"] = json.dumps(masks.policy)
        f.attrs["provenance"] = json.dumps({"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **masks.provenance})
        g = f.create_group("sites")
        for name, (mask, const) in masks.sites.items():
            sg = g.create_group(_key(name))
            sg.attrs["name"] = name
            sg.create_dataset("mask", data=np.asarray(mask, dtype=bool))
            sg.create_dataset("constants", data=np.asarray(const, dtype=np.float32))


def load_masks(path) -> MaskSet:
    """Read a mask file. Raises MaskError naming the file and site for anything malformed."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise MaskError(f"{path}: cannot be read as HDF5 ({e})") from None
    with f:
        try:
            return _read_masks(f, path)
        except MaskError as e:
            raise MaskError(f"{path}: {e}") from None
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise MaskError(f"{path}: malformed mask file ({e})") from None


def _read_masks(f, path):
    if f.attrs.get("format") != FORMAT:
        raise MaskError(f"format attribute expects '{FORMAT}', found {f.attrs.get('format')!r}")
    if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
        raise MaskError(f"format_version {f.attrs['format_version']} is newer than supported")
    sites = {}
    for key, sg in f["sites"].items():
        name = str(sg.attrs.get("name", key))
        mask, const = sg["mask"], sg["constants"]
        if mask.dtype != np.bool_:
            raise MaskError(f"site '{name}': mask expects dtype bool, found {mask.dtype}")
        if const.dtype != np.float32:
            raise MaskError(f"site '{name}': constants expect float32, found {const.dtype}")
        if mask.shape != const.shape:
            raise MaskError(f"site '{name}': mask {mask.shape} and constants {const.shape} differ in shape")
        m, c = mask[()], const[()]
        if not np.all(np.isfinite(c[m])):
            raise MaskError(f"site '{name}': NaN/Inf constants at masked elements")
        sites[name] = (m, c)
    return MaskSet(
        str(f.attrs["fingerprint"]),
        sites,
        json.loads(f.attrs.get("policy", "{}")),
        str(path),
        json.loads(f.attrs.get("provenance", "{}")),
        complete=True,
    )
