"""A plain NumPy interpreter of quantized velcro graphs (docs/formats.md, model format version 2), for
tests: node by node in the graph's order, every element computed in int64 or float32 by the formulas
of docs/int8.md, no plan, no packed weights, no kernels.

The arithmetic is written here from the docs' rules: convs and linears as sums of (x - x_zp) *
(w - w_zp) over a zero-padded input plus the bias, requantized by velcro_ref.quant's transcriptions
of onnxruntime's float32 requantization and of gemmlowp's fixed-point one (each checked against
onnxruntime or gemmlowp's formulas by its own tests); QLinearAdd, QLinearConcat,
QLinearAveragePool and QLinearGlobalAveragePool as onnxruntime's CPU kernels compute them.

Masked mode (VELCRO): right after a site is computed, its masked elements are overwritten with
their constants quantized with the site's scale and zero point, and the walk goes on: what masked
inference must equal (docs/design.md).
"""

from __future__ import annotations

import numpy as np

from velcro_ref import quant

INPUT = "input"


def out_q(graph):
    """tensor -> (scale, zero point, dtype) or None for float32, from the nodes' attributes."""
    q = {INPUT: None}
    for n in graph.nodes:
        a = n.attrs
        if "y_scale" in a:
            q[n.name] = (np.float32(a["y_scale"]), int(a["y_zero_point"]), np.dtype(a["dtype"]))
        elif n.op == "dequantize":
            q[n.name] = None
        else:  # qrelu, qrelu6, qmax_pool, flatten, dropout: the input's
            q[n.name] = q[n.inputs[0]]
    return q


def conv_acc(x, x_zp, w, w_zp, bias, stride, pads, dilation, groups):
    """int64 accumulators (N, K, OH, OW): bias + sum over the window of (x - x_zp)(w - w_zp)."""
    n_n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = stride, pads, dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n_n, c, h + pt + pb, wd + pl + pr), np.int64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x.astype(np.int64) - x_zp
    wz = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (k,))
    wd64 = w.astype(np.int64) - wz[:, None, None, None]
    kg = k // groups
    acc = np.zeros((n_n, k, oh, ow), np.int64)
    for g in range(groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        for fy in range(kh):
            for fx in range(kw):
                patch = xg[:, :, fy * dh : fy * dh + sh * (oh - 1) + 1 : sh, fx * dw : fx * dw + sw * (ow - 1) + 1 : sw]
                acc[:, g * kg : (g + 1) * kg] += np.einsum(
                    "nchw,kc->nkhw", patch, wd64[g * kg : (g + 1) * kg, :, fy, fx]
                )
    if bias is not None:
        acc += np.asarray(bias, np.int64)[None, :, None, None]
    return acc


def requantize(acc, mode, x_scale, w_scale, y, axis=1):
    """int64 accumulators -> the output type, per output channel along `axis`."""
    y_scale, y_zp, dtype = y
    shape = [1] * acc.ndim
    shape[axis] = -1
    k = acc.shape[axis]
    ws = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (k,))
    if mode == "ort":
        return quant.requantize_ort(acc, quant.ort_multiplier(x_scale, ws, y_scale).reshape(shape), y_zp, dtype)
    m, s = quant.fixed_point_multiplier(quant.real_multiplier(x_scale, ws, y_scale))
    return quant.requantize_fixed_point(acc, m.astype(np.int64).reshape(shape), s.reshape(shape), y_zp, dtype)


def pool_size(size, k, s, lo, hi, ceil_mode):
    """PyTorch's pooling output length: with ceil_mode the last window must start inside the
    (left-padded) input."""
    span = size + lo + hi - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + lo:
        out -= 1
    return out


def qadd(a, qa, b, qb, y):
    """com.microsoft QLinearAdd on x86 AVX2 (docs/int8.md): float32 fused multiply-adds."""
    f32 = np.float32
    ra, rb = f32(qa[0] / y[0]), f32(qb[0] / y[0])
    offset = f32(f32(y[1]) - quant.fma_f32(ra, f32(qa[1]), f32(rb * f32(qb[1]))))
    v = quant.fma_f32(a.astype(f32), ra, quant.fma_f32(b.astype(f32), rb, np.full(b.shape, offset, f32)))
    inside = (v >= -(2.0**31)) & (v < 2.0**31)
    r = np.where(inside, np.rint(np.where(inside, v, 0)), -(2.0**31)).astype(np.int64)
    lo, hi = quant.qrange(y[2])
    return np.clip(r, lo, hi).astype(y[2])


def run(graph, x, masks=None):
    """Every node's output {name: array} for a float32 batch x; masks: {site: (bool mask,
    float32 constants)} overwritten at the sites (quantized with the site's parameters)."""
    q = out_q(graph)
    env = {INPUT: x}
    for n in graph.nodes:
        ins = [env[t] for t in n.inputs]
        qi = [q[t] for t in n.inputs]
        a = n.attrs
        p = {role: graph.params[key] for role, key in n.params.items()}
        y = q[n.name]
        if n.op == "quantize":
            out = quant.quantize_linear(ins[0], y[0], y[1], y[2])
        elif n.op == "dequantize":
            out = quant.dequantize_linear(ins[0], qi[0][0], qi[0][1])
        elif n.op == "qconv2d":
            k = list(a["kernel"])
            stride = a.get("stride", [1, 1])
            pads = a.get("pads", [0, 0, 0, 0])
            dil = a.get("dilation", [1, 1])
            stride, dil = ([v, v] if isinstance(v, int) else v for v in (stride, dil))
            pads = [pads] * 4 if isinstance(pads, int) else pads
            assert p["weight"].shape[2:] == tuple(k)
            wz = p.get("w_zero_point", np.zeros(1, np.int8))
            acc = conv_acc(ins[0], qi[0][1], p["weight"], wz, p.get("bias"), stride, pads, dil, a.get("groups", 1))
            out = requantize(acc, a.get("requant", "ort"), qi[0][0], p["w_scale"], y)
        elif n.op == "qlinear":
            wz = np.asarray(p.get("w_zero_point", np.zeros(1, np.int8)), np.int64).reshape(-1)
            w = p["weight"].astype(np.int64) - wz[:, None]
            acc = (ins[0].astype(np.int64) - qi[0][1]) @ w.T
            if "bias" in p:
                acc = acc + p["bias"].astype(np.int64)
            out = requantize(acc, a.get("requant", "ort"), qi[0][0], p["w_scale"], y)
        elif n.op in ("qrelu", "qrelu6"):
            lo, hi = y[1], quant.qrange(y[2])[1]
            if n.op == "qrelu6":
                hi = int(quant.quantize_linear(np.float32(6.0), y[0], y[1], y[2]))
            out = np.clip(ins[0], lo, hi).astype(y[2])
        elif n.op == "qadd":
            out = qadd(ins[0], qi[0], ins[1], qi[1], y)
        elif n.op == "qconcat":
            parts = []
            for v, qv in zip(ins, qi, strict=True):  # copied only with the output's type, scale and zero point
                same = qv[0] == y[0] and qv[1] == y[1] and qv[2] == y[2]
                parts.append(v if same else quant.quantize_linear(quant.dequantize_linear(v, qv[0], qv[1]), *y))
            out = np.concatenate(parts, axis=1)
        elif n.op == "qmax_pool":
            (kh, kw) = a["kernel"]
            sh, sw = a.get("stride", a["kernel"])
            pads = a.get("pads", [0, 0, 0, 0])
            pt, pl, pb, pr = [pads] * 4 if isinstance(pads, int) else pads
            h, w = ins[0].shape[2:]
            oh, ow = (pool_size(sz, kk, ss, lo, hi, a.get("ceil_mode", False)) for sz, kk, ss, lo, hi in
                      ((h, kh, sh, pt, pb), (w, kw, sw, pl, pr)))  # fmt: skip
            out = np.empty((*ins[0].shape[:2], oh, ow), ins[0].dtype)
            for i in range(oh):
                for j in range(ow):
                    ys, xs = i * sh - pt, j * sw - pl
                    win = ins[0][:, :, max(ys, 0) : ys + kh, max(xs, 0) : xs + kw]
                    out[:, :, i, j] = win.max(axis=(2, 3))
        elif n.op == "qavg_pool":  # QLinearAveragePool (docs/int8.md): float32 steps in window order
            (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
            h, w = ins[0].shape[2:]
            oh, ow = (pool_size(sz, kk, ss, lo, hi, a["ceil_mode"]) for sz, kk, ss, lo, hi in
                      ((h, kh, sh, pt, pb), (w, kw, sw, pl, pr)))  # fmt: skip
            f32 = np.float32
            real = (f32(qi[0][0]) * (ins[0].astype(np.int64) - qi[0][1]).astype(f32)).astype(f32)
            lo, hi = quant.qrange(y[2])
            out = np.empty((*ins[0].shape[:2], oh, ow), y[2])
            for i in range(oh):
                for j in range(ow):
                    rows = range(max(i * sh - pt, 0), min(i * sh - pt + kh, h))
                    cols = range(max(j * sw - pl, 0), min(j * sw - pl + kw, w))
                    total = np.zeros(ins[0].shape[:2], f32)
                    for r in rows:
                        for c in cols:
                            total = (total + real[:, :, r, c]).astype(f32)
                    count = f32(kh * kw if a["count_include_pad"] else len(rows) * len(cols))
                    v = ((total / count).astype(f32) / y[0]).astype(f32) + f32(y[1])
                    out[:, :, i, j] = np.clip(np.rint(v.astype(f32)), lo, hi).astype(y[2])
        elif n.op == "qglobal_avg_pool":
            h, w = ins[0].shape[2:]
            acc = ins[0].astype(np.int64).sum(axis=(2, 3)) - qi[0][1] * h * w
            scale = np.float32(qi[0][0] / np.float32(y[0] * np.float32(h * w)))
            lo, hi = quant.qrange(y[2])
            v = np.clip(acc.astype(np.float32) * scale, np.float32(lo - y[1]), np.float32(hi - y[1]))
            out = (np.rint(v).astype(np.int64) + y[1]).astype(y[2])[:, :, None, None]
        elif n.op in ("flatten", "dropout"):
            out = ins[0].reshape(len(x), -1) if n.op == "flatten" else ins[0]
        else:
            raise AssertionError(f"the oracle does not know op {n.op}")
        if masks is not None and n.name in masks:
            mask, const = masks[n.name]
            qc = quant.quantize_linear(const, y[0], y[1], y[2])
            out = np.where(mask[None], qc[None], out).astype(out.dtype)
        env[n.name] = out
    return env
