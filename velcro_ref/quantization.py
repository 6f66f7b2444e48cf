"""Post-training static quantization of a float model (`velcro quantize`), with onnxruntime's formulas
(docs/int8.md): MinMax calibration ranges in, a quantized graph out.

The float model's plan (batch norms folded, dead branches left out) is quantized node by node, each
op to its `quantized_as` in the op registry: conv2d -> qconv2d and linear -> qlinear (int8 weights,
symmetric, per tensor or per output channel; int32 biases), add -> qadd, concat -> qconcat,
global_avg_pool -> qglobal_avg_pool, max_pool -> qmax_pool, relu/relu6 -> qrelu/qrelu6 (the
activation sites keep their names), flatten and dropout as they are; a quantize node first and a
dequantize node last. As onnxruntime's quantizer does, the producer of an activation site takes the
site's range, so the site's clamp is the producer's saturation and the qrelu changes no value.
"""

from __future__ import annotations

import numpy as np

from . import quant
from .errors import ModelError, UsageError
from .graph import INPUT, Graph, Node
from .ops import QUANTIZED, REGISTRY

ACTIVATION_TYPES = ("int8", "uint8")


def needed_ranges(model) -> list[str]:
    """The tensors of `model`'s plan whose calibration ranges quantization reads: the input, every
    activation site and every output of an op with a range of its own (Op.own_range) that is not a
    site's only input."""
    plan = model.plan
    site_inputs = {st.inputs[0] for st in plan.nodes if st.opdef.site and len(plan.readers[st.inputs[0]]) == 1}
    out = [INPUT]
    for st in plan.nodes:
        if st.opdef.site or (st.opdef.own_range and st.name not in site_inputs):
            out.append(st.name)
    return out


def quantize_model(model, ranges: dict, per_channel=False, activations="int8", requant="ort", meta=None) -> Graph:
    """The quantized Graph of a float Model.

    ranges: tensor -> (min, max) over the calibration images, for at least `needed_ranges(model)`.
    activations "int8" or "uint8"; requant "ort" or "fixed_point" (the conv and linear layers).
    Raises UsageError for a bad option and ModelError for an op or topology it cannot quantize.
    """
    if activations not in ACTIVATION_TYPES:
        raise UsageError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}")
    if requant not in quant.REQUANT_MODES:
        raise UsageError(f"requant must be one of {', '.join(quant.REQUANT_MODES)}, got {requant!r}")
    plan = model.plan
    if any(st.q is not None for st in plan.nodes):
        raise ModelError(f"{model.path}: the model is quantized already")
    missing = [t for t in needed_ranges(model) if t not in ranges]
    if missing:
        raise ModelError(f"no calibration range for tensor(s) {', '.join(missing[:6])}")
    steps = {st.name: st for st in plan.nodes}
    site_of = {}  # producer -> the site whose range it takes
    for st in plan.nodes:
        if st.opdef.site:
            src = steps.get(st.inputs[0])
            if st.opdef.quantized_as is None:
                sites = [op.name for op in REGISTRY.values() if op.site and op.quantized_as]
                why = f"{st.op} has no quantized form; quantizable sites: {', '.join(sites)}"
                raise ModelError(f"node '{st.name}': {why}")
            if src is None or not src.opdef.own_range or len(plan.readers[src.name]) != 1:
                raise ModelError(
                    f"node '{st.name}': a quantized activation site must be the only reader of a conv2d, linear, "
                    f"add, concat or global_avg_pool output; '{st.inputs[0]}' is not"
                )
            site_of[src.name] = st.name

    def qparams(tensor):
        lo, hi = ranges[site_of.get(tensor, tensor)]
        scale, zp = quant.scale_zero_point(np.float32(lo), np.float32(hi), activations)
        return {"y_scale": float(scale), "y_zero_point": int(zp), "dtype": activations}

    nodes, params = [], {}
    first = _unique("input_quantized", steps)
    nodes.append(Node(first, "quantize", (INPUT,), qparams(INPUT)))
    rename = {INPUT: first}
    q_of = {first: nodes[0].attrs}
    for st in plan.nodes:
        if st.opdef.quantized_as is None:
            known = [op.name for op in REGISTRY.values() if op.quantized_as and op.name not in QUANTIZED]
            raise ModelError(f"node '{st.name}': {st.op} has no quantized form; quantizable: {', '.join(known)}")
        inputs = tuple(rename.get(t, t) for t in st.inputs)
        attrs = {k: v for k, v in st.source.attrs.items()}
        if st.op == "relu":  # a relu's float32 bound: no code reaches it
            attrs.pop("max", None)
        prm = {}
        if st.opdef.own_range:
            attrs.update(qparams(st.name))
        if st.op in ("conv2d", "linear"):
            attrs["requant"] = requant
            x_q = q_of[inputs[0]]
            prm = _weights(st, x_q["y_scale"], per_channel, params)
        q_of[st.name] = attrs if st.opdef.own_range else q_of[inputs[0]]
        if st.opdef.quantized_as in ("qrelu", "qrelu6"):
            _check_clamp_is_saturation(st, q_of[st.name], ranges[st.name])
        nodes.append(Node(st.name, st.opdef.quantized_as, inputs, attrs, prm))
    last = _unique("output", steps)
    nodes.append(Node(last, "dequantize", (plan.output,)))
    info = {"activations": activations, "per_channel": bool(per_channel), "requant": requant}
    new_meta = {**model.meta, **(meta or {}), "quantization": {**info, **(meta or {}).get("quantization", {})}}
    new_meta["quantization"]["float_fingerprint"] = model.fingerprint
    return Graph(tuple(nodes), model.graph.input_shape, last, params, new_meta)


def _check_clamp_is_saturation(st, q, rng) -> None:
    """A relu / relu6 site whose zero point is its type's minimum clamps nothing the producer's
    saturation leaves (onnxruntime's quantizer then drops the activation). Only a degenerate
    range (the activation never above about 3e-36 on the calibration images: scale 1, zero point
    0) breaks that with int8: onnxruntime, having dropped it, lets negative values through, which
    this quantizer's clamp would not. Such a site is refused (ModelError)."""
    qmin = quant.qrange(q["dtype"])[0]
    if q["y_zero_point"] != qmin:
        raise ModelError(
            f"node '{st.name}': calibrated range [{rng[0]:g}, {rng[1]:g}] gives scale {q['y_scale']:g} and zero point "
            f"{q['y_zero_point']}, not {qmin}: the activation never fired on the calibration images, and onnxruntime's "
            "quantizer, which drops it, would let negative values through; calibrate on images where it fires, or "
            "use --activations uint8"
        )


def _weights(st, x_scale, per_channel, params) -> dict:
    """Quantize a conv2d or linear layer's weights and bias as onnxruntime's quantizer does."""
    w, b = st.arrays["weight"], st.arrays.get("bias")
    ws = quant.weight_scale(w, per_channel)
    if b is not None:
        ws = quant.adjust_weight_scale_for_bias(x_scale, ws, b, per_channel)
    keys = {role: f"{st.name}.{role}" for role in ("weight", "w_scale", "bias")}
    params[keys["weight"]] = quant.quantize_weight(w, ws)
    params[keys["w_scale"]] = np.asarray(ws, np.float32).reshape(-1)
    if b is None:
        del keys["bias"]
    else:
        bs = quant.bias_scale(x_scale, ws)
        if np.any(bs == 0):
            raise ModelError(
                f"node '{st.name}': the bias scale x_scale * w_scale is 0 in float32 (x_scale {float(x_scale):g}, "
                f"smallest w_scale {float(np.min(ws)):g}): onnxruntime's bias formula b / (x_scale * w_scale) "
                "divides by zero there"
            )
        params[keys["bias"]] = quant.quantize_bias(b, x_scale, ws).reshape(-1)
    return keys


def _unique(base, taken) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
