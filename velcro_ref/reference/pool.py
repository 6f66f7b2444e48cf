"""NumPy twins of kernels.pool: explicit windows, clipped to the input as PyTorch does."""

from __future__ import annotations

import numpy as np


def _windows(size, out, k, s, pad):
    for o in range(out):
        start = o * s - pad
        yield o, start, start + k


def _keep_max(m, v):
    """v where v > m or v is NaN, else m: a NaN wins, of equal values (-0.0, +0.0) m stays."""
    return np.where((v > m) | np.isnan(v), v, m)


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    """Each window's taps in the kernel's order (docs/kernels.md, "Max pool"): each column's taps
    over the window rows in increasing order, then those column maxima in increasing column order;
    a window without taps gives -inf."""
    h, w = x.shape[2:]
    for oy, ys, ye in _windows(h, out.shape[2], kh, sh, pt):
        rows = range(max(ys, 0), min(ye, h))
        for ox, xs, xe in _windows(w, out.shape[3], kw, sw, pl):
            m = np.full(x.shape[:2], -np.inf, np.float32)
            for ix in range(max(xs, 0), min(xe, w)):
                if not rows:
                    break
                col = x[:, :, rows[0], ix]
                for iy in rows[1:]:
                    col = _keep_max(col, x[:, :, iy, ix])
                m = _keep_max(m, col)
            out[:, :, oy, ox] = m


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
