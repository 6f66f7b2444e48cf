"""CLI: import-onnx, export-onnx (needs the `onnx` extra; imported only when a command runs)."""

from __future__ import annotations

import sys
from dataclasses import replace

from .cli_util import add_file, command, text


def cmd_import_onnx(args):
    """convert an ONNX CNN to a velcro model

    Convert an ONNX CNN (float32 NCHW, one input, one output) to a velcro model file. Supported ONNX ops: Conv,
    BatchNormalization, Relu, Clip(0, 6), MaxPool, AveragePool, GlobalAveragePool, ReduceMean over H and W, Add,
    Concat (axis 1), Gemm, MatMul (+ Add bias), Flatten and Reshape to (N, -1), Softmax, Dropout and Identity
    (bypassed); shape arithmetic on constants is folded. Quantized models as onnxruntime's quantizer writes
    them, QDQ (QuantizeLinear/DequantizeLinear around those ops) or QOperator (QLinearConv, QLinearMatMul and
    com.microsoft QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool, 8-bit MaxPool), become int8 models
    (docs/int8.md). Every unsupported node is listed in one error. Metadata property 'velcro.meta' or
    'velcro.preprocessing' (JSON) becomes the model's meta. An initializer also listed as a graph input is
    taken as the constant it holds (it cannot be fed).
    """
    from .engine import Model
    from .model_io import save_model
    from .onnx_import import import_onnx

    graph = import_onnx(args.model)
    Model(graph)  # the plan as a run makes it: a model no command could load is not written
    if args.name:
        graph = replace(graph, meta={**graph.meta, "name": args.name})
    fp = save_model(graph, args.output)
    n_sites = len(graph.activation_sites())
    print(
        f"wrote {args.output} ({len(graph.nodes)} nodes, {n_sites} activation sites, "
        f"input {graph.input_shape}, output '{graph.output}', fingerprint {fp[:16]})"
    )
    return 0


def cmd_export_onnx(args):
    """convert a velcro model to ONNX

    Write a velcro model as ONNX (opset 17, or 19 with an average pool; input 'input' with a dynamic batch axis,
    output named after the graph output) that onnxruntime runs. Batch norm stays a BatchNormalization node; an
    int8 model is written in the QDQ format; the model's meta is stored as metadata property 'velcro.meta'.
    """
    from .model_io import load_graph
    from .onnx_export import export_onnx, export_opset

    graph = load_graph(args.model, allow_nonfinite=args.allow_nonfinite)
    export_onnx(graph, args.output)
    shape, opset = ", ".join(map(str, graph.input_shape)), export_opset(graph)
    print(f"wrote {args.output} (ONNX opset {opset}, input 'input' (N, {shape}), output '{graph.output}')")
    fixed = sum(n.attrs.get("requant") == "fixed_point" for n in graph.nodes)
    if fixed:
        print(
            f"note: {fixed} layer(s) requantize in fixed point, which ONNX cannot express: the file requantizes "
            "them with onnxruntime's float32 multiply, so its outputs differ from this model's by a few steps "
            "(docs/int8.md, Export)",
            file=sys.stderr,
        )
    return 0


def register(sub):
    p = command(sub, "import-onnx", cmd_import_onnx)
    add_file(p, "model", help="ONNX file to read")
    add_file(p, "-o", "--output", role="out", required=True, help="velcro model file to write (.h5)")
    p.add_argument("--name", type=text, help="store this name in the model's meta")

    p = command(sub, "export-onnx", cmd_export_onnx)
    add_file(p, "model", help="velcro model file to read (.h5)")
    add_file(p, "-o", "--output", role="out", required=True, help="ONNX file to write")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf parameters")
