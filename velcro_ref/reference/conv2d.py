"""NumPy twin of kernels.conv.conv2d: every element in the documented order of summation.

Each tap's products are added with an emulated float32 fused multiply-add (`fma32`), chain by
chain as docs/kernels.md defines the order, so the twin equals the kernels bit for bit; it
computes every element, then leaves the masked ones alone.
"""

from __future__ import annotations

import numpy as np

from .fma import fma32
from .order import apply_epilogue, combine_chains

CHAINS = 8
FEW_TAPS = 64


def conv2d(x, weights, geom, skip, out, scratch=None, epilogue=None):
    """Same arguments and result as the kernel (weights: only its w and b are read)."""
    w, b, g = weights.w, weights.b, geom
    n_n = x.shape[0]
    cg, kg = g.c_in // g.groups, g.k_out // g.groups
    taps = cg * g.kh * g.kw
    n_chains = 1 if taps < FEW_TAPS else CHAINS
    hp = max(g.h + g.pt, (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1)
    wp = max(g.w + g.pl, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    xp = np.zeros((n_n, g.c_in, hp, wp), np.float32)
    xp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w] = x
    acc = np.zeros((n_chains, n_n, g.k_out, g.oh, g.ow), np.float32)
    for grp in range(g.groups):
        ks = slice(grp * kg, (grp + 1) * kg)
        for j in range(taps):  # (fy, fx, c) order
            fy, rem = divmod(j, g.kw * cg)
            fx, c = divmod(rem, cg)
            y0, x0 = fy * g.dh, fx * g.dw
            patch = xp[:, grp * cg + c, y0 : y0 + (g.oh - 1) * g.sh + 1 : g.sh, x0 : x0 + (g.ow - 1) * g.sw + 1 : g.sw]
            chain = acc[j % n_chains]
            chain[:, ks] = fma32(w[ks, c, fy, fx][None, :, None, None], patch[:, None], chain[:, ks])
    y = combine_chains(acc) + b[None, :, None, None]
    y = apply_epilogue(y, epilogue)
    sk = getattr(skip, "skip", skip)
    keep = np.ones((g.k_out, g.oh, g.ow), bool) if sk is None else ~sk
    out[:, keep] = y[:, keep]
    return int(keep.sum()) * n_n * taps
