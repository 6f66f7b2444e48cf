"""Golden vectors for hardware verification: every node's inputs and outputs in plain HDF5.

Layout (format `velcro-golden` version 1, readable without this package):
  attrs: format, format_version, model_fingerprint, masks_source, node_order (JSON list)
  /input                      the network input, float32 (N, C, H, W)
  /nodes/<k>_<name>/          one group per executed node, k = position in execution order
      attrs: name, op, inputs (JSON tensor names), params (JSON), executed_macs (conv2d/linear)
      input_<i>, output       float32 tensors, batch first
      weight, bias            float32 parameters as executed (batch norm folded into convs)
      skipped                 bool, shaped like one image's output: elements whose MACs were skipped
  /sites/<name>/              with masks: mask (bool), constants (float32)
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from . import h5io
from .fileio import atomic_path

FORMAT = "velcro-golden"
FORMAT_VERSION = 1


class _Recorder:
    def __init__(self, f, model):
        self.f, self.model, self.k = f, model, 0
        self.order = []

    def on_site(self, name, y):
        pass

    def on_node(self, step, inputs, out, skip):
        g = self.f.create_group(f"nodes/{self.k:03d}_{h5io.escape_key(step.name)}")
        self.k += 1
        self.order.append(step.name)
        g.attrs["name"] = step.name
        g.attrs["op"] = step.op
        g.attrs["inputs"] = json.dumps(list(step.inputs))
        g.attrs["attrs"] = json.dumps(step.source.attrs)
        for i, x in enumerate(inputs):
            g.create_dataset(f"input_{i}", data=x)
        g.create_dataset("output", data=out)
        for role, array in step.arrays.items():
            g.create_dataset(role, data=array)
        if skip is not None:
            g.create_dataset("skipped", data=np.asarray(skip, bool))


def write_golden(model, x, path, masks=None) -> dict:
    """Run x through the model recording every node; returns executed MACs per layer."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model_fingerprint"] = model.fingerprint
        f.attrs["masks_source"] = masks.source if masks is not None else ""
        f.create_dataset("input", data=x)
        rec = _Recorder(f, model)
        model.run(x, masks=masks, observer=rec)
        for k, name in enumerate(rec.order):
            if name in model.last_macs:
                f[f"nodes/{k:03d}_{h5io.escape_key(name)}"].attrs["executed_macs"] = model.last_macs[name]
        f.attrs["node_order"] = json.dumps(rec.order)
        if masks is not None:
            for site, (mask, const) in masks.sites.items():
                sg = f.create_group(f"sites/{h5io.escape_key(site)}")
                sg.create_dataset("mask", data=mask)
                sg.create_dataset("constants", data=const)
    return dict(model.last_macs)
