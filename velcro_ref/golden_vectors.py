"""Golden vectors for hardware verification: every node's inputs and outputs in plain HDF5.

Layout (format `velcro-golden`, docs/formats.md; readable without this package). Version 1 (float
models):
  attrs: format, format_version, model_fingerprint, masks_source, node_order (JSON list),
         nonfinite_nodes (JSON list: the nodes whose output holds NaN or Inf),
         input_source (JSON: {"file"} or {"data", "directory", "split", "classes", "indices"}), when known
  /input                      the network input, float32 (N, C, H, W)
  /labels                     int64 (N,), when the images come from a labelled data set
  /nodes/<k>_<name>/          one group per executed node, k = position in execution order
      attrs: name, op, inputs (JSON tensor names), attrs (JSON), executed_macs (conv2d/linear)
      input_<i>, output       tensors as the engine computed them, batch first
      weight, bias, ...       parameters as executed (batch norm folded into convs)
      skipped                 bool, shaped like one image's output: elements whose MACs were skipped
  /sites/<name>/              with masks: mask (bool), constants (float32)
Version 2 (quantized models) adds, per node, the quantization of each tensor (attrs
input_<i>_scale / _zero_point / _dtype, output_scale / _zero_point / _dtype), the arithmetic of
each op (conv and linear: requant, output_min, output_max, datasets requant_scale and, in
fixed_point mode, multiplier and shift; with accumulators, the int32 `accumulators`; add: a_ratio,
b_ratio, offset; global average pool: requant_scale; concat: table_<i>; sites: output_min,
output_max) and per masked site the constants as the site holds them (constants_q).
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from . import h5io, quant
from .errors import InputError, UsageError
from .evaluation import class_indices
from .fileio import atomic_path
from .jsonout import clean

FORMAT = "velcro-golden"
FORMAT_VERSION = 2  # 1: float models (unchanged); 2: quantized models


def node_group(k, n, name) -> str:
    """The group of the k-th of n executed nodes: k zero-padded to 3 digits, or to as many as n - 1
    has, so that the groups list in execution order (`/nodes/<k>_<name>`, docs/formats.md)."""
    return f"nodes/{k:0{max(3, len(str(n - 1)))}d}_{h5io.escape_key(name)}"


class _Recorder:
    def __init__(self, f, model, accumulators):
        self.f, self.model, self.k = f, model, 0
        self.accumulators = accumulators
        self.order = []
        self.nonfinite = []  # the nodes whose output holds NaN or Inf, in execution order

    def on_site(self, name, y):
        pass

    def on_node(self, step, inputs, out, skip):
        g = self.f.create_group(node_group(self.k, len(self.model.steps), step.name))
        self.k += 1
        self.order.append(step.name)
        g.attrs["name"] = step.name
        g.attrs["op"] = step.op
        g.attrs["inputs"] = json.dumps(list(step.inputs))
        g.attrs["attrs"] = json.dumps(step.source.attrs)
        for i, x in enumerate(inputs):
            g.create_dataset(f"input_{i}", data=x)
        g.create_dataset("output", data=out)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            self.nonfinite.append(step.name)
        for role, array in step.arrays.items():
            g.create_dataset(role, data=array)
        if skip is not None:
            g.create_dataset("skipped", data=np.asarray(skip, bool))
        if step.q is not None or any(q is not None for q in step.in_q):
            _quantized_node(g, step, inputs, skip, self.accumulators)


def _put_q(g, prefix, q):
    if q is not None:
        g.attrs[f"{prefix}_scale"] = np.float32(q.scale)
        g.attrs[f"{prefix}_zero_point"] = int(q.zero_point)
        g.attrs[f"{prefix}_dtype"] = q.dtype


def _quantized_node(g, step, inputs, skip, accumulators):
    """The quantization of a node's tensors and the numbers its arithmetic used (docs/formats.md)."""
    for i, q in enumerate(step.in_q):
        _put_q(g, f"input_{i}", q)
    _put_q(g, "output", step.q)
    for key, value in step.opdef.golden(step.args).items():
        if isinstance(value, np.ndarray):
            g.create_dataset(key, data=value)
        else:
            g.attrs[key] = value
    acc = step.opdef.accumulators(inputs[0], step.args, step.out_shape) if accumulators else None
    if acc is not None:
        acc = acc.astype(np.int32)  # exact: the accumulator bound was checked at load
        if skip is not None:  # a skipped element is never accumulated
            acc[:, np.asarray(skip, bool)] = 0
        g.create_dataset("accumulators", data=acc)


def write_golden(model, x, path, masks=None, accumulators=False, source=None, labels=None) -> dict:
    """Run x through the model recording every node; returns executed MACs per layer.
    accumulators: also write the int32 accumulators of every int8 conv and linear layer
    (UsageError for a float model, which has none). source: a JSON-able dict stored as the attr
    `input_source`; labels: (N,) integers stored as `/labels` (UsageError if not one per image;
    InputError, as eval gives, for a negative one, or one past the classes of a model whose output
    is one score per class of two or more: a single output, a logit, names none)."""
    quantized = any(st.q is not None for st in model.plan.nodes)
    if accumulators and not quantized:
        raise UsageError("accumulators are written for quantized (int8) models only; this model is float32")
    if labels is not None:
        labels = class_indices(labels, "labels", sets=False)
        if labels.shape != (len(x),):
            raise UsageError(f"labels expect one per image, shape ({len(x)},), found {labels.shape}")
        if labels.size and labels.min() < 0:
            raise InputError(f"labels name class {int(labels.min())}; a class index is 0 or more")
        scores = model.shapes[model.graph.output]  # a model of one score per class: a label names one
        if len(scores) == 1 and scores[0] > 1 and labels.size and labels.max() >= scores[0]:
            raise InputError(f"labels name class {int(labels.max())}; the model scores classes 0..{scores[0] - 1}")
    if source is not None:
        try:  # NumPy numbers and arrays (a data set's indices) as JSON numbers and lists
            source = json.dumps(clean(source), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise UsageError(f"source expects JSON values: {e}") from None
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION if quantized else 1
        f.attrs["model_fingerprint"] = model.fingerprint
        f.attrs["masks_source"] = masks.source if masks is not None else ""
        if source is not None:
            f.attrs["input_source"] = source
        f.create_dataset("input", data=x)
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels, np.int64))
        rec = _Recorder(f, model, accumulators)
        macs = model.run_counted(x, masks=masks, observer=rec)[1]
        for k, name in enumerate(rec.order):
            if name in macs:
                f[node_group(k, len(model.steps), name)].attrs["executed_macs"] = macs[name]
        f.attrs["node_order"] = json.dumps(rec.order)
        f.attrs["nonfinite_nodes"] = json.dumps(rec.nonfinite)
        if masks is not None:
            for site, (mask, const) in masks.sites.items():
                sg = f.create_group(f"sites/{h5io.escape_key(site)}")
                sg.create_dataset("mask", data=mask)
                sg.create_dataset("constants", data=np.asarray(const, np.float32))  # as the run used them
                q = model.plan.node(site).q
                if q is not None:
                    sg.create_dataset("constants_q", data=quant.quantize_linear(const, q.scale, q.zero_point, q.dtype))
                    _put_q(sg, "site", q)
    return macs
