"""Graph -> ONNX (opset 17, dynamic batch axis) that onnxruntime runs like the engine.

The stored graph is exported, batch_norm included: folding stays the engine's business.
"""

from __future__ import annotations

import json

import numpy as np

from . import graph as G
from .errors import ModelError
from .fileio import atomic_path

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17; read by every onnxruntime since 1.12
BATCH_DIM = "N"
_RELU6_MIN, _RELU6_MAX = "velcro.relu6_min", "velcro.relu6_max"
_PROTOBUF_LIMIT = 2**31 - 2**20  # one ONNX file without external data cannot exceed 2 GiB


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
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
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
    clash = sorted(tensor_names & ({k for n in graph.nodes for k in n.params.values()} | {_RELU6_MIN, _RELU6_MAX}))
    if clash:
        raise ModelError(f"names used both as a node and a parameter: {', '.join(clash)}")

    initializers: dict[str, object] = {}

    def param(node, role):
        key = node.params[role]
        if key not in initializers:
            initializers[key] = numpy_helper.from_array(np.asarray(graph.params[key], dtype=np.float32), key)
        return key

    nodes = []
    for n in graph.nodes:
        nodes.append(_node(n, param, initializers, helper, numpy_helper))
    batch = [BATCH_DIM]
    inp = helper.make_tensor_value_info(G.INPUT, TensorProto.FLOAT, batch + list(graph.input_shape))
    out = helper.make_tensor_value_info(graph.output, TensorProto.FLOAT, batch + list(shapes[graph.output]))
    g = helper.make_graph(nodes, "velcro", [inp], [out], initializer=list(initializers.values()))
    from . import __version__

    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="velcro-ref",
        producer_version=__version__,
    )
    helper.set_model_props(model, {"velcro.meta": json.dumps(graph.meta), "velcro.fingerprint": graph.fingerprint()})
    return model


def _node(n: G.Node, param, initializers, helper, numpy_helper):
    x = list(n.inputs)
    out = [n.name]
    op = n.op
    if op == "conv2d":
        a = G.conv_attrs(n)
        ins = x + [param(n, "weight")] + ([param(n, "bias")] if "bias" in n.params else [])
        return helper.make_node(
            "Conv",
            ins,
            out,
            name=n.name,
            kernel_shape=list(a["kernel"]),
            strides=list(a["stride"]),
            dilations=list(a["dilation"]),
            pads=list(a["pads"]),
            group=a["groups"],
        )
    if op == "batch_norm":
        ins = x + [param(n, r) for r in ("gamma", "beta", "mean", "var")]
        return helper.make_node("BatchNormalization", ins, out, name=n.name, epsilon=float(n.attrs.get("eps", 1e-5)))
    if op in ("max_pool", "avg_pool"):
        a = G.pool_attrs(n)
        kw = {
            "kernel_shape": list(a["kernel"]),
            "strides": list(a["stride"]),
            "pads": list(a["pads"]),
            "ceil_mode": int(a["ceil_mode"]),
        }
        if op == "avg_pool":
            return helper.make_node(
                "AveragePool", x, out, name=n.name, count_include_pad=int(a["count_include_pad"]), **kw
            )
        return helper.make_node("MaxPool", x, out, name=n.name, **kw)
    if op == "relu6":
        for key, v in ((_RELU6_MIN, 0.0), (_RELU6_MAX, 6.0)):
            if key not in initializers:
                initializers[key] = numpy_helper.from_array(np.array(v, dtype=np.float32), key)
        return helper.make_node("Clip", x + [_RELU6_MIN, _RELU6_MAX], out, name=n.name)
    if op == "linear":
        ins = x + [param(n, "weight")] + ([param(n, "bias")] if "bias" in n.params else [])
        return helper.make_node("Gemm", ins, out, name=n.name, transB=1)
    if op in ("concat", "flatten", "softmax"):
        onnx_op = {"concat": "Concat", "flatten": "Flatten", "softmax": "Softmax"}[op]
        return helper.make_node(onnx_op, x, out, name=n.name, axis=1)
    simple = {"relu": "Relu", "add": "Add", "global_avg_pool": "GlobalAveragePool", "dropout": "Identity"}
    return helper.make_node(simple[op], x, out, name=n.name)
