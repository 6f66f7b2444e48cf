"""conv2d: 2-D convolution, NCHW, weights OIHW, groups and dilation; a producer-chain op."""

from __future__ import annotations

from ..errors import ModelError
from ..kernels.conv import (
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    ACT_RELU_MAX,
    Epilogue,
    conv2d,
    conv_geom,
    plan_skip,
    prepare_conv,
    scratch_floats,
)
from .base import (
    MAX_ELEMENTS,
    OnnxUnsupported,
    Op,
    expect_param,
    is_int,
    n_elements,
    need_rank,
    pads,
    window_onnx_attrs,
    window_out_size,
)
from .base import pair as _pair

_ACTS = {None: ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6, "relu_max": ACT_RELU_MAX}


class Conv2d(Op):
    name = "conv2d"
    quantized_as, own_range = "qconv2d", True
    attrs = ("out_channels", "kernel", "stride", "dilation", "pads", "groups")
    params = (("weight",), ("bias",))
    chain = "skip"
    unit = "array"
    onnx_types = ("Conv",)

    def check(self, node):
        a = node.attrs
        out = {
            "kernel": _pair(a.get("kernel"), "kernel", node.name),
            "stride": _pair(a.get("stride", 1), "stride", node.name),
            "dilation": _pair(a.get("dilation", 1), "dilation", node.name),
            "pads": pads(a.get("pads", 0), node.name),
            "groups": a.get("groups", 1),
            "out_channels": a.get("out_channels"),
        }
        for key in ("groups", "out_channels"):
            if not is_int(out[key]) or not 1 <= out[key] <= MAX_ELEMENTS:
                raise ModelError(
                    f"node '{node.name}': {key} must be an integer in [1, {MAX_ELEMENTS}], got {out[key]!r}"
                )
            out[key] = int(out[key])  # a NumPy integer would multiply in its own width (the MACs)
        return out

    def infer(self, node, a, ins, param_shape):
        need_rank(node, ins, 3)
        c, h, w = ins[0]
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["dilation"], a["pads"]
        g, k = a["groups"], a["out_channels"]
        if c % g or k % g:
            raise ModelError(f"node '{node.name}': groups={g} must divide input channels {c} and out_channels {k}")
        w_shape = param_shape("weight")
        if w_shape is None:
            raise ModelError(f"node '{node.name}': conv2d needs a weight parameter")
        if w_shape[1:2] != (c // g,) and len(w_shape) == 4:
            raise ModelError(f"node '{node.name}': weight expects {w_shape[1] * g} input channels, input has {c}")
        expect_param(node, param_shape, "weight", (k, c // g, kh, kw))
        expect_param(node, param_shape, "bias", (k,))
        oh = window_out_size(h, kh, sh, pt, pb, False, dh)
        ow = window_out_size(w, kw, sw, pl, pr, False, dw)
        # the engine's im2col buffer holds one group of one image
        if oh > 0 and ow > 0 and n_elements((c // g, kh, kw, oh, ow)) > MAX_ELEMENTS:
            raise ModelError(
                f"node '{node.name}': its work buffer (C/groups x kh x kw x OH x OW = {c // g} x {kh} x {kw} x "
                f"{oh} x {ow}) exceeds {MAX_ELEMENTS} elements per image"
            )
        return (k, oh, ow)

    def macs_per_element(self, a, ins, out):
        return (ins[0][0] // a["groups"]) * a["kernel"][0] * a["kernel"][1]

    def prepare(self, a, arrays, ins, out, ctx):
        """(ConvWeights, ConvGeom): the filters packed once for the kernels, the geometry as one record."""
        geom = conv_geom(*ins[0], out[0], a["kernel"], a["stride"], a["pads"], a["dilation"], a["groups"])
        return (prepare_conv(arrays["weight"], arrays.get("bias"), geom), geom)

    def run(self, xs, args, skip, out, scratch):
        weights, geom = args
        return conv2d(xs[0], weights, geom, skip, out, scratch)

    def run_fused(self, xs, args, skip, out, scratch, residual, act):
        """`run` with an epilogue: out = act(conv + bias (+ residual)), act None, "relu", "relu6"
        or "relu_max" (a relu with attribute max, `plan.Fusion`); the bits the separate add and
        activation ops would write (docs/kernels.md)."""
        weights, geom = args
        return conv2d(xs[0], weights, geom, skip, out, scratch, epilogue=Epilogue(residual, _ACTS[act]))

    def plan_skip(self, args, mask):
        """What `run` takes as `skip` for a bool (K, OH, OW) mask: its schedule, worked out once."""
        return plan_skip(mask, *args)

    def scratch_floats(self, args, n_n) -> int:
        """Floats of scratch the kernels need for a batch of n_n images."""
        weights, geom = args
        return scratch_floats(geom, n_n, weights)

    def loop_nest(self, a, ins, out):
        (fy, fx), g = a["kernel"], a["groups"]
        return {"k": out[0], "c": ins[0][0] // g, "oy": out[1], "ox": out[2], "fy": fy, "fx": fx, "groups": g}

    def to_onnx(self, node, a, ctx):
        ins = [*node.inputs, ctx.param(node, "weight")] + ([ctx.param(node, "bias")] if "bias" in node.params else [])
        return [ctx.helper.make_node("Conv", ins, [node.name], name=node.name, **self._conv_onnx_attrs(a))]

    def _conv_onnx_attrs(self, a):
        return {**window_onnx_attrs(a), "dilations": list(a["dilation"]), "group": a["groups"]}

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        w = ctx.weight(node, 1, "weight")
        b = ctx.weight(node, 2, "bias", required=False)
        params = {"weight": w}
        if b is not None:
            if b.ndim != 1:
                raise OnnxUnsupported(f"bias of shape {b.shape}; ONNX's Conv takes a 1-D bias")
            params["bias"] = b
        ctx.add(node, index, "conv2d", [x], self.onnx_attrs(node, a, ctx, x, w.shape), params)

    def onnx_attrs(self, node, a, ctx, x, w_shape) -> dict:
        """The attributes of a conv whose ONNX attributes are `a` and weight shape `w_shape`."""
        if len(w_shape) != 4:
            raise OnnxUnsupported(f"weight of rank {len(w_shape)}; only 2-D convolution (rank-4 weight) is supported")
        kernel = [int(k) for k in w_shape[2:]]
        if "kernel_shape" in a and list(a["kernel_shape"]) != kernel:
            raise ModelError(f"node '{node.name}': kernel_shape {list(a['kernel_shape'])} != weight {tuple(w_shape)}")
        dilation = [int(d) for d in a.get("dilations", [1, 1])]
        if len(dilation) != 2:
            raise OnnxUnsupported(f"dilations {dilation}; expects 2-D")
        stride, pad = ctx.spatial(node, a, x, kernel, dilation)
        return {
            "out_channels": int(w_shape[0]),
            "kernel": kernel,
            "stride": stride,
            "dilation": dilation,
            "pads": pad,
            "groups": int(a.get("group", 1)),
        }


OPS = (Conv2d(),)
