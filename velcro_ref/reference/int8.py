"""NumPy twins of the kernels in kernels/int8: same arguments, same results, bit for bit.

Integer sums in int64 over a zero-padded copy (one shifted slice per filter tap), every output
element computed and the masked ones then left alone; requantization by quant.py's formulas.
"""

from __future__ import annotations

import numpy as np

from .. import quant


def _dtype(qmin):
    return np.uint8 if qmin == 0 else np.int8


def _requant(acc, rq, axis):
    """Requantize int64 accumulators with per-channel numbers along `axis`."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    dtype = _dtype(rq.qmin)
    if rq.mode == quant.REQUANT_ORT:
        return quant.requantize_ort(acc, rq.scale.reshape(shape), rq.zero_point, dtype)
    return quant.requantize_fixed_point(
        acc, rq.multiplier.reshape(shape).astype(np.int64), rq.shift.reshape(shape), rq.zero_point, dtype
    )


def requantize(acc, rq, out):
    out[...] = _requant(acc.astype(np.int64), rq, 1)


def conv2d(x, x_zero_point, pc, geom, rq, skip, out):
    k_n, cg, kh, kw = pc.weight.shape
    oh, ow = out.shape[2], out.shape[3]
    acc = conv2d_accumulators(x, x_zero_point, pc, geom, oh, ow)
    y = _requant(acc, rq, 1)
    keep = np.ones((k_n, oh, ow), bool) if skip is None else ~skip
    out[:, keep] = y[:, keep]
    return int(keep.sum()) * x.shape[0] * cg * kh * kw


def conv2d_accumulators(x, x_zero_point, pc, geom, oh, ow):
    """The int32 accumulators of an int8 conv (int64 array (N, K, OH, OW)): bias + the sum over
    the window of (x - x_zero_point)(w - w_zero_point), padding contributing 0."""
    n_n, c_n, h, w = x.shape
    k_n, cg, kh, kw = pc.weight.shape
    xd = x.astype(np.int64) - int(x_zero_point)
    hp = geom.pt + geom.sh * oh + kh * geom.dh + h
    wp = geom.pl + geom.sw * ow + kw * geom.dw + w
    xp = np.zeros((n_n, c_n, hp, wp), np.int64)
    xp[:, :, geom.pt : geom.pt + h, geom.pl : geom.pl + w] = xd
    kg = k_n // geom.groups
    acc = np.zeros((n_n, k_n, oh, ow), np.int64)
    wt = pc.weight.astype(np.int64)
    for g in range(geom.groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        for fy in range(kh):
            for fx in range(kw):
                y0, x0 = fy * geom.dh, fx * geom.dw
                patch = xg[:, :, y0 : y0 + geom.sh * oh : geom.sh, x0 : x0 + geom.sw * ow : geom.sw]
                acc[:, g * kg : (g + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, wt[g * kg : (g + 1) * kg, :, fy, fx])
    acc += pc.bias.astype(np.int64)[None, :, None, None]
    return acc


def linear(x, x_zero_point, pl, rq, skip, out):
    acc = linear_accumulators(x, x_zero_point, pl)
    y = _requant(acc, rq, 1)
    keep = np.ones(out.shape[1], bool) if skip is None else ~skip
    out[:, keep] = y[:, keep]
    return int(keep.sum()) * x.shape[0] * x.shape[1]


def linear_accumulators(x, x_zero_point, pl):
    """The int32 accumulators of an int8 linear layer (int64 array (N, O)): bias + sum over the
    features of (x - x_zero_point)(w - w_zero_point)."""
    return (x.astype(np.int64) - int(x_zero_point)) @ pl.weight.astype(np.int64).T + pl.bias.astype(np.int64)


def add(a, b, prm, skip, out):
    f32 = np.float32
    inner = quant.fma_f32(b.astype(f32), prm.b_ratio, np.full(b.shape, prm.offset, f32))
    v = quant.fma_f32(a.astype(f32), prm.a_ratio, inner)
    inside = (v >= -(2.0**31)) & (v < 2.0**31)
    r = np.where(inside, np.rint(np.where(inside, v, 0)).astype(np.int64), -(2**31))
    y = np.clip(r, prm.qmin, prm.qmax)
    keep = np.ones(out.shape[1:], bool) if skip is None else ~skip
    out[:, keep] = y.astype(out.dtype)[:, keep]


def concat(xs, tables, out):
    c0 = 0
    for x, t in zip(xs, tables, strict=True):
        out[:, c0 : c0 + x.shape[1]] = x if t is None else t[x.view(np.uint8)]
        c0 += x.shape[1]


def max_pool(x, kh, kw, sh, sw, pt, pl, out):
    h, w = x.shape[2:]
    for oy in range(out.shape[2]):
        ys = oy * sh - pt
        for ox in range(out.shape[3]):
            xs = ox * sw - pl
            out[:, :, oy, ox] = x[:, :, max(ys, 0) : min(ys + kh, h), max(xs, 0) : min(xs + kw, w)].max(axis=(2, 3))


def avg_pool(x, deq, offset, kh, kw, sh, sw, pt, pl, count_include_pad, y_scale, y_zero_point, qmin, qmax, out):
    """Twin of kernels.int8.pool.avg_pool: the same float32 steps, per output position over all planes
    (overflows to inf and NaN as IEEE arithmetic gives them, without NumPy's warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        _avg_pool(x, deq, offset, kh, kw, sh, sw, pt, pl, count_include_pad, y_scale, y_zero_point, qmin, qmax, out)


def _avg_pool(x, deq, offset, kh, kw, sh, sw, pt, pl, count_include_pad, y_scale, y_zero_point, qmin, qmax, out):
    h, w = x.shape[2:]
    values = deq[x.astype(np.int64) + offset]
    for oy in range(out.shape[2]):
        y0, y1 = max(oy * sh - pt, 0), min(oy * sh - pt + kh, h)
        for ox in range(out.shape[3]):
            x0, x1 = max(ox * sw - pl, 0), min(ox * sw - pl + kw, w)
            acc = np.zeros(x.shape[:2], np.float32)
            for iy in range(y0, y1):
                for ix in range(x0, x1):
                    acc = (acc + values[:, :, iy, ix]).astype(np.float32)
            count = np.float32(kh * kw if count_include_pad else (y1 - y0) * (x1 - x0))
            v = ((acc / count).astype(np.float32) / np.float32(y_scale)).astype(np.float32) + np.float32(y_zero_point)
            v = np.clip(v.astype(np.float32), np.float32(qmin), np.float32(qmax))
            v = np.where(np.isnan(v), np.float32(qmin), v)  # a window of inf and -inf
            out[:, :, oy, ox] = np.rint(v).astype(out.dtype)


def global_avg_pool(x, x_zero_point, scale, y_zero_point, qmin, qmax, out):
    h, w = x.shape[2:]
    acc = x.astype(np.int64).sum(axis=(2, 3)) - int(x_zero_point) * h * w
    v = acc.astype(np.float32) * np.float32(scale)
    v = np.clip(v, np.float32(qmin - y_zero_point), np.float32(qmax - y_zero_point))
    out[:, :, 0, 0] = (np.rint(v).astype(np.int64) + y_zero_point).astype(out.dtype)


def quantize_linear(x, scale, zero_point, qmin, qmax, out):
    out[...] = quant.quantize_linear(x, scale, zero_point, _dtype(qmin))


def dequantize_linear(q, scale, zero_point, out):
    out[...] = quant.dequantize_linear(q, scale, zero_point)


def clamp(x, lo, hi, mask, out):
    """Twin of kernels.int8.sites.clamp."""
    keep = np.ones(x.shape[1], bool) if mask.size == 0 else ~mask
    np.copyto(out, np.clip(x, lo, hi).astype(out.dtype), where=keep[None, :])
