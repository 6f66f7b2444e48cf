"""Preprocessing stage: per-element activation statistics, streamed and mergeable.

Per element of every activation site: float64 count, mean, M2, min and max. Within a batch,
Welford's update runs over the images (a Numba kernel); batches and shards are joined by Chan's
formula, so memory does not grow with the number of images and shards merge in any order.

Means are kept relative to a per-element shift (the first value seen). Chan's formula takes the
difference of two means; for data far from zero (1e6 plus noise of 1e-3) that difference of
two large numbers would lose digits, while the difference of two shifts close to each other is
exact (Sterbenz) and the shifted means are small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import h5io
from .errors import StatsError
from .evaluation import check_batch, class_indices
from .fileio import atomic_path, checked_path
from .fpenv import default_env
from .graph import INPUT
from .h5io import attr_int, attr_json, attr_str, check_dataset, check_format, member, read_dataset, site_groups
from .kernels.moments import chan_arrays, clamp_welford_add, value_range, welford, welford_add
from .ops.activation import Relu
from .threads import check_not_forked

FORMAT = "velcro-stats"
# Version 2 stores the mean as shift + shifted_mean (and their sum as `mean`, for other readers);
# version 1 stored only `mean`, read as shift = 0. Version 3 adds `ranges`: the min and max of every
# other tensor of the model (the input and the outputs of non-site nodes), for quantization.
FORMAT_VERSION = 3
FIELDS = ("count", "shift", "shifted_mean", "m2", "min", "max")
FIELDS_V1 = ("count", "mean", "m2", "min", "max")


def _image_rows(y) -> np.ndarray:
    """A batch y (N, *shape) as C-contiguous (N, E) rows, float32 or float64 for the kernels."""
    y2 = np.ascontiguousarray(np.asarray(y).reshape(len(y), -1))
    return y2 if y2.dtype in (np.float32, np.float64) else y2.astype(np.float64)


@dataclass
class SiteStats:
    """float64 arrays of one site's element shape; mean = shift + shifted_mean."""

    count: np.ndarray
    shift: np.ndarray
    shifted_mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, shape):
        z = np.zeros(shape, np.float64)
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), np.full(shape, np.inf), np.full(shape, -np.inf))

    @classmethod
    def of_batch(cls, y):
        """Stats of a batch y (N, *shape) by Welford's update, shifted by its first sample."""
        y2 = _image_rows(y)
        shape = np.shape(y)[1:]
        shift = y2[0].astype(np.float64)
        mean, m2 = np.empty_like(shift), np.empty_like(shift)
        lo, hi = np.full_like(shift, np.inf), np.full_like(shift, -np.inf)
        welford(y2, shift, mean, m2, lo, hi)
        count = np.full(shape, float(y2.shape[0]))
        return cls(
            count, shift.reshape(shape), mean.reshape(shape), m2.reshape(shape), lo.reshape(shape), hi.reshape(shape)
        )

    def merge(self, other: SiteStats) -> SiteStats:
        """Chan et al.'s parallel combination of two partial results (in this one's shift), in new
        arrays. Raises StatsError for stats of another element shape."""
        if other.count.shape != self.count.shape:
            raise StatsError(f"cannot merge stats of element shape {self.count.shape} with {other.count.shape}")
        if not self.count.any():
            return other.copy()
        if not other.count.any():
            return self.copy()
        n, mean, m2 = (np.empty(self.count.shape) for _ in range(3))
        moments = ("count", "shift", "shifted_mean", "m2")
        flat = [np.ascontiguousarray(getattr(st, f), np.float64).reshape(-1) for st in (self, other) for f in moments]
        chan_arrays(*flat, n.reshape(-1), mean.reshape(-1), m2.reshape(-1))
        lo, hi = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        return SiteStats(n, self.shift.copy(), mean, m2, lo, hi)

    def copy(self) -> SiteStats:
        return SiteStats(*(getattr(self, f).copy() for f in FIELDS))

    def add_batch(self, y) -> None:
        """Merge a batch y (N, *shape) into these stats in place: the same numbers as
        `self.merge(SiteStats.of_batch(y))`, in one pass (`welford_add`, docs/kernels.md,
        "Statistics kernels"). Raises ValueError unless the arrays are writeable and C-contiguous
        (as `empty`, `of_batch` and `merge` make them; an update of a copy would be lost)."""
        arrays = [getattr(self, f) for f in FIELDS]
        if not all(a.flags.c_contiguous and a.flags.writeable for a in arrays):
            raise ValueError("SiteStats.add_batch needs writeable C-contiguous arrays")
        if len(y) == 0:
            return
        welford_add(_image_rows(y), *(a.reshape(-1) for a in arrays))

    def add_clamped(self, x, top, out) -> tuple[float, float]:
        """A relu / relu6 site's batch in one pass (`clamp_welford_add`, docs/kernels.md,
        "Statistics kernels"): out = x (N, E) float32 clamped to [0, top], out merged into these
        stats as `add_batch(out)` merges it; returns x's (min, max) as `value_range(x)` gives
        them. x and out C-contiguous (out may be x: the clamp written over it); the arrays as
        `add_batch` needs them."""
        arrays = [getattr(self, f) for f in FIELDS]
        if not all(a.flags.c_contiguous and a.flags.writeable for a in arrays):
            raise ValueError("SiteStats.add_clamped needs writeable C-contiguous arrays")
        return clamp_welford_add(x, top, out, *(a.reshape(-1) for a in arrays))

    @property
    @default_env()
    def mean(self) -> np.ndarray:
        return self.shift + self.shifted_mean

    @property
    @default_env()
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
    ranges: dict = field(default_factory=dict)  # tensor -> (min, max), float64, over every image

    def check_alike(self, other: Stats, what="merge") -> None:
        """StatsError ("cannot `what` stats ...") unless `other` holds statistics of the same model:
        its fingerprint, sites and their element shapes."""
        if other.fingerprint != self.fingerprint:
            raise StatsError(f"cannot {what} stats of model {self.fingerprint} with stats of model {other.fingerprint}")
        if set(other.sites) != set(self.sites):
            diff = sorted(set(other.sites) ^ set(self.sites))
            raise StatsError(f"cannot {what} stats with different sites: {', '.join(diff)}")
        for s, st in self.sites.items():
            a, b = st.count.shape, other.sites[s].count.shape
            if a != b:
                raise StatsError(f"cannot {what} stats of site '{s}': element shape {a} against {b}")

    def merge(self, other: Stats) -> Stats:
        self.check_alike(other)
        sites = {s: self.sites[s].merge(other.sites[s]) for s in self.sites}
        classes = tuple(sorted(set(self.classes) | set(other.classes)))
        source = " + ".join(s for s in (self.source, other.source) if s)
        ranges = merge_ranges(self.ranges, other.ranges)
        provenance = {k: v for k, v in self.provenance.items() if k != "image_sets"}
        if image_sets(self) and image_sets(other):  # which images each merged part holds, where both say
            provenance["image_sets"] = list(image_sets(self) + image_sets(other))
        return Stats(self.fingerprint, sites, classes, self.n_images + other.n_images, source, provenance, ranges)

    def check_counts(self, outcome="no statistics written", whole=True) -> None:
        """StatsError, ending with `outcome`, unless every element of every site counts `n_images`
        images (`whole`), or else one number of images, the same at every site: a
        `StatsCollector.add_batch` stopped part way (Ctrl-C) leaves its batch in the sites before
        the stop only."""
        sites = [(name, site.count) for name, site in self.sites.items() if site.count.size]
        n = self.n_images if whole or not sites else sites[0][1].flat[0]
        for name, count in sites:
            if not np.all(count == n):
                found = np.unique(count)[:3].tolist()
                whose = "the statistics" if whole else f"site '{sites[0][0]}'"
                raise StatsError(
                    f"site '{name}' counts {found} images, {whose} {n:g}: a batch stopped part way left them "
                    f"half added; {outcome}"
                )

    def range_of(self, tensor) -> tuple[float, float]:
        """(min, max) of a tensor over every image: a site's from its per-element minima and maxima,
        any other's from `ranges`. KeyError when the stats hold neither."""
        if tensor in self.sites:
            s = self.sites[tensor]
            return float(s.min.min()), float(s.max.max())
        return self.ranges[tensor]


def image_sets(stats: Stats) -> tuple:
    """The digests of the image sets of the profile runs whose statistics `stats` holds
    (provenance "image_sets": one a `velcro profile` file, every part's in a merge), () where not
    recorded (statistics collected in memory, files of older versions, a merge with one of them)."""
    found = stats.provenance.get("image_sets")
    return tuple(found) if isinstance(found, list) and all(isinstance(d, str) for d in found) else ()


def merge_ranges(a: dict, b: dict) -> dict:
    """Ranges of two image sets together: the tensors both hold, as `joint_range` gives them (a
    tensor only one side holds is left out: its range over all images is not known)."""
    return {t: joint_range(a[t], b[t]) for t in a if t in b}


def joint_range(a, b) -> tuple[float, float]:
    """(min, max) over two (min, max) pairs: NaN for both if either holds a NaN (a tensor that
    took a NaN on some image keeps it, as `value_range` gives it for one batch; Python's min and
    max would keep or drop it by argument order)."""
    if any(math.isnan(v) for v in (*a, *b)):
        return math.nan, math.nan
    return min(a[0], b[0]), max(a[1], b[1])


class StatsCollector:
    """Engine observer accumulating per-element statistics of every activation site and the range
    of every other float tensor.

    A float relu / relu6 site it computes itself (`run_site`): the activation, the site's moments
    and the range of its input in one pass over the input (`SiteStats.add_clamped`), written over
    the input where the site alone reads it (`Plan.overwritable`: no second buffer to fill). The range of
    a tensor that such a site alone reads is taken in that pass, or at the site's `on_node` when
    the engine ran the site itself (a masked run); the statistics are the same bits either way.
    It keeps no array past the call that hands it over, so an unmasked run writes its tensors
    into shared buffers (`Model.run`, `keeps_arrays`)."""

    keeps_arrays = False

    def __init__(self, model, classes=(), source=""):
        self.stats = Stats(
            model.fingerprint,
            {s: SiteStats.empty(shape) for s, shape in model.sites.items()},
            tuple(int(c) for c in class_indices(classes, "classes")),  # ints, as the file's JSON keeps them
            0,
            source,
        )
        self.model = model
        steps = {st.name: st for st in model.steps}
        self._ranged_at = {}  # tensor -> the site whose node takes its range
        self.over_input = set()  # the sites computed over their input (the engine's `run` reads it)
        for st in model.steps:
            if _clamp_top(st) is None or not model.plan.overwritable(st.inputs[0], st.name):
                continue
            self.over_input.add(st.name)
            src = steps[st.inputs[0]]
            if _has_range(src):
                self._ranged_at[src.name] = st.name
        self._order = {t: i for i, t in enumerate([INPUT, *steps])}  # `ranges` in the order tensors are computed
        self._passed = None  # the site `run_site` computed last

    def range_tensors(self) -> set:
        """The tensors whose range a run records: the input and every step's of `_has_range`."""
        return {INPUT, *(st.name for st in self.model.steps if _has_range(st))}

    def run_site(self, step, x, out):
        """Compute a float relu / relu6 site's output from its input x with its statistics (and
        x's range) in one pass, over x where the plan allows it, else into out; returns the array
        written, None (and nothing done) for any other site."""
        top = _clamp_top(step)
        if top is None:
            return None
        n = len(x)
        y = x if step.name in self.over_input else out
        x2 = x.reshape(n, -1)
        lo, hi = self.stats.sites[step.name].add_clamped(x2, top, x2 if y is x else y.reshape(n, -1))
        if self._ranged_at.get(step.inputs[0]) == step.name:
            self._widen(step.inputs[0], lo, hi)
        self._passed = step.name
        return y

    def on_site(self, name, y):
        self.stats.sites[name].add_batch(y)

    def on_node(self, step, inputs, out, skip):
        if step.opdef.site:
            if self._ranged_at.get(step.inputs[0]) == step.name and self._passed != step.name:
                self._extend(step.inputs[0], inputs[0])  # the engine ran the site: its input's range here
            self._passed = None
        elif _has_range(step) and step.name not in self._ranged_at:
            self._extend(step.name, out)

    def _extend(self, tensor, y):
        lo, hi = value_range(y) if y.dtype == np.float32 else (float(y.min()), float(y.max()))
        self._widen(tensor, lo, hi)

    def _widen(self, tensor, lo, hi):
        old = self.stats.ranges.get(tensor)
        self.stats.ranges[tensor] = (lo, hi) if old is None else joint_range(old, (lo, hi))

    def _part_added(self) -> bool:
        """Whether a site counts other than `n_images` images: a batch stopped part way added itself to
        the sites before the stop (each site takes a batch whole, so its first element tells)."""
        n = self.stats.n_images
        return any(site.count.size and site.count.flat[0] != n for site in self.stats.sites.values())

    def add_batch(self, x):
        """Run one batch through the model, observing every site and the range of every other tensor.
        A batch that stops part way (Ctrl-C, an error of the run) before its first site adds nothing;
        after it, the statistics hold part of it: every later call raises StatsError, as do
        `save_stats` and the masks made from them (`Stats.check_counts`): start a new collector.
        Threads calling it take turns (the model's `run_lock`), a batch whole at a time."""
        check_not_forked()
        with self.model.run_lock:
            if self._part_added():
                raise StatsError(
                    "an earlier batch stopped part way and left these statistics half added; start a new collector"
                )
            ranges, n = dict(self.stats.ranges), self.stats.n_images
            try:
                self.model.run(x, observer=self)
                self._extend(INPUT, x)  # after the run: a batch it refuses adds nothing, not even its range
                self.stats.n_images += x.shape[0]
            except BaseException:
                if self.stats.n_images == n and not self._part_added():  # stopped before any site: it leaves
                    self.stats.ranges = ranges  # nothing, not even the ranges of the nodes it ran
                raise
            ranges = self.stats.ranges  # a range taken at a site's pass was added after the nodes before the site
            ordered = sorted(ranges, key=lambda t: self._order.get(t, len(self._order)))
            if list(ranges) != ordered:
                self.stats.ranges = {t: ranges[t] for t in ordered}


def _has_range(step) -> bool:
    """Whether a run records the range of the step's tensor: a float tensor that is not a site."""
    return not step.opdef.site and step.q is None


def _clamp_top(step):
    """The upper bound of a float relu / relu6 node (float32), None for any other node."""
    if isinstance(step.opdef, Relu) and step.q is None and not any(q is not None for q in step.in_q):
        return step.opdef.top(step.attrs)
    return None


@default_env()
def collect_stats(model, x, batch=256, classes=(), source="", progress=None) -> Stats:
    """Statistics of every site over images x (N, C, H, W) float32, in batches of `batch`. InputError for
    an x that is no batch of images (each batch's values are checked as it runs)."""
    if not isinstance(x, np.ndarray) or x.ndim != len(model.input_shape) + 1 or len(x) == 0:
        model.check_input(x)  # its one-line error for this x
    col = StatsCollector(model, classes, source)
    for i in range(0, len(x), check_batch(batch)):
        col.add_batch(x[i : i + batch])
        if progress is not None:
            progress.update(min(batch, len(x) - i))
    return col.stats


def save_stats(stats: Stats, path) -> None:
    """Write a stats file atomically (HDF5, one group per site under `sites/`).

    Written like a model file (h5io: checksummed metadata, fixed-length text attributes), with a
    Fletcher-32 checksum on every dataset so that a flipped bit in the numbers is found when read.
    Raises StatsError, writing nothing, where a value is NaN or infinite (a tensor of the network
    overflowed float32 on the images) or a class is negative, InputError where the classes are
    not integers: `load_stats` would refuse such a file.
    """
    check_finite(stats)
    stats.check_counts()
    classes = [int(c) for c in class_indices(stats.classes, "stats classes")]
    if any(c < 0 for c in classes):  # `load_stats` would refuse the file
        raise StatsError(f"stats classes expect class numbers (>= 0), found {min(classes)}")
    with atomic_path(path) as tmp, h5io.create(tmp) as f:
        h5io.write_header(
            f,
            FORMAT,
            FORMAT_VERSION,
            stats.fingerprint,
            classes=classes,
            source=stats.source,
            provenance=stats.provenance,
        )
        f.attrs["n_images"] = int(stats.n_images)
        g = f.create_group("sites")
        for name, s in stats.sites.items():
            sg = g.create_group(h5io.escape_key(name))
            h5io.write_text_attr(sg, "name", name)
            for fld in FIELDS:  # native float64, the one type `load_stats` reads (a big-endian array converted)
                sg.create_dataset(fld, data=np.asarray(getattr(s, fld), np.float64), fletcher32=True)
            mean = np.asarray(s.mean, np.float64)  # for readers; the shifted form is exact
            sg.create_dataset("mean", data=mean, fletcher32=True)
        g = f.create_group("ranges")
        for name, (lo, hi) in stats.ranges.items():
            ds = g.create_dataset(h5io.escape_key(name), data=np.array([lo, hi], np.float64), fletcher32=True)
            h5io.write_text_attr(ds, "name", name)


_OR_PARAMETERS = " (or the model's parameters hold NaN or Inf, let in by --allow-nonfinite or allow_nonfinite=True)"


def check_finite(stats: Stats, outcome="no statistics written") -> None:
    """StatsError naming the first site or tensor whose statistics or range are not finite, ending
    with `outcome` (what the caller does not do)."""
    for name, (lo, hi) in stats.ranges.items():
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise StatsError(
                f"tensor '{name}' took values [{lo:g}, {hi:g}] on these images: float32 overflowed in the "
                f"network{_OR_PARAMETERS}; {outcome}"
            )
    for name, site in stats.sites.items():
        for fld in FIELDS:
            bad = int(np.count_nonzero(~np.isfinite(getattr(site, fld))))
            if bad:
                raise StatsError(
                    f"site '{name}': {fld} is NaN or infinite at {bad} element(s): float32 overflowed in the "
                    f"network on these images{_OR_PARAMETERS}; {outcome}"
                )


def load_stats(path, model=None) -> Stats:
    """Read a stats file; with a model, check fingerprint, sites and shapes.

    Every field is checked before it is read (float64, at most MAX_ELEMENTS elements, one shape
    per site) and after (count = n_images everywhere, finite values, M2 >= 0, min <= max, and
    moments that values in [min, max] can have: `_check_moments`).
    Reads format versions 1 (`mean` only, taken as shift 0) and 2; refuses newer ones.
    Raises StatsError naming the file and the site or attribute at fault.
    """
    path = checked_path(path, StatsError, "stats file")  # its name in messages
    stats = h5io.load_checked(path, StatsError, FORMAT, "stats", _read_stats)
    if model is not None:
        check_stats(stats, model, path)
    return stats


def _read_stats(f) -> Stats:
    version = check_format(f, FORMAT, FORMAT_VERSION, StatsError)
    names = FIELDS if version >= 2 else FIELDS_V1
    fingerprint = attr_str(f, "fingerprint", StatsError)
    n_images = attr_int(f, "n_images", StatsError)
    if n_images < 1:
        raise StatsError(f"n_images expects a positive integer, found {n_images}")
    classes = attr_json(f, "classes", StatsError, list, default=[])
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise StatsError(f"attribute 'classes' expects a list of class numbers (>= 0), found {classes!r}")
    source = attr_str(f, "source", StatsError, default="")
    provenance = attr_json(f, "provenance", StatsError, dict, default={})
    sites = {}
    for name, sg, where in site_groups(f, StatsError):
        fields = {fld: member(sg, fld, h5py.Dataset, StatsError, where) for fld in names}
        for fld, ds in fields.items():
            check_dataset(ds, StatsError, f"{where}{fld} ", dtype=np.float64)
        first = fields[names[0]].shape
        if any(ds.shape != first for ds in fields.values()):
            found = ", ".join(f"{fld} {ds.shape}" for fld, ds in fields.items())
            raise StatsError(f"{where}{'/'.join(names)} expect one shape, found {found}")
        values = {fld: read_dataset(ds, StatsError, f"{where}{fld} ") for fld, ds in fields.items()}
        for fld, a in values.items():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:
                raise StatsError(f"{where}{fld} holds {bad} NaN/Inf value(s)")
        if version == 1:
            values["shift"], values["shifted_mean"] = np.zeros_like(values["mean"]), values.pop("mean")
        s = SiteStats(**values)
        if not np.all(s.count == n_images):
            found = np.unique(s.count)[:5].tolist()
            raise StatsError(f"{where}count expects {n_images} (n_images) for every element, found {found}")
        if np.any(s.m2 < 0):
            raise StatsError(f"{where}m2 expects values >= 0, found {s.m2.min():g}")
        if np.any(s.min > s.max):
            raise StatsError(f"{where}min exceeds max at {int(np.count_nonzero(s.min > s.max))} element(s)")
        _check_moments(s, where)
        if version >= 2 and "mean" in sg:  # written for other readers: it must agree with the exact shifted form
            ds = check_dataset(member(sg, "mean", h5py.Dataset, StatsError, where), StatsError, f"{where}mean ")
            if ds.dtype != np.float64 or ds.shape != s.shift.shape:
                raise StatsError(f"{where}mean expects float64 {s.shift.shape}, found {ds.dtype} {ds.shape}")
            differ = int(np.count_nonzero(read_dataset(ds, StatsError, f"{where}mean ") != s.mean))
            if differ:
                raise StatsError(f"{where}mean differs from shift + shifted_mean at {differ} element(s)")
        sites[name] = s
    return Stats(fingerprint, sites, tuple(classes), n_images, source, provenance, _read_ranges(f))


# Rounding of Welford's and Chan's float64 arithmetic that the moments may show beyond what values
# in [min, max] allow: MOMENT_SLACK of the range (errors of about n * 2^-53 relative to it, n values),
# plus MAGNITUDE_SLACK of the values' magnitude, for means rounded at that magnitude (a version 1
# file has no shift: values two float32 steps apart near 5.65e10 gave a variance 2e-9 above the
# bound there).
MOMENT_SLACK = 1e-9
MAGNITUDE_SLACK = 1e-12


def _check_moments(s: SiteStats, where: str) -> None:
    """StatsError where the moments cannot come from values in [min, max]: a mean outside the range,
    or a variance above (max - min)^2 / 4 (Popoviciu's bound), each with the slack of the rounding
    above. An element whose values were all equal has exactly its value as mean and M2 = 0 (a
    version 1 file's mean: the value rounded once), so a constant element gets only the magnitude's
    slack."""
    span = s.max - s.min
    slack = MOMENT_SLACK * span + MAGNITUDE_SLACK * np.maximum(np.abs(s.min), np.abs(s.max))
    mean = s.mean
    outside = (mean < s.min - slack) | (mean > s.max + slack)
    if np.any(outside):
        raise StatsError(f"{where}mean lies outside [min, max] at {int(np.count_nonzero(outside))} element(s)")
    wide = span + 2 * slack
    too_wide = s.variance > wide * wide / 4 * (1 + MOMENT_SLACK)
    if np.any(too_wide):
        n = int(np.count_nonzero(too_wide))
        bound = "(max - min)^2 / 4, which values in [min, max] allow"
        raise StatsError(f"{where}variance exceeds {bound}, at {n} element(s)")


def _read_ranges(f) -> dict:
    """The `ranges` group (version 3; absent: no ranges): tensor -> (min, max), finite, min <= max."""
    if "ranges" not in f:
        return {}
    ranges = {}
    for key in member(f, "ranges", h5py.Group, StatsError, "group "):
        ds = member(f["ranges"], key, h5py.Dataset, StatsError, "range ")
        name = attr_str(ds, "name", StatsError, f"range '{key}': ", default=key)
        where = f"range of tensor '{name}': "
        if name in ranges:  # which of the two a reader took would depend on the group's link order
            raise StatsError(f"{where}stored twice")
        check_dataset(ds, StatsError, where, dtype=np.float64)
        v = np.asarray(read_dataset(ds, StatsError, where))
        if v.shape != (2,) or not np.all(np.isfinite(v)) or v[0] > v[1]:
            raise StatsError(f"{where}expects finite [min, max] with min <= max, found {v.tolist()}")
        ranges[name] = (float(v[0]), float(v[1]))
    return ranges


def check_stats(stats: Stats, model, path="stats") -> None:
    """Raise StatsError unless `stats` was made for `model`: same fingerprint, sites and shapes."""
    if stats.fingerprint != model.fingerprint:
        raise StatsError(
            f"{path}: stats were made for model {stats.fingerprint}, this model ({model.path or 'made in memory'}) is "
            f"{model.fingerprint}"
        )
    missing = sorted(set(model.sites) - set(stats.sites))
    extra = sorted(set(stats.sites) - set(model.sites))
    if missing:
        raise StatsError(f"{path}: no statistics for site(s) {', '.join(missing)} of the model")
    if extra:
        raise StatsError(f"{path}: site(s) {', '.join(extra)} are not activation sites of the model")
    for s, shape in model.sites.items():
        if stats.sites[s].mean.shape != tuple(shape):
            raise StatsError(f"{path}: site '{s}' expects shape {tuple(shape)}, found {stats.sites[s].mean.shape}")
