"""Activation functions, each output an activation site: relu, relu6, silu, hardswish."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..kernels import activation as kact
from ..kernels.overwrite import NO_MASK as _NO_MASK
from ..kernels.overwrite import clamp, clamp_unmasked
from .base import ActivationOp, OnnxUnsupported, clip_bounds, finite_number

_FLOAT_MAX = float(np.finfo(np.float32).max)


class Relu(ActivationOp):
    """max(x, 0); with attribute max (float32's largest value, the only one it takes) also min(., max),
    as ONNX's Clip(x, 0) computes it: +inf becomes the largest float (docs/formats.md)."""

    name = "relu"
    quantized_as = "qrelu"
    onnx_types = ("Relu",)
    attrs = ("max",)
    high = np.float32(np.inf)  # the clamp's upper bound without attribute max

    def check(self, node):
        if "max" not in node.attrs:
            return {}
        given = node.attrs["max"]
        v = finite_number(given)
        with np.errstate(over="ignore"):  # a number written as float32's shortest form, 3.4028235e38, is it too
            if v is None or np.float32(v) != np.float32(_FLOAT_MAX):
                raise ModelError(f"node '{node.name}': max expects {_FLOAT_MAX!r} (float32's largest), got {given!r}")
        return {"max": _FLOAT_MAX}

    def prepare(self, attrs, arrays, ins, out, ctx):
        return self.top(attrs)

    def top(self, attrs):
        """The clamp's upper bound (float32) of a node of these checked attributes."""
        return np.float32(attrs.get("max", self.high))

    def run(self, xs, args, skip, out, scratch):
        n = out.shape[0]
        clamp(xs[0].reshape(n, -1), args, out.reshape(n, -1))  # NumPy's maximum(x, 0) (, then minimum(., top))
        return 0

    def unmasked(self, x, mask, out, args):
        clamp_unmasked(x, args, mask, out)

    def to_onnx(self, node, a, ctx):
        if "max" in a:
            bounds = [ctx.const("velcro.relu6_min", 0.0), ctx.const("velcro.float_max", _FLOAT_MAX)]
            return [ctx.helper.make_node("Clip", [*node.inputs, *bounds], [node.name], name=node.name)]
        return [ctx.helper.make_node("Relu", list(node.inputs), [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        ctx.add(node, index, "relu", [ctx.data(node)])


class Relu6(Relu):
    name = "relu6"
    quantized_as = "qrelu6"
    onnx_types = ("Clip",)
    attrs = ()
    high = np.float32(6.0)

    def check(self, node):
        return {}

    def to_onnx(self, node, a, ctx):
        bounds = [ctx.const("velcro.relu6_min", 0.0), ctx.const("velcro.relu6_max", 6.0)]
        return [ctx.helper.make_node("Clip", [*node.inputs, *bounds], [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        """Clip to [0, 6] is relu6, to [0, inf) relu, to [0, the largest float] relu with that max;
        other ranges are not activation sites."""
        x = ctx.data(node)
        lo, hi = clip_bounds(node, a, ctx)
        if lo == 0 and hi == 6:
            ctx.add(node, index, "relu6", [x])
        elif lo == 0 and hi == np.inf:
            ctx.add(node, index, "relu", [x])
        elif lo == 0 and hi == _FLOAT_MAX:
            ctx.add(node, index, "relu", [x], {"max": _FLOAT_MAX})
        else:
            # float32's shortest digits (6.0000005 is not 6), whole numbers without ".0"; a bound no
            # float32 holds (float64 bounds, also beyond float32's range) in its own digits
            with np.errstate(over="ignore"):
                digits = [str(np.float32(v)) if float(np.float32(v)) == v else repr(v) for v in (lo, hi)]
            bounds = ", ".join(d.removesuffix(".0") for d in digits)
            raise OnnxUnsupported(f"range [{bounds}]; supported: [0, 6] (relu6) and [0, inf) (relu)")


class _Pointwise(ActivationOp):
    """An activation computed by a kernel of kernels.activation, `kernel(x, mask, out)`."""

    kernel = None

    def run(self, xs, args, skip, out, scratch):
        n = out.shape[0]
        self.kernel(xs[0].reshape(n, -1), _NO_MASK, out.reshape(n, -1))
        return 0

    def unmasked(self, x, mask, out, args):
        self.kernel(x, mask, out)


class Silu(_Pointwise):
    """x * sigmoid(x). ONNX (opset 17) has no SiLU: it is exported, as torch exports it, as
    Sigmoid(x) followed by Mul(x, that), and that pair is imported as one silu."""

    name = "silu"
    ops_per_element = 4  # exp, add, divide, multiply
    onnx_types = ("Sigmoid", "Mul")
    onnx_data_inputs = None
    kernel = staticmethod(kact.silu)

    def to_onnx(self, node, a, ctx):
        s = ctx.fresh(f"{node.name}.sigmoid")
        return [
            ctx.helper.make_node("Sigmoid", list(node.inputs), [s], name=s),
            ctx.helper.make_node("Mul", [node.inputs[0], s], [node.name], name=node.name),
        ]

    def from_onnx(self, node, index, a, ctx):
        if node.op_type == "Sigmoid":
            readers = ctx.reader_nodes(node.output[0])
            mul = readers[0] if len(readers) == 1 and readers[0].op_type == "Mul" else None
            if mul is None or sorted(mul.input) != sorted([node.input[0], node.output[0]]):
                raise OnnxUnsupported("a Sigmoid is supported only as x * Sigmoid(x) (SiLU)")
            # its input must be activations: x's graph tensor (a dequantized one made real) kept for the Mul
            ctx.pending[node.output[0]] = (node.input[0], ctx.data(node))
            return
        pending = [t for t in node.input if t in ctx.pending]
        if len(pending) != 1 or sorted(node.input) != sorted([pending[0], ctx.pending[pending[0]][0]]):
            raise OnnxUnsupported("a Mul is supported only as x * Sigmoid(x) (SiLU)")
        _, x = ctx.pending.pop(pending[0])
        ctx.add(node, index, "silu", [x])


class Hardswish(_Pointwise):
    """x * clamp(x / 6 + 1/2, 0, 1), ONNX HardSwish (alpha 1/6, beta 1/2)."""

    name = "hardswish"
    ops_per_element = 4  # multiply-add, two clamps, multiply
    onnx_types = ("HardSwish",)
    kernel = staticmethod(kact.hardswish)

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("HardSwish", list(node.inputs), [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        ctx.add(node, index, "hardswish", [ctx.data(node)])


OPS = (Relu(), Relu6(), Silu(), Hardswish())
