"""Pooling: max_pool, avg_pool (windows, PyTorch's padding and ceil_mode rules) and
global_avg_pool. No MACs (docs/design.md); the simulator runs them on the vector unit."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import ModelError
from ..kernels.conv import ConvGeom, conv_geom
from ..kernels.pool import avg_pool, global_avg_pool, max_pool
from .base import OnnxUnsupported, Op, flag, need_rank, onnx_axis, pads, window_onnx_attrs, window_out_size
from .base import pair as _pair


class PoolArgs(NamedTuple):
    """A window op's run arguments: its window as a depthwise conv's geometry (kernel, strides, pads,
    the output size the pooling rules give) and whether padding counts in an average."""

    window: ConvGeom
    count_include_pad: bool


class _Window(Op):
    """A pooling window op: kernel, stride (default the kernel), pads, ceil_mode."""

    attrs = ("kernel", "stride", "pads", "ceil_mode")

    def check(self, node):
        a = node.attrs
        kernel = _pair(a.get("kernel"), "kernel", node.name)
        return {
            "kernel": kernel,
            "stride": _pair(a.get("stride", list(kernel)), "stride", node.name),
            "pads": pads(a.get("pads", 0), node.name),
            "ceil_mode": flag(node, "ceil_mode"),
            "count_include_pad": flag(node, "count_include_pad"),
        }

    def infer(self, node, a, ins, param_shape):
        need_rank(node, ins, 3)
        c, h, w = ins[0]
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
        if max(pt, pb) * 2 > kh or max(pl, pr) * 2 > kw:
            raise ModelError(f"node '{node.name}': pads {a['pads']} exceed half the kernel {a['kernel']}")
        oh = window_out_size(h, kh, sh, pt, pb, a["ceil_mode"])
        return (c, oh, window_out_size(w, kw, sw, pl, pr, a["ceil_mode"]))

    def prepare(self, a, arrays, ins, out, ctx):
        c = ins[0][0]
        window = conv_geom(*ins[0], c, a["kernel"], a["stride"], a["pads"], groups=c)._replace(oh=out[1], ow=out[2])
        return PoolArgs(window, a["count_include_pad"])

    def loop_nest(self, a, ins, out):
        return {**super().loop_nest(a, ins, out), "fy": a["kernel"][0], "fx": a["kernel"][1]}

    def _onnx_attrs(self, node, a, ctx):
        """The ONNX attributes of the window. ONNX's ceil_mode size has no rule that the last window
        starts inside the input (onnx's shape inference gives one more there), so under ceil_mode the
        ceil_mode and end pads written are the first of (ceil_mode 1, then 0) for which each axis has
        an end pad giving the engine's size with the same windows and, for an average with
        count_include_pad, the same counts (`_onnx_end_pad`); the pads given where they do."""
        pads = a["pads"]
        if not a["ceil_mode"]:
            return {**window_onnx_attrs(a), "ceil_mode": 0}
        _, h, w = ctx.shapes[node.inputs[0]]
        count_pad = a.get("count_include_pad", False)
        dims = enumerate(zip((h, w), a["kernel"], a["stride"], strict=True))
        axes = [(n, k, st, pads[i], pads[i + 2]) for i, (n, k, st) in dims]
        for ceil in (True, False):
            ends = [_onnx_end_pad(*axis, ceil, count_pad) for axis in axes]
            if None not in ends:
                attrs = window_onnx_attrs({**a, "pads": (pads[0], pads[1], *ends)})
                return {**attrs, "ceil_mode": int(ceil)}
        raise ModelError(f"node '{node.name}': no ONNX pooling window gives this ceil_mode window's sizes and counts")

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        ctx.add(node, index, self.name, [x], self.window_attrs(node, a, ctx, x))

    def window_attrs(self, node, a, ctx, x) -> dict:
        """The window attributes of an ONNX pooling node `node` (ONNX attributes a) reading x."""
        kernel = [int(k) for k in a.get("kernel_shape", [])]
        if len(kernel) != 2:
            raise OnnxUnsupported(f"kernel_shape {kernel}; only 2-D pooling is supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise OnnxUnsupported(f"dilations {list(a['dilations'])}")
        stride, pad = ctx.spatial(node, a, x, kernel)
        if any(p >= k for p, k in zip(pad, kernel * 2, strict=True)):  # windows of padding alone
            raise OnnxUnsupported(f"pads {list(pad)} not below the kernel {kernel}, which onnxruntime refuses")
        attrs = {"kernel": kernel, "stride": stride, "pads": pad, "ceil_mode": bool(a.get("ceil_mode", 0))}
        if "count_include_pad" in self.attrs:
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        if 2 * pad[2] > kernel[0] or 2 * pad[3] > kernel[1]:
            return _half_end_pads(attrs, ctx.shape(x)[1:])
        return attrs


def _half_end_pads(attrs, hw) -> dict:
    """An ONNX pooling window may pad up to k - 1 at the end, the engine's up to k // 2 (PyTorch's
    rule); `export-onnx` writes such an end pad where ONNX's ceil_mode 1 gives another size. The
    same window with end pads within k // 2 and either ceil_mode, giving the same output size, the
    same windows and (an average counting its padding) the same counts; else `attrs` as they are,
    which the engine then refuses in one line."""
    (pt, pl, pb, pr), ceil = attrs["pads"], attrs["ceil_mode"]
    axes = list(zip(hw, attrs["kernel"], attrs["stride"], (pt, pl), (pb, pr), strict=True))
    count_pad = attrs.get("count_include_pad", False)
    for mode in (ceil, not ceil):
        ends = [_same_windows(*axis, ceil, mode, count_pad) for axis in axes]
        if None not in ends:
            return {**attrs, "pads": [pt, pl, *ends], "ceil_mode": mode}
    return attrs


def _same_windows(n, k, s, lo, hi, ceil, mode, count_pad):
    """The end pad within k // 2 (hi itself first) that gives, under ceil_mode `mode`, the windows
    of (hi, ceil) on an axis of n, or None."""
    out = window_out_size(n, k, s, lo, hi, ceil)
    starts = range(-lo, (out - 1) * s - lo + 1, s)
    for pe in (hi, *range(k // 2 + 1)):
        if 2 * pe > k or window_out_size(n, k, s, lo, pe, mode) != out:
            continue
        if not count_pad or all(min(t + k, n + hi) == min(t + k, n + pe) for t in starts):
            return pe
    return None


def _onnx_end_pad(n, k, s, lo, hi, ceil, count_pad):
    """An ONNX end pad for one axis of a ceil_mode window (size n, kernel k, stride s, pads lo, hi)
    written with ONNX ceil_mode `ceil`: hi itself if it serves, else the smallest that does, None if
    none does. It serves when ONNX's size formula (and onnxruntime's, which drops a last window that
    starts in the end padding) gives the engine's size, and, with count_pad, every window counts the
    padded taps it counts here, min(start + k, n + hi) - start; onnxruntime wants pads below k."""
    out = window_out_size(n, k, s, lo, hi, True)

    def serves(pe):
        num = n + lo + pe - k
        size = (-(-num // s) if ceil else num // s) + 1
        if size != out or (ceil and (size - 1) * s >= n + lo):
            return False
        starts = range(-lo, (out - 1) * s - lo + 1, s)
        return not count_pad or all(min(t + k, n + hi) == min(t + k, n + pe) for t in starts)

    return next((pe for pe in (hi, *range(k)) if serves(pe)), None)


class MaxPool(_Window):
    name = "max_pool"
    quantized_as, on_float_input = "qmax_pool", "float"
    ops_per_element = 1
    onnx_types = ("MaxPool",)

    def run(self, xs, p, skip, out, scratch):
        g = p.window
        max_pool(xs[0], g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, out)
        return 0

    def to_onnx(self, node, a, ctx):
        attrs = self._onnx_attrs(node, a, ctx)
        return [ctx.helper.make_node("MaxPool", list(node.inputs), [node.name], name=node.name, **attrs)]

    def from_onnx(self, node, index, a, ctx):
        order = a.get("storage_order", 0)  # it orders only the Indices output, which is refused where read
        if order not in (0, 1):
            raise OnnxUnsupported(f"storage_order={order}; ONNX defines 0 (row-major) and 1 (column-major)")
        super().from_onnx(node, index, a, ctx)


class AvgPool(_Window):
    name = "avg_pool"
    attrs = ("kernel", "stride", "pads", "ceil_mode", "count_include_pad")
    ops_per_element = 1
    onnx_types = ("AveragePool",)

    def run(self, xs, p, skip, out, scratch):
        g = p.window
        avg_pool(xs[0], g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, p.count_include_pad, out)
        return 0

    def to_onnx(self, node, a, ctx):
        return [
            ctx.helper.make_node(
                "AveragePool",
                list(node.inputs),
                [node.name],
                name=node.name,
                count_include_pad=int(a["count_include_pad"]),
                **self._onnx_attrs(node, a, ctx),
            )
        ]


class GlobalAvgPool(Op):
    name = "global_avg_pool"
    quantized_as, own_range = "qglobal_avg_pool", True
    ops_per_element = 1
    onnx_types = ("GlobalAveragePool", "ReduceMean")

    def infer(self, node, a, ins, param_shape):
        need_rank(node, ins, 3)
        return (ins[0][0], 1, 1)

    def run(self, xs, args, skip, out, scratch):
        global_avg_pool(xs[0], out)
        return 0

    def loop_nest(self, a, ins, out):
        return {**super().loop_nest(a, ins, out), "fy": ins[0][1], "fx": ins[0][2]}

    def to_onnx(self, node, a, ctx):
        return [ctx.helper.make_node("GlobalAveragePool", list(node.inputs), [node.name], name=node.name)]

    def from_onnx(self, node, index, a, ctx):
        x = ctx.data(node)
        if node.op_type == "GlobalAveragePool":
            ctx.add(node, index, "global_avg_pool", [x])
            return
        axes = a["axes"] if "axes" in a else ctx.const(node, 1, "axes", required=False)
        a.get("noop_with_empty_axes")  # it matters only without axes, which are required here
        rank = len(ctx.shape(x)) + 1
        if axes is None or rank != 4 or sorted(onnx_axis(i, rank) for i in np.asarray(axes).reshape(-1)) != [2, 3]:
            raise OnnxUnsupported("only the mean over H and W of an NCHW tensor is supported")
        if a.get("keepdims", 1):
            ctx.add(node, index, "global_avg_pool", [x])
        else:
            pooled = ctx.add(node, index, "global_avg_pool", [x], output="")
            ctx.add(node, index, "flatten", [pooled], suffix="_flatten")


OPS = (MaxPool(), AvgPool(), GlobalAvgPool())
