"""Preprocessing stage: per-element activation statistics, streamed and mergeable.

Per element of every activation site: float64 count, mean, M2, min and max. Each batch is
reduced exactly (two passes in float64 over the batch, which is Welford's update applied to the
batch as one block) and joined to the running totals by Chan's formula, so memory does not grow
with the number of images and shards merge in any order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from .errors import StatsError
from .fileio import atomic_path

FORMAT = "velcro-stats"
FORMAT_VERSION = 1
FIELDS = ("count", "mean", "m2", "min", "max")


@dataclass
class SiteStats:
    """float64 arrays of one site's element shape."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, shape):
        z = np.zeros(shape, np.float64)
        return cls(z.copy(), z.copy(), z.copy(), np.full(shape, np.inf), np.full(shape, -np.inf))

    @classmethod
    def of_batch(cls, y):
        """Exact stats of a batch y (N, *shape)."""
        y = np.asarray(y, dtype=np.float64)
        mean = y.mean(axis=0)
        m2 = np.square(y - mean).sum(axis=0)
        count = np.full(mean.shape, float(y.shape[0]))
        return cls(count, mean, m2, y.min(axis=0), y.max(axis=0))

    def merge(self, other: SiteStats) -> SiteStats:
        """Chan et al.'s parallel combination of two partial results."""
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / safe)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / safe)
        return SiteStats(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / np.where(self.count > 0, self.count, 1.0)


@dataclass
class Stats:
    """Statistics of every activation site of one model over an image set."""

    fingerprint: str
    sites: dict
    classes: tuple = ()
    n_images: int = 0
    source: str = ""
    provenance: dict = field(default_factory=dict)

    def merge(self, other: Stats) -> Stats:
        if other.fingerprint != self.fingerprint:
            raise StatsError(f"cannot merge stats of model {self.fingerprint} with stats of model {other.fingerprint}")
        if set(other.sites) != set(self.sites):
            diff = sorted(set(other.sites) ^ set(self.sites))
            raise StatsError(f"cannot merge stats with different sites: {', '.join(diff)}")
        sites = {s: self.sites[s].merge(other.sites[s]) for s in self.sites}
        classes = tuple(sorted(set(self.classes) | set(other.classes)))
        source = " + ".join(s for s in (self.source, other.source) if s)
        return Stats(self.fingerprint, sites, classes, self.n_images + other.n_images, source, self.provenance)


class StatsCollector:
    """Engine observer accumulating per-element statistics of every activation site."""

    def __init__(self, model, classes=(), source=""):
        self.stats = Stats(
            model.fingerprint,
            {s: SiteStats.empty(shape) for s, shape in model.sites.items()},
            tuple(classes),
            0,
            source,
        )
        self.model = model

    def on_site(self, name, y):
        self.stats.sites[name] = self.stats.sites[name].merge(SiteStats.of_batch(y))

    def add_batch(self, x):
        """Run one batch through the model, observing every site."""
        self.model.run(x, observer=self)
        self.stats.n_images += x.shape[0]


def collect_stats(model, x, batch=256, classes=(), source="", progress=None) -> Stats:
    """Statistics of every site over images x (N, C, H, W) float32, in batches of `batch`."""
    col = StatsCollector(model, classes, source)
    for i in range(0, len(x), batch):
        col.add_batch(x[i : i + batch])
        if progress is not None:
            progress.update(min(batch, len(x) - i))
    return col.stats


def _site_key(name):
    return name.replace("%", "%25").replace("/", "%2F")


def save_stats(stats: Stats, path) -> None:
    """Write a stats file atomically (HDF5, one group per site under `sites/`)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = stats.fingerprint
        f.attrs["classes"] = json.dumps(list(stats.classes))
        f.attrs["n_images"] = int(stats.n_images)
        f.attrs["source"] = stats.source
        f.attrs["provenance"] = json.dumps({"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **stats.provenance})
        g = f.create_group("sites")
        for name, s in stats.sites.items():
            sg = g.create_group(_site_key(name))
            sg.attrs["name"] = name
            for fld in FIELDS:
                sg.create_dataset(fld, data=getattr(s, fld))


def load_stats(path, model=None) -> Stats:
    """Read a stats file; with a model, check fingerprint, sites and shapes. Raises StatsError."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise StatsError(f"{path}: cannot be read as HDF5 ({e})") from None
    with f:
        try:
            if f.attrs.get("format") != FORMAT:
                raise StatsError(f"format attribute expects '{FORMAT}', found {f.attrs.get('format')!r}")
            if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise StatsError(f"format_version {f.attrs['format_version']} is newer than supported")
            sites = {}
            for key, sg in f["sites"].items():
                name = str(sg.attrs.get("name", key))
                arrays = [np.asarray(sg[fld][()], dtype=np.float64) for fld in FIELDS]
                if any(a.shape != arrays[0].shape for a in arrays):
                    raise StatsError(f"site '{name}': count/mean/m2/min/max shapes differ")
                sites[name] = SiteStats(*arrays)
            stats = Stats(
                str(f.attrs["fingerprint"]),
                sites,
                tuple(json.loads(f.attrs.get("classes", "[]"))),
                int(f.attrs.get("n_images", 0)),
                str(f.attrs.get("source", "")),
                json.loads(f.attrs.get("provenance", "{}")),
            )
        except StatsError as e:
            raise StatsError(f"{path}: {e}") from None
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise StatsError(f"{path}: malformed stats file ({e})") from None
    if model is not None:
        check_stats(stats, model, path)
    return stats


def check_stats(stats: Stats, model, path="stats") -> None:
    if stats.fingerprint != model.fingerprint:
        raise StatsError(f"{path}: stats were made for model {stats.fingerprint}, this model is {model.fingerprint}")
    missing = sorted(set(model.sites) - set(stats.sites))
    extra = sorted(set(stats.sites) - set(model.sites))
    if missing or extra:
        raise StatsError(f"{path}: sites missing {missing} / not in the model {extra}")
    for s, shape in model.sites.items():
        if stats.sites[s].mean.shape != tuple(shape):
            raise StatsError(f"{path}: site '{s}' expects shape {tuple(shape)}, found {stats.sites[s].mean.shape}")
