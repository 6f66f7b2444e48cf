"""Workload: a velcro_ref Model (and optional MaskSet) -> one loop-nest record per layer.

conv2d and linear run on the PE array; pooling and element-wise ops run on the vector unit.
flatten, dropout and concat cost nothing: their readers address the producers' buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from velcro_ref import graph as G

ARRAY_OPS = ("conv2d", "linear")
FREE_OPS = ("flatten", "dropout", "concat")
# Vector-unit operations per output element (a pooling window adds fy*fx of them).
OPS_PER_ELEMENT = {
    "add": 1,
    "relu": 1,
    "relu6": 1,
    "batch_norm": 2,
    "softmax": 3,
    "max_pool": 1,
    "avg_pool": 1,
    "global_avg_pool": 1,
}


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer as a loop nest n, k, c, oy, ox, fy, fx (c = input channels per group).

    Array layers: k filters, c*fy*fx MACs per output element. Vector layers: k channels
    (or features), fy*fx the window per output element. Counts are per image.
    `skip` is a bool (k, oy*ox) array of masked output elements, or None.
    The first record of a masked site loads the site's bitmap (`bitmap_bytes`, one bit per
    element) and owns its `n_consts` constants (kept in DRAM: storage, not per-inference traffic).
    """

    name: str
    op: str
    unit: str
    k: int
    c: int
    oy: int
    ox: int
    fy: int
    fx: int
    n: int = 1
    groups: int = 1
    in_elems: int = 0
    macs: int = 0
    ops_per_element: int = 0
    fused: bool = False
    skip: np.ndarray | None = None
    site: str | None = None
    bitmap_bytes: int = 0
    n_consts: int = 0

    @property
    def out_elems(self) -> int:
        return self.k * self.oy * self.ox

    @property
    def loops(self) -> dict:
        return {"n": self.n, "k": self.k, "c": self.c, "oy": self.oy, "ox": self.ox, "fy": self.fy, "fx": self.fx}

    @property
    def active_elems(self) -> int:
        """Output elements computed (not masked)."""
        return self.out_elems if self.skip is None else self.out_elems - int(np.count_nonzero(self.skip))

    @property
    def active_macs(self) -> int:
        """MACs executed: unmasked elements x (C_in/groups)*kh*kw or in_features (DESIGN.md)."""
        if self.skip is None:
            return self.macs
        return self.active_elems * self.c * self.fy * self.fx

    @property
    def ops(self) -> int:
        """Vector-unit operations executed."""
        return self.active_elems * self.ops_per_element * self.fy * self.fx

    def dense(self) -> Layer:
        """The same layer without masks."""
        return Layer(**{**self.__dict__, "skip": None, "site": None, "bitmap_bytes": 0, "n_consts": 0})

    def batched(self, b: int) -> Layer:
        """A batch of `b` images as one record: the images stack along oy, so the array sees one GEMM of
        b*oy*ox output pixels (the vector unit b times the elements) and the filters, the site's bitmap
        and its constants stay once. The mask repeats for every image. Counts are then per batch."""
        if b == 1:
            return self
        skip = None if self.skip is None else np.tile(self.skip, (1, b))
        return Layer(
            **{**self.__dict__, "oy": self.oy * b, "in_elems": self.in_elems * b, "macs": self.macs * b, "skip": skip}
        )


def _layer(model, n, shapes, consumers):
    ins = [shapes[t] for t in n.inputs]
    out = shapes[n.name]
    in_elems = sum(int(np.prod(s)) for s in ins)
    if n.op == "conv2d":
        a = G.conv_attrs(n)
        (fy, fx), g = a["kernel"], a["groups"]
        return Layer(n.name, n.op, "array", out[0], ins[0][0] // g, out[1], out[2], fy, fx, groups=g, in_elems=in_elems)
    if n.op == "linear":
        return Layer(n.name, n.op, "array", out[0], ins[0][0], 1, 1, 1, 1, in_elems=in_elems)
    k, oy, ox = (*out, 1, 1)[:3] if len(out) == 1 else out
    fy = fx = 1
    if n.op in ("max_pool", "avg_pool"):
        fy, fx = G.pool_attrs(n)["kernel"]
    elif n.op == "global_avg_pool":
        fy, fx = ins[0][1], ins[0][2]
    # An activation right after its only producer runs on that producer's output path.
    fused = n.op in G.ACTIVATIONS and n.inputs[0] != G.INPUT and len(consumers[n.inputs[0]]) == 1
    return Layer(
        n.name,
        n.op,
        "vector",
        k,
        1,
        oy,
        ox,
        fy,
        fx,
        in_elems=in_elems,
        ops_per_element=OPS_PER_ELEMENT[n.op],
        fused=fused,
    )


def _site_records(model, masks):
    """Node -> (site, bool skip array) for every node a masked site lets skip elements.

    Array nodes come from Model.site_skips (the engine's own chains); the site's activation and
    an add feeding only it skip the same elements on the vector unit.
    """
    skips = model.site_skips(masks)
    consumers = model.exec_graph.consumers()
    by_name = {n.name: n for n in model.exec_graph.nodes}
    out = {}
    for site, (mask, _) in masks.sites.items():
        if not mask.any():
            continue
        nodes = [*model.chains[site], site]
        src = by_name.get(by_name[site].inputs[0])
        if src is not None and src.op == "add" and len(consumers[src.name]) == 1:
            nodes.append(src.name)
        for node in nodes:
            out[node] = (site, skips.get(node, mask))
    return out


def build_workload(model, masks=None) -> list[Layer]:
    """Per-layer loop-nest records of `model` (a velcro_ref Model), in execution order.

    Dense MACs are Model.layer_macs(); with `masks` (a MaskSet of this model) array layers on a
    masked site's chain carry the engine's skip arrays. Raises MaskError for masks of another model.
    """
    shapes = model.exec_shapes
    consumers = model.exec_graph.consumers()
    dense_macs = model.layer_macs()
    masked = {}
    if masks is not None:
        model.check_masks(masks)
        masked = _site_records(model, masks)
    layers, seen_sites = [], set()
    for n in model.exec_graph.nodes:
        if n.op in FREE_OPS:
            continue
        layer = _layer(model, n, shapes, consumers)
        fields = {}
        if n.op in ARRAY_OPS:
            fields["macs"] = dense_macs[n.name]
            assert fields["macs"] == layer.out_elems * layer.c * layer.fy * layer.fx, n.name
        if n.name in masked:
            site, skip = masked[n.name]
            fields.update(site=site, skip=np.asarray(skip, bool).reshape(layer.k, layer.oy * layer.ox))
            if site not in seen_sites:
                seen_sites.add(site)
                mask = masks.sites[site][0]
                fields.update(bitmap_bytes=-(-mask.size // 8), n_consts=int(np.count_nonzero(mask)))
        layers.append(Layer(**{**layer.__dict__, **fields}) if fields else layer)
    return layers
