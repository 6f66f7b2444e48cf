"""Evaluation: specialized-task accuracy and executed MACs, dense or masked (docs/design.md)."""

from __future__ import annotations

import numpy as np

from .errors import InputError, ModelError


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
            f"{model.path}: eval expects an output of one score per class, shape (N, classes); "
            f"output '{name}' has shape (N, {found})"
        )
    n = shape[0]
    wanted = np.concatenate([np.asarray(labels, np.int64).ravel(), np.asarray(classes, np.int64).ravel()])
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        bad = int(wanted.min()) if wanted.min() < 0 else int(wanted.max())
        raise InputError(
            f"labels name class {bad}, but {model.path} scores {n} class(es), 0..{n - 1}: eval expects an "
            "output of shape (N, classes) with a score for every label"
        )
    return n


def evaluate(model, x, labels, classes, masks=None, batch=128, progress=None, per_image=False) -> dict:
    """Accuracy of `model` on images x (N, C, H, W) float32 with integer labels (N,).

    accuracy: top-1 over the full output (all classes of the general model).
    accuracy_task: top-1 among the task's classes only.
    Equal top scores go to the lowest class index in both (the task's classes are taken sorted,
    so the order they are given in changes nothing).
    macs: executed MACs per image, summed over layers, counted by the kernels.
    per_image adds `correct` and `correct_task`, bool (N,): which images each accuracy counts.
    Raises as check_scores does, before any image is run; ModelError where an image's scores hold a
    NaN (a model loaded with non-finite values allowed, or an overflow), whose top-1 class is not
    defined (argmax would take the NaN as the largest score).
    """
    check_scores(model, labels, classes)
    if len(labels) != len(x):  # a shorter array would broadcast against a batch of scores
        raise InputError(f"{len(x)} images but {len(labels)} labels")
    classes = np.unique(np.asarray(classes, dtype=np.int64))
    n = len(x)
    correct, correct_task = np.zeros(n, bool), np.zeros(n, bool)
    macs = 0
    for i in range(0, n, batch):
        xb, yb = x[i : i + batch], labels[i : i + batch]
        out = model.run(xb, masks=masks)
        nan = np.isnan(out).any(axis=1)
        if nan.any():
            raise ModelError(
                f"{model.path}: the output holds NaN scores for {int(nan.sum())} of images {i}..{i + len(xb) - 1} "
                f"(first: image {i + int(np.argmax(nan))}); their top-1 class, and the accuracy, are not defined"
            )
        macs += sum(model.last_macs.values())
        correct[i : i + len(xb)] = out.argmax(axis=1) == yb
        correct_task[i : i + len(xb)] = classes[out[:, classes].argmax(axis=1)] == yb
        if progress is not None:
            progress.update(len(xb))
    res = {
        "accuracy": int(correct.sum()) / n,
        "accuracy_task": int(correct_task.sum()) / n,
        "macs": macs / n,
        "n_images": n,
    }
    if per_image:
        res.update(correct=correct, correct_task=correct_task)
    return res


def csr(dense_macs: float, masked_macs: float) -> float:
    """Compression-saving ratio: 1 - executed MACs (masked) / executed MACs (dense)."""
    return 1.0 - masked_macs / dense_macs
