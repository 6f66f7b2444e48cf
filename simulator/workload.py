"""Workload: a velcro_ref Model (and optional MaskSet) -> one loop-nest record per layer.

Each op's definition (velcro_ref/ops) says where it runs: the PE array (conv2d, linear), the
vector unit (pooling, element-wise ops, with their operations per element) or nowhere (flatten,
dropout, concat: their readers address the producers' buffers). An int8 op that requantizes an
int32 accumulator (`requant_ops` of its definition) gets a second record after its own: that work
on the vector unit, on the layer's output path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from velcro_ref.graph import INPUT

FLOAT_BYTES = 4  # a float32 element


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
    reads_mask: bool = True  # False: on its producer's output path, which read the mask table
    # Bytes per input and output element where they are not the operand's: the float32 tensors of an
    # int8 model (a quantize's input, a dequantize's output, float ops between them; a float conv's or
    # linear's weights too, at in_bytes); 0: the operand's.
    in_bytes: int = 0
    out_bytes: int = 0

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
        """MACs executed: unmasked elements x (C_in/groups)*kh*kw or in_features (docs/design.md)."""
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


def _layer(st, readers, quantized: bool):
    """The record of one plan node (velcro_ref.plan.PlanNode); `quantized`: the node is in an int8 model."""
    op = st.opdef
    nest = op.loop_nest(st.attrs, st.in_shapes, st.out_shape)
    in_elems = sum(int(np.prod(s)) for s in st.in_shapes)
    sizes = {}
    if quantized:  # its float32 tensors at their own size
        sizes = {"in_bytes": FLOAT_BYTES * all(q is None for q in st.in_q), "out_bytes": FLOAT_BYTES * (st.q is None)}
    if op.unit == "array":
        return Layer(st.name, st.op, "array", **nest, in_elems=in_elems, **sizes)
    # An activation right after its only producer runs on that producer's output path.
    fused = op.site and st.inputs[0] != INPUT and len(readers[st.inputs[0]]) == 1
    return Layer(
        st.name, st.op, "vector", **nest, in_elems=in_elems, ops_per_element=op.ops_per_element, fused=fused, **sizes
    )


def _site_records(model, masks):
    """Node -> (site, bool skip array) for every node a masked site lets skip elements.

    Array nodes come from Model.site_skips (the engine's own chains); the site's activation and
    an add feeding only it skip the same elements on the vector unit.
    """
    skips = model.site_skips(masks)
    plan = model.plan
    steps = {st.name: st for st in plan.nodes}
    out = {}
    for site, (mask, _) in masks.sites.items():
        if not mask.any():
            continue
        nodes = [*model.chains[site], site]
        src = steps.get(steps[site].inputs[0])
        if src is not None and src.op in ("add", "qadd") and len(plan.readers[src.name]) == 1:
            nodes.append(src.name)
        for node in nodes:
            out[node] = (site, skips.get(node, mask))
    return out


def build_workload(model, masks=None) -> list[Layer]:
    """Per-layer loop-nest records of `model` (a velcro_ref Model), in execution order.

    Dense MACs are Model.layer_macs(); with `masks` (a MaskSet of this model) array layers on a
    masked site's chain carry the engine's skip arrays. Raises MaskError for masks of another model.
    """
    dense_macs = model.layer_macs()
    masked = {}
    if masks is not None:
        model.check_masks(masks)
        masked = _site_records(model, masks)
    layers, seen_sites = [], set()
    quantized = any(n.q is not None for n in model.plan.nodes)
    for n in model.plan.nodes:
        if n.opdef.unit == "free":
            continue
        layer = _layer(n, model.plan.readers, quantized)
        fields = {}
        if n.opdef.unit == "array":
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
        requant = getattr(n.opdef, "requant_ops", 0)
        if requant:
            layers.append(_requant_record(layers[-1], requant))
    return layers


def _requant_record(layer: Layer, ops_per_element: int) -> Layer:
    """The requantization of an int8 layer's int32 accumulators (multiply, round, zero point, clamp)
    on the vector unit, on the layer's output path (fused: operations, no cycles or traffic of their
    own, the mask table's read included: the layer's own read serves its output path), for every
    output element the layer computes."""
    return Layer(
        f"{layer.name}.requant",
        "requant",
        "vector",
        layer.k,
        1,
        layer.oy,
        layer.ox,
        1,
        1,
        in_elems=layer.out_elems,
        ops_per_element=ops_per_element,
        fused=True,
        skip=layer.skip,
        reads_mask=False,
    )
