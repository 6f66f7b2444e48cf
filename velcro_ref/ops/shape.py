"""Ops that keep the values and change the view (flatten), drop nothing at inference (dropout),
or normalise the class scores (softmax)."""

from __future__ import annotations

import numpy as np

from ..kernels import activation
from .base import OnnxUnsupported, Op, onnx_axis


def _copy(xs, out):
    out[...] = xs[0].reshape(out.shape)
    return 0


class Flatten(Op):
    name = "flatten"
    quantized_as, on_float_input = "flatten", "bypass"
    unit = "free"
    tensors = "any"
    onnx_types = ("Flatten", "Reshape", "Squeeze")

    def infer(self, node, a, ins, param_shape):
        return (int(np.prod(ins[0])),)

    def run(self, xs, args, skip, out, scratch):
        return _copy(xs, out)

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("Flatten", list(node.inputs), [node.name], name=node.name, axis=1)]

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        if node.op_type == "Flatten":
            axis = int(a.get("axis", 1))
            if axis < 0:
                axis += len(ctx.shape(x)) + 1
            if axis != 1:
                raise OnnxUnsupported(f"axis {a.get('axis')}; only axis 1 (keep the batch axis) is supported")
            ctx.add(node, index, "flatten", [x])
            return
        if node.op_type == "Squeeze":
            self._squeeze(node, index, a, ctx, x)
            return
        features = int(np.prod(ctx.shape(x)))  # first: an unknown input shape also hides the target shape
        shape = np.asarray(a["shape"]) if "shape" in a else ctx.values.get(node.input[1])
        if shape is None:
            raise OnnxUnsupported("target shape is computed at run time by ops this importer does not fold")
        s = list(shape.reshape(-1))
        zero_kept = a.get("allowzero", 0)  # a 0 in the target is 0, not the input's size
        if len(s) == 2 and s[1] is not ctx.BATCH and (s[1] == -1 or s[1] == features):
            first = s[0]
            batch = first is ctx.BATCH or (first == 0 and not zero_kept)
            batch = batch or (s[1] == features and first == -1)
            batch = batch or (ctx.static_batch is not None and first == ctx.static_batch)
        else:
            batch = False
        if not batch:
            shown = [d if d is ctx.BATCH else int(d) for d in s]
            raise OnnxUnsupported(f"target shape {shown}; only (N, -1), i.e. flatten, is supported")
        ctx.add(node, index, "flatten", [x])

    @staticmethod
    def _squeeze(node, index, a, ctx, x):
        """A Squeeze of the axes after the channels, each of size 1 ((N, C, 1, 1) -> (N, C), as a
        global pool's output is often squeezed) is a flatten; other axes change the layout or
        would squeeze a batch of one too (no axes given)."""
        shape = ctx.shape(x)  # without the batch axis
        axes = a["axes"] if "axes" in a else ctx.const(node, 1, "axes", required=False)
        if axes is None:
            raise OnnxUnsupported("without axes (it squeezes a batch of one too); supported: the axes after 1")
        rank = len(shape) + 1
        axes = sorted(onnx_axis(i, rank) for i in np.asarray(axes).reshape(-1))
        if not axes or axes != list(range(2, rank)) or any(shape[i - 1] != 1 for i in axes):
            found = "x".join(map(str, shape))
            raise OnnxUnsupported(f"axes {axes} of an (N, {found}) tensor; supported: every axis after 1, of size 1")
        ctx.add(node, index, "flatten", [x])


class Dropout(Op):
    """Identity at inference; exported as Identity. ONNX Dropout is bypassed by the importer."""

    name = "dropout"
    quantized_as, on_float_input = "dropout", "bypass"
    attrs = ("p",)
    tensors = "any"
    ranges = {"p": (0.0, 1.0)}
    unit = "free"

    def run(self, xs, args, skip, out, scratch):
        return _copy(xs, out)

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("Identity", list(node.inputs), [node.name], name=node.name)]


class Softmax(Op):
    name = "softmax"
    ops_per_element = 3
    onnx_types = ("Softmax",)
    fused_by_onnxruntime = "com.microsoft QLinearSoftmax"

    def run(self, xs, args, skip, out, scratch):
        x = xs[0]
        shape = (x.shape[0], x.shape[1], -1)
        activation.softmax(np.ascontiguousarray(x).reshape(shape), out.reshape(shape))
        return 0

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("Softmax", list(node.inputs), [node.name], name=node.name, axis=1)]

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        rank = len(ctx.shape(x)) + 1
        default = 1 if ctx.opset < 13 else -1
        axis = onnx_axis(a.get("axis", default), rank)
        # Before opset 13 Softmax flattens from `axis` on; the graph's softmax is over axis 1 only.
        if ctx.opset < 13 and rank != 2:
            raise OnnxUnsupported(
                f"a rank-{rank} input at opset {ctx.opset}, where Softmax flattens every axis from {axis} on; "
                "supported: a rank-2 input there, axis 1 (opset 13 on: the class axis 1 of any rank)"
            )
        if axis != 1:
            raise OnnxUnsupported(f"axis {a.get('axis', default)} on a rank-{rank} input; supported: the class axis 1")
        ctx.add(node, index, "softmax", [x])


OPS = (Flatten(), Dropout(), Softmax())
