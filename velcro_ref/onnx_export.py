"""Graph -> ONNX (opset 17, or 19 with an average pool; dynamic batch axis) that onnxruntime runs
like the engine.

The stored graph is exported, batch_norm included: folding stays the engine's business. A
quantized model is written in the QDQ format: each quantized op as DequantizeLinear of its inputs
(and of its int8 weights and int32 bias), the float op, and QuantizeLinear to its output's scale
and zero point (docs/int8.md).
"""

from __future__ import annotations

import json

import numpy as np

from . import graph as G
from . import ops
from .errors import ModelError
from .fileio import atomic_path
from .fpenv import default_env

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17; read by every onnxruntime since 1.12
# A graph with an average pool is written in opset 19 (IR version 9, onnxruntime 1.15 on): onnxruntime's
# AveragePool of opsets 7 - 18 gives about half the outputs one rounding away from the engine's sum
# divided by the count, its AveragePool of opset 19 the engine's bits (docs/formats.md, "Model", the export).
AVG_POOL_OPSET, AVG_POOL_IR_VERSION = 19, 9
BATCH_DIM = "N"
# Names of the shared scalar initializers ops may add (relu6's Clip bounds)
_CONSTANTS = ("velcro.relu6_min", "velcro.relu6_max", "velcro.float_max")
_PROTOBUF_LIMIT = 2**31 - 2**20  # one ONNX file without external data cannot exceed 2 GiB


@default_env()
def export_onnx(graph: G.Graph, path) -> None:
    """Write `graph` as an ONNX model to `path` (atomically).

    The input is "input" (N, *graph.input_shape) float32 with a symbolic batch axis "N"; the
    output is named after graph.output. Graph.meta is stored as metadata property "velcro.meta"
    (JSON) and the fingerprint as "velcro.fingerprint".
    Raises ModelError for an invalid graph or one too large for a single ONNX file.
    """
    try:
        import onnx
    except ImportError:
        raise ModelError("writing ONNX needs the 'onnx' package (pip install 'velcro-ref[onnx]')") from None
    model = build_onnx(graph)
    try:
        onnx.checker.check_model(model, full_check=True)  # shape inference included: the sizes the engine gives
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"{path}: the exported model does not pass onnx.checker: {e}") from None
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def build_onnx(graph: G.Graph):
    """The ONNX ModelProto of `graph` (not checked, not written). Raises ModelError."""
    from onnx import TensorProto, helper, numpy_helper

    shapes = G.validate(graph, allow_nonfinite=True)
    if graph.output == G.INPUT:
        raise ModelError("graph output is the input itself; ONNX needs at least one node")
    n_bytes = sum(np.asarray(graph.params[k]).nbytes for n in graph.nodes for k in n.params.values())
    if n_bytes > _PROTOBUF_LIMIT:
        raise ModelError(f"parameters take {n_bytes} bytes; a single ONNX file holds at most 2 GiB")
    tensor_names = {G.INPUT} | {n.name for n in graph.nodes}
    ctx = _Context(graph, tensor_names, helper, numpy_helper)
    ctx.q, ctx.shapes = G.quantization(graph), shapes
    nodes = []
    for n in graph.nodes:
        op = ops.get(n.op, n.name)
        nodes.extend(op.to_onnx(n, op.check(n), ctx))
    batch = [BATCH_DIM]
    inp = helper.make_tensor_value_info(G.INPUT, TensorProto.FLOAT, batch + list(graph.input_shape))
    out_q = ctx.q[graph.output]
    out_type = TensorProto.FLOAT if out_q is None else helper.np_dtype_to_tensor_dtype(out_q.np_dtype)
    out = helper.make_tensor_value_info(graph.output, out_type, batch + list(shapes[graph.output]))
    g = helper.make_graph(nodes, "velcro", [inp], [out], initializer=list(ctx.initializers.values()))
    from . import __version__

    opset = export_opset(graph)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=AVG_POOL_IR_VERSION if opset == AVG_POOL_OPSET else IR_VERSION,
        producer_name="velcro-ref",
        producer_version=__version__,
    )
    helper.set_model_props(model, {"velcro.meta": json.dumps(graph.meta), "velcro.fingerprint": graph.fingerprint()})
    return model


def export_opset(graph: G.Graph) -> int:
    """The ONNX opset `build_onnx` writes `graph` in: AVG_POOL_OPSET with a float average pool, else OPSET."""
    return AVG_POOL_OPSET if any(n.op == "avg_pool" for n in graph.nodes) else OPSET


class _Context:
    """What an op's `to_onnx` uses: initializers by parameter key or constant name, unique names for
    extra tensors, and onnx.helper."""

    def __init__(self, graph, tensors, helper, numpy_helper):
        self.graph, self.helper, self.numpy_helper = graph, helper, numpy_helper
        self.tensors = tensors  # the node outputs and the input: an initializer of one of these names is renamed
        self.initializers: dict[str, object] = {}
        self._names: dict[str, str] = {}  # parameter key or constant name -> its initializer's name
        self.taken = set(tensors) | set(_CONSTANTS) | {k for n in graph.nodes for k in n.params.values()}
        self.q: dict = {}  # tensor -> QParams or None (float32)
        self.shapes: dict = {}  # tensor -> its shape per image
        self._qparams: dict[str, tuple] = {}  # quantized tensor -> its scale and zero-point initializers
        self._dequantized: dict[str, str] = {}  # quantized tensor -> the output of its DequantizeLinear

    def param(self, node, role) -> str:
        """The initializer of a parameter: float32, or its integer dtype (quantized models)."""
        key = node.params[role]
        if key not in self._names:
            a = np.asarray(self.graph.params[key])
            self._add(key, a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32))
        return self._names[key]

    def _add(self, key, value) -> None:
        """The initializer of parameter key or constant name `key`: under that name, unless a node's output
        has it (a node may be named as a parameter key: `fc.weight`), then under a fresh one."""
        name = self.fresh(key) if key in self.tensors else key
        self.initializers[name] = self.numpy_helper.from_array(value, name)
        self._names[key] = name

    def array(self, base, value) -> str:
        """A new initializer holding `value` as it is, under a fresh name."""
        name = self.fresh(base)
        self.initializers[name] = self.numpy_helper.from_array(np.asarray(value), name)
        return name

    def qparams(self, tensor) -> tuple[str, str]:
        """The scale (float32 scalar) and zero point (scalar of the tensor's dtype) initializers of a
        quantized tensor, made once."""
        if tensor not in self._qparams:
            q = self.q[tensor]
            scale = self.array(f"{tensor}_scale", np.float32(q.scale))
            self._qparams[tensor] = (scale, self.array(f"{tensor}_zero_point", np.array(q.zero_point, q.np_dtype)))
        return self._qparams[tensor]

    def dequantized(self, tensor, nodes) -> str:
        """The float tensor DequantizeLinear(tensor); its node is appended to `nodes` the first time."""
        if tensor not in self._dequantized:
            out = self.fresh(f"{tensor}_dequantized")
            nodes.append(self.helper.make_node("DequantizeLinear", [tensor, *self.qparams(tensor)], [out], name=out))
            self._dequantized[tensor] = out
        return self._dequantized[tensor]

    def quantize(self, node, x, nodes) -> None:
        """QuantizeLinear of float tensor x into node's output, with node's output quantization."""
        name = self.fresh(f"{node.name}_QuantizeLinear")
        nodes.append(self.helper.make_node("QuantizeLinear", [x, *self.qparams(node.name)], [node.name], name=name))

    def const(self, name, value) -> str:
        """A float32 scalar initializer (one of _CONSTANTS), shared by every node that uses it."""
        if name not in self._names:
            self._add(name, np.array(value, dtype=np.float32))
        return self._names[name]

    def fresh(self, base) -> str:
        """A tensor name no node, parameter or earlier extra tensor uses."""
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name
