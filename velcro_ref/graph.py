"""Graph IR: frozen nodes in topological order, named tensors, shape inference and BN folding.

Every node produces one tensor named after the node; the graph input is the tensor `input`.
Parameters live in `Graph.params` under "<node>.<role>" (weight, bias, gamma, beta, mean, var).
"""

from __future__ import annotations

import hashlib
import json
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
MAX_ELEMENTS = 1 << 31  # one tensor of one image; beyond this a file is refused before allocating


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


def _pair(v, what, node):
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ModelError(f"node '{node}': {what} expects an int or two ints, got {v!r}")


def _pads(v, node):
    """Padding as (top, left, bottom, right); an int or (h, w) pair is symmetric."""
    if isinstance(v, int):
        return (v, v, v, v)
    if isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v):
        if len(v) == 2:
            return (v[0], v[1], v[0], v[1])
        if len(v) == 4:
            return tuple(int(i) for i in v)
    raise ModelError(f"node '{node}': pads expects an int, (h, w) or (top, left, bottom, right), got {v!r}")


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
    if not isinstance(out["groups"], int) or out["groups"] < 1:
        raise ModelError(f"node '{node.name}': groups must be a positive integer, got {out['groups']!r}")
    if not isinstance(out["out_channels"], int) or out["out_channels"] < 1:
        raise ModelError(f"node '{node.name}': out_channels must be a positive integer, got {out['out_channels']!r}")
    return out


def pool_attrs(node: Node) -> dict:
    a = node.attrs
    kernel = _pair(a.get("kernel"), "kernel", node.name)
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


def _check_positive(shape, node):
    if any(d < 1 for d in shape):
        raise ModelError(f"node '{node}': output shape {tuple(shape)} has a non-positive dimension")
    if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
        raise ModelError(f"node '{node}': output shape {tuple(shape)} exceeds {MAX_ELEMENTS} elements per image")


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per-image shape of every tensor ((C, H, W) or (F,)); checks parameter shapes on the way.

    Raises ModelError naming the node for anything inconsistent.
    """
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(graph.input_shape)}
    _check_positive(graph.input_shape, INPUT)
    for n in graph.nodes:
        for t in n.inputs:
            if t not in shapes:
                raise ModelError(f"node '{n.name}': reads tensor '{t}' before it is produced")
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
    return tuple(graph.params[key].shape)


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


def validate(graph: Graph, allow_nonfinite: bool = False, check_values: bool = True) -> dict[str, tuple[int, ...]]:
    """Check names, ops, arity, parameters and shapes; return the inferred shapes.

    With check_values=False the parameters may be anything with .shape and .dtype (h5py
    datasets), so a file's structure is validated before any of its values is read.
    """
    seen = {INPUT}
    unsupported = [n for n in graph.nodes if n.op not in SUPPORTED_OPS]
    if unsupported:
        listed = ", ".join(f"'{n.op}' (node '{n.name}')" for n in unsupported)
        raise UnsupportedOpError(f"unsupported op {listed}; supported: {', '.join(SUPPORTED_OPS)}")
    for n in graph.nodes:
        if not n.name or n.name in seen:
            raise ModelError(f"node '{n.name}': name is empty or used twice")
        seen.add(n.name)
        want = N_INPUTS.get(n.op, 1)
        if n.op == "concat" and len(n.inputs) < 1 or n.op != "concat" and len(n.inputs) != want:
            raise ModelError(f"node '{n.name}': {n.op} expects {want} input(s), found {len(n.inputs)}")
        required, optional = PARAM_ROLES.get(n.op, ((), ()))
        extra = set(n.params) - set(required) - set(optional)
        if extra:
            raise ModelError(f"node '{n.name}': unknown parameter roles {sorted(extra)} for {n.op}")
    shapes = infer_shapes(graph)
    for key, a in graph.params.items():
        if a.dtype != np.float32:
            raise ModelError(f"parameter '{key}': expects float32, found {a.dtype}")
        if check_values and not allow_nonfinite and not np.all(np.isfinite(a)):
            raise ModelError(f"parameter '{key}': contains NaN or Inf (use --allow-nonfinite to accept)")
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
