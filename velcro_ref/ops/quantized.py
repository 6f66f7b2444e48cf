"""Quantized ops (int8/uint8 tensors, docs/int8.md): quantize and dequantize at the edges, qconv2d and
qlinear on the producer chain, qrelu/qrelu6 activation sites, qadd, qconcat, qmax_pool and
qglobal_avg_pool. Each output's scale, zero point and dtype are the node's attributes (ops/base.py,
`quantized_output`); the arithmetic is onnxruntime's, requantization of conv and linear in the mode
the node names ("ort" or "fixed_point").

ONNX: each op imports both formats onnxruntime's quantizer writes (QOperator: QLinearConv and the
com.microsoft QLinear* ops; QDQ: the float op between DequantizeLinear and QuantizeLinear, which
the importer hands to the quantized op when the float op reads a quantized tensor) and exports QDQ.
"""

from __future__ import annotations

import numpy as np

from .. import qprepare, quant
from ..errors import ModelError
from ..kernels.conv import conv_geom
from ..kernels.int8 import conv as kconv
from ..kernels.int8 import eltwise as kelt
from ..kernels.int8 import linear as klin
from ..kernels.int8 import pool as kpool
from ..kernels.int8 import requant as kreq
from ..kernels.int8 import sites as ksite
from ..reference import int8 as rint8
from .base import Q_ATTRS, ActivationOp, OnnxUnsupported, Op, at_most_1d, clip_bounds, quantized_output
from .conv import Conv2d
from .elementwise import Add, Concat, channel_axis_only
from .linear import Linear
from .pool import AvgPool, GlobalAvgPool, MaxPool

REQUANT = "requant"
# The simulator's vector-unit operations to requantize one output element (docs/simulator.md):
# multiply by the scale or multiplier, round (or rounding shift), add the zero point, clamp.
REQUANT_OPS = 4


def q_attrs(q) -> dict:
    """The output attributes of a quantized op with QParams q."""
    return {"y_scale": q.scale, "y_zero_point": q.zero_point, "dtype": q.dtype}


def _qdq(node, ctx, op_type, xs, nodes=None, **attrs) -> list:
    """QDQ export of a quantized op: DequantizeLinear of each quantized input in xs, the float op
    `op_type` (named after the node), QuantizeLinear to the node's output."""
    nodes = [] if nodes is None else nodes
    ins = [ctx.dequantized(x, nodes) if ctx.q.get(x) is not None else x for x in xs]
    y = ctx.fresh(f"{node.name}_float")
    nodes.append(ctx.helper.make_node(op_type, ins, [y], name=node.name, **attrs))
    ctx.quantize(node, y, nodes)
    return nodes


def _dq_weights(node, ctx, x, nodes) -> list:
    """DequantizeLinear of a conv or linear node's int8 weight and int32 bias (per tensor, or per
    output channel along axis 0); returns the float weight and bias tensors."""
    g = ctx.graph
    ws = np.asarray(g.params[node.params["w_scale"]], np.float32)
    w = ctx.param(node, "weight")
    k = g.params[node.params["weight"]].shape[0]
    wz = g.params[node.params["w_zero_point"]] if "w_zero_point" in node.params else np.zeros(1, np.int8)
    per_channel = ws.size > 1 or np.size(wz) > 1  # either one per channel: both along axis 0
    if per_channel:
        ws = np.ascontiguousarray(np.broadcast_to(ws.reshape(-1), (k,)))
    wz = np.broadcast_to(np.asarray(wz, np.int8).reshape(-1), (k,)) if per_channel else np.int8(wz.reshape(-1)[0])
    axis = {"axis": 0} if per_channel else {}
    scale = ctx.array(f"{w}_scale", ws if per_channel else ws.reshape(-1)[0])
    zp = ctx.array(f"{w}_zero_point", np.asarray(wz, np.int8))
    out = [ctx.fresh(f"{w}_dequantized")]
    nodes.append(ctx.helper.make_node("DequantizeLinear", [w, scale, zp], out, name=out[0], **axis))
    bs = quant.bias_scale(ctx.q[x].scale, ws if per_channel else ws.reshape(-1)[0])
    if not np.all(np.isfinite(bs)):  # the layer's float form (and its bias's DequantizeLinear) reads otherwise
        raise ModelError(
            f"node '{node.name}': x_scale x w_scale overflows float32; no ONNX file states this layer as "
            "the engine runs it"
        )
    if "bias" in node.params:
        b = ctx.param(node, "bias")
        b_scale = ctx.array(f"{b}_scale", bs)
        b_zp = ctx.array(f"{b}_zero_point", np.zeros(bs.shape, np.int32))
        out.append(ctx.fresh(f"{b}_dequantized"))
        nodes.append(ctx.helper.make_node("DequantizeLinear", [b, b_scale, b_zp], out[1:], name=out[1], **axis))
    return out


def _check_weights(node, w, w_scale, w_zero, bias, n_out, x_q):
    """Checks shared by the imports of quantized convs and linears: int8 weights, a scale and zero
    point per tensor or per output, an int32 bias of scale x_scale * w_scale and zero point 0."""
    if w.dtype != np.int8:
        raise OnnxUnsupported(f"weight of type {w.dtype}; supported: int8")
    if w_scale.size not in (1, n_out) or np.asarray(w_zero).size not in (1, n_out):
        raise OnnxUnsupported(f"weight scale/zero point of {w_scale.size} values for {n_out} outputs")
    if np.asarray(w_zero).dtype != np.int8:
        raise OnnxUnsupported(f"weight zero point of type {np.asarray(w_zero).dtype}; supported: int8")
    if bias is None:
        return
    q, b_scale, b_zero = bias
    if q.dtype != np.int32 or q.size != n_out:
        raise OnnxUnsupported(f"bias of type {q.dtype} and {q.size} values; expects int32, one per output")
    if b_scale is not None:
        want = np.broadcast_to(quant.bias_scale(x_q.scale, w_scale), (n_out,))
        got = np.broadcast_to(np.asarray(b_scale, np.float32).reshape(-1), (n_out,))
        if not np.array_equal(got, want) or np.any(np.asarray(b_zero) != 0):
            raise OnnxUnsupported(
                "bias scale differs from input scale x weight scale (or its zero point is not 0); "
                "the int32 bias would not add to the accumulator"
            )


def _weight_params(w, w_scale, w_zero, bias) -> dict:
    params = {"weight": w, "w_scale": np.asarray(w_scale, np.float32).reshape(-1)}
    if np.any(np.asarray(w_zero) != 0):
        params["w_zero_point"] = np.asarray(w_zero, np.int8).reshape(-1)
    if bias is not None:
        params["bias"] = np.asarray(bias, np.int32).reshape(-1)
    return params


def _requant_golden(rq) -> dict:
    """The requantization numbers of a conv or linear layer in its golden-vector group."""
    out = {
        "requant": quant.REQUANT_MODES[rq.mode],
        "output_min": int(rq.qmin),
        "output_max": int(rq.qmax),
        "requant_scale": rq.scale,
    }
    if rq.mode == quant.REQUANT_FIXED_POINT:
        out.update(multiplier=rq.multiplier, shift=rq.shift)
    return out


def _check_weight_quantization_shapes(node, n_out, param_shape) -> None:
    """A quantized conv's or linear's w_scale and w_zero_point: one value, or one per output."""
    for role in ("w_scale", "w_zero_point"):
        if param_shape(role) not in (None, (1,), (n_out,)):
            raise ModelError(f"node '{node.name}': {role} expects shape (1,) or ({n_out},), found {param_shape(role)}")


def _requant_mode(node) -> str:
    """The node's requantization mode; it has no default, as the two give other codes."""
    mode = node.attrs.get(REQUANT)
    if mode is None:
        raise ModelError(
            f"node '{node.name}': attribute requant is missing; expects one of {', '.join(quant.REQUANT_MODES)}"
        )
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

    ops_per_element = 4  # divide, round, add the zero point, clamp
    onnx_types = ("QuantizeLinear",)

    def to_onnx(self, node, a, ctx):
        nodes = []
        ctx.quantize(node, node.inputs[0], nodes)
        return nodes

    def from_onnx(self, node, index, a, ctx):
        """QuantizeLinear of a float tensor is a quantize node. Of a quantized tensor (the QDQ
        format's output of an op that keeps its input's quantization, or DequantizeLinear ->
        QuantizeLinear): nothing when the parameters agree, else a requantization (a qconcat of
        one input, the table QLinearConcat uses). Its output type is that of the zero point, or
        `output_dtype` (opset 21) where there is none (`scale_zero_point`); axis and saturate do not
        apply to one scale and an 8-bit integer output."""
        _per_tensor_only(a)
        a.get("saturate"), a.get("output_dtype")  # the latter read by `scale_zero_point`
        t = node.input[0]
        y = ctx.scale_zero_point(node, 1, 2, "output")
        name = ctx.tensor_name(t)
        if ctx.is_quantized(t):
            x = ctx.data(node)
            if ctx.quantization(x) == y:
                ctx.alias[node.output[0]] = x
                return
            _requantize(ctx, node, index, x, y, base=name)
            return
        ctx.add(node, index, "quantize", [ctx.data(node)], q_attrs(y), base=f"{name}_quantized")


def _requantize(ctx, node, index, x, y, **names) -> str:
    """Graph tensor `x` requantized to QParams `y`: a qconcat of one input (the table QLinearConcat uses)."""
    shape = ctx.shape(x)
    if len(shape) != 3:
        raise OnnxUnsupported(
            f"a requantization (DequantizeLinear -> QuantizeLinear with other parameters) of a tensor of "
            f"shape {tuple(shape)} per image; supported on (C, H, W) tensors"
        )
    return ctx.add(node, index, "qconcat", [x], q_attrs(y), **names)


def _per_tensor_only(a) -> None:
    """OnnxUnsupported for a QuantizeLinear or DequantizeLinear with a block size (blocked
    quantization); its axis is taken where the scale has one value per slice (`qconst`)."""
    a.get("axis")
    if a.get("block_size", 0):
        raise OnnxUnsupported(f"block_size {a['block_size']} (blocked quantization)")


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

    ops_per_element = 2  # subtract the zero point, multiply
    onnx_types = ("DequantizeLinear",)

    def to_onnx(self, node, a, ctx):
        x = node.inputs[0]
        return [ctx.helper.make_node("DequantizeLinear", [x, *ctx.qparams(x)], [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        """DequantizeLinear of an initializer (a QDQ weight or bias) is read by the op it feeds; of a
        quantized tensor it stands for that tensor (the importer's `dq_views`), made a dequantize
        node where a float op or the graph output needs real values."""
        _per_tensor_only(a)
        if a.get("output_dtype", 0) not in (0, 1):  # 1: FLOAT
            raise OnnxUnsupported(f"output_dtype {a['output_dtype']}; supported: float32")
        if node.input[0] in ctx.values:
            return
        x = ctx.data(node)
        have = ctx.quantization(x)
        if have is None:
            raise OnnxUnsupported(f"input '{node.input[0]}' is float32; expects a quantized tensor")
        want = ctx.scale_zero_point(node, 1, 2, "input", have.dtype)
        if have != want:
            raise OnnxUnsupported(f"input '{node.input[0]}' is quantized as {have}, the node reads it as {want}")
        ctx.dq_view(node, index, x)


class QConv2d(Conv2d):
    """conv2d on quantized tensors: int8 weight (K, C/groups, kh, kw) with w_scale (K,) or (1,) and an
    optional w_zero_point, optional int32 bias of scale x_scale * w_scale; exact int32 accumulation."""

    name = "qconv2d"
    attrs = (*Conv2d.attrs, *Q_ATTRS, REQUANT)
    params = (("weight", "w_scale"), ("bias", "w_zero_point"))
    param_dtypes = {"weight": np.int8, "bias": np.int32, "w_zero_point": np.int8}
    tensors = "quantized"
    onnx_types = ("Conv", "QLinearConv")
    onnx_data_inputs = (0,)
    requant_ops = REQUANT_OPS  # simulator: vector-unit work per computed output element

    def check(self, node):
        return {**super().check(node), REQUANT: _requant_mode(node)}

    def to_onnx(self, node, a, ctx):
        nodes = []
        x = ctx.dequantized(node.inputs[0], nodes)
        wb = _dq_weights(node, ctx, node.inputs[0], nodes)
        return _qdq(node, ctx, "Conv", [x, *wb], nodes, **self._conv_onnx_attrs(a))

    def from_onnx(self, node, index, a, ctx):
        if node.op_type == "QLinearConv":  # x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, [bias]
            x = ctx.input_q(node, 0, 1, 2)
            w, ws, wz = ctx.const(node, 3, "weight"), ctx.const(node, 4, "weight scale"), ctx.const(node, 5, "zp")
            at_most_1d("weight scale and zero point", ws, wz)
            y = ctx.scale_zero_point(node, 6, 7, "output")
            b = ctx.const(node, 8, "bias", required=False)
            bias = None if b is None else (np.asarray(b).reshape(-1), None, None)
            base, site = ctx.qoperator_name(node, "Conv"), None
        else:  # QDQ: Conv(DequantizeLinear(x), DequantizeLinear(w), DequantizeLinear(b)) -> QuantizeLinear
            x = ctx.data(node)
            wc, bc = ctx.qconst(node, 1, "weight"), ctx.qconst(node, 2, "bias", required=False)
            if wc.scale.size > 1 and wc.axis != 0:
                raise OnnxUnsupported(f"weight quantized per slice of axis {wc.axis}; expects axis 0 (output channels)")
            w, ws, wz = wc.q, wc.scale, wc.zero_point
            y = ctx.output_q(node)
            bias = None if bc is None else (bc.q.reshape(-1), bc.scale, bc.zero_point)
            base, site = None, node.output[0]
        w, ws = np.asarray(w), np.asarray(ws, np.float32).reshape(-1)
        attrs = self.onnx_attrs(node, a, ctx, x, w.shape)
        _check_weights(node, w, ws, wz, bias, attrs["out_channels"], ctx.quantization(x))
        attrs.update(q_attrs(y), requant="ort")
        params = _weight_params(w, ws, wz, None if bias is None else bias[0])
        ctx.add_quantized(node, index, "qconv2d", [x], attrs, params, base=base, site=site)

    def infer(self, node, a, ins, param_shape):
        out = super().infer(node, a, ins, param_shape)
        _check_weight_quantization_shapes(node, out[0], param_shape)
        return out

    def prepare(self, a, arrays, ins, out, ctx):
        x_q, y_q = ctx.in_q[0], ctx.out_q
        geom = conv_geom(*ins[0], out[0], a["kernel"], a["stride"], a["pads"], a["dilation"], a["groups"])
        wz = arrays.get("w_zero_point", np.zeros(1, np.int8))
        packed = qprepare.prepare_conv(
            ctx.name, arrays["weight"], wz, arrays.get("bias"), x_q.zero_point, x_q.dtype, geom
        )
        rq = _requant(ctx.name, a[REQUANT], x_q, arrays["w_scale"], y_q, out[0])
        return (x_q.zero_point, packed, geom, rq)

    def run(self, xs, args, skip, out, scratch):
        packed = None if scratch is None else scratch.view(np.int16)  # the engine's scratch holds the packed input
        return kconv.conv2d(xs[0], args[0], args[1], args[2], args[3], skip, out, packed)

    def golden(self, args) -> dict:
        return _requant_golden(args[-1])

    def accumulators(self, x, args, out_shape):
        return rint8.conv2d_accumulators(x, args[0], args[1], args[2], *out_shape[1:])

    def plan_skip(self, args, mask):
        return np.ascontiguousarray(mask, np.bool_)

    def scratch_floats(self, args, n_n) -> int:
        g = args[2]
        return (kconv.packed_size(n_n, args[1], g) + 1) // 2  # int16 values, two to a float32


class QLinear(Linear):
    """linear on quantized tensors: int8 weight (O, F), w_scale (O,) or (1,), optional w_zero_point and
    int32 bias."""

    name = "qlinear"
    attrs = (*Q_ATTRS, REQUANT)
    params = (("weight", "w_scale"), ("bias", "w_zero_point"))
    param_dtypes = {"weight": np.int8, "bias": np.int32, "w_zero_point": np.int8}
    tensors = "quantized"
    onnx_types = ("Gemm", "MatMul", "com.microsoft:QGemm", "QLinearMatMul")
    onnx_data_inputs = (0,)
    requant_ops = REQUANT_OPS

    def check(self, node):
        return {REQUANT: _requant_mode(node)}

    def infer(self, node, a, ins, param_shape):
        out = super().infer(node, a, ins, param_shape)
        _check_weight_quantization_shapes(node, out[0], param_shape)
        return out

    def to_onnx(self, node, a, ctx):
        nodes = []
        x = ctx.dequantized(node.inputs[0], nodes)
        wb = _dq_weights(node, ctx, node.inputs[0], nodes)
        return _qdq(node, ctx, "Gemm", [x, *wb], nodes, transB=1)

    def from_onnx(self, node, index, a, ctx):
        key = node.op_type
        bias = None
        if key == "QGemm":  # A, a_scale, a_zp, B, b_scale, b_zp, [C], y_scale, y_zp
            if len(node.input) < 9 or not node.input[7]:
                raise OnnxUnsupported("QGemm without an output scale (float output)")
            x = ctx.input_q(node, 0, 1, 2)
            w, ws, wz = ctx.const(node, 3, "weight"), ctx.const(node, 4, "weight scale"), ctx.const(node, 5, "zp")
            at_most_1d("weight scale and zero point", ws, wz)
            if np.shape(ws) != np.shape(wz):  # as onnxruntime's QGemm takes them
                raise OnnxUnsupported(
                    f"weight scale of shape {np.shape(ws)} and zero point of shape {np.shape(wz)}; expects one shape"
                )
            b = ctx.const(node, 6, "bias", required=False)
            bias = None if b is None else (np.asarray(b).reshape(-1), None, None)
            y = ctx.scale_zero_point(node, 7, 8, "output")
            trans_b, base, site = a.get("transB", 0), ctx.qoperator_name(node, "Gemm"), None
        elif key == "QLinearMatMul":  # a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp
            x = ctx.input_q(node, 0, 1, 2)
            w, ws, wz = ctx.const(node, 3, "weight"), ctx.const(node, 4, "weight scale"), ctx.const(node, 5, "zp")
            per_column = (1, *np.shape(w)[-1:])  # B (K, N): a scale and zero point per column may be (1, N)
            ws, wz = (v.reshape(-1) if np.shape(v) == per_column else v for v in (ws, wz))
            at_most_1d("weight scale and zero point", ws, wz)
            y = ctx.scale_zero_point(node, 6, 7, "output")
            trans_b, base, site = 0, ctx.qoperator_name(node, "MatMul"), None
        else:  # QDQ Gemm or MatMul on DequantizeLinear inputs, read by a QuantizeLinear
            x = ctx.data(node)
            wc = ctx.qconst(node, 1, "weight")
            trans_b = a.get("transB", 0) if key == "Gemm" else 0
            if wc.scale.size > 1 and wc.axis != (0 if trans_b else 1):
                raise OnnxUnsupported(f"weight quantized per slice of axis {wc.axis}; expects the output axis")
            w, ws, wz = wc.q, wc.scale, wc.zero_point
            if key == "Gemm":
                bc = ctx.qconst(node, 2, "bias", required=False)
                bias = None if bc is None else (bc.q.reshape(-1), bc.scale, bc.zero_point)
            y = ctx.output_q(node)
            base, site = None, node.output[0]
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise OnnxUnsupported("transA, alpha or beta other than 0, 1, 1")
        w = np.asarray(w)
        if w.ndim != 2:
            raise OnnxUnsupported(f"weight of rank {w.ndim}")
        w = w if trans_b else np.ascontiguousarray(w.T)
        if len(ctx.shape(x)) != 1:
            raise OnnxUnsupported(f"{key} on a tensor of per-image shape {ctx.shape(x)}; expects (N, features)")
        ws = np.asarray(ws, np.float32).reshape(-1)
        _check_weights(node, w, ws, wz, bias, w.shape[0], ctx.quantization(x))
        params = _weight_params(w, ws, wz, None if bias is None else bias[0])
        attrs = {**q_attrs(y), REQUANT: "ort"}
        ctx.add_quantized(node, index, "qlinear", [x], attrs, params, base=base, site=site)

    def prepare(self, a, arrays, ins, out, ctx):
        x_q, y_q = ctx.in_q[0], ctx.out_q
        wz = arrays.get("w_zero_point", np.zeros(1, np.int8))
        packed = qprepare.prepare_linear(ctx.name, arrays["weight"], wz, arrays.get("bias"), x_q.zero_point, x_q.dtype)
        return (x_q.zero_point, packed, _requant(ctx.name, a[REQUANT], x_q, arrays["w_scale"], y_q, out[0]))

    def run(self, xs, args, skip, out, scratch):
        return klin.linear(xs[0], args[0], args[1], args[2], skip, out)

    def golden(self, args) -> dict:
        return _requant_golden(args[-1])

    def accumulators(self, x, args, out_shape):
        return rint8.linear_accumulators(x, args[0], args[1])


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

    def golden(self, args) -> dict:
        return {"output_min": int(args[0]), "output_max": int(args[1])}

    def unmasked(self, x, mask, out, args):
        ksite.clamp(x, args[0], args[1], mask, out)

    onnx_types = ("Relu",)

    def to_onnx(self, node, a, ctx):
        return _qdq(node, ctx, "Relu", list(node.inputs))

    def from_onnx(self, node, index, a, ctx):
        """An explicit Relu on a quantized tensor (QDQ with the activations kept): the site."""
        _on_values(node, ctx)
        ctx.add(node, index, self.name, [ctx.data(node)])


class QRelu6(QRelu):
    """relu6 on a quantized tensor: clamp(q, zero_point, quantize(6))."""

    name = "qrelu6"

    def _high(self, q):
        return int(quant.quantize_linear(np.float32(6.0), q.scale, q.zero_point, q.dtype))

    onnx_types = ("Clip",)

    def to_onnx(self, node, a, ctx):
        bounds = [ctx.const("velcro.relu6_min", 0.0), ctx.const("velcro.relu6_max", 6.0)]
        return _qdq(node, ctx, "Clip", [*node.inputs, *bounds])

    def from_onnx(self, node, index, a, ctx):
        """Clip(0, 6) on a quantized tensor is qrelu6, Clip(0, inf) qrelu."""
        _on_values(node, ctx)
        lo, hi = clip_bounds(node, a, ctx)
        if lo == 0 and hi == 6:
            ctx.add(node, index, "qrelu6", [_clip_requantized(node, index, ctx)])
        elif lo == 0 and hi >= float(np.finfo(np.float32).max):
            ctx.add(node, index, "qrelu", [ctx.data(node)])
        else:
            raise OnnxUnsupported(f"range [{lo:g}, {hi:g}]; supported: [0, 6] (relu6) and [0, inf) (relu)")


def _clip_requantized(node, index, ctx) -> str:
    """The tensor a Clip(0, 6) on quantized values clamps. Where the QuantizeLinear reading its output
    has other parameters than its input, the input requantized to them first: ONNX gives Q_out(clip(v, 0, 6)),
    which is clamp(Q_out(v), Q_out(0), Q_out(6)) as Q_out is monotonic, where clamping at Q_in(6) first
    would keep the value Q_in(6) stands for, which is not 6, and requantize that."""
    x = ctx.data(node)
    readers = ctx.reader_nodes(node.output[0])
    wanted = {ctx.scale_zero_point(r, 1, 2, "output") for r in readers if r.op_type == "QuantizeLinear"}
    if not wanted or wanted == {ctx.quantization(x)}:
        return x
    if len(wanted) > 1 or any(r.op_type != "QuantizeLinear" for r in readers):
        raise OnnxUnsupported(
            "a Clip whose output is read with other quantization parameters than its input's by more than one "
            "QuantizeLinear, or also as float values; supported: one set of output parameters"
        )
    return _requantize(ctx, node, index, x, wanted.pop(), suffix="_requantized")


def _on_values(node, ctx) -> None:
    """OnnxUnsupported for a Relu or Clip on 8-bit codes themselves (no DequantizeLinear between):
    ONNX applies it to the codes, max(q, 0), where qrelu and qrelu6 act on the values they stand
    for, max(q, zero_point)."""
    if node.input[0] not in ctx.dq_views:
        raise OnnxUnsupported(
            f"{node.op_type} on the 8-bit codes of '{node.input[0]}' (ONNX applies it to the codes, not to the "
            "values they stand for); supported: DequantizeLinear -> Relu / Clip -> QuantizeLinear"
        )


_NO_MASK = np.zeros(0, np.bool_)


class QAdd(Add):
    """add of two quantized tensors (com.microsoft QLinearAdd arithmetic)."""

    name = "qadd"
    attrs = Q_ATTRS
    tensors = "quantized"
    ops_per_element = 4  # two fused multiply-adds, round, clamp (onnxruntime's QLinearAdd)
    onnx_types = ("Add", "com.microsoft:QLinearAdd")
    one_type = "QLinearAdd"

    def to_onnx(self, node, a, ctx):
        return _qdq(node, ctx, "Add", list(node.inputs))

    def from_onnx(self, node, index, a, ctx):
        if node.op_type == "QLinearAdd":  # A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp
            xs = [ctx.input_q(node, 0, 1, 2), ctx.input_q(node, 3, 4, 5)]
            y = ctx.scale_zero_point(node, 6, 7, "output")
            base, site = ctx.qoperator_name(node, "Add"), None
        else:
            if any(not ctx.is_quantized(t) for t in node.input[:2]):
                raise OnnxUnsupported("an Add of a quantized and a float or constant tensor")
            xs, y = [ctx.data(node, 0), ctx.data(node, 1)], ctx.output_q(node)
            base, site = None, node.output[0]
        ctx.add_quantized(node, index, "qadd", xs, q_attrs(y), base=base, site=site)

    def prepare(self, a, arrays, ins, out, ctx):
        (qa, qb), y = ctx.in_q, ctx.out_q
        return qprepare.add_params(qa.scale, qa.zero_point, qb.scale, qb.zero_point, y.scale, y.zero_point, y.dtype)

    def run(self, xs, args, skip, out, scratch):
        kelt.add(xs[0], xs[1], args, None, out)
        return 0

    def golden(self, args) -> dict:
        return {"a_ratio": args.a_ratio, "b_ratio": args.b_ratio, "offset": args.offset}


class QConcat(Concat):
    """concat of quantized tensors: inputs of other scales are requantized through a 256-entry table
    (QLinearConcat). One input: an identity that requantizes (a dropout with its own range)."""

    name = "qconcat"
    attrs = Q_ATTRS
    tensors = "quantized"
    unit = "vector"  # simulator: an input of another scale goes through a table, counted for every element
    ops_per_element = 1
    onnx_types = ("Concat", "com.microsoft:QLinearConcat")

    def to_onnx(self, node, a, ctx):
        return _qdq(node, ctx, "Concat", list(node.inputs), axis=1)

    def from_onnx(self, node, index, a, ctx):
        if node.op_type == "QLinearConcat":  # Y_scale, Y_zp, then X, X_scale, X_zp per input
            y = ctx.scale_zero_point(node, 0, 1, "output")
            xs = [ctx.input_q(node, k, k + 1, k + 2) for k in range(2, len(node.input), 3)]
            base = ctx.qoperator_name(node, "Concat")
        else:
            if any(not ctx.is_quantized(t) for t in node.input):
                raise OnnxUnsupported("a Concat of quantized and float or constant tensors")
            xs, y, base = [ctx.data(node, k) for k in range(len(node.input))], ctx.output_q(node), None
        channel_axis_only(a, ctx, xs[0])
        ctx.add(node, index, "qconcat", xs, q_attrs(y), base=base)

    def prepare(self, a, arrays, ins, out, ctx):
        y = ctx.out_q
        return tuple(qprepare.concat_table(q, y) for q in ctx.in_q)

    def run(self, xs, tables, skip, out, scratch):
        kelt.concat(tuple(xs), tables, out)
        return 0

    def golden(self, tables) -> dict:
        return {f"table_{i}": table for i, table in enumerate(tables) if table is not None}


class QMaxPool(MaxPool):
    """max_pool on a quantized tensor: exact, the output quantized as the input."""

    name = "qmax_pool"
    tensors = "any"
    onnx_types = ("MaxPool",)  # on a quantized tensor, or (QDQ) a DequantizeLinear of one

    def to_onnx(self, node, a, ctx):
        return _qdq(node, ctx, "MaxPool", list(node.inputs), **self._onnx_attrs(node, a, ctx))

    out_q = QRelu.out_q

    def run(self, xs, p, skip, out, scratch):
        g = p.window
        kpool.max_pool(xs[0], g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, out)
        return 0


def _pool_io(node, a, ctx, float_type):
    """(input tensor, output QParams, name base) of an average pool: com.microsoft
    QLinear<float_type> (X, x_scale, x_zp, y_scale, y_zp; NCHW only), or the float op between
    DequantizeLinear and QuantizeLinear."""
    if node.op_type == f"QLinear{float_type}":
        if a.get("channels_last", 0):
            raise OnnxUnsupported("channels_last=1")
        x, y = ctx.input_q(node, 0, 1, 2), ctx.scale_zero_point(node, 3, 4, "output")
        return x, y, ctx.qoperator_name(node, float_type)
    return ctx.data(node), ctx.output_q(node), None


class QAvgPool(AvgPool):
    """avg_pool of a quantized tensor as onnxruntime computes it (com.microsoft QLinearAveragePool,
    which it also runs for an AveragePool between DequantizeLinear and QuantizeLinear): float32
    sums of the dequantized values, divided by the count, requantized with the zero point added
    before rounding (`kernels/int8/pool.avg_pool`). A window as large as the input without padding
    is a qglobal_avg_pool, as onnxruntime runs it: the ONNX import makes one, and a qavg_pool of
    such a window is refused (`infer`)."""

    name = "qavg_pool"
    attrs = (*AvgPool.attrs, *Q_ATTRS)
    tensors = "quantized"
    requant_ops = REQUANT_OPS  # per output
    onnx_types = ("AveragePool", "com.microsoft:QLinearAveragePool")
    one_type = "QLinearAveragePool"

    def to_onnx(self, node, a, ctx):
        attrs = {**self._onnx_attrs(node, a, ctx), "count_include_pad": int(a["count_include_pad"])}
        if attrs["kernel_shape"] == list(ctx.shapes[node.inputs[0]][1:]) and not any(attrs["pads"]):
            # one window, the whole input, with end pads no window reaches (ceil_mode): written without
            # them, onnxruntime would run its global pool (rounded before the zero point is added).
            # With them and ceil_mode 0 it is the same one window (an end pad is below half the kernel,
            # so below the stride that left a second window no start inside the input)
            attrs = {**attrs, "pads": list(a["pads"]), "ceil_mode": 0}
        return _qdq(node, ctx, "AveragePool", list(node.inputs), **attrs)

    def from_onnx(self, node, index, a, ctx):
        x, y, base = _pool_io(node, a, ctx, "AveragePool")
        attrs = self.window_attrs(node, a, ctx, x)
        if list(attrs["kernel"]) == list(ctx.shape(x)[1:]) and not any(attrs["pads"]):
            ctx.add(node, index, "qglobal_avg_pool", [x], q_attrs(y), base=base)
            return
        ctx.add(node, index, "qavg_pool", [x], {**attrs, **q_attrs(y)}, base=base)

    def infer(self, node, a, ins, param_shape):
        out = super().infer(node, a, ins, param_shape)
        if tuple(a["kernel"]) == tuple(ins[0][1:]) and not any(a["pads"]):
            raise ModelError(
                f"node '{node.name}': a qavg_pool whose window is its whole {ins[0][1]}x{ins[0][2]} input without pads "
                "is onnxruntime's global average pool (rounded before the zero point is added): write it as "
                "qglobal_avg_pool"
            )
        return out

    def prepare(self, a, arrays, ins, out, ctx):
        x, y = ctx.in_q[0], ctx.out_q
        x_lo, x_hi = quant.qrange(x.dtype)
        deq = np.float32(x.scale) * np.arange(x_lo - x.zero_point, x_hi - x.zero_point + 1).astype(np.float32)
        window = super().prepare(a, arrays, ins, out, ctx)
        return (window, deq, -x_lo, np.float32(y.scale), y.zero_point, *quant.qrange(y.dtype))

    def run(self, xs, args, skip, out, scratch):
        p, deq, offset, *requant = args
        g = p.window
        kpool.avg_pool(xs[0], deq, offset, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, p.count_include_pad, *requant, out)
        return 0

    def golden(self, args) -> dict:
        return {"dequantized": args[1]}


class QGlobalAvgPool(GlobalAvgPool):
    """global_avg_pool of a quantized tensor (QLinearGlobalAveragePool)."""

    name = "qglobal_avg_pool"
    attrs = Q_ATTRS
    tensors = "quantized"
    ops_per_element = 1  # per tap (the int32 sum)
    requant_ops = REQUANT_OPS  # per output
    onnx_types = ("GlobalAveragePool", "com.microsoft:QLinearGlobalAveragePool")
    one_type = "QLinearGlobalAveragePool"

    def to_onnx(self, node, a, ctx):
        return _qdq(node, ctx, "GlobalAveragePool", list(node.inputs))

    def from_onnx(self, node, index, a, ctx):
        x, y, base = _pool_io(node, a, ctx, "GlobalAveragePool")
        ctx.add(node, index, "qglobal_avg_pool", [x], q_attrs(y), base=base)

    def prepare(self, a, arrays, ins, out, ctx):
        x, y = ctx.in_q[0], ctx.out_q
        try:
            scale = qprepare.global_avg_pool_scale(x.scale, y.scale, ins[0][1] * ins[0][2])
        except ValueError as e:
            raise ModelError(f"node '{ctx.name}': {e}") from None
        lo, hi = quant.qrange(x.dtype)  # the sum of q - x_zp over a plane, int32 as in convs and onnxruntime
        qprepare.check_accumulator(ctx.name, ins[0][1] * ins[0][2] * max(x.zero_point - lo, hi - x.zero_point))
        return (x.zero_point, scale, y.zero_point, *quant.qrange(y.dtype))

    def run(self, xs, args, skip, out, scratch):
        kpool.global_avg_pool(xs[0], *args, out)
        return 0

    def golden(self, args) -> dict:
        return {"requant_scale": np.float32(args[1])}


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
    QAvgPool(),
    QGlobalAvgPool(),
)
for _op in OPS:  # quantized already: nothing to quantize, whatever the float op they extend says
    _op.quantized_as, _op.own_range = None, False
