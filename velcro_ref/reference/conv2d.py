"""NumPy twin of kernels.conv2d.conv2d: one shifted slice per filter tap, float64 accumulation."""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b, sh, sw, pt, pl, pb, pr, dh, dw, groups, skip, out, col=None):
    """Same arguments and result as the kernel; computes every element, then leaves masked ones alone."""
    n_n, c_n, h, wd = x.shape
    k_n, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    xp = np.zeros((n_n, c_n, h + pt + pb + sh * oh, wd + pl + pr + sw * ow), np.float64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x
    kg = k_n // groups
    acc = np.zeros((n_n, k_n, oh, ow), np.float64)
    for g in range(groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * kg : (g + 1) * kg].astype(np.float64)
        for fy in range(kh):
            for fx in range(kw):
                y0, x0 = fy * dh, fx * dw
                patch = xg[:, :, y0 : y0 + sh * oh : sh, x0 : x0 + sw * ow : sw]
                acc[:, g * kg : (g + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, wg[:, :, fy, fx])
    acc += b[None, :, None, None]
    keep = np.ones((k_n, oh, ow), bool) if skip is None else ~skip
    out[:, keep] = acc[:, keep].astype(np.float32)
    return int(keep.sum()) * n_n * cg * kh * kw
