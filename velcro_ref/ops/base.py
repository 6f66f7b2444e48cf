"""The shape of an op definition, and the attribute checks op definitions share.

An op is a subclass of `Op` in one module of this package; velcro_ref/ops/__init__.py lists them.
docs/adding-an-op.md walks through adding one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import ModelError

# Limits that refuse absurd files before anything is allocated. ImageNet VGG-16 needs 1.0e8 elements
# for its largest parameter, 1.4e8 parameters and 1.5e10 MACs per image, well inside all of them.
MAX_ELEMENTS = 1 << 28  # one tensor of one image, one parameter, one conv work buffer (1 GiB of float32)


class QParams(NamedTuple):
    """How a quantized tensor's values map to real numbers: real = (q - zero_point) * scale, with
    q an `dtype` ("int8" or "uint8") value and scale a float32 (docs/int8.md)."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)


class Prepared(NamedTuple):
    """What `Op.prepare` may need besides attributes and arrays: the node's name (for messages)
    and the quantization of its inputs and output (None for float tensors)."""

    name: str
    in_q: tuple
    out_q: QParams | None


class Op:
    """Everything the rest of the code asks about one op of the graph format.

    Data (class attributes):
      name             the op's name in the graph format
      n_inputs         inputs it reads; None: one or more
      attrs            attributes it understands, in the order messages list them
      ranges           attribute -> (low, high) for plain numbers, checked before shapes
      params           (required roles, optional roles) of its parameters
      site             its output is an activation site (docs/design.md)
      chain            "skip": a masked element of a site on its producer chain skips this op's
                       output element and its MACs; "through": the chain walk continues through
                       its inputs; None: the chain stops here (`chain_of` gives a node's, where it
                       depends on the node)
      unit             simulator: "array" (PE array), "vector" (vector unit) or "free" (readers
                       address its inputs' buffers)
      ops_per_element  simulator: vector-unit operations per output element (per window tap for pools)
      onnx_types       ONNX op types whose import `from_onnx` handles
      onnx_data_inputs positions of those ONNX ops' inputs that carry activations (None: all);
                       the others are constants (weights, shapes, limits)
      tensors          "float": float32 inputs and output; "quantized": quantized inputs, output
                       quantized as its attributes y_scale, y_zero_point, dtype say; "any": the
                       output is quantized exactly as its first input (values kept, view changed)
      param_dtypes     role -> the dtype its parameter is stored in (others: float32)
      requant_ops      simulator: vector-unit operations to requantize one output element of an
                       int8 op's int32 accumulator (0: none)
      fused_by_onnxruntime  the com.microsoft op onnxruntime runs in place of this float op between
                       DequantizeLinear and QuantizeLinear (its own arithmetic, which differs from
                       the float op's by a step on some outputs); such a node reading a quantized
                       tensor is refused at import rather than run in float. None: none
      one_type         a quantized op whose inputs and output must all be of one type (int8 or
                       uint8): the onnxruntime op whose arithmetic it computes and which takes one
                       type (it runs a QDQ node of mixed types in float32); None: any types

    Methods take the node's checked attributes (`check`), never a raw attribute dict.
    """

    name = ""
    n_inputs: int | None = 1
    attrs: tuple = ()
    ranges: dict = {}
    params: tuple = ((), ())
    site = False
    chain: str | None = None
    unit = "vector"
    ops_per_element = 0
    onnx_types: tuple = ()
    onnx_data_inputs: tuple | None = (0,)
    tensors = "float"
    param_dtypes: dict = {}
    requant_ops = 0
    quantized_as: str | None = None  # the op of this layer in a quantized model (velcro_ref/quantization.py)
    fused_by_onnxruntime: str | None = None
    one_type: str | None = None
    own_range = False  # quantized, its output takes a scale and zero point from its own calibration range
    # What onnxruntime's QDQ quantizer makes of this op where no node before it quantized its input
    # (`quantization.float_pools`): "quantize" it; "float", it runs in float (a max pool, which the
    # quantizer quantizes only on 8-bit input); "bypass", it passes the float tensor on (Identity).
    on_float_input = "quantize"

    def chain_of(self, node) -> str | None:
        """This op's `chain` for `node`."""
        return self.chain

    def check(self, node) -> dict:
        """The node's attributes, normalised (pairs, pads as 4-tuples, defaults filled in).
        Raises ModelError naming the node."""
        return {}

    def infer(self, node, attrs, ins, param_shape) -> tuple:
        """Output shape per image from the input shapes; `param_shape(role)` gives a parameter's
        shape (None if absent). Raises ModelError naming the node."""
        return ins[0]

    def macs_per_element(self, attrs, ins, out) -> int:
        """Dense MACs of one output element (docs/design.md); 0 for ops that do no MACs."""
        return 0

    def prepare(self, attrs, arrays, ins, out, ctx):
        """The run arguments, worked out once when the model loads (arrays: role -> as stored or
        derived; ctx: a Prepared)."""
        return None

    def out_q(self, node, attrs, in_q) -> QParams | None:
        """The quantization of the output (None: float32) from the inputs' (see `tensors`).
        Raises ModelError naming the node for inputs of the wrong kind."""
        if self.tensors == "any":
            return in_q[0]
        want_quantized = self.tensors == "quantized"
        for t, q in zip(node.inputs, in_q, strict=True):
            if (q is not None) != want_quantized:
                found = "float32" if q is None else q.dtype
                want = "a quantized (int8/uint8)" if want_quantized else "a float32"
                raise ModelError(f"node '{node.name}': {node.op} expects {want} input, '{t}' is {found}")
        if not want_quantized:
            return None
        y = quantized_output(node)
        if self.one_type and any(q.dtype != y.dtype for q in in_q):
            found = " and ".join(sorted({np.dtype(q.dtype).name for q in in_q}))
            raise ModelError(
                f"node '{node.name}': {node.op} of {found} input into {np.dtype(y.dtype).name}: one type for every "
                f"input and the output, as onnxruntime's {self.one_type} takes them"
            )
        return y

    def run(self, xs, args, skip, out, scratch) -> int:
        """Compute `out` (N, *out_shape) from the inputs xs; return the executed MACs. `skip` is
        None (dense) or the op's masked output elements, for ops with chain == "skip"."""
        raise NotImplementedError(self.name)

    def golden(self, args) -> dict:
        """The numbers a quantized node's arithmetic uses, for its golden-vector group
        (docs/formats.md): name -> a scalar (written as an attribute) or an array (a dataset)."""
        return {}

    def accumulators(self, x, args, out_shape):
        """The int32 accumulators of a quantized layer that has them (conv, linear) for input x,
        before requantization; None for other ops."""
        return None

    def loop_nest(self, attrs, ins, out) -> dict:
        """The simulator's loop bounds of one image: k, c, oy, ox, fy, fx and groups. An output of
        rank 1 or 2 is (k,) or (k, oy), ones after; of rank 4 or more, (first axis, the axes between
        as one, last axis)."""
        k, oy, ox = (*out, 1, 1, 1)[:3] if len(out) < 3 else (out[0], math.prod(out[1:-1]), out[-1])
        return {"k": k, "c": 1, "oy": oy, "ox": ox, "fy": 1, "fx": 1, "groups": 1}

    def to_onnx(self, node, attrs, ctx) -> list:
        """ONNX NodeProtos computing this node, output tensor named after it (see onnx_export.py)."""
        raise NotImplementedError(self.name)

    def from_onnx(self, node, index, a, ctx) -> None:
        """Convert one ONNX node of a type in `onnx_types` with the importer `ctx` (onnx_import.py)."""
        raise NotImplementedError(self.name)


Q_ATTRS = ("y_scale", "y_zero_point", "dtype")
Q_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def quantized_output(node) -> QParams:
    """The output quantization a quantized op's attributes give: y_scale (a positive finite float32),
    y_zero_point (in the dtype's range) and dtype ("int8" or "uint8")."""
    a = node.attrs
    dtype = a.get("dtype")
    if dtype not in Q_RANGES:
        raise ModelError(f"node '{node.name}': dtype expects 'int8' or 'uint8', got {dtype!r}")
    if not (float32_number(a.get("y_scale")) or 0) > 0:  # as the kernels take it, float32: not inf, not 0
        raise ModelError(f"node '{node.name}': y_scale expects a positive float32 value, got {a.get('y_scale')!r}")
    zp = a.get("y_zero_point")
    lo, hi = Q_RANGES[dtype]
    if not is_int(zp) or not lo <= zp <= hi:
        raise ModelError(f"node '{node.name}': y_zero_point expects an integer in [{lo}, {hi}], got {zp!r}")
    return QParams(float(a["y_scale"]), int(zp), dtype)


class ActivationOp(Op):
    """An activation function: its output is an activation site, computed element-wise.

    `unmasked(x, mask, out, args)` computes it at the unmasked elements of a masked site only: x
    and out (N, E) flattened, mask (E,) bool, args what `prepare` made; masked elements keep what
    out holds (their constants).
    """

    site = True
    ops_per_element = 1

    def unmasked(self, x, mask, out, args) -> None:
        raise NotImplementedError(self.name)


class OnnxUnsupported(Exception):
    """An ONNX node cannot be converted; the message says why (empty: the op itself is unknown)."""


def onnx_axis(axis, rank) -> int:
    """An ONNX axis of a rank-`rank` tensor as 0 .. rank - 1; outside -rank .. rank - 1 (which
    onnxruntime refuses) OnnxUnsupported."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise OnnxUnsupported(f"axis {axis} outside [{-rank}, {rank - 1}] of a rank-{rank} tensor")
    return axis % rank


def to_float32(wide) -> tuple[np.ndarray, np.ndarray]:
    """Float64 values as float32, and where that loses them: a value that overflows, or one below
    float32's normal range that is not exact there (flushed to 0 or rounded as a subnormal)."""
    wide = np.asarray(wide, np.float64)
    with np.errstate(over="ignore"):
        q = wide.astype(np.float32)
    return q, ~np.isfinite(q) | ((q != wide) & (np.abs(wide) < np.finfo(np.float32).tiny))


def is_scalar(v) -> bool:
    """Whether v is one value of shape () or (1,), as onnxruntime takes a scalar input."""
    return np.size(v) == 1 and np.ndim(v) <= 1


def at_most_1d(what, *arrays) -> None:
    """OnnxUnsupported unless each array (None: absent) is a scalar or a vector, as onnxruntime takes
    scales and zero points (one value, or one per channel)."""
    shapes = [np.shape(a) for a in arrays if a is not None]
    if any(len(s) > 1 for s in shapes):
        raise OnnxUnsupported(f"{what} of shapes {' and '.join(map(str, shapes))}; expects scalars or vectors")


def clip_bounds(node, a, ctx) -> tuple[float, float]:
    """A Clip's (min, max): attributes before opset 11, else inputs 1 and 2; absent, float32's lowest
    and largest values, as ONNX defines them (numeric_limits) and onnxruntime clamps +-inf to them. A
    bound input must be a scalar, of shape () or (1,), as onnxruntime takes it (ONNX: shape ())."""
    big = float(np.finfo(np.float32).max)
    if ctx.opset < 11:
        return a.get("min", -big), a.get("max", big)
    bounds = []
    for k, role, absent in ((1, "min", -big), (2, "max", big)):
        v = ctx.const(node, k, role, required=False)
        if v is not None and not is_scalar(v):
            raise OnnxUnsupported(f"{role} has shape {np.shape(v)}; a bound is a scalar, of shape () or (1,)")
        bounds.append(absent if v is None else float(np.asarray(v).reshape(-1)[0]))
    return bounds[0], bounds[1]


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def finite_number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def float32_number(v) -> float | None:
    """v (a Python int or float, not a bool) as float32 (a Python float), or None for anything but a
    number finite in float32."""
    f = finite_number(v)
    with np.errstate(over="ignore", under="ignore"):
        return None if f is None or not np.isfinite(np.float32(f)) else float(np.float32(f))


def pair(v, what, node, minimum=1):
    """An int or two ints as a pair, each in [minimum, MAX_ELEMENTS]."""
    if is_int(v):
        out = (int(v), int(v))
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(i) for i in v):
        out = (int(v[0]), int(v[1]))
    else:
        raise ModelError(f"node '{node}': {what} expects an int or two ints, got {v!r}")
    if not minimum <= min(out) <= max(out) <= MAX_ELEMENTS:
        raise ModelError(f"node '{node}': {what} must be in [{minimum}, {MAX_ELEMENTS}], got {v!r}")
    return out


def pads(v, node):
    """Padding as (top, left, bottom, right); an int or (h, w) pair is symmetric."""
    out = None
    if is_int(v):
        out = (int(v),) * 4
    elif isinstance(v, (list, tuple)) and all(is_int(i) for i in v):
        if len(v) == 2:
            out = (int(v[0]), int(v[1]), int(v[0]), int(v[1]))
        elif len(v) == 4:
            out = tuple(int(i) for i in v)
    if out is None:
        raise ModelError(f"node '{node}': pads expects an int, (h, w) or (top, left, bottom, right), got {v!r}")
    if not 0 <= min(out) <= max(out) <= MAX_ELEMENTS:
        raise ModelError(f"node '{node}': pads must be in [0, {MAX_ELEMENTS}], got {v!r}")
    return out


def flag(node, key, default=False) -> bool:
    v = node.attrs.get(key, default)
    if not isinstance(v, (bool, np.bool_)):
        raise ModelError(f"node '{node.name}': {key} expects true or false, got {v!r}")
    return bool(v)


def window_out_size(size, k, s, pad_lo, pad_hi, ceil_mode, dilation=1):
    """Output length of a window op, with PyTorch's rule that the last window starts inside the input."""
    span = dilation * (k - 1) + 1
    num = size + pad_lo + pad_hi - span
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad_lo:
        out -= 1
    return out


def window_onnx_attrs(a) -> dict:
    """The ONNX kernel_shape, strides and pads of a conv's or a pooling window's attributes."""
    return {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": list(a["pads"])}


def need_rank(node, ins, rank):
    if len(ins[0]) != rank:
        raise ModelError(f"node '{node.name}': {node.op} expects a rank-{rank} input per image, found shape {ins[0]}")


def expect_param(node, param_shape, role, expected):
    found = param_shape(role)
    if found is not None and found != tuple(expected):
        raise ModelError(f"node '{node.name}': {role} expects shape {tuple(expected)}, found {found}")


def n_elements(shape) -> float:
    return float(np.prod([float(d) for d in shape]))
