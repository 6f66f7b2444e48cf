"""NumPy twins of kernels.pool: explicit windows, clipped to the input as PyTorch does."""

from __future__ import annotations

import numpy as np


def _windows(size, out, k, s, pad):
    for o in range(out):
        start = o * s - pad
        yield o, start, start + k


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    h, w = x.shape[2:]
    for oy, ys, ye in _windows(h, out.shape[2], kh, sh, pt):
        for ox, xs, xe in _windows(w, out.shape[3], kw, sw, pl):
            win = x[:, :, max(ys, 0) : min(ye, h), max(xs, 0) : min(xe, w)]
            out[:, :, oy, ox] = win.max(axis=(2, 3))


def avg_pool(x, kh, kw, sh, sw, pt, pl, pb, pr, count_include_pad, out):
    h, w = x.shape[2:]
    for oy, ys, ye in _windows(h, out.shape[2], kh, sh, pt):
        for ox, xs, xe in _windows(w, out.shape[3], kw, sw, pl):
            win = x[:, :, max(ys, 0) : min(ye, h), max(xs, 0) : min(xe, w)].astype(np.float64)
            if count_include_pad:
                div = (min(ye, h + pb) - ys) * (min(xe, w + pr) - xs)
            else:
                div = win.shape[2] * win.shape[3]
            out[:, :, oy, ox] = win.sum(axis=(2, 3)) / div


def global_avg_pool(x, out):
    out[:, :, 0, 0] = x.astype(np.float64).mean(axis=(2, 3))
