"""The only graph walk: dense, instrumented (observer) and masked (VELCRO) inference.

The engine turns node attributes into ints and arrays once, at load time, and calls the op
found in `OPS`; kernels never see a node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from . import graph as G
from .errors import InputError, MaskError
from .kernels.conv import conv2d, conv_geom, plan_skip, prepare_conv, scratch_floats
from .kernels.conv.layouts import aligned_floats
from .kernels.linear import linear
from .kernels.overwrite import clamp_unmasked, put_at
from .kernels.pool import avg_pool, global_avg_pool, max_pool
from .model_io import load_graph
from .threads import run_threads

CHAIN_OPS = ("conv2d", "linear")  # ops whose masked output elements are skipped
# Upper clamp of each activation op (G.ACTIVATIONS), for a masked site's unmasked elements
ACT_MAX = {"relu": np.float32(np.inf), "relu6": np.float32(6.0)}


@dataclass(frozen=True)
class _MaskPlan:
    """A MaskSet as a run uses it: the set, its site names and arrays (to know it again), node
    -> skip (a conv's SkipPlan, a linear's bool mask), masked site -> flat mask, and node ->
    (flat indices, values) its buffer holds for the whole plan: 0 at a chain node's skipped
    outputs, the constants at a site's masked elements."""

    masks: object
    names: tuple
    arrays: list
    skips: dict
    site_masks: dict
    fixed: dict


@dataclass(frozen=True)
class Step:
    """One node ready to run: its op function, input tensor names, static arguments."""

    name: str
    op: str
    inputs: tuple
    args: tuple
    out_shape: tuple


def _conv_step(graph, n, in_shape, out_shape):
    """(ConvWeights, ConvGeom) of a conv node: its filters packed once for the kernels."""
    a = G.conv_attrs(n)
    w = graph.params[n.params["weight"]]
    b = graph.params[n.params["bias"]] if "bias" in n.params else None
    geom = conv_geom(*in_shape, w.shape[0], a["kernel"], a["stride"], a["pads"], a["dilation"], a["groups"])
    return (prepare_conv(w, b, geom), geom)


def _pool_step(graph, n, in_shape, out_shape):
    a = G.pool_attrs(n)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pads"]
    return (kh, kw, sh, sw, pt, pl, pb, pr, a["count_include_pad"])


def _bn_step(graph, n, in_shape, out_shape):
    gamma, beta, mean, var = (graph.params[n.params[r]].astype(np.float64) for r in ("gamma", "beta", "mean", "var"))
    scale = gamma / np.sqrt(var + float(n.attrs.get("eps", 1e-5)))
    shift = beta - mean * scale
    return (scale.astype(np.float32)[:, None, None], shift.astype(np.float32)[:, None, None])


def _linear_step(graph, n, in_shape, out_shape):
    w = np.ascontiguousarray(graph.params[n.params["weight"]])
    b = graph.params[n.params["bias"]] if "bias" in n.params else np.zeros(w.shape[0], np.float32)
    return (w, np.ascontiguousarray(b))


PREPARE = {
    "conv2d": _conv_step,
    "max_pool": _pool_step,
    "avg_pool": _pool_step,
    "batch_norm": _bn_step,
    "linear": _linear_step,
}


def _run_conv(xs, args, skip, out, col):
    weights, geom = args
    return conv2d(xs[0], weights, geom, skip, out, col)


def _run_linear(xs, args, skip, out, col):
    return linear(xs[0], args[0], args[1], skip, out)


def _run_max_pool(xs, args, skip, out, col):
    kh, kw, sh, sw, pt, pl = args[:6]
    max_pool(xs[0], kh, kw, sh, sw, pt, pl, out)
    return 0


def _run_avg_pool(xs, args, skip, out, col):
    avg_pool(xs[0], *args, out)
    return 0


def _run_global_avg_pool(xs, args, skip, out, col):
    global_avg_pool(xs[0], out)
    return 0


def _run_bn(xs, args, skip, out, col):
    np.multiply(xs[0], args[0], out=out)
    out += args[1]
    return 0


def _run_relu(xs, args, skip, out, col):
    np.maximum(xs[0], 0, out=out)
    return 0


def _run_relu6(xs, args, skip, out, col):
    np.maximum(xs[0], 0, out=out)  # two ufuncs: much faster than np.clip
    np.minimum(out, 6, out=out)
    return 0


def _run_add(xs, args, skip, out, col):
    np.add(xs[0], xs[1], out=out)
    return 0


def _run_concat(xs, args, skip, out, col):
    c = 0
    for x in xs:
        out[:, c : c + x.shape[1]] = x
        c += x.shape[1]
    return 0


def _run_copy(xs, args, skip, out, col):
    out[...] = xs[0].reshape(out.shape)
    return 0


def _run_softmax(xs, args, skip, out, col):
    z = xs[0] - xs[0].max(axis=1, keepdims=True)
    np.exp(z, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return 0


OPS = {
    "conv2d": _run_conv,
    "linear": _run_linear,
    "max_pool": _run_max_pool,
    "avg_pool": _run_avg_pool,
    "global_avg_pool": _run_global_avg_pool,
    "batch_norm": _run_bn,
    "relu": _run_relu,
    "relu6": _run_relu6,
    "add": _run_add,
    "concat": _run_concat,
    "flatten": _run_copy,
    "dropout": _run_copy,
    "softmax": _run_softmax,
}


def producer_chains(graph: G.Graph) -> dict[str, tuple[str, ...]]:
    """Activation site -> the conv2d/linear nodes on its one-to-one producer chain (DESIGN.md).

    The walk goes back through batch_norm and both inputs of add, and stops at any tensor that
    another node also reads (skipping it would starve that reader) and at any other op.
    """
    consumers = graph.consumers()
    by_name = {n.name: n for n in graph.nodes}

    def walk(t, chain):
        n = by_name.get(t)
        if n is None or len(consumers[t]) != 1:
            return
        if n.op in CHAIN_OPS:
            chain.append(n.name)
        elif n.op == "batch_norm":
            walk(n.inputs[0], chain)
        elif n.op == "add":
            for i in n.inputs:
                walk(i, chain)

    chains = {}
    for n in graph.nodes:
        if n.op in G.ACTIVATIONS:
            chain: list[str] = []
            walk(n.inputs[0], chain)
            chains[n.name] = tuple(chain)
    return chains


class Model:
    """A validated model ready to run. `graph` is the stored graph; execution uses BN folded."""

    def __init__(self, graph: G.Graph, path=None):
        self.path = path
        self.graph = graph
        self.fingerprint = graph.fingerprint()
        self.shapes = G.validate(graph, allow_nonfinite=True)
        self.exec_graph = G.fold_batch_norm(graph)
        shapes = G.infer_shapes(self.exec_graph)
        self.exec_shapes = shapes
        self.sites = {s: shapes[s] for s in self.exec_graph.activation_sites()}
        self.chains = producer_chains(self.exec_graph)
        self.steps = []
        for n in self.exec_graph.nodes:
            prep = PREPARE.get(n.op)
            args = prep(self.exec_graph, n, shapes[n.inputs[0]], shapes[n.name]) if prep else ()
            self.steps.append(Step(n.name, n.op, n.inputs, args, shapes[n.name]))
        self.output = self.exec_graph.output
        self.last_macs: dict[str, int] = {}
        self._buffers: dict = {}
        self._plan: _MaskPlan | None = None
        self._fixed: dict = {}  # node -> the plan whose `fixed` values its buffer holds
        self._col = aligned_floats(0)  # conv scratch, sized for the batch by `_scratch`
        self._col_images = 0

    @property
    def input_shape(self) -> tuple:
        return tuple(self.graph.input_shape)

    @property
    def meta(self) -> dict:
        return self.graph.meta

    def layer_macs(self) -> dict[str, int]:
        """Dense MACs per image of every conv2d/linear node, by DESIGN.md's formula."""
        g = self.exec_graph
        return {
            n.name: G.node_macs(n, self.exec_shapes[n.inputs[0]], self.exec_shapes[n.name])
            for n in g.nodes
            if n.op in CHAIN_OPS
        }

    def site_costs(self) -> dict[str, int]:
        """Site -> MACs per image that masking one of its elements skips (its whole chain)."""
        g, shapes = self.exec_graph, self.exec_shapes
        per_element = {}
        for n in g.nodes:
            if n.op in CHAIN_OPS:
                per_element[n.name] = G.node_macs(n, shapes[n.inputs[0]], shapes[n.name]) // int(
                    np.prod(shapes[n.name])
                )
        return {site: sum(per_element[c] for c in chain) for site, chain in self.chains.items()}

    def check_input(self, x) -> np.ndarray:
        """Raise InputError unless x is a finite float32 (N, *input_shape) array."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"input: expects a numpy array, found {type(x).__name__}")
        want = self.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise InputError(f"input: expects shape (N, {', '.join(map(str, want))}), found {tuple(x.shape)}")
        if x.dtype != np.float32:
            raise InputError(f"input: expects dtype float32, found {x.dtype}")
        if x.shape[0] == 0:
            raise InputError("input: the batch is empty")
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise InputError(f"input: {bad} NaN/Inf value(s) of {x.size}")
        return np.ascontiguousarray(x)

    def _scratch(self, n_n):
        """The conv kernels' scratch, large enough for a batch of n_n images."""
        if n_n != self._col_images:
            convs = [st.args for st in self.steps if st.op == "conv2d"]
            need = max((scratch_floats(geom, n_n, weights) for weights, geom in convs), default=0)
            if need > self._col.size:
                self._col = aligned_floats(need)
            self._col_images = n_n
        return self._col

    def _buffer(self, name, shape):
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, np.float32)
            self._buffers[name] = buf
            self._fixed.pop(name, None)
        return buf

    def site_skips(self, masks) -> dict[str, np.ndarray]:
        """Node name -> bool skip array for every conv2d/linear on a masked site's chain."""
        skips = {}
        for site, (mask, _) in masks.sites.items():
            if mask.any():
                for node in self.chains[site]:
                    skips[node] = mask
        return skips

    def _mask_plan(self, masks) -> _MaskPlan:
        """What a run needs from `masks`, worked out at the first run with them and kept while the
        same MaskSet comes back with the same sites holding the same array objects. The arrays
        are made read-only then, so writing into them raises instead of leaving a stale plan;
        a write through another view of their memory is not seen (replace the arrays instead)."""
        self.check_masks(masks)
        names, arrays = tuple(masks.sites), [a for pair in masks.sites.values() for a in pair]
        plan = self._plan
        if (
            plan is not None
            and plan.masks is masks
            and plan.names == names
            and all(map(operator.is_, plan.arrays, arrays))
        ):
            return plan
        for a in arrays:
            a.flags.writeable = False
        convs = {st.name: st.args for st in self.steps if st.op == "conv2d"}  # (ConvWeights, ConvGeom)
        skips = {}
        for node, mask in self.site_skips(masks).items():
            a = convs.get(node)
            skips[node] = mask if a is None else plan_skip(mask, *a)
        site_masks, fixed = {}, {}
        for s, (m, c) in masks.sites.items():
            idx = np.flatnonzero(m)
            if idx.size:
                site_masks[s] = np.ascontiguousarray(m).reshape(-1)
                fixed[s] = (idx, np.ascontiguousarray(c, np.float32).reshape(-1)[idx])
                fixed.update(dict.fromkeys(self.chains[s], (idx, np.zeros(idx.size, np.float32))))
        self._plan = _MaskPlan(masks, names, arrays, skips, site_masks, fixed)
        return self._plan

    def run(self, x, masks=None, observer=None) -> np.ndarray:
        """Run a batch x (N, C, H, W) float32; return the output (N, ...) float32 (a new array).

        masks: a MaskSet of this model (velcro_ref.load_masks) or None for dense inference. Its
        mask and constant arrays become read-only at the first run (see `_mask_plan`).
        observer: object with on_site(name, y) called with every activation site's output
        (N, C, H, W), after masked elements are overwritten; y is only valid during the call.
        An observer may also define on_node(step, inputs, output, skip) to see every node. It
        must not write into the arrays it is given: skipped conv outputs are zeroed, and masked
        site elements set to their constants, once per MaskSet and trusted to stay so.
        After the run, `last_macs` maps every conv2d/linear node to the MACs its kernel executed.
        The thread pools are set for the run by `threads.run_threads` (observers run under it).
        Raises InputError for a bad input and MaskError for masks of another model.
        """
        x = self.check_input(x)
        plan = None if masks is None else self._mask_plan(masks)
        with run_threads():
            return self._run(x, plan, observer)

    def _run(self, x, plan, observer):
        n_n = x.shape[0]
        col = self._scratch(n_n)
        env = {G.INPUT: x}
        macs = {}
        for st in self.steps:
            out = self._buffer(st.name, (n_n, *st.out_shape))
            skip = None if plan is None else plan.skips.get(st.name)
            fixed = None if plan is None else plan.fixed.get(st.name)
            if fixed is None:
                self._fixed.pop(st.name, None)
            elif self._fixed.get(st.name) is not plan:
                # skipped conv outputs read 0, masked site elements their constants; no kernel
                # changes them (clamp_unmasked stores them back as they are), so they stay for
                # later runs with the same plan
                put_at(out.reshape(n_n, -1), *fixed)
                self._fixed[st.name] = plan
            mask = None if plan is None else plan.site_masks.get(st.name)
            if mask is not None:  # a masked site: its activation at the unmasked elements only
                clamp_unmasked(env[st.inputs[0]].reshape(n_n, -1), ACT_MAX[st.op], mask, out.reshape(n_n, -1))
            else:
                n_macs = OPS[st.op]([env[t] for t in st.inputs], st.args, skip, out, col)
                if st.op in CHAIN_OPS:
                    macs[st.name] = int(n_macs)
            if observer is not None:
                if st.op in G.ACTIVATIONS:
                    observer.on_site(st.name, out)
                if hasattr(observer, "on_node"):
                    observer.on_node(st, [env[t] for t in st.inputs], out, getattr(skip, "skip", skip))
            env[st.name] = out
        self.last_macs = macs
        return env[self.output].copy()

    def check_masks(self, masks) -> None:
        """Raise MaskError unless `masks` was made for this model and fits its sites."""
        if masks.fingerprint != self.fingerprint:
            raise MaskError(
                f"{masks.source}: masks were made for model {masks.fingerprint}, "
                f"this model ({self.path}) is {self.fingerprint}"
            )
        missing = sorted(set(self.sites) - set(masks.sites))
        if masks.complete and missing:
            raise MaskError(f"{masks.source}: no masks for site(s) {', '.join(missing)}")
        for site, (mask, const) in masks.sites.items():
            if site not in self.sites:
                raise MaskError(f"{masks.source}: site '{site}' is not an activation site of this model")
            if mask.shape != self.sites[site] or const.shape != self.sites[site]:
                raise MaskError(
                    f"{masks.source}: site '{site}' expects shape {self.sites[site]}, "
                    f"found mask {mask.shape} and constants {const.shape}"
                )


def load_model(path, allow_nonfinite: bool = False) -> Model:
    """Load, validate and prepare an HDF5 model. Raises ModelError naming the file and node."""
    return Model(load_graph(path, allow_nonfinite=allow_nonfinite), path=str(path))
