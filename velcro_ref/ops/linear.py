"""linear: y = x W^T + b on flat inputs (N, F); a producer-chain op. Imports ONNX Gemm and MatMul,
and the Add that gives a MatMul its bias (found by the add op's import)."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from ..errors import ModelError
from ..kernels.linear import linear
from .base import OnnxUnsupported, Op, expect_param, to_float32


class LinearArgs(NamedTuple):
    """Weights (O, F) and bias (O,), float32, contiguous."""

    w: np.ndarray
    b: np.ndarray


class Linear(Op):
    name = "linear"
    quantized_as, own_range = "qlinear", True
    params = (("weight",), ("bias",))
    chain = "skip"
    unit = "array"
    onnx_types = ("Gemm", "MatMul")

    def infer(self, node, a, ins, param_shape):
        if len(ins[0]) != 1:
            raise ModelError(f"node '{node.name}': linear expects a flat input, found shape {ins[0]}")
        w_shape = param_shape("weight")
        if w_shape is None or len(w_shape) != 2:
            raise ModelError(f"node '{node.name}': linear needs a 2-D weight, found {w_shape}")
        if w_shape[1] != ins[0][0]:
            raise ModelError(f"node '{node.name}': weight expects {w_shape[1]} input features, input has {ins[0][0]}")
        expect_param(node, param_shape, "bias", (w_shape[0],))
        return (w_shape[0],)

    def macs_per_element(self, a, ins, out):
        return ins[0][0]

    def prepare(self, a, arrays, ins, out, ctx):
        w = np.ascontiguousarray(arrays["weight"])
        b = arrays["bias"] if "bias" in arrays else np.zeros(w.shape[0], np.float32)
        return LinearArgs(w, np.ascontiguousarray(b))

    def run(self, xs, args, skip, out, scratch):
        return linear(xs[0], args.w, args.b, skip, out)

    def plan_skip(self, args, mask):
        return mask

    def loop_nest(self, a, ins, out):
        return {"k": out[0], "c": ins[0][0], "oy": 1, "ox": 1, "fy": 1, "fx": 1, "groups": 1}

    def to_onnx(self, node, a, ctx):
        ins = [*node.inputs, ctx.param(node, "weight")] + ([ctx.param(node, "bias")] if "bias" in node.params else [])
        return [ctx.helper.make_node("Gemm", ins, [node.name], name=node.name, transB=1)]

    def from_onnx(self, node, index, a, ctx):
        getattr(self, f"_from_{node.op_type}")(node, index, a, ctx)

    def _from_Gemm(self, node, index, a, ctx):
        x = ctx.data(node)
        if a.get("transA", 0):
            raise OnnxUnsupported("transA=1")
        w = ctx.weight(node, 1, "weight")
        c = ctx.weight(node, 2, "bias", required=False)
        if w.ndim != 2:
            raise OnnxUnsupported(f"weight of rank {w.ndim}")
        _need_flat(ctx, x, "Gemm")
        w = _scaled(w if a.get("transB", 0) else w.T, a.get("alpha", 1.0), "alpha", "B")
        b = None
        beta = a.get("beta", 1.0)  # it scales C alone: without C it changes nothing
        if c is not None:
            try:
                b = np.broadcast_to(c, (1, w.shape[0])).reshape(-1)
            except ValueError:
                raise OnnxUnsupported(f"bias of shape {c.shape} does not fit {w.shape[0]} outputs") from None
            b = _scaled(b, beta, "beta", "C")
        _add_linear(ctx, node, index, x, w, b)

    def _from_MatMul(self, node, index, a, ctx):
        x = ctx.data(node)
        w = ctx.weight(node, 1, "weight")
        if w.ndim != 2:
            raise OnnxUnsupported(f"weight of rank {w.ndim}")
        _need_flat(ctx, x, "MatMul")
        _add_linear(ctx, node, index, x, w.T, None)

    def bias_from_onnx(self, node, index, a, ctx):
        """An ONNX Add with a constant operand: the bias of the MatMul or Gemm it reads (read by it alone)."""
        consts = [k for k in (0, 1) if node.input[k] in ctx.values]
        if len(consts) == 2:
            raise OnnxUnsupported("both inputs are constants")
        x = ctx.data(node, 1 - consts[0])
        bias = ctx.weight(node, consts[0], "bias")
        if ctx.bias_free.get(node.input[1 - consts[0]]) != x:
            raise OnnxUnsupported(
                "a constant operand is supported only as the bias of a MatMul or Gemm read by it alone"
            )
        k = ctx.index[x]
        lin = ctx.nodes[k]
        out_features = ctx.params[lin.params["weight"]].shape[0]
        try:
            b = np.broadcast_to(bias, (1, out_features)).reshape(-1)
        except ValueError:
            raise OnnxUnsupported(f"bias of shape {bias.shape} does not fit {out_features} outputs") from None
        key = f"{lin.name}.bias"
        ctx.params[key] = np.ascontiguousarray(b, dtype=np.float32)
        ctx.nodes[k] = replace(lin, params={**lin.params, "bias": key})
        del ctx.bias_free[node.input[1 - consts[0]]]
        ctx.alias[node.output[0]] = lin.name


def _scaled(t, factor, what, operand):
    """Gemm's alpha (beta) folded into its B (C) operand, float32, as the linear op holds no
    factor: refused where a product overflows float32, or falls below its normal range and is
    not exact there (flushed to 0 or rounded as a subnormal), where onnxruntime scales the sum."""
    f = np.float32(factor)
    if f == 1:
        return t
    if f == 0 and not np.all(np.isfinite(t)):  # 0 * inf: NaN in ONNX's reference, C left out by onnxruntime
        raise OnnxUnsupported(
            f"{what} 0 times {operand} holding {np.count_nonzero(~np.isfinite(t))} value(s) not finite"
        )
    wide = np.asarray(t, np.float64) * np.float64(f)  # exact: two float32 factors
    q, lost = to_float32(wide)
    if lost.any():
        bad = np.abs(wide[lost])
        raise OnnxUnsupported(
            f"{what} {float(f):g} times {operand} leaves float32's range ({bad.min():g} .. {bad.max():g}: "
            f"infinite, or flushed or rounded below the normal range); scale {operand} instead"
        )
    return q


def _need_flat(ctx, x, what):
    shape = ctx.shape(x)
    if len(shape) != 1:
        raise OnnxUnsupported(f"{what} on a tensor of per-image shape {shape}; expects (N, features)")


def _add_linear(ctx, node, index, x, w, b):
    params = {"weight": w}
    if b is not None:
        params["bias"] = b
    name = ctx.add(node, index, "linear", [x], {}, params)
    if b is None and ctx.readers.get(node.output[0]) == 1 and node.output[0] != ctx.output_name:
        ctx.bias_free[node.output[0]] = name


LINEAR = Linear()
OPS = (LINEAR,)
