"""Graph IR: frozen nodes in topological order, named tensors, validation and shape inference.

Every node produces one tensor named after the node; the graph input is the tensor `input`.
Parameters live in `Graph.params` under keys the nodes name by role (weight, bias, gamma, beta,
mean, var). What each op means comes from the op registry (velcro_ref/ops); the graph is what a
file holds, and what runs is the plan made from it (velcro_ref/plan.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .errors import ModelError, UnsupportedOpError
from .jsonout import numpy_scalar
from .ops.base import MAX_ELEMENTS, finite_number, float32_number, is_int, n_elements
from .ops.batch_norm import var_eps

INPUT = "input"

# Limits that refuse absurd files before anything is allocated (see ops/base.py for MAX_ELEMENTS).
MAX_TOTAL_ELEMENTS = 1 << 30  # all parameters together, and all tensors of one image together
MAX_MACS = 1 << 40  # per image
# The reader that the graph output counts as: a tensor the output names is read by the user.
OUTPUT = "<output>"


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


def find_node(nodes, name: str):
    """The node of `nodes` called `name` (anything with a .name); KeyError if there is none."""
    for n in nodes:
        if n.name == name:
            return n
    raise KeyError(name)


@dataclass(frozen=True)
class Graph:
    """A CNN: nodes in topological order, the input shape (C, H, W), float32 parameters."""

    nodes: tuple[Node, ...]
    input_shape: tuple[int, ...]
    output: str
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        return find_node(self.nodes, name)

    def readers(self) -> dict[str, list[str]]:
        """Tensor name -> names of the nodes that read it, and OUTPUT for the graph output: a
        rewrite that drops or changes a tensor must find every reader here, the user included."""
        out: dict[str, list[str]] = {INPUT: []}
        for n in self.nodes:
            out.setdefault(n.name, [])
            for t in n.inputs:
                out.setdefault(t, []).append(n.name)
        out.setdefault(self.output, []).append(OUTPUT)
        return out

    def structure_json(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "output": self.output,
            "nodes": [n.to_json() for n in self.nodes],
        }

    def fingerprint(self) -> str:
        """sha256 over the graph JSON and every parameter's name, shape and bytes (float32 ones as
        float32, the integer ones of quantized models with their dtype's name before the bytes)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.structure_json(), sort_keys=True, default=numpy_scalar).encode())
        for key in sorted(self.params):
            a = np.asarray(self.params[key])
            integer = np.issubdtype(a.dtype, np.integer)
            a = np.ascontiguousarray(a) if integer else np.ascontiguousarray(a, dtype=np.float32)
            h.update(key.encode())
            h.update(str(a.shape).encode())
            if integer:
                h.update(a.dtype.str.encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def activation_sites(self) -> list[str]:
        return [n.name for n in self.nodes if n.op in ops.ACTIVATIONS]


def _check_positive(shape, node):
    if not all(is_int(d) for d in shape):
        raise ModelError(f"node '{node}': shape {tuple(shape)} must hold integers")
    if any(d < 1 for d in shape):
        raise ModelError(f"node '{node}': output shape {tuple(shape)} has a non-positive dimension")
    if n_elements(shape) > MAX_ELEMENTS:
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
        op = ops.get(n.op, n.name)
        shapes[n.name] = tuple(op.infer(n, op.check(n), ins, lambda role, n=n: _param_shape(graph, n, role)))
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


def _check_attrs(n) -> None:
    """Refuse attributes the op does not understand and check the plain numbers among them."""
    op = ops.get(n.op, n.name)
    unknown = sorted(set(n.attrs) - set(op.attrs))
    if unknown:
        valid = ", ".join(op.attrs) if op.attrs else "none"
        raise ModelError(f"node '{n.name}': unknown attribute(s) {', '.join(unknown)} for {n.op}; valid: {valid}")
    for key, (lo, hi) in op.ranges.items():
        if key in n.attrs:
            v = finite_number(n.attrs[key])
            if v is None or not lo <= v <= hi:
                raise ModelError(f"node '{n.name}': {key} expects a number in [{lo}, {hi}], got {n.attrs[key]!r}")


def _check_totals(graph: Graph, shapes) -> None:
    n_act = sum(n_elements(s) for s in shapes.values())
    if n_act > MAX_TOTAL_ELEMENTS:
        raise ModelError(f"the tensors of one image hold {n_act:.3g} elements, more than {MAX_TOTAL_ELEMENTS}")
    n_macs = sum(float(node_macs(n, [shapes[t] for t in n.inputs], shapes[n.name])) for n in graph.nodes)
    if n_macs > MAX_MACS:
        raise ModelError(f"the model needs {n_macs:.3g} MACs per image, more than {MAX_MACS}")
    n_params = 0.0
    for key, a in graph.params.items():
        size = n_elements(a.shape)
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
    unsupported = [n for n in graph.nodes if n.op not in ops.REGISTRY]
    if unsupported:
        listed = ", ".join(f"'{n.op}' (node '{n.name}')" for n in unsupported)
        raise UnsupportedOpError(f"unsupported op {listed}; supported: {', '.join(ops.SUPPORTED_OPS)}")
    seen = set()
    for n in graph.nodes:
        if n.name == INPUT:
            raise ModelError(f"node '{n.name}': the name '{INPUT}' is reserved for the graph input")
        if n.name in seen:
            raise ModelError(f"node '{n.name}': name used by two nodes")
        seen.add(n.name)
        op = ops.get(n.op, n.name)
        want = 1 if op.n_inputs is None else op.n_inputs
        if op.n_inputs is None and len(n.inputs) < 1 or op.n_inputs is not None and len(n.inputs) != want:
            raise ModelError(f"node '{n.name}': {n.op} expects {want} input(s), found {len(n.inputs)}")
        required, optional = op.params
        extra = set(n.params) - set(required) - set(optional)
        if extra:
            raise ModelError(f"node '{n.name}': unknown parameter roles {sorted(extra)} for {n.op}")
        _check_attrs(n)
    for key, a in graph.params.items():
        if getattr(a, "shape", None) is None or not hasattr(a, "dtype"):
            raise ModelError(f"parameter '{key}': expects an array, found {type(a).__name__}")
    shapes = infer_shapes(graph)
    _check_totals(graph, shapes)
    _check_preprocessing(graph)
    quantization(graph)
    dtypes = param_dtypes(graph)
    for key, a in graph.params.items():
        want = dtypes.get(key, np.dtype(np.float32))
        if a.dtype != want:
            raise ModelError(f"parameter '{key}': expects {want}, found {a.dtype}")
        if want == np.float32 and check_values and not allow_nonfinite and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise ModelError(
                f"parameter '{key}': {bad} NaN or Inf value(s) of {a.size} (use --allow-nonfinite to accept)"
            )
    if check_values and not allow_nonfinite:
        for n in graph.nodes:
            if n.op == "batch_norm":
                var = graph.params[n.params["var"]]
                eps = ops.get(n.op).check(n)["eps"]
                if not np.all(var_eps(var, eps) > 0):
                    raise ModelError(
                        f"node '{n.name}': batch_norm needs var + eps > 0 (eps as float32), found var "
                        f"{np.min(var):.9g} with eps {eps:g} ({float(np.float32(eps)):.9g} as float32) "
                        "(use --allow-nonfinite to accept)"
                    )
    return shapes


FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # float32's smallest normal number


def check_preprocessing(pre, n, error=ModelError, where="meta 'preprocessing'") -> None:
    """A `preprocessing` of n input channels: exactly the keys scale, mean and std; scale and each
    std positive, mean and std lists of n numbers, each a finite float32 (the loaders feed (x * scale
    - mean) / std in float32, docs/formats.md). `error` (its message prefixed by `where`) else."""
    if not isinstance(pre, dict) or set(pre) != {"scale", "mean", "std"}:
        found = sorted(pre) if isinstance(pre, dict) else type(pre).__name__
        raise error(f"{where} expects exactly the keys mean, scale, std; found {found}")
    scale = float32_number(pre["scale"])
    if scale is None or not scale > 0:
        raise error(f"{where}: scale expects a positive number (finite in float32), found {pre['scale']!r}")
    for key, positive in (("mean", False), ("std", True)):
        v = pre[key]
        kept = [float32_number(x) for x in v] if isinstance(v, list) and len(v) == n else [None]
        if None in kept or positive and not all(x >= FLOAT32_TINY for x in kept):  # a subnormal std overflows
            what = f"a list of {n} {'positive normal ' if positive else ''}number(s), one per input channel"
            raise error(f"{where}: {key} expects {what} (finite in float32), found {v!r}")


def _check_preprocessing(graph: Graph) -> None:
    """meta's `preprocessing`, where given (`check_preprocessing`): one number per input channel,
    the input's first axis (one for an input of rank 1)."""
    pre = graph.meta.get("preprocessing") if isinstance(graph.meta, dict) else None
    if pre is not None:
        shape = tuple(graph.input_shape)
        check_preprocessing(pre, shape[0] if len(shape) >= 2 else 1)


def param_dtypes(graph: Graph) -> dict:
    """Parameter key -> the dtype its roles declare (ops' param_dtypes; float32 otherwise). A key
    that two roles declare with different dtypes is a ModelError."""
    out: dict = {}
    for n in graph.nodes:
        declared = ops.get(n.op, n.name).param_dtypes
        for role, key in n.params.items():
            want = np.dtype(declared.get(role, np.float32))
            if out.setdefault(key, want) != want:
                raise ModelError(f"parameter '{key}': used as {out[key]} and as {want} ({n.name} {role})")
    return out


def quantization(graph: Graph) -> dict:
    """Tensor -> its QParams (quantized) or None (float32), from the ops' rules (Op.out_q); the
    graph input is float32. Raises ModelError for an op given tensors of the wrong kind."""
    q: dict = {INPUT: None}
    for n in graph.nodes:
        op = ops.get(n.op, n.name)
        q[n.name] = op.out_q(n, op.check(n), tuple(q[t] for t in n.inputs))
    return q


def node_macs(node: Node, ins, out_shape) -> int:
    """MACs per image of one node (docs/design.md): its output elements times the op's MACs per
    element; 0 for ops that do none. `ins` are the shapes of its inputs."""
    op = ops.get(node.op, node.name)
    return op.macs_per_element(op.check(node), ins, out_shape) * int(np.prod(out_shape))
