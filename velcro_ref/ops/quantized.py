"""Quantized ops (int8/uint8 tensors, docs/int8.md): quantize and dequantize at the edges, qconv2d and
qlinear on the producer chain, qrelu/qrelu6 activation sites, qadd, qconcat, qmax_pool and
qglobal_avg_pool. Each output's scale, zero point and dtype are the node's attributes (ops/base.py,
`quantized_output`); the arithmetic is onnxruntime's, requantization of conv and linear in the mode
the node names ("ort" or "fixed_point")."""

from __future__ import annotations

import numpy as np

from .. import qprepare, quant
from ..errors import ModelError
from ..kernels.int8 import conv as kconv
from ..kernels.int8 import eltwise as kelt
from ..kernels.int8 import linear as klin
from ..kernels.int8 import pool as kpool
from ..kernels.int8 import requant as kreq
from ..kernels.int8 import sites as ksite
from .base import Q_ATTRS, ActivationOp, Op, quantized_output
from .conv import Conv2d
from .elementwise import Add, Concat
from .linear import Linear
from .pool import GlobalAvgPool, MaxPool

REQUANT = "requant"


def _requant_mode(node) -> str:
    mode = node.attrs.get(REQUANT, "ort")
    if mode not in quant.REQUANT_MODES:
        raise ModelError(f"node '{node.name}': requant expects one of {', '.join(quant.REQUANT_MODES)}, got {mode!r}")
    return mode


class Quantize(Op):
    """The float32 input quantized (QuantizeLinear)."""

    name = "quantize"
    attrs = Q_ATTRS
    tensors = "quantize"

    def out_q(self, node, attrs, in_q):
        if in_q[0] is not None:
            raise ModelError(f"node '{node.name}': quantize expects a float32 input, '{node.inputs[0]}' is quantized")
        return quantized_output(node)

    def prepare(self, a, arrays, ins, out, ctx):
        q = ctx.out_q
        return (np.float32(q.scale), q.zero_point, *quant.qrange(q.dtype))

    def run(self, xs, args, skip, out, scratch):
        kreq.quantize_linear(xs[0].reshape(-1), *args[:2], *args[2:], out.reshape(-1))
        return 0


class Dequantize(Op):
    """A quantized tensor as float32 (DequantizeLinear)."""

    name = "dequantize"
    tensors = "dequantize"

    def out_q(self, node, attrs, in_q):
        if in_q[0] is None:
            raise ModelError(f"node '{node.name}': dequantize expects a quantized input, '{node.inputs[0]}' is float32")
        return None

    def prepare(self, a, arrays, ins, out, ctx):
        return (np.float32(ctx.in_q[0].scale), ctx.in_q[0].zero_point)

    def run(self, xs, args, skip, out, scratch):
        kreq.dequantize_linear(xs[0].reshape(-1), *args, out.reshape(-1))
        return 0


class QConv2d(Conv2d):
    """conv2d on quantized tensors: int8 weight (K, C/groups, kh, kw) with w_scale (K,) or (1,) and an
    optional w_zero_point, optional int32 bias of scale x_scale * w_scale; exact int32 accumulation."""

    name = "qconv2d"
    attrs = (*Conv2d.attrs, *Q_ATTRS, REQUANT)
    params = (("weight", "w_scale"), ("bias", "w_zero_point"))
    param_dtypes = {"weight": np.int8, "bias": np.int32, "w_zero_point": np.int8}
    tensors = "quantized"
    onnx_types = ()

    def check(self, node):
        return {**super().check(node), REQUANT: _requant_mode(node)}

    def infer(self, node, a, ins, param_shape):
        out = super().infer(node, a, ins, param_shape)
        for role in ("w_scale", "w_zero_point"):
            if param_shape(role) not in (None, (1,), (out[0],)):
                raise ModelError(
                    f"node '{node.name}': {role} expects shape (1,) or ({out[0]},), found {param_shape(role)}"
                )
        return out

    def prepare(self, a, arrays, ins, out, ctx):
        x_q, y_q = ctx.in_q[0], ctx.out_q
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["kernel"], a["stride"], a["pads"], a["dilation"]
        geom = qprepare.ConvGeom(kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, a["groups"])
        wz = arrays.get("w_zero_point", np.zeros(1, np.int8))
        packed = qprepare.prepare_conv(
            ctx.name, arrays["weight"], wz, arrays.get("bias"), x_q.zero_point, x_q.dtype, geom
        )
        rq = _requant(ctx.name, a[REQUANT], x_q, arrays["w_scale"], y_q, out[0])
        return (x_q.zero_point, packed, geom, rq)

    def run(self, xs, args, skip, out, scratch):
        return kconv.conv2d(xs[0], args[0], args[1], args[2], args[3], skip, out)

    def plan_skip(self, args, mask):
        return np.ascontiguousarray(mask, np.bool_)

    def scratch_floats(self, args, n_n) -> int:
        return 0


class QLinear(Linear):
    """linear on quantized tensors: int8 weight (O, F), w_scale (O,) or (1,), optional w_zero_point and
    int32 bias."""

    name = "qlinear"
    attrs = (*Q_ATTRS, REQUANT)
    params = (("weight", "w_scale"), ("bias", "w_zero_point"))
    param_dtypes = {"weight": np.int8, "bias": np.int32, "w_zero_point": np.int8}
    tensors = "quantized"
    onnx_types = ()

    def check(self, node):
        return {REQUANT: _requant_mode(node)}

    def prepare(self, a, arrays, ins, out, ctx):
        x_q, y_q = ctx.in_q[0], ctx.out_q
        wz = arrays.get("w_zero_point", np.zeros(1, np.int8))
        packed = qprepare.prepare_linear(ctx.name, arrays["weight"], wz, arrays.get("bias"), x_q.zero_point, x_q.dtype)
        return (x_q.zero_point, packed, _requant(ctx.name, a[REQUANT], x_q, arrays["w_scale"], y_q, out[0]))

    def run(self, xs, args, skip, out, scratch):
        return klin.linear(xs[0], args[0], args[1], args[2], skip, out)


def _requant(name, mode, x_q, w_scale, y_q, n_channels):
    try:
        return qprepare.requant_params(mode, x_q.scale, w_scale, y_q.scale, y_q.zero_point, y_q.dtype, n_channels)
    except ValueError as e:
        raise ModelError(f"node '{name}': {e}") from None


class QRelu(ActivationOp):
    """relu on a quantized tensor of the same scale and zero point: max(q, zero_point). Where a
    quantizer folded the ReLU into its producer's output range (zero point = the dtype's minimum),
    this is the site that keeps the float model's name and changes no value."""

    name = "qrelu"
    tensors = "any"

    def out_q(self, node, attrs, in_q):
        if in_q[0] is None:
            raise ModelError(
                f"node '{node.name}': {self.name} expects a quantized input, '{node.inputs[0]}' is float32"
            )
        return in_q[0]

    def prepare(self, a, arrays, ins, out, ctx):
        q = ctx.out_q
        return (q.zero_point, self._high(q))

    def _high(self, q):
        return quant.qrange(q.dtype)[1]

    def run(self, xs, args, skip, out, scratch):
        n = out.shape[0]
        ksite.clamp(xs[0].reshape(n, -1), args[0], args[1], _NO_MASK, out.reshape(n, -1))
        return 0

    def unmasked(self, x, mask, out, args):
        ksite.clamp(x, args[0], args[1], mask, out)


class QRelu6(QRelu):
    """relu6 on a quantized tensor: clamp(q, zero_point, quantize(6))."""

    name = "qrelu6"

    def _high(self, q):
        return int(quant.quantize_linear(np.float32(6.0), q.scale, q.zero_point, q.dtype))


_NO_MASK = np.zeros(0, np.bool_)


class QAdd(Add):
    """add of two quantized tensors (com.microsoft QLinearAdd arithmetic)."""

    name = "qadd"
    attrs = Q_ATTRS
    tensors = "quantized"
    onnx_types = ()

    def prepare(self, a, arrays, ins, out, ctx):
        (qa, qb), y = ctx.in_q, ctx.out_q
        return qprepare.add_params(qa.scale, qa.zero_point, qb.scale, qb.zero_point, y.scale, y.zero_point, y.dtype)

    def run(self, xs, args, skip, out, scratch):
        kelt.add(xs[0], xs[1], args, None, out)
        return 0


class QConcat(Concat):
    """concat of quantized tensors: inputs of other scales are requantized through a 256-entry table
    (QLinearConcat). One input: an identity that requantizes (a dropout with its own range)."""

    name = "qconcat"
    attrs = Q_ATTRS
    tensors = "quantized"
    onnx_types = ()

    def prepare(self, a, arrays, ins, out, ctx):
        y = ctx.out_q
        return tuple(qprepare.concat_table(q.scale, q.zero_point, y.scale, y.zero_point, y.dtype) for q in ctx.in_q)

    def run(self, xs, tables, skip, out, scratch):
        kelt.concat(tuple(xs), tables, out)
        return 0


class QMaxPool(MaxPool):
    """max_pool on a quantized tensor: exact, the output quantized as the input."""

    name = "qmax_pool"
    tensors = "any"
    onnx_types = ()

    out_q = QRelu.out_q

    def run(self, xs, p, skip, out, scratch):
        kpool.max_pool(xs[0], p.kh, p.kw, p.sh, p.sw, p.pt, p.pl, out)
        return 0


class QGlobalAvgPool(GlobalAvgPool):
    """global_avg_pool of a quantized tensor (QLinearGlobalAveragePool)."""

    name = "qglobal_avg_pool"
    attrs = Q_ATTRS
    tensors = "quantized"
    onnx_types = ()

    def prepare(self, a, arrays, ins, out, ctx):
        x, y = ctx.in_q[0], ctx.out_q
        try:
            scale = qprepare.global_avg_pool_scale(x.scale, y.scale, ins[0][1] * ins[0][2])
        except ValueError as e:
            raise ModelError(f"node '{ctx.name}': {e}") from None
        return (x.zero_point, scale, y.zero_point, *quant.qrange(y.dtype))

    def run(self, xs, args, skip, out, scratch):
        kpool.global_avg_pool(xs[0], *args, out)
        return 0


OPS = (
    Quantize(),
    Dequantize(),
    QConv2d(),
    QLinear(),
    QRelu(),
    QRelu6(),
    QAdd(),
    QConcat(),
    QMaxPool(),
    QGlobalAvgPool(),
)
