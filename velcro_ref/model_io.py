"""HDF5 <-> Graph: the model file (format `velcro-model` version 1, docs/formats.md)."""

from __future__ import annotations

import h5py
import numpy as np

from . import h5io, ops
from .errors import ModelError
from .fileio import atomic_path
from .fpenv import default_env
from .graph import Graph, Node, validate
from .h5io import attr_json, attr_str, check_dataset, check_format, member, read_dataset

FORMAT = "velcro-model"
# Version 2 adds quantized models: integer parameters (int8 weights, int32 biases) and the quantized
# ops. A float model is still written as version 1, which every earlier reader reads.
FORMAT_VERSION = 2


@default_env()
def save_model(graph: Graph, path) -> str:
    """Write `graph` (a Graph, or a loaded Model: its graph) to `path` (atomically); return its
    fingerprint."""
    if not isinstance(graph, Graph) and isinstance(getattr(graph, "graph", None), Graph):
        graph = graph.graph
    validate(graph, allow_nonfinite=True)
    _check_unused(set(graph.params) - {k for n in graph.nodes for k in n.params.values()})
    fp = graph.fingerprint()
    version = 2 if is_quantized(graph) else 1
    with atomic_path(path) as tmp, h5io.create(tmp) as f:
        h5io.write_header(f, FORMAT, version, fp, graph=graph.structure_json(), meta=graph.meta)
        g = f.create_group("params")
        for key in sorted(graph.params):
            a = np.asarray(graph.params[key])
            g.create_dataset(
                h5io.escape_key(key), data=a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
            )
    return fp


def _check_unused(unused) -> None:
    """ModelError naming the parameters no node uses: the fingerprint covers every parameter of a file,
    and a reader reads the ones its nodes name."""
    if unused:
        shown = ", ".join(sorted(unused)[:5]) + (" ..." if len(unused) > 5 else "")
        raise ModelError(f"parameter(s) {shown} used by no node")


def is_quantized(graph: Graph) -> bool:
    """Whether the graph needs format version 2: an integer parameter or a quantized op."""
    integer = any(np.issubdtype(np.asarray(a).dtype, np.integer) for a in graph.params.values())
    return integer or any(n.op in ops.QUANTIZED for n in graph.nodes)


GRAPH_KEYS = ("input_shape", "output", "nodes")
NODE_KEYS = ("name", "op", "inputs", "attrs", "params")


def graph_from_json(doc, meta=None, params=None) -> Graph:
    """Build a Graph from its JSON structure; raises ModelError on malformed structure."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ModelError("graph JSON: expects an object with a 'nodes' list")
    unknown = sorted(set(doc) - set(GRAPH_KEYS))
    if unknown:
        raise ModelError(f"graph JSON: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(GRAPH_KEYS)}")
    nodes = []
    for i, d in enumerate(doc["nodes"]):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("op"), str):
            raise ModelError(f"graph JSON: node #{i} needs string 'name' and 'op'")
        unknown = sorted(set(d) - set(NODE_KEYS))
        if unknown:
            raise ModelError(
                f"node '{d['name']}': unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(NODE_KEYS)}"
            )
        inputs, attrs, prm = d.get("inputs", []), d.get("attrs", {}), d.get("params", {})
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise ModelError(f"node '{d['name']}': 'inputs' must be a list of tensor names, found {inputs!r}")
        if (
            not isinstance(attrs, dict)
            or not isinstance(prm, dict)
            or not all(isinstance(v, str) for v in prm.values())
        ):
            raise ModelError(f"node '{d['name']}': 'attrs' must be an object and 'params' map roles to names")
        nodes.append(Node(d["name"], d["op"], tuple(inputs), attrs, prm))
    shape = doc.get("input_shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        raise ModelError(f"graph JSON: 'input_shape' must be a list of ints, found {shape!r}")
    out = doc.get("output")
    if not isinstance(out, str):
        raise ModelError(f"graph JSON: 'output' must name a tensor, found {out!r}")
    return Graph(tuple(nodes), tuple(shape), out, params or {}, meta or {})


def load_graph(path, allow_nonfinite: bool = False) -> Graph:
    """Read and validate a model file. Shapes and sizes are checked before any parameter is read.

    Raises ModelError naming the file and the node, parameter or attribute at fault, for
    anything from a missing file to a corrupt HDF5 structure.
    """
    return h5io.load_checked(path, ModelError, FORMAT, "model", lambda f: _read(f, allow_nonfinite))


def _read(f, allow_nonfinite):
    version = check_format(f, FORMAT, FORMAT_VERSION, ModelError)
    doc = attr_json(f, "graph", ModelError, dict)
    meta = attr_json(f, "meta", ModelError, dict, default={})
    stored = attr_str(f, "fingerprint", ModelError)
    params_group = member(f, "params", h5py.Group, ModelError, "group ")
    graph = graph_from_json(doc, meta)
    if version < 2 and any(n.op in ops.QUANTIZED for n in graph.nodes):  # as save_model writes it
        raise ModelError(f"format_version {version} is a float model's, and the graph holds quantized ops (version 2)")
    needed = sorted({k for n in graph.nodes for k in n.params.values()})
    names = {}  # parameter key -> its dataset's name, the one name `escape_key` stores it under
    for name in params_group:
        key = h5io.unescape_key(name)
        if h5io.escape_key(key) != name:  # 'c%w' beside 'c%25w' would both be key 'c%w'
            raise ModelError(
                f"dataset 'params/{name}' is no stored parameter name: key '{key}' is stored as "
                f"'{h5io.escape_key(key)}' (docs/formats.md)"
            )
        names[key] = name
    missing = [k for k in needed if k not in names]
    if missing:
        raise ModelError(f"missing parameter(s): {', '.join(missing)} (expected as datasets under params/)")
    _check_unused(set(names) - set(needed))
    datasets = {}
    for k in needed:
        ds = member(params_group, names[k], h5py.Dataset, ModelError, "parameter ")
        datasets[k] = check_dataset(ds, ModelError, f"parameter '{k}': ")
    structural = Graph(graph.nodes, graph.input_shape, graph.output, datasets, meta)
    validate(structural, check_values=False)
    params = {k: read_dataset(ds, ModelError, f"parameter '{k}': ") for k, ds in datasets.items()}
    graph = Graph(graph.nodes, graph.input_shape, graph.output, params, meta)
    validate(graph, allow_nonfinite=allow_nonfinite)
    if stored != graph.fingerprint():
        raise ModelError(
            f"fingerprint mismatch: the file says {stored}, its contents hash to {graph.fingerprint()} "
            "(the file was modified or corrupted after it was written)"
        )
    return graph
