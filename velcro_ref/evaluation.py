"""Evaluation: specialized-task accuracy and executed MACs, dense or masked (docs/design.md)."""

from __future__ import annotations

from collections.abc import Mapping, Set

import numpy as np

from .errors import InputError, ModelError, StatsError, UsageError


def class_indices(values, what, sets=True) -> np.ndarray:
    """`values` (labels or task classes) as a 1-D int64 array; InputError unless they are a 1-D
    sequence of integers (a float 2.7 or 0.5, a string, bytes, a bool, an (N, 1) column would
    otherwise be truncated, compared as it is or broadcast). With `sets`, a set (or a dict's keys) of
    task classes is taken in order; labels, one per image in order, are never a set."""
    if isinstance(values, Set) and sets:  # indices in no order (a set, a dict's keys), of classes
        values = sorted(values)
    raw_bytes = isinstance(values, memoryview) and values.format in ("B", "b", "c")  # a typed one is an array
    if isinstance(values, (str, bytes, bytearray, Mapping, Set)) or raw_bytes:  # text, bytes or keys: no class list
        raise InputError(f"{what} expect a 1-D sequence of class indices, found {type(values).__name__}")
    try:
        a = np.asarray(values)
    except ValueError:  # a ragged list
        raise InputError(f"{what} expect a 1-D sequence of class indices") from None
    listed = not isinstance(values, np.ndarray) and a.dtype.kind in "iu"  # a deque or list of ints may hold a bool
    if listed and any(isinstance(v, (bool, np.bool_)) or _bool_array(v) for v in values):
        raise InputError(f"{what} expect integer class indices, found a bool in {values!r}")  # [5, True]: 5 and 1
    if a.ndim != 1:
        raise InputError(f"{what} expect a 1-D sequence of class indices, found shape {a.shape}")
    if a.size and (a.dtype == np.bool_ or a.dtype.kind not in "iu"):
        raise InputError(f"{what} expect integer class indices, found {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{what} name class {int(a.max())}, beyond any model's classes")
    return a.astype(np.int64)


def _bool_array(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == np.bool_


def check_scores(model, labels, classes) -> int:
    """The number of classes `model` scores; raise unless its output is one score per class, (N, classes),
    with a class for every label and task class.

    ModelError for an output of another rank; InputError for a label or task class outside 0..classes-1.
    """
    name = model.graph.output
    shape = tuple(model.shapes[name])
    if len(shape) != 1:
        found = ", ".join(map(str, shape))
        raise ModelError(
            f"{model.where}eval expects an output of one score per class, shape (N, classes); "
            f"output '{name}' has shape (N, {found})"
        )
    n = shape[0]
    # the task classes first: labels drawn from the task hold its classes too
    for what, values in (("task classes", classes), ("labels", labels)):
        wanted = class_indices(values, what, sets=what != "labels")
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            bad = int(wanted.min()) if wanted.min() < 0 else int(wanted.max())
            raise InputError(
                f"{what} name class {bad}, but {model.path or 'the model'} scores {n} class(es), 0..{n - 1}: eval "
                "expects an output of shape (N, classes) with a score for every label and task class"
            )
    return n


def evaluate(model, x, labels, classes, masks=None, batch=128, progress=None, per_image=False) -> dict:
    """Accuracy of `model` on images x (N, C, H, W) float32 with integer labels (N,).

    accuracy: top-1 over the full output (all classes of the general model).
    accuracy_task: top-1 among the task's classes only.
    Equal top scores go to the lowest class index in both (the task's classes are taken sorted,
    so the order they are given in changes nothing).
    macs: executed MACs per image, summed over layers, counted by the kernels.
    inf_images: how many images have an infinite score (float32 overflowed, or the parameters hold
    Inf): their top-1 class follows the rules above (+inf the largest score), but it comes from an
    overflow (`velcro eval` warns of them).
    per_image adds `correct` and `correct_task`, bool (N,): which images each accuracy counts.
    Raises as check_scores does, before any image is run; ModelError where an image's scores hold a
    NaN (a model loaded with non-finite values allowed, or an overflow), whose top-1 class is not
    defined (argmax would take the NaN as the largest score).
    """
    check_batch(batch)
    check_scores(model, labels, classes)
    labels = class_indices(labels, "labels", sets=False)  # one per image, in order: no set
    if len(labels) != len(x):  # a shorter array would broadcast against a batch of scores
        raise InputError(f"{len(x)} images but {len(labels)} labels")
    classes = np.unique(class_indices(classes, "task classes"))
    if not classes.size:
        raise InputError("no task classes: the task accuracy needs at least one")
    n = len(x)
    correct, correct_task = np.zeros(n, bool), np.zeros(n, bool)
    macs = inf_images = 0
    for i in range(0, n, batch):
        xb, yb = x[i : i + batch], labels[i : i + batch]
        out, counted = model.run_counted(xb, masks=masks)
        nan = np.isnan(out).any(axis=1)
        if nan.any():
            raise ModelError(
                f"{model.where}the output holds NaN scores for {int(nan.sum())} of images {i}..{i + len(xb) - 1} "
                f"(first: image {i + int(np.argmax(nan))}); their top-1 class, and the accuracy, are not defined"
            )
        macs += sum(counted.values())
        inf_images += int(np.isinf(out).any(axis=1).sum())
        correct[i : i + len(xb)] = out.argmax(axis=1) == yb
        correct_task[i : i + len(xb)] = classes[out[:, classes].argmax(axis=1)] == yb
        if progress is not None:
            progress.update(len(xb))
    res = {
        "accuracy": int(correct.sum()) / n,
        "accuracy_task": int(correct_task.sum()) / n,
        "macs": macs / n,
        "n_images": n,
        "inf_images": inf_images,
    }
    if per_image:
        res.update(correct=correct, correct_task=correct_task)
    return res


def check_batch(batch) -> int:
    """`batch` if it is a positive integer (not a bool); else UsageError (a negative batch ran no
    image at all, 0 or 2.0 failed inside a range())."""
    if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    return int(batch)


def csr(dense_macs: float, masked_macs: float) -> float:
    """Compression-saving ratio: 1 - executed MACs (masked) / executed MACs (dense). ModelError for
    0 dense MACs (callers with a model check it first, `check_macs`)."""
    if dense_macs == 0:
        raise ModelError(_NO_MACS)
    return 1.0 - masked_macs / dense_macs


_NO_MACS = "the model executes no MAC (no conv or linear layer runs): its compression-saving ratio is undefined"


def check_macs(model) -> None:
    """ModelError naming the model unless it executes MACs (a conv or linear layer on its path), which
    its compression-saving ratio needs."""
    if not any(model.layer_macs().values()):
        raise ModelError(f"{model.where}{_NO_MACS}")


def check_sites(model) -> None:
    """StatsError naming the model unless it has an activation site (statistics, locality and masks
    need one)."""
    if not model.sites:
        raise StatsError(f"{model.where}{NO_SITE}")


def check_stats_sites(stats) -> None:
    """StatsError naming the statistics' source unless they hold an activation site (`check_sites`)."""
    if not stats.sites:
        raise StatsError(f"{stats.source or 'stats'}: {NO_SITE}")


NO_SITE = "the model has no activation site; there is nothing to mask"
