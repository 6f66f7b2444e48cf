"""Graph IR: frozen nodes in topological order, named tensors, shape inference and BN folding.

Every node produces one tensor named after the node; the graph input is the tensor `input`.
Parameters live in `Graph.params` under "<node>.<role>" (weight, bias, gamma, beta, mean, var).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import ModelError, UnsupportedOpError

INPUT = "input"

# op -> parameter roles (required, optional)
PARAM_ROLES = {
    "conv2d": (("weight",), ("bias",)),
    "batch_norm": (("gamma", "beta", "mean", "var"), ()),
    "linear": (("weight",), ("bias",)),
}
N_INPUTS = {"add": 2}  # every other op but concat takes exactly one input
SUPPORTED_OPS = (
    "add",
    "avg_pool",
    "batch_norm",
    "concat",
    "conv2d",
    "dropout",
    "flatten",
    "global_avg_pool",
    "linear",
    "max_pool",
    "relu",
    "relu6",
    "softmax",
)
ACTIVATIONS = ("relu", "relu6")
# op -> the attributes it understands; any other attribute is refused (a misspelt "strides" would
# otherwise be ignored and the model would quietly compute something else).
ATTRS = {
    "conv2d": ("out_channels", "kernel", "stride", "dilation", "pads", "groups"),
    "batch_norm": ("eps",),
    "max_pool": ("kernel", "stride", "pads", "ceil_mode"),
    "avg_pool": ("kernel", "stride", "pads", "ceil_mode", "count_include_pad"),
    "dropout": ("p",),
}
# Limits that refuse absurd files before anything is allocated. ImageNet VGG-16 needs 1.0e8 elements
# for its largest parameter, 1.4e8 parameters and 1.5e10 MACs per image, well inside all of them.
MAX_ELEMENTS = 1 << 28  # one tensor of one image, one parameter, one conv work buffer (1 GiB of float32)
MAX_TOTAL_ELEMENTS = 1 << 30  # all parameters together, and all tensors of one image together
MAX_MACS = 1 << 40  # per image


@dataclass(frozen=True)
class Node:
    """One op. `attrs` holds JSON values; `params` names its parameters by role."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "attrs": self.attrs,
            "params": self.params,
        }


@dataclass(frozen=True)
class Graph:
    """A CNN: nodes in topological order, the input shape (C, H, W), float32 parameters."""

    nodes: tuple[Node, ...]
    input_shape: tuple[int, ...]
    output: str
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        """Tensor name -> names of the nodes that read it."""
        out: dict[str, list[str]] = {INPUT: []}
        for n in self.nodes:
            out.setdefault(n.name, [])
            for t in n.inputs:
                out.setdefault(t, []).append(n.name)
        return out

    def structure_json(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "output": self.output,
            "nodes": [n.to_json() for n in self.nodes],
        }

    def fingerprint(self) -> str:
        """sha256 over the graph JSON and every parameter's name, shape and float32 bytes."""
        h = hashlib.sha256()
        h.update(json.dumps(self.structure_json(), sort_keys=True).encode())
        for key in sorted(self.params):
            a = np.ascontiguousarray(self.params[key], dtype=np.float32)
            h.update(key.encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def activation_sites(self) -> list[str]:
        return [n.name for n in self.nodes if n.op in ACTIVATIONS]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(v, what, node, minimum=1):
    if _is_int(v):
        pair = (int(v), int(v))
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) for i in v):
        pair = (int(v[0]), int(v[1]))
    else:
        raise ModelError(f"node '{node}': {what} expects an int or two ints, got {v!r}")
    if not minimum <= min(pair) <= max(pair) <= MAX_ELEMENTS:
        raise ModelError(f"node '{node}': {what} must be in [{minimum}, {MAX_ELEMENTS}], got {v!r}")
    return pair


def _pads(v, node):
    """Padding as (top, left, bottom, right); an int or (h, w) pair is symmetric."""
    pads = None
    if _is_int(v):
        pads = (int(v),) * 4
    elif isinstance(v, (list, tuple)) and all(_is_int(i) for i in v):
        if len(v) == 2:
            pads = (int(v[0]), int(v[1]), int(v[0]), int(v[1]))
        elif len(v) == 4:
            pads = tuple(int(i) for i in v)
    if pads is None:
        raise ModelError(f"node '{node}': pads expects an int, (h, w) or (top, left, bottom, right), got {v!r}")
    if not 0 <= min(pads) <= max(pads) <= MAX_ELEMENTS:
        raise ModelError(f"node '{node}': pads must be in [0, {MAX_ELEMENTS}], got {v!r}")
    return pads


def conv_attrs(node: Node) -> dict:
    """Normalised conv2d attributes: kernel, stride, dilation as pairs; pads as 4-tuple; groups."""
    a = node.attrs
    out = {
        "kernel": _pair(a.get("kernel"), "kernel", node.name),
        "stride": _pair(a.get("stride", 1), "stride", node.name),
        "dilation": _pair(a.get("dilation", 1), "dilation", node.name),
        "pads": _pads(a.get("pads", 0), node.name),
        "groups": a.get("groups", 1),
        "out_channels": a.get("out_channels"),
    }
    for key in ("groups", "out_channels"):
        if not _is_int(out[key]) or not 1 <= out[key] <= MAX_ELEMENTS:
            raise ModelError(f"node '{node.name}': {key} must be an integer in [1, {MAX_ELEMENTS}], got {out[key]!r}")
    return out


def pool_attrs(node: Node) -> dict:
    a = node.attrs
    kernel = _pair(a.get("kernel"), "kernel", node.name)
    for key in ("ceil_mode", "count_include_pad"):
        if not isinstance(a.get(key, False), (bool, np.bool_)):
            raise ModelError(f"node '{node.name}': {key} expects true or false, got {a[key]!r}")
    return {
        "kernel": kernel,
        "stride": _pair(a.get("stride", list(kernel)), "stride", node.name),
        "pads": _pads(a.get("pads", 0), node.name),
        "ceil_mode": bool(a.get("ceil_mode", False)),
        "count_include_pad": bool(a.get("count_include_pad", False)),
    }


def pool_out_size(size, k, s, pad_lo, pad_hi, ceil_mode, dilation=1):
    """Output length of a window op, with PyTorch's rule that the last window starts inside the input."""
    span = dilation * (k - 1) + 1
    num = size + pad_lo + pad_hi - span
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad_lo:
        out -= 1
    return out


def _n_elements(shape) -> float:
    return float(np.prod([float(d) for d in shape]))


def _check_positive(shape, node):
    if not all(_is_int(d) for d in shape):
        raise ModelError(f"node '{node}': shape {tuple(shape)} must hold integers")
    if any(d < 1 for d in shape):
        raise ModelError(f"node '{node}': output shape {tuple(shape)} has a non-positive dimension")
    if _n_elements(shape) > MAX_ELEMENTS:
        raise ModelError(f"node '{node}': output shape {tuple(shape)} exceeds {MAX_ELEMENTS} elements per image")


def find_cycle(graph: Graph) -> list[str] | None:
    """Node names along one cycle of the graph (first name repeated at the end), or None if acyclic.

    Edges run from the producer of each input tensor to its reader, whatever the node order.
    """
    by_name = {n.name: n for n in graph.nodes}
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for root in by_name:
        if root in state:
            continue
        path, stack = [root], [iter(by_name[root].inputs)]
        state[root] = 1
        while stack:
            t = next(stack[-1], None)
            if t is None:
                state[path.pop()] = 2
                stack.pop()
            elif t in by_name and state.get(t) == 1:
                cycle = path[path.index(t) :]
                return [*reversed(cycle), cycle[-1]]
            elif t in by_name and t not in state:
                state[t] = 1
                path.append(t)
                stack.append(iter(by_name[t].inputs))
    return None


def _unproduced(graph: Graph, node: Node, tensor: str) -> str:
    """Why `node` cannot read `tensor` at its place in the node order."""
    if not any(n.name == tensor for n in graph.nodes):
        return f"node '{node.name}': reads tensor '{tensor}', which no node produces (the graph input is '{INPUT}')"
    cycle = find_cycle(graph)
    if cycle is not None:
        return f"graph is cyclic: {' -> '.join(cycle)} (each node reads the one before it)"
    return (
        f"node '{node.name}': reads tensor '{tensor}' before it is produced "
        "(nodes must be in topological order, each after the nodes it reads)"
    )


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per-image shape of every tensor ((C, H, W) or (F,)); checks parameter shapes on the way.

    Raises ModelError naming the node for anything inconsistent, a cycle, or a tensor read before
    it is produced.
    """
    if not isinstance(graph.input_shape, (tuple, list)) or not graph.input_shape:
        raise ModelError(f"input shape expects a non-empty list of ints, found {graph.input_shape!r}")
    _check_positive(graph.input_shape, INPUT)
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(int(d) for d in graph.input_shape)}
    for n in graph.nodes:
        for t in n.inputs:
            if t not in shapes:
                raise ModelError(_unproduced(graph, n, t))
        ins = [shapes[t] for t in n.inputs]
        shapes[n.name] = _infer_node(graph, n, ins)
        _check_positive(shapes[n.name], n.name)
    if graph.output not in shapes:
        raise ModelError(f"graph output '{graph.output}' is not produced by any node")
    return shapes


def _param_shape(graph, n, role):
    key = n.params.get(role)
    if key is None:
        return None
    if key not in graph.params:
        raise ModelError(f"node '{n.name}': parameter '{key}' ({role}) is missing")
    shape = getattr(graph.params[key], "shape", None)
    if shape is None:
        raise ModelError(f"parameter '{key}': expects an array, found {type(graph.params[key]).__name__}")
    return tuple(shape)


def _expect_param(graph, n, role, expected):
    found = _param_shape(graph, n, role)
    if found is not None and found != tuple(expected):
        raise ModelError(f"node '{n.name}': {role} expects shape {tuple(expected)}, found {found}")


def _need_rank(n, ins, rank):
    if len(ins[0]) != rank:
        raise ModelError(f"node '{n.name}': {n.op} expects a rank-{rank} input per image, found shape {ins[0]}")


def _infer_node(graph, n, ins):
    op = n.op
    if op in ("conv2d", "max_pool", "avg_pool", "global_avg_pool", "batch_norm"):
        _need_rank(n, ins, 3)
    if op == "conv2d":
        a = conv_attrs(n)
        c, h, w = ins[0]
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), g = (
            a["kernel"],
            a["stride"],
            a["dilation"],
            a["pads"],
            a["groups"],
        )
        k = a["out_channels"]
        if c % g or k % g:
            raise ModelError(f"node '{n.name}': groups={g} must divide input channels {c} and out_channels {k}")
        w_shape = _param_shape(graph, n, "weight")
        if w_shape is None:
            raise ModelError(f"node '{n.name}': conv2d needs a weight parameter")
        if w_shape[1:2] != (c // g,) and len(w_shape) == 4:
            raise ModelError(f"node '{n.name}': weight expects {w_shape[1] * g} input channels, input has {c}")
        _expect_param(graph, n, "weight", (k, c // g, kh, kw))
        _expect_param(graph, n, "bias", (k,))
        oh = pool_out_size(h, kh, sh, pt, pb, False, dh)
        ow = pool_out_size(w, kw, sw, pl, pr, False, dw)
        # the engine's im2col buffer holds one group of one image
        if oh > 0 and ow > 0 and _n_elements((c // g, kh, kw, oh, ow)) > MAX_ELEMENTS:
            raise ModelError(
                f"node '{n.name}': its work buffer (C/groups x kh x kw x OH x OW = {c // g} x {kh} x {kw} x "
                f"{oh} x {ow}) exceeds {MAX_ELEMENTS} elements per image"
            )
        return (k, oh, ow)
    if op in ("max_pool", "avg_pool"):
        a = pool_attrs(n)
        c, h, w = ins[0]
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
        if max(pt, pb) * 2 > kh or max(pl, pr) * 2 > kw:
            raise ModelError(f"node '{n.name}': pads {a['pads']} exceed half the kernel {a['kernel']}")
        oh = pool_out_size(h, kh, sh, pt, pb, a["ceil_mode"])
        ow = pool_out_size(w, kw, sw, pl, pr, a["ceil_mode"])
        return (c, oh, ow)
    if op == "global_avg_pool":
        return (ins[0][0], 1, 1)
    if op == "batch_norm":
        for role in ("gamma", "beta", "mean", "var"):
            if _param_shape(graph, n, role) is None:
                raise ModelError(f"node '{n.name}': batch_norm needs a {role} parameter")
            _expect_param(graph, n, role, (ins[0][0],))
        return ins[0]
    if op in ("relu", "relu6", "dropout", "softmax"):
        return ins[0]
    if op == "add":
        if ins[0] != ins[1]:
            raise ModelError(f"node '{n.name}': add expects equal shapes, found {ins[0]} and {ins[1]}")
        return ins[0]
    if op == "concat":
        if any(len(s) != 3 or s[1:] != ins[0][1:] for s in ins):
            raise ModelError(f"node '{n.name}': concat expects (C, H, W) inputs of equal H, W, found {ins}")
        return (sum(s[0] for s in ins), *ins[0][1:])
    if op == "flatten":
        return (int(np.prod(ins[0])),)
    if op == "linear":
        if len(ins[0]) != 1:
            raise ModelError(f"node '{n.name}': linear expects a flat input, found shape {ins[0]}")
        w_shape = _param_shape(graph, n, "weight")
        if w_shape is None or len(w_shape) != 2:
            raise ModelError(f"node '{n.name}': linear needs a 2-D weight, found {w_shape}")
        if w_shape[1] != ins[0][0]:
            raise ModelError(f"node '{n.name}': weight expects {w_shape[1]} input features, input has {ins[0][0]}")
        _expect_param(graph, n, "bias", (w_shape[0],))
        return (w_shape[0],)
    raise UnsupportedOpError(f"unsupported op '{op}' (node '{n.name}'); supported: {', '.join(SUPPORTED_OPS)}")


def _check_node_fields(n) -> None:
    """Types of a node's fields, for graphs built in memory as well as read from JSON."""
    if not isinstance(n, Node):
        raise ModelError(f"graph nodes must be Node objects, found {type(n).__name__}")
    if not isinstance(n.name, str) or not n.name:
        raise ModelError(f"node name must be a non-empty string, found {n.name!r}")
    if not isinstance(n.op, str):
        raise ModelError(f"node '{n.name}': op must be a string, found {n.op!r}")
    if not isinstance(n.inputs, (tuple, list)) or not all(isinstance(t, str) for t in n.inputs):
        raise ModelError(f"node '{n.name}': inputs must be tensor names, found {n.inputs!r}")
    if not isinstance(n.attrs, dict):
        raise ModelError(f"node '{n.name}': attrs must be a mapping, found {type(n.attrs).__name__}")
    if not isinstance(n.params, dict) or not all(isinstance(k, str) for k in n.params.values()):
        raise ModelError(f"node '{n.name}': params must map roles to parameter names, found {n.params!r}")


def _finite_number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _check_attrs(n) -> None:
    """Refuse attributes the op does not understand and check the values of eps and p."""
    known = ATTRS.get(n.op, ())
    unknown = sorted(set(n.attrs) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise ModelError(f"node '{n.name}': unknown attribute(s) {', '.join(unknown)} for {n.op}; valid: {valid}")
    for key, lo, hi in (("eps", 0.0, math.inf), ("p", 0.0, 1.0)):
        if key in n.attrs:
            v = _finite_number(n.attrs[key])
            if v is None or not lo <= v <= hi:
                raise ModelError(f"node '{n.name}': {key} expects a number in [{lo}, {hi}], got {n.attrs[key]!r}")


def _check_totals(graph: Graph, shapes) -> None:
    n_act = sum(_n_elements(s) for s in shapes.values())
    if n_act > MAX_TOTAL_ELEMENTS:
        raise ModelError(f"the tensors of one image hold {n_act:.3g} elements, more than {MAX_TOTAL_ELEMENTS}")
    n_macs = sum(float(node_macs(n, shapes[n.inputs[0]], shapes[n.name])) for n in graph.nodes)
    if n_macs > MAX_MACS:
        raise ModelError(f"the model needs {n_macs:.3g} MACs per image, more than {MAX_MACS}")
    n_params = 0.0
    for key, a in graph.params.items():
        size = _n_elements(a.shape)
        if size > MAX_ELEMENTS:
            raise ModelError(f"parameter '{key}': shape {tuple(a.shape)} exceeds {MAX_ELEMENTS} elements")
        n_params += size
    if n_params > MAX_TOTAL_ELEMENTS:
        raise ModelError(f"the parameters hold {n_params:.3g} elements, more than {MAX_TOTAL_ELEMENTS}")


def validate(graph: Graph, allow_nonfinite: bool = False, check_values: bool = True) -> dict[str, tuple[int, ...]]:
    """Check names, ops, arity, attributes, parameters, shapes and sizes; return the inferred shapes.

    With check_values=False the parameters may be anything with .shape and .dtype (h5py
    datasets), so a file's structure is validated before any of its values is read. Sizes are
    checked against MAX_ELEMENTS, MAX_TOTAL_ELEMENTS and MAX_MACS, so an absurd model is refused
    before anything is allocated. Values: NaN/Inf parameters, and batch_norm variances with
    var + eps <= 0, are refused unless allow_nonfinite.
    Raises ModelError (UnsupportedOpError for ops the engine does not implement).
    """
    if not isinstance(graph.nodes, (tuple, list)) or not isinstance(graph.params, dict):
        raise ModelError("graph expects a sequence of nodes and a dict of parameters")
    if not isinstance(graph.output, str):
        raise ModelError(f"graph output must name a tensor, found {graph.output!r}")
    for n in graph.nodes:
        _check_node_fields(n)
    unsupported = [n for n in graph.nodes if n.op not in SUPPORTED_OPS]
    if unsupported:
        listed = ", ".join(f"'{n.op}' (node '{n.name}')" for n in unsupported)
        raise UnsupportedOpError(f"unsupported op {listed}; supported: {', '.join(SUPPORTED_OPS)}")
    seen = set()
    for n in graph.nodes:
        if n.name == INPUT:
            raise ModelError(f"node '{n.name}': the name '{INPUT}' is reserved for the graph input")
        if n.name in seen:
            raise ModelError(f"node '{n.name}': name used by two nodes")
        seen.add(n.name)
        want = N_INPUTS.get(n.op, 1)
        if n.op == "concat" and len(n.inputs) < 1 or n.op != "concat" and len(n.inputs) != want:
            raise ModelError(f"node '{n.name}': {n.op} expects {want} input(s), found {len(n.inputs)}")
        required, optional = PARAM_ROLES.get(n.op, ((), ()))
        extra = set(n.params) - set(required) - set(optional)
        if extra:
            raise ModelError(f"node '{n.name}': unknown parameter roles {sorted(extra)} for {n.op}")
        _check_attrs(n)
    for key, a in graph.params.items():
        if getattr(a, "shape", None) is None or not hasattr(a, "dtype"):
            raise ModelError(f"parameter '{key}': expects an array, found {type(a).__name__}")
    shapes = infer_shapes(graph)
    _check_totals(graph, shapes)
    for key, a in graph.params.items():
        if a.dtype != np.float32:
            raise ModelError(f"parameter '{key}': expects float32, found {a.dtype}")
        if check_values and not allow_nonfinite and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise ModelError(
                f"parameter '{key}': {bad} NaN or Inf value(s) of {a.size} (use --allow-nonfinite to accept)"
            )
    if check_values and not allow_nonfinite:
        for n in graph.nodes:
            if n.op == "batch_norm":
                var = np.asarray(graph.params[n.params["var"]], dtype=np.float64)
                eps = float(n.attrs.get("eps", 1e-5))
                if not np.all(var + eps > 0):
                    raise ModelError(
                        f"node '{n.name}': batch_norm needs var + eps > 0, found var {var.min():g} with eps {eps:g} "
                        "(use --allow-nonfinite to accept)"
                    )
    return shapes


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold every batch_norm that directly follows a conv2d read by nothing else into that conv.

    The folded conv keeps the conv's name and the batch_norm's readers read the conv instead;
    activation sites are unchanged. Arithmetic in float64, stored float32.
    """
    consumers = graph.consumers()
    by_name = {n.name: n for n in graph.nodes}
    params = dict(graph.params)
    rename: dict[str, str] = {}
    folded: dict[str, Node] = {}
    dropped: set[str] = set()
    for n in graph.nodes:
        if n.op != "batch_norm":
            continue
        src = by_name.get(n.inputs[0])
        if src is None or src.op != "conv2d" or len(consumers[src.name]) != 1:
            continue
        gamma, beta, mean, var = (params[n.params[r]].astype(np.float64) for r in ("gamma", "beta", "mean", "var"))
        scale = gamma / np.sqrt(var + float(n.attrs.get("eps", 1e-5)))
        w = params[src.params["weight"]].astype(np.float64)
        b = params[src.params["bias"]].astype(np.float64) if "bias" in src.params else np.zeros(len(scale))
        wkey, bkey = f"{n.name}.folded_weight", f"{n.name}.folded_bias"
        params[wkey] = (w * scale[:, None, None, None]).astype(np.float32)
        params[bkey] = ((b - mean) * scale + beta).astype(np.float32)
        folded[src.name] = replace(src, params={"weight": wkey, "bias": bkey})
        dropped.add(n.name)
        rename[n.name] = src.name
    nodes = []
    for n in graph.nodes:
        if n.name in dropped:
            continue
        n = folded.get(n.name, n)
        nodes.append(replace(n, inputs=tuple(rename.get(t, t) for t in n.inputs)))
    used = {k for n in nodes for k in n.params.values()}
    kept = {k: v for k, v in params.items() if k in used}
    return replace(graph, nodes=tuple(nodes), output=rename.get(graph.output, graph.output), params=kept)


def node_macs(node: Node, in_shape, out_shape) -> int:
    """MACs per image of one node by DESIGN.md's formula (conv and linear only; others are 0)."""
    if node.op == "conv2d":
        a = conv_attrs(node)
        per_element = (in_shape[0] // a["groups"]) * a["kernel"][0] * a["kernel"][1]
        return per_element * int(np.prod(out_shape))
    if node.op == "linear":
        return in_shape[0] * out_shape[0]
    return 0
