"""Evaluation: specialized-task accuracy and executed MACs, dense or masked (docs/design.md)."""

from __future__ import annotations

import numpy as np


def evaluate(model, x, labels, classes, masks=None, batch=128, progress=None) -> dict:
    """Accuracy of `model` on images x (N, C, H, W) float32 with integer labels (N,).

    accuracy: top-1 over the full output (all classes of the general model).
    accuracy_task: top-1 among the task's classes only.
    macs: executed MACs per image, summed over layers, counted by the kernels.
    """
    classes = np.asarray(classes, dtype=np.int64)
    correct = correct_task = 0
    macs = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], labels[i : i + batch]
        out = model.run(xb, masks=masks)
        macs += sum(model.last_macs.values())
        correct += int(np.count_nonzero(out.argmax(axis=1) == yb))
        correct_task += int(np.count_nonzero(classes[out[:, classes].argmax(axis=1)] == yb))
        if progress is not None:
            progress.update(len(xb))
    n = len(x)
    return {"accuracy": correct / n, "accuracy_task": correct_task / n, "macs": macs / n, "n_images": n}


def csr(dense_macs: float, masked_macs: float) -> float:
    """Compression-saving ratio: 1 - executed MACs (masked) / executed MACs (dense)."""
    return 1.0 - masked_macs / dense_macs
