"""HDF5 <-> Graph. Format `velcro-model` version 1 (documented in docs/formats.md)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .errors import ModelError
from .fileio import atomic_path
from .graph import MAX_ELEMENTS, Graph, Node, validate

FORMAT = "velcro-model"
FORMAT_VERSION = 1


def _h5_name(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def _key(h5_name: str) -> str:
    return h5_name.replace("%2F", "/").replace("%25", "%")


def save_model(graph: Graph, path) -> str:
    """Write `graph` to `path` (atomically); return its fingerprint."""
    validate(graph, allow_nonfinite=True)
    fp = graph.fingerprint()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = fp
        f.attrs["graph"] = json.dumps(graph.structure_json())
        f.attrs["meta"] = json.dumps(graph.meta)
        g = f.create_group("params")
        for key in sorted(graph.params):
            g.create_dataset(_h5_name(key), data=np.asarray(graph.params[key], dtype=np.float32))
    return fp


def _open(path: Path):
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ModelError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ModelError(f"{path}: cannot be read as HDF5 (truncated or corrupt?): {e}") from None


def graph_from_json(doc, meta=None, params=None) -> Graph:
    """Build a Graph from its JSON structure; raises ModelError on malformed structure."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ModelError("graph JSON: expects an object with a 'nodes' list")
    nodes = []
    for i, d in enumerate(doc["nodes"]):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("op"), str):
            raise ModelError(f"graph JSON: node #{i} needs string 'name' and 'op'")
        inputs, attrs, prm = d.get("inputs", []), d.get("attrs", {}), d.get("params", {})
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise ModelError(f"node '{d['name']}': 'inputs' must be a list of tensor names")
        if (
            not isinstance(attrs, dict)
            or not isinstance(prm, dict)
            or not all(isinstance(v, str) for v in prm.values())
        ):
            raise ModelError(f"node '{d['name']}': 'attrs' must be an object and 'params' map roles to names")
        nodes.append(Node(d["name"], d["op"], tuple(inputs), attrs, prm))
    shape = doc.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) for s in shape):
        raise ModelError(f"graph JSON: 'input_shape' must be a list of ints, found {shape!r}")
    out = doc.get("output", nodes[-1].name if nodes else None)
    if not isinstance(out, str):
        raise ModelError("graph JSON: 'output' must name a tensor")
    return Graph(tuple(nodes), tuple(shape), out, params or {}, meta or {})


def load_graph(path, allow_nonfinite: bool = False) -> Graph:
    """Read and validate a model file. Shapes are checked before any parameter is read.

    Raises ModelError naming the file and the node or parameter at fault.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            return _read(f, path, allow_nonfinite)
    except ModelError as e:
        msg = str(e)
        raise ModelError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _read(f, path, allow_nonfinite):
    if f.attrs.get("format") != FORMAT:
        raise ModelError(f"format attribute expects '{FORMAT}', found {f.attrs.get('format')!r}")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or version > FORMAT_VERSION or version < 1:
        raise ModelError(f"format_version {version!r} is not supported (this build reads 1..{FORMAT_VERSION})")
    try:
        doc = json.loads(f.attrs["graph"])
        meta = json.loads(f.attrs.get("meta", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"graph attribute missing or not valid JSON ({e})") from None
    if "params" not in f:
        raise ModelError("group 'params' is missing")
    datasets = {}
    for name, ds in f["params"].items():
        if not isinstance(ds, h5py.Dataset):
            raise ModelError(f"parameter '{_key(name)}': expects a dataset")
        if ds.size > MAX_ELEMENTS:
            raise ModelError(f"parameter '{_key(name)}': {ds.shape} is too large")
        datasets[_key(name)] = ds
    graph = graph_from_json(doc, meta, datasets)
    needed = {k for n in graph.nodes for k in n.params.values()}
    missing = sorted(k for k in needed if k not in datasets)
    if missing:
        raise ModelError(f"missing parameter(s): {', '.join(missing)}")
    structural = Graph(graph.nodes, graph.input_shape, graph.output, {k: datasets[k] for k in needed}, meta)
    validate(structural, check_values=False)
    params = {}
    for k in sorted(needed):
        try:
            params[k] = datasets[k][()]
        except (OSError, RuntimeError, ValueError) as e:
            raise ModelError(f"parameter '{k}': cannot be read (truncated or corrupt?): {e}") from None
    graph = Graph(graph.nodes, graph.input_shape, graph.output, params, meta)
    validate(graph, allow_nonfinite=allow_nonfinite)
    stored = f.attrs.get("fingerprint")
    if stored is not None and stored != graph.fingerprint():
        raise ModelError(f"fingerprint mismatch: file says {stored}, contents hash to {graph.fingerprint()}")
    return graph
