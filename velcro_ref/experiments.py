"""The paper's experiments on real data: value locality of a task, and ratio sweeps."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import data
from .errors import UsageError
from .evaluation import check_macs, check_stats_sites, csr, evaluate
from .masks import check_finite_sites
from .policies import make_masks
from .stats import collect_stats

MAX_RATIOS = 1000  # points of one grid
MAX_THRESHOLD = 1000  # locality's threshold, in mean general variances of a site


def parse_ratios(text) -> list[float]:
    """'0:0.9:0.05' (start:stop:step, stop included) or '0.1,0.3,0.5' -> sorted ratios in [0, 1].

    A range needs finite bounds, a positive step and at most MAX_RATIOS points. Raises UsageError.
    """
    try:
        if ":" in text:
            start, stop, step = (float(t) for t in text.split(":"))
            if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
                raise ValueError
            n = math.floor((stop - start) / step + 1e-9) + 1
            if n > MAX_RATIOS:
                raise UsageError(f"--ratios {text!r} has {n} points; at most {MAX_RATIOS}")
            ratios = [round(start + i * step, 10) for i in range(n)]
        else:
            ratios = [float(t) for t in text.split(",") if t.strip()]
            if len(ratios) > MAX_RATIOS:
                raise UsageError(f"--ratios lists {len(ratios)} points; at most {MAX_RATIOS}")
    except (ValueError, OverflowError):
        raise UsageError(f"--ratios expects start:stop:step (finite, step > 0) or a comma list, got {text!r}") from None
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise UsageError(f"--ratios must lie in [0, 1], got {text!r}")
    return sorted({r + 0.0 for r in ratios})  # -0 as 0


def profile_task(model, classes, n, data_dir=None, batch=256, progress=None, x=None):
    """Stats over the first n train images of `classes` (the paper's preprocessing set); `x`: those
    images when the caller has read them already."""
    if x is None:
        x, _ = data.task_images(model, classes, "train", n, data_dir)
    src = f"fashion-mnist train classes {list(classes)}"
    return collect_stats(model, x, batch=batch, classes=classes, source=src, progress=progress)


def locality(task_stats, general_stats, threshold=0.01) -> dict:
    """Compare per-element variances of a task with the general-purpose case.

    An element is near-constant when its variance is below `threshold` x the mean general
    variance of its site. The median variance ratio is over the elements whose general variance
    is not zero (docs/demo.md, "Value locality"). Returns summary numbers and the pooled
    normalised variances. StatsError where a site's variance or mean is NaN or infinite on either set
    (the network overflowed there; `velcro profile` refuses such statistics): a site mean or a
    median of them would be NaN, or leave the element out, without a word; StatsError too for
    statistics of two models. UsageError for a threshold outside (0, MAX_THRESHOLD].
    """
    check_threshold(threshold)
    check_stats_sites(task_stats)
    task_stats.check_alike(general_stats, "compare")
    for stats, images in ((task_stats, "the task's images"), (general_stats, "the images of every class")):
        check_finite_sites(stats, stats.sites, images, "no locality computed")
    task_v, gen_v = [], []
    for s in task_stats.sites:
        gv = general_stats.sites[s].variance.ravel()
        scale = gv.mean() if gv.mean() > 0 else 1.0
        task_v.append(task_stats.sites[s].variance.ravel() / scale)
        gen_v.append(gv / scale)
    tv, gv = np.concatenate(task_v), np.concatenate(gen_v)
    live = gv > 0
    ratio = tv[live] / gv[live]
    return {
        "n_elements": int(tv.size),
        "n_images": int(task_stats.n_images),
        "threshold": float(threshold),  # a NumPy scalar given is no JSON number
        "median_variance_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
        "share_under_threshold_task": float(np.mean(tv < threshold)),
        "share_under_threshold_general": float(np.mean(gv < threshold)),
        "share_zero_variance_task": float(np.mean(tv == 0)),
        "share_zero_variance_general": float(np.mean(gv == 0)),
        "task_variances": tv,
        "general_variances": gv,
    }


def check_threshold(threshold) -> None:
    """UsageError unless `threshold` is a number in (0, MAX_THRESHOLD] (the CLI's --threshold range)."""
    if (
        isinstance(threshold, bool | np.bool_)
        or not isinstance(threshold, numbers.Real)
        or not 0 < threshold <= MAX_THRESHOLD
    ):
        raise UsageError(f"threshold must be a number in (0, {MAX_THRESHOLD}], got {threshold!r}")


def sweep_point(model, stats, x, labels, classes, ratio, policy="uniform", batch=128) -> dict:
    """`evaluate` at one ratio, with the masks `policy` makes from stats; ratio 0 is the dense model."""
    masks = None if ratio == 0 else make_masks(policy, stats, ratio, model.site_costs())
    return evaluate(model, x, labels, classes, masks=masks, batch=batch)


def sweep(model, stats, x, labels, classes, ratios, policy="uniform", tolerance=0.005, batch=128, progress=None):
    """Accuracy and CSR at every ratio; picks the best points as the sweep's JSON contract names them.

    stats: task statistics (train split); x, labels: evaluation images (test split).
    """
    check_macs(model)  # before the runs: every point's CSR needs them
    dense = evaluate(model, x, labels, classes, batch=batch)
    results = []
    for r in ratios:
        results.append(dense if r == 0 else sweep_point(model, stats, x, labels, classes, r, policy, batch))
        if progress is not None:
            progress.update(1)
    return sweep_summary(dense, ratios, results, policy, classes, tolerance, len(x), stats.n_images)


def sweep_summary(dense, ratios, results, policy, classes, tolerance, n, n_profile) -> dict:
    """The sweep's JSON document from the dense evaluation and the evaluation at every ratio."""
    base = dense["accuracy"]
    points = [
        {
            "ratio": r,
            "csr": csr(dense["macs"], res["macs"]),
            "accuracy": res["accuracy"],
            "accuracy_task": res["accuracy_task"],
            "macs": res["macs"],
            "inf_images": res["inf_images"],  # images whose scores overflowed float32 (`evaluate`)
        }
        for r, res in zip(ratios, results, strict=True)
    ]

    def best(ok):
        cands = [p for p in points if ok(p)]
        return max(cands, key=lambda p: (p["csr"], p["accuracy"])) if cands else None

    gain = max(points, key=lambda p: (p["accuracy"] - base, -p["ratio"]))
    return {
        "policy": policy,
        "classes": list(classes),
        "baseline_accuracy": base,
        "baseline_accuracy_task": dense["accuracy_task"],
        "dense_macs": dense["macs"],
        "points": points,
        "best_csr_no_loss": best(lambda p: p["accuracy"] >= base),
        "best_csr_tolerance": best(lambda p: p["accuracy"] >= base - tolerance - 1e-12),
        "tolerance": tolerance,
        "best_accuracy_gain": {
            "ratio": gain["ratio"],
            "csr": gain["csr"],
            "gain": gain["accuracy"] - base,
            "gain_images": int(round((gain["accuracy"] - base) * n)),
            "accuracy": gain["accuracy"],
        },
        "n_eval_images": n,
        "n_profile_images": int(n_profile),
    }
