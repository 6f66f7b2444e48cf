"""The load path's second half: a validated graph in, an executable plan out.

What a run needs is worked out here once, from the graph as stored, and kept on the plan: the nodes
on the path to the output in order, batch norms folded into the conv2d before them, each node's
arrays as executed and its prepared arguments, the readers of every tensor and the producer chain
of every activation site (docs/design.md). Rules that keep a rewrite from changing a live value:

- A rewrite that drops or changes a tensor counts every reader, the graph output included
  (`Graph.readers`): a batch norm folds into its conv only when it is the conv's only reader,
  and a producer chain passes a tensor only when its site's path is that tensor's only reader.
- Nodes not on the path to the output (a dead branch) are not run and change nothing; the plan
  lists them in `dead`.
- Derived arrays (folded weights and biases) live on the plan node, never under a parameter key,
  so no key a file can hold is ever shadowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops
from .graph import INPUT, OUTPUT, Graph, Node, find_node, quantization
from .ops.base import Prepared, to_float32
from .ops.batch_norm import scale_of


@dataclass(frozen=True, eq=False)
class PlanNode:
    """One node as it runs: its op definition, checked attributes, arrays by role (float32, as
    executed: a folded conv holds the folded weights), input and output shapes per image, the
    arguments its op prepared, the stored node it runs (`source`), and the quantization of its
    inputs and output (None for float32). A conv2d with a batch norm folded in keeps the conv's
    name."""

    name: str
    op: str
    opdef: ops.Op
    inputs: tuple
    attrs: dict
    arrays: dict
    in_shapes: tuple
    out_shape: tuple
    args: object
    source: Node
    in_q: tuple = ()
    q: object = None  # QParams of the output, None for float32

    @property
    def dtype(self):
        """The output's dtype: float32, or int8/uint8 for a quantized tensor."""
        return np.dtype(np.float32) if self.q is None else self.q.np_dtype

    @property
    def macs(self) -> int:
        """Dense MACs per image (docs/design.md)."""
        return self.opdef.macs_per_element(self.attrs, self.in_shapes, self.out_shape) * int(np.prod(self.out_shape))


@dataclass(frozen=True, eq=False)
class Plan:
    """nodes in execution order; output the tensor the run returns; shapes per image of every
    tensor it computes; readers of each tensor (node names and graph.OUTPUT); chains: activation
    site -> conv2d/linear nodes its masked elements skip; sites: site -> element shape; folded:
    batch norm -> the conv it was folded into; dead: stored nodes not on the path to the output;
    fusions: conv2d -> the Fusion a run without observer may make of it and the nodes after it."""

    nodes: tuple
    output: str
    shapes: dict
    readers: dict
    chains: dict
    sites: dict
    folded: dict
    dead: tuple
    fusions: dict = field(default_factory=dict)

    def node(self, name: str) -> PlanNode:
        return find_node(self.nodes, name)

    def overwritable(self, tensor: str, node: str) -> bool:
        """node may write its output over tensor: a tensor the run computes (not its input), read
        by node alone (not the graph output either)."""
        return tensor != INPUT and self.readers.get(tensor) == [node]


def live_nodes(graph: Graph) -> set[str]:
    """Names of the nodes the graph output depends on."""
    by_name = {n.name: n for n in graph.nodes}
    live, todo = set(), [graph.output]
    while todo:
        n = by_name.get(todo.pop())
        if n is not None and n.name not in live:
            live.add(n.name)
            todo.extend(n.inputs)
    return live


def _fold(bn: Node, conv: Node, graph: Graph) -> dict | None:
    """The folded conv's weight and bias: float64 arithmetic, stored float32; None where float32 cannot
    hold them (an overflow, or a value below its normal range that is not exact there), so the batch
    norm runs on its own, as the network computes it, rather than on weights that became inf or lost bits."""
    arrays = {r: graph.params[k] for r, k in bn.params.items()}
    scale = scale_of(arrays, ops.get("batch_norm").check(bn)["eps"])
    beta, mean = (arrays[r].astype(np.float64) for r in ("beta", "mean"))
    w = graph.params[conv.params["weight"]].astype(np.float64)
    b = graph.params[conv.params["bias"]].astype(np.float64) if "bias" in conv.params else np.zeros(len(scale))
    with np.errstate(over="ignore", invalid="ignore"):
        folded = {"weight": w * scale[:, None, None, None], "bias": (b - mean) * scale + beta}
    out = {}
    for role, wide in folded.items():
        out[role], lost = to_float32(wide)
        if lost.any():
            return None
    return out


def producer_chains(nodes, readers) -> dict[str, tuple[str, ...]]:
    """Activation site -> the nodes on its one-to-one producer chain whose MACs a masked element
    skips (op.chain == "skip"), walking back through ops with chain == "through" and stopping at
    any tensor that has another reader (the graph output counts as one) and at any other op."""
    by_name = {n.name: n for n in nodes}

    def walk(t, chain):
        n = by_name.get(t)
        if n is None or len(readers.get(t, ())) != 1:
            return
        kind = n.opdef.chain_of(n)
        if kind == "skip":
            chain.append(n.name)
        elif kind == "through":
            for i in n.inputs:
                walk(i, chain)

    chains = {}
    for n in nodes:
        if n.opdef.site:
            chain: list[str] = []
            walk(n.inputs[0], chain)
            chains[n.name] = tuple(chain)
    return chains


@dataclass(frozen=True)
class Fusion:
    """A float conv2d run with the nodes after it in its epilogue (kernels.conv.dispatch.Epilogue):
    `add` (the add reading the conv, or None) with `residual` its other input, then `act` (a relu
    or relu6 reading the add or the conv, or None; `act_op` its op name, "relu_max" for a relu
    with attribute max). The
    conv writes `output` (the last of them) directly; `absorbed` are the nodes it computes, the
    conv's own output and the add's never written. Made only where nothing else reads the
    tensors it leaves out (docs/design.md, *The load path*)."""

    conv: str
    add: str | None
    residual: str | None
    act: str | None
    act_op: str | None
    output: str
    absorbed: tuple


def fusions(nodes, readers) -> dict[str, Fusion]:
    """conv2d -> Fusion for every float conv2d followed by an add and/or a relu or relu6 that
    can run in its epilogue: each tensor left out (the conv's output, the add's when a relu
    follows) has that one reader and is not the graph output; the residual is computed before
    the conv in the plan's order (of an add of two such convs, the later one takes the add);
    every tensor is float32. The result is the same bits: bias, then residual, then activation,
    as the separate ops compute them (docs/kernels.md, *Order of summation*)."""
    by_name = {n.name: n for n in nodes}
    order = {n.name: i for i, n in enumerate(nodes)}
    order[INPUT] = -1
    acts = ("relu", "relu6")

    def only_reader(t):
        """The node that alone reads tensor t (not the graph output), or None."""
        r = readers.get(t, ())
        return by_name.get(r[0]) if len(r) == 1 and r[0] != OUTPUT else None

    out = {}
    for n in nodes:
        if n.op != "conv2d" or n.q is not None or any(q is not None for q in n.in_q):
            continue
        nxt, add, residual = only_reader(n.name), None, None
        if nxt is not None and nxt.op == "add" and nxt.q is None and list(nxt.inputs).count(n.name) == 1:
            other = nxt.inputs[1] if nxt.inputs[0] == n.name else nxt.inputs[0]
            if order.get(other, len(nodes)) < order[n.name]:
                add, residual = nxt, other
                nxt = only_reader(nxt.name)
        act = nxt if nxt is not None and nxt.op in acts and nxt.q is None else None
        if add is None and act is None:
            continue
        absorbed = tuple(m.name for m in (add, act) if m is not None)
        out[n.name] = Fusion(
            n.name,
            None if add is None else add.name,
            residual,
            None if act is None else act.name,
            None if act is None else "relu_max" if "max" in act.attrs else act.op,
            absorbed[-1],
            absorbed,
        )
    return out


def build_plan(graph: Graph, shapes: dict) -> Plan:
    """The plan of a validated graph (`shapes` from graph.validate)."""
    live = live_nodes(graph)
    dead = tuple(n.name for n in graph.nodes if n.name not in live)
    stored = [n for n in graph.nodes if n.name in live]
    readers = Graph(tuple(stored), graph.input_shape, graph.output).readers()
    by_name = {n.name: n for n in stored}
    folded: dict[str, str] = {}  # batch norm -> conv
    arrays: dict[str, dict] = {n.name: {r: graph.params[k] for r, k in n.params.items()} for n in stored}
    for n in stored:
        src = by_name.get(n.inputs[0])
        if n.op == "batch_norm" and src is not None and src.op == "conv2d" and readers[src.name] == [n.name]:
            conv_arrays = _fold(n, src, graph)
            if conv_arrays is not None:
                folded[n.name] = src.name
                arrays[src.name] = conv_arrays
    rename = dict(folded)
    q = quantization(graph)
    nodes = []
    for n in stored:
        if n.name in folded:
            continue
        op = ops.get(n.op, n.name)
        attrs = op.check(n)
        inputs = tuple(rename.get(t, t) for t in n.inputs)
        ins = tuple(shapes[t] for t in inputs)
        in_q = tuple(q[t] for t in inputs)
        out = shapes[n.name]
        with np.errstate(all="ignore"):  # parameters a model may hold (--allow-nonfinite): inf * 0 is NaN, no warning
            args = op.prepare(attrs, arrays[n.name], ins, out, Prepared(n.name, in_q, q[n.name]))
        nodes.append(PlanNode(n.name, n.op, op, inputs, attrs, arrays[n.name], ins, out, args, n, in_q, q[n.name]))
    output = rename.get(graph.output, graph.output)
    plan_readers: dict[str, list[str]] = {INPUT: []}
    for n in nodes:
        plan_readers.setdefault(n.name, [])
        for t in n.inputs:
            plan_readers.setdefault(t, []).append(n.name)
    plan_readers.setdefault(output, []).append(OUTPUT)
    plan_shapes = {INPUT: shapes[INPUT], **{n.name: n.out_shape for n in nodes}}
    chains = producer_chains(nodes, plan_readers)
    sites = {n.name: n.out_shape for n in nodes if n.opdef.site}
    fused = fusions(nodes, plan_readers)
    return Plan(tuple(nodes), output, plan_shapes, plan_readers, chains, sites, folded, dead, fused)


def executed_graph(plan: Plan, graph: Graph) -> Graph:
    """The plan as a Graph of its own: what runs, batch norms folded into their convs and dead
    branches left out (for exporting the model as it computes, e.g. to quantize it elsewhere).
    Each array is stored under "<node>.<role>"."""
    nodes, params = [], {}
    for n in plan.nodes:
        roles = {}
        for role, a in n.arrays.items():
            roles[role] = f"{n.name}.{role}"
            params[roles[role]] = a
        nodes.append(Node(n.name, n.op, n.inputs, dict(n.source.attrs), roles))
    return Graph(tuple(nodes), graph.input_shape, plan.output, params, dict(graph.meta))
