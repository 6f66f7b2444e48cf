"""Ops that join tensors: add (element-wise sum of two, on the producer chain) and concat (channels)."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .base import OnnxUnsupported, Op, onnx_axis
from .linear import LINEAR


class Add(Op):
    name = "add"
    quantized_as, own_range = "qadd", True
    n_inputs = 2
    chain = "through"
    ops_per_element = 1
    onnx_types = ("Add",)
    onnx_data_inputs = None

    def infer(self, node, a, ins, param_shape):
        if ins[0] != ins[1]:
            raise ModelError(f"node '{node.name}': add expects equal shapes, found {ins[0]} and {ins[1]}")
        return ins[0]

    def run(self, xs, args, skip, out, scratch):
        np.add(xs[0], xs[1], out=out)
        return 0

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("Add", list(node.inputs), [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        if any(node.input[k] in ctx.values for k in (0, 1)):
            LINEAR.bias_from_onnx(node, index, a, ctx)
        else:
            ctx.add(node, index, "add", [ctx.data(node, 0), ctx.data(node, 1)])


class Concat(Op):
    """Concatenation along channels; costs nothing on the accelerator (readers address the inputs)."""

    name = "concat"
    quantized_as, own_range = "qconcat", True
    n_inputs = None
    unit = "free"
    onnx_types = ("Concat",)
    onnx_data_inputs = None

    def chain_of(self, node) -> str | None:
        """One input: element for element, so a site's producer chain goes on through it (as
        through the qconcat an int8 model makes of it)."""
        return "through" if len(node.inputs) == 1 else None

    def infer(self, node, a, ins, param_shape):
        if any(len(s) != 3 or s[1:] != ins[0][1:] for s in ins):
            raise ModelError(f"node '{node.name}': concat expects (C, H, W) inputs of equal H, W, found {ins}")
        return (sum(s[0] for s in ins), *ins[0][1:])

    def run(self, xs, args, skip, out, scratch):
        c = 0
        for x in xs:
            out[:, c : c + x.shape[1]] = x
            c += x.shape[1]
        return 0

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("Concat", list(node.inputs), [node.name], name=node.name, axis=1)]

    def from_onnx(self, node, index, a, ctx):
        xs = [ctx.data(node, k) for k in range(len(node.input))]
        channel_axis_only(a, ctx, xs[0])
        ctx.add(node, index, "concat", xs)


def channel_axis_only(a, ctx, x) -> None:
    """OnnxUnsupported unless a Concat's `axis` (of a tensor like x, batch first) is the channels'."""
    if onnx_axis(a.get("axis", 1), len(ctx.shape(x)) + 1) != 1:
        raise OnnxUnsupported(f"axis {a.get('axis')}; only the channel axis 1 is supported")


OPS = (Add(), Concat())
