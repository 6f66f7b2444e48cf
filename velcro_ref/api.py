"""The Python API: one function per `velcro` command, with the command's names and defaults.

The commands are thin wrappers around these functions: what a notebook gets is what the CLI prints
as JSON. Files are optional: every function takes loaded objects (Model, Stats, MaskSet, arrays) and
returns them; `save_*` and `load_*` read and write the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

import numpy as np

from . import evaluation
from .errors import StatsError, UsageError
from .fpenv import default_env


@default_env()
def profile(model, images, batch=256, classes=(), source="", progress=None, client=None, shard_batches=4, shared=None):
    """The preprocessing stage (`velcro profile`): statistics of every activation site over images
    (N, C, H, W) float32, in batches of `batch`. Returns a Stats (save with save_stats).

    With a dask.distributed `client` (`velcro profile --scheduler/--workers`), shards of
    `shard_batches` batches run as tasks on its cluster and merge in shard order; `shared`, a
    velcro_ref.distributed.SharedData, has the workers read the images themselves (docs/distributed.md).
    """
    x = model.check_input(images)
    batch, classes = evaluation.check_batch(batch), _class_list(classes)
    if client is not None:
        from .distributed import collect_stats as collect_on_cluster

        return collect_on_cluster(client, model, x, batch, classes, source, progress, shard_batches, shared)
    from .stats import collect_stats

    return collect_stats(model, x, batch=batch, classes=classes, source=source, progress=progress)


def _one_class(classes):
    """One integer class as a tuple of it, as task_images takes it (a bool is no class); anything else
    as it is."""
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, (bool, np.bool_)):
        return (int(classes),)
    return classes


def _class_list(classes) -> tuple:
    """The classes a Stats records, as Python ints (a NumPy array's int64 would not save as JSON)."""
    chosen = tuple(int(c) for c in evaluation.class_indices(_one_class(classes), "classes"))
    if chosen and min(chosen) < 0:
        raise UsageError(f"classes expect class indices of 0 or more, found {min(chosen)}")
    return chosen


@default_env()
def compress(stats, ratio=None, policy="uniform", model=None, exclude=(), ratios=None):
    """The compression stage (`velcro compress`): a MaskSet from statistics.

    ratio and policy ("uniform", "budget", "channel"; budget needs `model`), or `ratios`, a dict
    site -> ratio (sites left out are not masked; no policy then, as `velcro compress --ratios`
    takes none). `exclude` names sites never masked (one name, or a sequence of them).
    Raises UsageError for a bad ratio, policy or site, StatsError for stats of another model.
    """
    from .masks import build_masks
    from .policies import make_masks

    evaluation.check_stats_sites(stats)
    if ratios is not None and not isinstance(ratios, Mapping):
        raise UsageError(f"ratios expect a dict of site -> ratio, found {type(ratios).__name__}")
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)  # one site's name, not its letters
    unknown = sorted((set(ratios or ()) | set(exclude)) - set(stats.sites))
    if unknown:
        raise UsageError(f"unknown site(s) {', '.join(unknown)}; sites: {', '.join(stats.sites)}")
    site_costs = None
    if model is not None:
        from .stats import check_stats

        check_stats(stats, model, stats.source or "stats")
        site_costs = model.site_costs()
    if ratios is not None:
        if ratio is not None:
            raise UsageError("give a ratio (with a policy) or per-site ratios, not both")
        if policy != "uniform":  # the default: per-site ratios take no policy
            raise UsageError(f"policy {policy!r} with per-site ratios: they are masked as given, no policy applies")
        per_site = {s: (0.0 if s in exclude else ratios.get(s, 0.0)) for s in stats.sites}
        masks = build_masks(stats, per_site, {"name": "per_site", "exclude": list(exclude)})
    elif ratio is None:
        raise UsageError("give a ratio (with a policy) or per-site ratios")
    else:
        masks = make_masks(policy, stats, ratio, site_costs, exclude)
    for site, (mask, const) in masks.sites.items():
        bad = int(np.count_nonzero(~np.isfinite(const[mask])))
        if bad:
            top = float(np.max(np.abs(stats.sites[site].mean[mask])))
            raise StatsError(
                f"site '{site}': {bad} masked element(s) have a mean beyond the float32 range "
                f"(largest |mean| {top:.3g}); they cannot become constants"
            )
    return masks


@default_env()
def evaluate(model, images, labels, classes, masks=None, batch=256, progress=None) -> dict:
    """`velcro eval`: specialized-task accuracy (over all outputs and restricted to `classes`) and
    executed MACs per image, dense and, with masks, masked, and the CSR. Returns the command's JSON
    document but its "model" and "data" (which name files): {"n_images", "classes", "dense": {...},
    "masked": {...}, "csr"}; "inf_images" in each run's counts the images with an infinite score
    (float32 overflowed, `evaluation.evaluate`). `classes` keep their order (a set's sorted)."""
    x = model.check_input(images)
    labels = evaluation.class_indices(labels, "labels", sets=False)  # one integer per image (not bytes)
    classes = _one_class(classes)
    keys = ("accuracy", "accuracy_task", "macs", "inf_images")
    if masks is not None:  # before the runs: masks of another model, and the MACs the CSR needs
        model.check_masks(masks)
        evaluation.check_macs(model)
    dense = evaluation.evaluate(model, x, labels, classes, batch=batch, progress=progress)
    listed = evaluation.class_indices(classes, "task classes")  # a set's in order
    doc = {"n_images": len(x), "classes": [int(c) for c in listed], "dense": {k: dense[k] for k in keys}}
    if masks is not None:
        masked = evaluation.evaluate(model, x, labels, classes, masks=masks, batch=batch, progress=progress)
        doc["masked"] = {k: masked[k] for k in keys}
        doc["csr"] = evaluation.csr(dense["macs"], masked["macs"])
    return doc


def task_classes(task=None, classes=None) -> tuple:
    """The classes of a task of tasks.toml or of a class list ("5,7,9", names or a sequence, one
    index); DataError for an unknown, out-of-range or duplicate class."""
    from . import data

    if (task is None) == (classes is None):
        raise UsageError("give exactly one of task or classes")
    if classes is not None:  # a comma list, names, indices, one index (`data.class_tuple`)
        chosen = data.class_tuple(classes)
        return tuple(sorted(chosen)) if isinstance(classes, Set) else chosen  # a set's (a dict's keys) by index
    tasks = data.load_tasks()
    if task not in tasks:
        raise UsageError(f"unknown task '{task}'; tasks: {', '.join(tasks)}")
    return tasks[task]["classes"]


@default_env()
def sweep(
    model,
    task=None,
    classes=None,
    ratios="0:0.9:0.05",
    policy="uniform",
    tolerance=0.5,
    profile_samples=2000,
    samples=None,
    data_dir=None,
    progress=None,
    client=None,
    shared=False,
) -> dict:
    """`velcro sweep`: profile `profile_samples` train images of the task, then accuracy and CSR at
    every ratio on its test images (`samples` of them, all if None). tolerance in percentage points.
    Returns the command's JSON document. With a dask.distributed `client`, the profile and every
    ratio are tasks on its cluster (with `shared`, the workers read Fashion-MNIST from data_dir)."""
    from .data import task_images
    from .experiments import parse_ratios, profile_task
    from .experiments import sweep as sweep_points
    from .policies import check_policy

    check_policy(policy)  # before the profile and the dense run
    if not 0 <= tolerance < 100:
        raise UsageError(f"tolerance is in percentage points in [0, 100), got {tolerance}")
    if isinstance(ratios, str):
        grid = parse_ratios(ratios)
    else:  # each as it is written (a NumPy float32 0.7 is 0.7, as `compress` takes it); a bool is no ratio
        from .masks import check_ratio

        grid = sorted({check_ratio(r, "ratios") for r in ratios})
        if not grid:
            raise UsageError("ratios: give at least one ratio")
    classes = task_classes(task, classes)
    evaluation.check_macs(model)  # before the profile: every point's CSR needs them
    evaluation.check_sites(model)  # as compress and locality: there is nothing to mask
    if client is not None:
        from .distributed import sweep as sweep_on_cluster

        args = (profile_samples, samples, data_dir, shared, progress)
        return sweep_on_cluster(client, model, classes, grid, policy, tolerance / 100, *args)
    stats = profile_task(model, classes, profile_samples, data_dir)
    x, y = task_images(model, classes, "test", samples, data_dir)
    return sweep_points(model, stats, x, y, classes, grid, policy, tolerance / 100, progress=progress)


@default_env()
def locality(model, task=None, classes=None, samples=2000, threshold=0.01, data_dir=None, progress=None) -> dict:
    """`velcro locality`: per-element variances of the task's images against all ten classes, each
    profiled on `samples` train images. Returns the summary figures and the pooled variances."""
    from .experiments import check_threshold, profile_task
    from .experiments import locality as compare

    check_threshold(threshold)  # before the profiles
    evaluation.check_sites(model)
    classes = task_classes(task, classes)
    task_stats = profile_task(model, classes, samples, data_dir, progress=progress)
    general = profile_task(model, tuple(range(10)), task_stats.n_images, data_dir, progress=progress)
    return compare(task_stats, general, threshold)


@default_env()
def quantize(model, stats, per_channel=False, activations="int8", requant="ort"):
    """`velcro quantize`: post-training static quantization of a float Model with onnxruntime's
    formulas (docs/int8.md), MinMax calibration from `stats` (a Stats of this model: the sites'
    per-element minima and maxima, and the ranges of the other tensors it records). per_channel:
    one weight scale per output channel; activations "int8" or "uint8"; requant "ort" (onnxruntime's
    float32 requantization) or "fixed_point" (integer multiplier and shift, what an RTL datapath
    computes). Returns the quantized Model (save its graph with save_model).
    Raises StatsError for stats of another model or without the ranges quantization needs,
    UsageError for a bad option, ModelError for a model it cannot quantize."""
    from .engine import Model
    from .quantization import needed_ranges, quantize_model
    from .stats import check_finite, check_stats

    check_stats(stats, model, "stats")
    check_finite(stats, "nothing quantized")  # as a stats file holds them (in-memory stats may not)
    stats.check_counts("nothing quantized")  # a batch stopped part way leaves sites and ranges torn
    need = needed_ranges(model)
    missing = [t for t in need if t not in stats.sites and t not in stats.ranges]
    if missing:
        raise StatsError(
            f"no calibration range for tensor(s) {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}; statistics files before format version 3, and merges of "
            "them, hold only the activation sites: profile the model again"
        )
    ranges = {t: stats.range_of(t) for t in need}
    top = float(np.finfo(np.float32).max)
    for t, (lo, hi) in ranges.items():
        if max(-lo, hi) > top:  # statistics of values no float32 activation takes (made by hand)
            raise StatsError(
                f"calibration range of tensor '{t}' [{lo:g}, {hi:g}] lies beyond float32; nothing quantized"
            )
    calibration = {"images": stats.source, "n_images": int(stats.n_images), "classes": [int(c) for c in stats.classes]}
    graph = quantize_model(
        model, ranges, per_channel, activations, requant, {"quantization": {"calibration": calibration}}
    )
    return Model(graph)


@default_env()
def golden(model, images, path, masks=None, accumulators=False, source=None, labels=None) -> dict:
    """`velcro golden`: every node's inputs and outputs for a batch, written to `path` (HDF5,
    docs/formats.md); for an int8 model also the scales, zero points, multipliers and shifts used
    and, with `accumulators`, every conv and linear layer's int32 accumulators. `source` (a JSON
    dict: where the images come from) and `labels` (N,) are stored when given. Returns the MACs
    each conv2d/linear executed."""
    from .golden_vectors import write_golden

    return write_golden(model, model.check_input(images), path, masks, accumulators, source, labels)
