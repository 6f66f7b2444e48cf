"""NumPy twins of kernels.overwrite: fancy-index assignment, and activation then masked copy."""

from __future__ import annotations

import numpy as np


def overwrite(out, idx, values):
    out[:, idx] = values


def clamp_or_const(x, hi, mask, consts, out):
    np.minimum(np.maximum(x, 0), hi, out=out)
    np.copyto(out, consts[None, :], where=mask[None, :])
