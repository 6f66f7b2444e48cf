"""batch_norm: inference-time batch normalisation per channel; folded into the conv2d before it
where the plan allows (velcro_ref/plan.py), else run on its own. The producer-chain walk passes
through it."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .base import OnnxUnsupported, Op, expect_param, need_rank

EPS = 1e-5  # PyTorch's and ONNX's default
ROLES = ("gamma", "beta", "mean", "var")


def var_eps(var, eps) -> np.ndarray:
    """var + eps per channel in float64, eps taken as the float32 number it is in ONNX and
    PyTorch (1e-5 is 9.99999974737875e-06): the sum of two float32 numbers, exact where they
    nearly cancel, so a variance near -eps gives the sum onnxruntime's float32 arithmetic gives."""
    return np.asarray(var, np.float64) + float(np.float32(eps))


def scale_of(arrays, eps) -> np.ndarray:
    """gamma / sqrt(var + eps) per channel, float64: the one formula of the fold and the op."""
    return arrays["gamma"].astype(np.float64) / np.sqrt(var_eps(arrays["var"], eps))


class BatchNorm(Op):
    name = "batch_norm"
    attrs = ("eps",)
    ranges = {"eps": (0.0, float(np.finfo(np.float32).max))}  # a float32 number (`var_eps`)
    params = (ROLES, ())
    chain = "through"
    ops_per_element = 2
    onnx_types = ("BatchNormalization",)

    def check(self, node):
        return {"eps": float(node.attrs.get("eps", EPS))}

    def infer(self, node, a, ins, param_shape):
        need_rank(node, ins, 3)
        for role in ROLES:
            if param_shape(role) is None:
                raise ModelError(f"node '{node.name}': batch_norm needs a {role} parameter")
            expect_param(node, param_shape, role, (ins[0][0],))
        return ins[0]

    def prepare(self, a, arrays, ins, out, ctx):
        scale = scale_of(arrays, a["eps"])
        shift = arrays["beta"].astype(np.float64) - arrays["mean"].astype(np.float64) * scale
        return (scale.astype(np.float32)[:, None, None], shift.astype(np.float32)[:, None, None])

    def run(self, xs, args, skip, out, scratch):
        np.multiply(xs[0], args[0], out=out)
        out += args[1]
        return 0

    def to_onnx(self, node, a, ctx):
        ins = [*node.inputs, *(ctx.param(node, r) for r in ROLES)]
        return [ctx.helper.make_node("BatchNormalization", ins, [node.name], name=node.name, epsilon=a["eps"])]

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        if a.get("training_mode", 0):
            raise OnnxUnsupported("training_mode=1")
        # Training mode, which normalises by the batch's own mean and variance, has no attribute before
        # opset 14: a node that outputs more than Y computes in it (opsets 7 - 13), and before opset 7
        # is_test=0, the default, does.
        if any(node.output[1:]):
            raise OnnxUnsupported("outputs the batch's mean and variance: training mode, batch statistics")
        if ctx.opset < 7 and not a.get("is_test", 0):
            raise OnnxUnsupported("is_test=0 before opset 7: training mode, batch statistics")
        if a.get("spatial", 1) != 1:
            raise OnnxUnsupported("spatial=0")
        a.get("momentum")  # the running statistics' update: training only
        params = {r: ctx.weight(node, k + 1, r) for k, r in enumerate(ROLES)}
        if any(np.ndim(v) != 1 for v in params.values()):  # onnxruntime refuses them, the schema says (C)
            shapes = ", ".join(f"{r} {np.shape(v)}" for r, v in params.items())
            raise OnnxUnsupported(f"parameters of shapes {shapes}; expects one vector of a value per channel each")
        ctx.add(node, index, "batch_norm", [x], {"eps": float(str(np.float32(a.get("epsilon", EPS))))}, params)


OPS = (BatchNorm(),)
