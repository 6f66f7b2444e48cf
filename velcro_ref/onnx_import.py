"""ONNX -> Graph for CNNs as torch.onnx.export and similar exporters write them.

Shapes come from the graph IR's own inference (which follows onnxruntime's ceil_mode rule), not from
ONNX shape inference, whose ceil_mode output size can exceed the one onnxruntime computes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from . import graph as G
from . import ops
from .errors import ModelError, UnsupportedOpError, VelcroError
from .ops.base import OnnxUnsupported

# ONNX op types the importer converts: those of the op registry, and Identity and Dropout, which it
# bypasses; Constant and shape arithmetic are folded.
SUPPORTED_ONNX_OPS = tuple(sorted({*ops.ONNX_IMPORTS, "Constant", "Dropout", "Identity"}))
# Ops evaluated at import time when every input is known (constants and the symbolic batch size).
_FOLD_OPS = (
    "Cast",
    "Concat",
    "Constant",
    "Gather",
    "Identity",
    "Reshape",
    "Shape",
    "Slice",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
)


class _Batch:
    """The symbolic batch size inside folded shape arithmetic (Shape -> Gather -> Concat -> Reshape)."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


class _Skip(Exception):
    """An input shape is unknown because an earlier node failed; that node is already reported."""


def import_onnx(path) -> G.Graph:
    """Read an ONNX model (float32 NCHW CNN, one input, one output) as a validated Graph.

    The batch axis may be symbolic or fixed; the Graph runs any batch size. Metadata property
    "velcro.meta" (JSON object) becomes Graph.meta; "velcro.preprocessing" (JSON) becomes
    Graph.meta["preprocessing"].
    Raises ModelError naming the file for an unreadable or inconsistent model, and one
    UnsupportedOpError listing every node that cannot be converted and the supported ops.
    """
    path = Path(path)
    model = _load(path)
    try:
        return _Importer(model).run()
    except ModelError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _load(path: Path):
    try:
        import onnx
    except ImportError:
        raise ModelError("reading ONNX needs the 'onnx' package (pip install 'velcro-ref[onnx]')") from None
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises several unrelated types for a damaged file
        raise ModelError(f"{path}: cannot be read as ONNX ({type(e).__name__}: {e})") from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no IR version or graph outputs)")
    return model


def _node_label(node, index):
    return f"'{node.op_type}' (node '{node.name}')" if node.name else f"'{node.op_type}' (unnamed node #{index})"


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def graph_node_name(onnx_name: str, op_type: str) -> str:
    """A graph node name from an ONNX node name: letters, digits, '_' and '.', or "" if nothing is left.

    Names become HDF5 group names and parameter-key prefixes, so '/' cannot stay. torch.onnx writes
    '/layer1/layer1.0/conv1/Conv': the module path becomes 'layer1.0.conv1', as torchvision names it.
    """
    parts = [p for p in onnx_name.split("/") if p]
    if len(parts) > 1 and re.fullmatch(rf"{re.escape(op_type)}(_\d+)?", parts[-1]):
        parts.pop()
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", ".".join(path)).strip("._")


class _Importer:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.g = model.graph
        self.to_array = numpy_helper.to_array
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.nodes: list[G.Node] = []
        self.index: dict[str, int] = {}  # velcro node name -> position in self.nodes
        self.params: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}  # ONNX tensor -> constant (object dtype if symbolic)
        self.alias: dict[str, str] = {}  # ONNX tensor -> graph tensor
        self.used_names = {G.INPUT}
        self.unsupported: list[str] = []
        self.skipped = False
        self.bias_free: dict[str, str] = {}  # ONNX output read once -> its linear node without bias
        self.pending: dict[str, str] = {}  # ONNX output of a node fused into its reader -> its input
        self._shape_cache: dict[str, tuple | None] = {}
        self.BATCH = BATCH

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> G.Graph:
        for init in self.g.initializer:
            self.values[init.name] = self._array(init, f"initializer '{init.name}'")
        inputs = [i for i in self.g.input if i.name not in self.values]
        if len(inputs) != 1:
            names = ", ".join(repr(i.name) for i in inputs)
            raise ModelError(f"expects exactly one graph input besides initializers, found {len(inputs)} ({names})")
        if len(self.g.output) != 1:
            raise ModelError(f"expects exactly one graph output, found {len(self.g.output)}")
        self.input_shape = self._input_shape(inputs[0])
        self.alias[inputs[0].name] = G.INPUT
        out_name = self.output_name = self.g.output[0].name
        live, self.readers, self._reader_nodes = self._live(out_name)
        for i, node in enumerate(self.g.node):
            if self._fold(node):
                continue
            if i not in live:
                continue
            try:
                self._convert(node, i)
            except OnnxUnsupported as e:
                why = f": {e}" if str(e) else ""
                self.unsupported.append(_node_label(node, i) + why)
                self._placeholder(node, i)
            except _Skip:
                self.skipped = True
                self._placeholder(node, i)
        if self.unsupported:
            raise UnsupportedOpError(
                f"unsupported ONNX node(s): {'; '.join(self.unsupported)}. "
                f"Supported ops: {', '.join(SUPPORTED_ONNX_OPS)}"
            )
        if out_name not in self.alias:
            raise ModelError(f"graph output '{out_name}' is a constant or is not produced by any node")
        output = self.alias[out_name]
        if output == G.INPUT:
            raise ModelError(f"graph output '{out_name}' is the input itself; there is nothing to run")
        graph = G.Graph(tuple(self.nodes), self.input_shape, output, self.params, self._meta())
        G.validate(graph, allow_nonfinite=True)
        if self.skipped:  # an input shape went missing without an upstream error: a bug, not bad input
            raise ModelError("could not infer the shape of every node")
        return graph

    def _input_shape(self, vi):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type != 1:
            from onnx import TensorProto

            found = (
                TensorProto.DataType.Name(t.elem_type) if t.elem_type in TensorProto.DataType.values() else t.elem_type
            )
            raise ModelError(f"input '{vi.name}': expects a FLOAT (float32) tensor, found {found}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not t.HasField("shape") or len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
            shown = ["?" if d is None else d for d in dims]
            raise ModelError(
                f"input '{vi.name}': expects shape (N, C, H, W) with fixed C, H, W (N may be symbolic), found {shown}"
            )
        first = t.shape.dim[0]
        self.static_batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None
        return tuple(int(d) for d in dims[1:])

    def _meta(self) -> dict:
        props = {p.key: p.value for p in self.model.metadata_props}
        meta = {}
        for key in ("velcro.meta", "velcro.preprocessing"):
            if key not in props:
                continue
            try:
                value = json.loads(props[key])
            except ValueError as e:
                raise ModelError(f"metadata '{key}' is not valid JSON ({e})") from None
            if key == "velcro.meta":
                if not isinstance(value, dict):
                    raise ModelError(f"metadata '{key}' expects a JSON object, found {type(value).__name__}")
                meta.update(value)
            else:
                meta["preprocessing"] = value
        return meta

    def _live(self, out_name):
        """Nodes on the data path to the output, how many live nodes read each tensor, and which."""
        producer = {t: i for i, n in enumerate(self.g.node) for t in n.output if t}
        live, readers = set(), {out_name: 1}
        todo = [out_name]
        while todo:
            i = producer.get(todo.pop())
            if i is None or i in live:
                continue
            live.add(i)
            node = self.g.node[i]
            op = ops.ONNX_IMPORTS.get(node.op_type)
            data = (0,) if op is None else op.onnx_data_inputs
            for k in range(len(node.input)) if data is None else data:
                if k < len(node.input) and node.input[k]:
                    todo.append(node.input[k])
        reader_nodes: dict[str, list] = {}
        for i in sorted(live):
            for t in self.g.node[i].input:
                readers[t] = readers.get(t, 0) + 1
                reader_nodes.setdefault(t, []).append(self.g.node[i])
        return live, readers, reader_nodes

    def reader_nodes(self, tensor) -> list:
        """The live ONNX nodes that read `tensor`."""
        return self._reader_nodes.get(tensor, [])

    # -- helpers -------------------------------------------------------------------------------
    def _array(self, tensor, what):
        try:
            return self.to_array(tensor)
        except Exception as e:  # external data missing, unknown element type
            raise ModelError(f"{what}: cannot be read ({type(e).__name__}: {e})") from None

    def _new_name(self, node, index, suffix=""):
        base = (graph_node_name(node.name, node.op_type) or f"{node.op_type}_{index}") + suffix
        name, k = base, 2
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def add(self, node, index, op, inputs, attrs=None, params=None, output=None, suffix=""):
        name = self._new_name(node, index, suffix)
        prm = {}
        for role, array in (params or {}).items():
            key = f"{name}.{role}"
            self.params[key] = np.ascontiguousarray(array, dtype=np.float32)
            prm[role] = key
        self.index[name] = len(self.nodes)
        self.nodes.append(G.Node(name, op, tuple(inputs), attrs or {}, prm))
        self.alias[output if output is not None else node.output[0]] = name
        return name

    def _placeholder(self, node, index):
        for t in node.output:
            if t:
                self.alias[t] = f"<{node.op_type} #{index}>"

    def data(self, node, k=0):
        t = node.input[k] if k < len(node.input) else ""
        if t in self.values:
            raise OnnxUnsupported(f"input {k} is a constant; expects activations")
        if t not in self.alias:
            raise ModelError(f"node '{node.name}': reads tensor '{t}' before it is produced")
        return self.alias[t]

    def const(self, node, k, what, required=True):
        t = node.input[k] if k < len(node.input) else ""
        if not t:
            if required:
                raise OnnxUnsupported(f"{what} is missing")
            return None
        v = self.values.get(t)
        if v is None:
            raise OnnxUnsupported(f"{what} ('{t}') is computed at run time; expects an initializer or constant")
        if v.dtype == object:
            raise OnnxUnsupported(f"{what} ('{t}') depends on the batch size")
        return v

    def weight(self, node, k, what, required=True):
        v = self.const(node, k, what, required)
        if v is not None and not np.issubdtype(v.dtype, np.floating):
            raise ModelError(f"node '{node.name}': {what} expects a float tensor, found {v.dtype}")
        return v

    def shape(self, tensor):
        """Per-image shape of a graph tensor by the graph IR's inference; _Skip if an earlier node failed."""
        if tensor == G.INPUT:
            return self.input_shape
        if tensor not in self._shape_cache:
            need, todo = set(), [tensor]
            while todo:
                t = todo.pop()
                if t == G.INPUT or t in need:
                    continue
                if t not in self.index:
                    self._shape_cache[tensor] = None
                    break
                need.add(t)
                todo.extend(self.nodes[self.index[t]].inputs)
            else:
                sub = tuple(n for n in self.nodes if n.name in need)
                try:
                    shapes = G.infer_shapes(G.Graph(sub, self.input_shape, tensor, self.params))
                    self._shape_cache[tensor] = shapes[tensor]
                except VelcroError:
                    self._shape_cache[tensor] = None
        shape = self._shape_cache[tensor]
        if shape is None:
            raise _Skip
        return shape

    def _check_outputs(self, node, n_used=1):
        for t in node.output[n_used:]:
            if t and self.readers.get(t):
                raise OnnxUnsupported(f"output '{t}' is read; only the first output is supported")

    # -- constant folding ----------------------------------------------------------------------
    def _fold(self, node) -> bool:
        """Evaluate shape arithmetic and constant ops; True if the node's outputs became constants."""
        op = node.op_type
        if op not in _FOLD_OPS or node.domain not in ("", "ai.onnx"):
            return False
        ins = list(node.input)
        a = _attrs(node)
        if op == "Shape":
            if not ins or not ins[0]:
                return False
            if ins[0] in self.values:
                v = np.array(self.values[ins[0]].shape, dtype=np.int64)
            elif ins[0] in self.alias:
                try:
                    v = np.array([BATCH, *self.shape(self.alias[ins[0]])], dtype=object)
                except _Skip:
                    return False
            else:
                return False
            v = v[a.get("start", 0) : a.get("end", len(v))]
            self.values[node.output[0]] = v
            return True
        if any(t and t not in self.values for t in ins):
            return False
        vals = [self.values[t] if t else None for t in ins]
        try:
            v = self._fold_op(op, vals, a)
        except (KeyError, ValueError, IndexError, TypeError):
            return False
        if v is None:
            return False
        self.values[node.output[0]] = np.asarray(v, dtype=v.dtype) if isinstance(v, np.ndarray) else np.asarray(v)
        return True

    def _fold_op(self, op, vals, a):
        from onnx import helper

        x = vals[0] if vals else None
        symbolic = any(v is not None and v.dtype == object for v in vals)
        if op == "Constant":
            if "value" in a:
                return self.to_array(a["value"])
            for key, dtype in (
                ("value_float", np.float32),
                ("value_floats", np.float32),
                ("value_int", np.int64),
                ("value_ints", np.int64),
            ):
                if key in a:
                    return np.array(a[key], dtype=dtype)
            return None
        if op == "Identity":
            return x
        if op == "Cast":
            return x if symbolic else x.astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        if op == "Gather":
            return np.asarray(np.take(x, vals[1].astype(np.int64), axis=a.get("axis", 0)), dtype=x.dtype)
        if op in ("Unsqueeze", "Squeeze"):
            axes = a.get("axes", list(vals[1]) if len(vals) > 1 and vals[1] is not None else None)
            if op == "Squeeze":
                return np.squeeze(x, axis=None if axes is None else tuple(int(i) for i in axes))
            rank = x.ndim + len(axes)
            for ax in sorted(int(i) % rank for i in axes):
                x = np.expand_dims(x, ax)
            return x
        if op == "Concat":
            return np.concatenate([v for v in vals if v is not None], axis=a["axis"])
        if op == "Slice":
            return _slice(x, vals, a, self.opset)
        if symbolic:
            return None
        if op == "Transpose":
            return np.transpose(x, a.get("perm"))
        if op == "Reshape":
            shape = [int(s) for s in (a["shape"] if "shape" in a else vals[1])]
            if not a.get("allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return np.reshape(x, shape)
        return None

    # -- conversion ----------------------------------------------------------------------------
    def _convert(self, node, index):
        if node.domain not in ("", "ai.onnx"):
            raise OnnxUnsupported(f"domain '{node.domain}'")
        op = node.op_type
        a = _attrs(node)
        if op in ("Identity", "Dropout"):
            self._check_outputs(node)
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                mode = self.const(node, 2, "training_mode")
                if bool(np.asarray(mode).reshape(-1)[0]):
                    raise OnnxUnsupported("training_mode is true")
            self.alias[node.output[0]] = self.data(node)
            return
        handler = ops.ONNX_IMPORTS.get(op)
        if handler is None:
            raise OnnxUnsupported("")
        self._check_outputs(node)
        handler.from_onnx(node, index, a, self)

    def spatial(self, node, a, x, kernel, dilation=(1, 1)):
        """Strides and (top, left, bottom, right) pads from ONNX attributes, auto_pad resolved."""
        stride = [int(s) for s in a.get("strides", [1, 1])]
        if len(stride) != 2:
            raise OnnxUnsupported(f"strides {stride}; expects 2-D")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "NOTSET":
            pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
            if len(pads) != 4:
                raise OnnxUnsupported(f"pads {pads}; expects 4 values")
            return stride, pads
        if auto == "VALID":
            return stride, [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise OnnxUnsupported(f"auto_pad '{auto}'")
        hw = self.shape(x)[1:]
        begin, end = [], []
        for size, k, s, d in zip(hw, kernel, stride, dilation, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return stride, begin + end


def _slice(x, vals, a, opset):
    if opset < 10:
        starts, ends, axes = a["starts"], a["ends"], a.get("axes")
        steps = None
    else:
        starts, ends = list(vals[1]), list(vals[2])
        axes = list(vals[3]) if len(vals) > 3 and vals[3] is not None else None
        steps = list(vals[4]) if len(vals) > 4 and vals[4] is not None else None
    axes = list(range(len(starts))) if axes is None else [int(i) % x.ndim for i in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
        index[ax] = slice(int(s), int(e), int(st))
    return x[tuple(index)]
