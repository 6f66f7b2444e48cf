"""Post-training static quantization of a float model (`velcro quantize`), with onnxruntime's formulas
(docs/int8.md): MinMax calibration ranges in, a quantized graph out.

The float model's plan (batch norms folded, dead branches left out) is quantized node by node, each
op to its `quantized_as` in the op registry: conv2d -> qconv2d and linear -> qlinear (int8 weights,
symmetric, per tensor or per output channel; int32 biases), add -> qadd, concat -> qconcat,
global_avg_pool -> qglobal_avg_pool, max_pool -> qmax_pool, relu/relu6 -> qrelu/qrelu6 (the
activation sites keep their names), flatten and dropout as they are; a quantize node first and a
dequantize node last. As onnxruntime's quantizer does, the producer of an activation site takes the
site's range, so the site's clamp is the producer's saturation and the qrelu changes no value. A
max pool on the float input stays float where onnxruntime's quantizer leaves it so (`float_pools`).
"""

from __future__ import annotations

import numpy as np

from . import quant
from .errors import ModelError, UsageError
from .graph import INPUT, Graph, Node
from .ops import QUANTIZED, REGISTRY

ACTIVATION_TYPES = ("int8", "uint8")


def float_pools(plan) -> tuple[set, set]:
    """(pools, quantized): the max pools that run in float, as onnxruntime's QDQ quantizer leaves
    them, and the tensors its file quantizes. Walking the nodes in the plan's order (the exported
    file's), each op as its `on_float_input` says: a max pool whose input no node before it reads
    or writes as a quantized tensor (the graph input, or a float pool's output) runs in float, its
    output quantized with its own range where a quantized node reads it; where a quantized node
    (later) reads the pool's input too, the file quantizes that input and the pool reads its
    dequantized values. A flatten or dropout (an Identity in the file) on such a float tensor is
    left float by onnxruntime; here it keeps its input's quantization (the same numbers: its range
    is its input's). Refused (ModelError): a max pool after such a flatten or dropout, and a graph
    output that onnxruntime leaves float."""
    quantized, pools, bypassed = set(), set(), set()  # the tensors a quantized node read or wrote so far
    for st in plan.nodes:
        x = st.inputs[0]
        if x in quantized or (x != INPUT and x not in pools and x not in bypassed):
            quantized.update((*st.inputs, st.name))  # a quantized node (a float one would have no float input)
        elif st.opdef.on_float_input == "float":
            pools.add(st.name)
        elif st.opdef.on_float_input == "bypass":
            bypassed.add(st.name)
        else:
            quantized.update((*st.inputs, st.name))
    for st in plan.nodes:
        if st.name in pools and st.inputs[0] in bypassed:
            raise ModelError(
                f"node '{st.name}': a max pool after a {plan.node(st.inputs[0]).op} of the float input, which "
                "onnxruntime's quantizer leaves in float; not quantized here"
            )
    if pools and plan.output not in quantized:
        raise ModelError(
            f"node '{plan.output}': the graph's output, after a max pool of the float input, is left float by "
            "onnxruntime's quantizer (no quantized op on its path)"
        )
    return pools, quantized


def _quantized_inputs(plan, floats) -> list:
    """The float tensors the quantized model quantizes where a quantized node (or the graph output)
    reads them: the input and the outputs of `floats`, in the plan's order."""
    read = {t for st in plan.nodes if st.name not in floats for t in st.inputs} | {plan.output}
    return [t for t in (INPUT, *(st.name for st in plan.nodes if st.name in floats)) if t in read]


def needed_ranges(model) -> list[str]:
    """The tensors of `model`'s plan whose calibration ranges quantization reads: the input, every
    activation site and every output of an op with a range of its own (Op.own_range) that is not a
    site's only input."""
    plan = model.plan
    site_inputs = {st.inputs[0] for st in plan.nodes if st.opdef.site and len(plan.readers[st.inputs[0]]) == 1}
    out = _quantized_inputs(plan, float_pools(plan)[0])
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
        raise ModelError(f"{model.where}the model is quantized already")
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

    nodes, params, rename, q_of, dequantized = [], {}, {}, {}, {}
    floats, ort_quantized = float_pools(plan)
    quantized_inputs = _quantized_inputs(plan, floats)

    def add(base, op, inputs, attrs=None):
        name = _unique(base, {*steps, *(n.name for n in nodes)})
        nodes.append(Node(name, op, inputs, attrs or {}))
        return name

    def quantize(tensor):
        rename[tensor] = add("input_quantized" if tensor == INPUT else f"{tensor}_quantized", "quantize", (tensor,))
        nodes[-1].attrs.update(qparams(tensor))
        q_of[rename[tensor]] = nodes[-1].attrs

    if INPUT in quantized_inputs:
        quantize(INPUT)
    for st in plan.nodes:
        if st.name in floats:  # float; quantized after it where read, with its own range
            x = st.inputs[0]
            if x in ort_quantized:  # onnxruntime's file quantizes the input: its pool reads the dequantized values
                if x not in dequantized:
                    base = "input_dequantized" if x == INPUT else f"{x}_dequantized"
                    dequantized[x] = add(base, "dequantize", (rename[x],))
                x = dequantized[x]
            nodes.append(Node(st.name, st.op, (x,), dict(st.source.attrs)))
            if st.name in quantized_inputs:
                quantize(st.name)
            continue
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
