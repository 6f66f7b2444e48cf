"""ONNX -> Graph for CNNs as torch.onnx.export and similar exporters write them.

Shapes come from the graph IR's own inference (which follows onnxruntime's ceil_mode rule), not from
ONNX shape inference, whose ceil_mode output size can exceed the one onnxruntime computes.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import graph as G
from .errors import ModelError, UnsupportedOpError, VelcroError

# ONNX op types the importer converts; Identity and Dropout are bypassed, shape arithmetic is folded.
SUPPORTED_ONNX_OPS = (
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "MaxPool",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Softmax",
)
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
# Inputs of an op that carry activations; the others must be constants (weights, shapes, limits).
_DATA_INPUTS = {
    "AveragePool": (0,),
    "BatchNormalization": (0,),
    "Clip": (0,),
    "Conv": (0,),
    "Dropout": (0,),
    "Flatten": (0,),
    "Gemm": (0,),
    "GlobalAveragePool": (0,),
    "Identity": (0,),
    "MatMul": (0,),
    "MaxPool": (0,),
    "ReduceMean": (0,),
    "Relu": (0,),
    "Reshape": (0,),
    "Softmax": (0,),
}
_FLOAT_MAX = float(np.finfo(np.float32).max)


class _Batch:
    """The symbolic batch size inside folded shape arithmetic (Shape -> Gather -> Concat -> Reshape)."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


class _Unsupported(Exception):
    """This node cannot be converted; the message says why (empty: the op itself is unknown)."""


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
        self._shape_cache: dict[str, tuple | None] = {}

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
        out_name = self.g.output[0].name
        live, readers = self._live(out_name)
        for i, node in enumerate(self.g.node):
            if self._fold(node):
                continue
            if i not in live:
                continue
            try:
                self._convert(node, i, readers)
            except _Unsupported as e:
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
        """Nodes on the data path to the output, and how many live nodes read each tensor."""
        producer = {t: i for i, n in enumerate(self.g.node) for t in n.output if t}
        live, readers = set(), {out_name: 1}
        todo = [out_name]
        while todo:
            i = producer.get(todo.pop())
            if i is None or i in live:
                continue
            live.add(i)
            node = self.g.node[i]
            data = _DATA_INPUTS.get(node.op_type, range(len(node.input)))
            for k in data:
                if k < len(node.input) and node.input[k]:
                    todo.append(node.input[k])
        for i in live:
            for t in self.g.node[i].input:
                readers[t] = readers.get(t, 0) + 1
        return live, readers

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

    def _add(self, node, index, op, inputs, attrs=None, params=None, output=None, suffix=""):
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

    def _data(self, node, k=0):
        t = node.input[k] if k < len(node.input) else ""
        if t in self.values:
            raise _Unsupported(f"input {k} is a constant; expects activations")
        if t not in self.alias:
            raise ModelError(f"node '{node.name}': reads tensor '{t}' before it is produced")
        return self.alias[t]

    def _const(self, node, k, what, required=True):
        t = node.input[k] if k < len(node.input) else ""
        if not t:
            if required:
                raise _Unsupported(f"{what} is missing")
            return None
        v = self.values.get(t)
        if v is None:
            raise _Unsupported(f"{what} ('{t}') is computed at run time; expects an initializer or constant")
        if v.dtype == object:
            raise _Unsupported(f"{what} ('{t}') depends on the batch size")
        return v

    def _weight(self, node, k, what, required=True):
        v = self._const(node, k, what, required)
        if v is not None and not np.issubdtype(v.dtype, np.floating):
            raise ModelError(f"node '{node.name}': {what} expects a float tensor, found {v.dtype}")
        return v

    def _shape(self, tensor):
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

    def _check_outputs(self, node, readers, n_used=1):
        for t in node.output[n_used:]:
            if t and readers.get(t):
                raise _Unsupported(f"output '{t}' is read; only the first output is supported")

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
                    v = np.array([BATCH, *self._shape(self.alias[ins[0]])], dtype=object)
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
    def _convert(self, node, index, readers):
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"domain '{node.domain}'")
        op = node.op_type
        a = _attrs(node)
        if op in ("Identity", "Dropout"):
            self._check_outputs(node, readers)
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                mode = self._const(node, 2, "training_mode")
                if bool(np.asarray(mode).reshape(-1)[0]):
                    raise _Unsupported("training_mode is true")
            self.alias[node.output[0]] = self._data(node)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise _Unsupported("")
        self._check_outputs(node, readers)
        handler(node, index, a, readers)

    def _spatial(self, node, a, x, kernel, dilation=(1, 1)):
        """Strides and (top, left, bottom, right) pads from ONNX attributes, auto_pad resolved."""
        stride = [int(s) for s in a.get("strides", [1, 1])]
        if len(stride) != 2:
            raise _Unsupported(f"strides {stride}; expects 2-D")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "NOTSET":
            pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
            if len(pads) != 4:
                raise _Unsupported(f"pads {pads}; expects 4 values")
            return stride, pads
        if auto == "VALID":
            return stride, [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise _Unsupported(f"auto_pad '{auto}'")
        hw = self._shape(x)[1:]
        begin, end = [], []
        for size, k, s, d in zip(hw, kernel, stride, dilation, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return stride, begin + end

    def _op_Conv(self, node, index, a, readers):
        x = self._data(node)
        w = self._weight(node, 1, "weight")
        b = self._weight(node, 2, "bias", required=False)
        if w.ndim != 4:
            raise _Unsupported(f"weight of rank {w.ndim}; only 2-D convolution (rank-4 weight) is supported")
        kernel = [int(k) for k in w.shape[2:]]
        if "kernel_shape" in a and list(a["kernel_shape"]) != kernel:
            raise ModelError(f"node '{node.name}': kernel_shape {list(a['kernel_shape'])} != weight {w.shape}")
        dilation = [int(d) for d in a.get("dilations", [1, 1])]
        if len(dilation) != 2:
            raise _Unsupported(f"dilations {dilation}; expects 2-D")
        stride, pads = self._spatial(node, a, x, kernel, dilation)
        attrs = {
            "out_channels": int(w.shape[0]),
            "kernel": kernel,
            "stride": stride,
            "dilation": dilation,
            "pads": pads,
            "groups": int(a.get("group", 1)),
        }
        params = {"weight": w}
        if b is not None:
            params["bias"] = b.reshape(-1)
        self._add(node, index, "conv2d", [x], attrs, params)

    def _op_BatchNormalization(self, node, index, a, readers):
        x = self._data(node)
        if a.get("training_mode", 0):
            raise _Unsupported("training_mode=1")
        if a.get("spatial", 1) != 1:
            raise _Unsupported("spatial=0")
        roles = ("gamma", "beta", "mean", "var")
        params = {r: self._weight(node, k + 1, r).reshape(-1) for k, r in enumerate(roles)}
        self._add(node, index, "batch_norm", [x], {"eps": float(str(np.float32(a.get("epsilon", 1e-5))))}, params)

    def _op_Relu(self, node, index, a, readers):
        self._add(node, index, "relu", [self._data(node)])

    def _op_Clip(self, node, index, a, readers):
        x = self._data(node)
        if self.opset < 11:
            lo, hi = a.get("min", -_FLOAT_MAX), a.get("max", _FLOAT_MAX)
        else:
            lo_v = self._const(node, 1, "min", required=False)
            hi_v = self._const(node, 2, "max", required=False)
            lo = -np.inf if lo_v is None else float(np.asarray(lo_v).reshape(-1)[0])
            hi = np.inf if hi_v is None else float(np.asarray(hi_v).reshape(-1)[0])
        if lo == 0 and hi == 6:
            self._add(node, index, "relu6", [x])
        elif lo == 0 and hi >= _FLOAT_MAX:
            self._add(node, index, "relu", [x])
        else:
            raise _Unsupported(f"range [{lo:g}, {hi:g}]; supported: [0, 6] (relu6) and [0, inf) (relu)")

    def _pool(self, node, index, a, op):
        x = self._data(node)
        kernel = [int(k) for k in a.get("kernel_shape", [])]
        if len(kernel) != 2:
            raise _Unsupported(f"kernel_shape {kernel}; only 2-D pooling is supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Unsupported(f"dilations {list(a['dilations'])}")
        stride, pads = self._spatial(node, a, x, kernel)
        attrs = {"kernel": kernel, "stride": stride, "pads": pads, "ceil_mode": bool(a.get("ceil_mode", 0))}
        if op == "avg_pool":
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        self._add(node, index, op, [x], attrs)

    def _op_MaxPool(self, node, index, a, readers):
        if a.get("storage_order", 0):
            raise _Unsupported("storage_order=1")
        self._pool(node, index, a, "max_pool")

    def _op_AveragePool(self, node, index, a, readers):
        self._pool(node, index, a, "avg_pool")

    def _op_GlobalAveragePool(self, node, index, a, readers):
        self._add(node, index, "global_avg_pool", [self._data(node)])

    def _op_ReduceMean(self, node, index, a, readers):
        x = self._data(node)
        if "axes" in a:
            axes = a["axes"]
        else:
            axes = self._const(node, 1, "axes", required=False)
        rank = len(self._shape(x)) + 1
        if axes is None or rank != 4 or sorted(int(i) % rank for i in np.asarray(axes).reshape(-1)) != [2, 3]:
            raise _Unsupported("only the mean over H and W of an NCHW tensor is supported")
        if a.get("keepdims", 1):
            self._add(node, index, "global_avg_pool", [x])
        else:
            pooled = self._add(node, index, "global_avg_pool", [x], output=f"{node.output[0]}#pooled")
            self._add(node, index, "flatten", [pooled], suffix="_flatten")

    def _op_Add(self, node, index, a, readers):
        consts = [k for k in (0, 1) if node.input[k] in self.values]
        if not consts:
            self._add(node, index, "add", [self._data(node, 0), self._data(node, 1)])
            return
        if len(consts) == 2:
            raise _Unsupported("both inputs are constants")
        x = self._data(node, 1 - consts[0])
        bias = self._weight(node, consts[0], "bias")
        if self.bias_free.get(node.input[1 - consts[0]]) != x:
            raise _Unsupported("a constant operand is supported only as the bias of a MatMul or Gemm read by it alone")
        k = self.index[x]
        lin = self.nodes[k]
        out_features = self.params[lin.params["weight"]].shape[0]
        try:
            b = np.broadcast_to(bias, (1, out_features)).reshape(-1)
        except ValueError:
            raise _Unsupported(f"bias of shape {bias.shape} does not fit {out_features} outputs") from None
        key = f"{lin.name}.bias"
        self.params[key] = np.ascontiguousarray(b, dtype=np.float32)
        self.nodes[k] = replace(lin, params={**lin.params, "bias": key})
        del self.bias_free[node.input[1 - consts[0]]]
        self.alias[node.output[0]] = lin.name

    def _op_Concat(self, node, index, a, readers):
        xs = [self._data(node, k) for k in range(len(node.input))]
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(self._shape(xs[0])) + 1
        if axis != 1:
            raise _Unsupported(f"axis {a.get('axis')}; only the channel axis 1 is supported")
        self._add(node, index, "concat", xs)

    def _linear(self, node, index, x, w, b, readers):
        params = {"weight": w}
        if b is not None:
            params["bias"] = b
        name = self._add(node, index, "linear", [x], {}, params)
        if b is None and readers.get(node.output[0]) == 1 and node.output[0] != self.g.output[0].name:
            self.bias_free[node.output[0]] = name

    def _need_flat(self, x, what):
        shape = self._shape(x)
        if len(shape) != 1:
            raise _Unsupported(f"{what} on a tensor of per-image shape {shape}; expects (N, features)")

    def _op_Gemm(self, node, index, a, readers):
        x = self._data(node)
        if a.get("transA", 0):
            raise _Unsupported("transA=1")
        w = self._weight(node, 1, "weight")
        c = self._weight(node, 2, "bias", required=False)
        if w.ndim != 2:
            raise _Unsupported(f"weight of rank {w.ndim}")
        self._need_flat(x, "Gemm")
        w = (w if a.get("transB", 0) else w.T) * np.float32(a.get("alpha", 1.0))
        b = None
        if c is not None:
            try:
                b = np.broadcast_to(c, (1, w.shape[0])).reshape(-1) * np.float32(a.get("beta", 1.0))
            except ValueError:
                raise _Unsupported(f"bias of shape {c.shape} does not fit {w.shape[0]} outputs") from None
        self._linear(node, index, x, w, b, readers)

    def _op_MatMul(self, node, index, a, readers):
        x = self._data(node)
        w = self._weight(node, 1, "weight")
        if w.ndim != 2:
            raise _Unsupported(f"weight of rank {w.ndim}")
        self._need_flat(x, "MatMul")
        self._linear(node, index, x, w.T, None, readers)

    def _op_Flatten(self, node, index, a, readers):
        x = self._data(node)
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(self._shape(x)) + 1
        if axis != 1:
            raise _Unsupported(f"axis {a.get('axis')}; only axis 1 (keep the batch axis) is supported")
        self._add(node, index, "flatten", [x])

    def _op_Reshape(self, node, index, a, readers):
        x = self._data(node)
        features = int(np.prod(self._shape(x)))  # first: an unknown input shape also hides the target shape
        shape = np.asarray(a["shape"]) if "shape" in a else self.values.get(node.input[1])
        if shape is None:
            raise _Unsupported("target shape is computed at run time by ops this importer does not fold")
        s = list(shape.reshape(-1))
        if len(s) == 2 and s[1] is not BATCH and (s[1] == -1 or s[1] == features):
            first = s[0]
            batch = first is BATCH or (first == 0 and not a.get("allowzero", 0))
            batch = batch or (s[1] == features and first == -1)
            batch = batch or (self.static_batch is not None and first == self.static_batch)
        else:
            batch = False
        if not batch:
            shown = [d if d is BATCH else int(d) for d in s]
            raise _Unsupported(f"target shape {shown}; only (N, -1), i.e. flatten, is supported")
        self._add(node, index, "flatten", [x])

    def _op_Softmax(self, node, index, a, readers):
        x = self._data(node)
        rank = len(self._shape(x)) + 1
        default = 1 if self.opset < 13 else -1
        axis = int(a.get("axis", default)) % rank
        # Before opset 13 Softmax flattens from `axis` on; the graph's softmax is over axis 1 only.
        if axis != 1 or (self.opset < 13 and rank != 2):
            raise _Unsupported(f"axis {a.get('axis', default)} on a rank-{rank} input; supported: the class axis 1")
        self._add(node, index, "softmax", [x])


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
