"""ONNX -> Graph for CNNs as torch.onnx.export and similar exporters write them.

Shapes come from the graph IR's own inference (which follows onnxruntime's ceil_mode rule), not from
ONNX shape inference, whose ceil_mode output size can exceed the one onnxruntime computes.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import graph as G
from . import ops
from .errors import ModelError, UnsupportedOpError, VelcroError
from .fileio import checked_path, parse_json, repeated
from .fpenv import default_env
from .ops.base import OnnxUnsupported, QParams, at_most_1d, is_scalar, onnx_axis

# ONNX op types the importer converts: those of the op registry (float and quantized), and Identity
# and Dropout, which it bypasses; Constant and shape arithmetic are folded.
SUPPORTED_ONNX_OPS = tuple(sorted({*ops.ONNX_IMPORTS, *ops.ONNX_QUANTIZED_IMPORTS, "Constant", "Dropout", "Identity"}))
_DOMAINS = ("", "ai.onnx")  # the default ONNX domain; others are written "domain:Type"
# The activations onnxruntime's quantizer may fold into their producer's output range.
_FOLDABLE_ACTIVATIONS = ("Relu", "Clip")
# Ops evaluated at import time when every input is known (constants and the symbolic batch size).
_FOLD_OPS = (
    "Cast",
    "Concat",
    "Constant",
    "Gather",
    "Identity",
    "QuantizeLinear",
    "Reshape",
    "Shape",
    "Slice",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
)


_FLOAT8 = (17, 18, 19, 20)  # ONNX's float8 types (TensorProto codes): E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ
_FNUZ = (18, 20)  # no infinity, no negative zero
_FOUR_BITS = (21, 22, 23)  # UINT4, INT4, FLOAT4E2M1
_STRING = 8


def _cast(x, to, dtype, saturate):
    """A folded Cast of constant x to ONNX type `to` (numpy dtype `dtype`), as ONNX defines it: with
    `saturate` (the default) a float8 type takes values beyond its range, infinities included, as
    its largest. Refused, where ONNX's runtimes (or its text) give other values: strings; the 4-bit
    types (onnxruntime rounds a float to INT4 where ONNX's reference truncates); FLOAT8E4M3FN and
    FLOAT8E5M2 without saturation, of a finite value beyond the range (onnxruntime gives NaN for
    FLOAT8E5M2 in [61440, 65536), where the reference rounds to inf, and they differ for
    FLOAT8E4M3FN in [480, 496); the rest of that range is refused with them); an infinity to a
    FNUZ type with saturation (ONNX's table says NaN, onnxruntime and the reference the largest
    value); float64 values cast to float16, bfloat16 or float8 that round otherwise through float32
    (onnxruntime's two roundings) than at once (the reference's one): `_via_float32`."""
    if to == _STRING or x.dtype.kind in "OSU":
        raise OnnxUnsupported("Cast of strings")
    if to in _FOUR_BITS:
        raise OnnxUnsupported(f"Cast to {np.dtype(dtype).name} (ONNX's runtimes round it differently)")
    if x.dtype == np.float64 and np.dtype(dtype).kind in "fV" and np.dtype(dtype).itemsize < 4:
        return _via_float32(x, to, dtype, saturate)  # float16, bfloat16, float8
    return _cast_once(x, to, dtype, saturate)


def _cast_once(x, to, dtype, saturate):
    """`_cast` in one rounding from x's own type (the float8 refusals included). A value beyond the
    type's range becomes what the cast makes of it (an infinity, or the integer C gives), without
    NumPy's warning: the model's checks refuse what cannot run."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _cast_values(x, to, dtype, saturate)


def _cast_values(x, to, dtype, saturate):
    if to not in _FLOAT8:
        return x.astype(dtype)
    import ml_dtypes

    wide = x.astype(np.float64)
    big = float(ml_dtypes.finfo(dtype).max)
    if not saturate and to not in _FNUZ:
        beyond = np.isfinite(wide) & (np.abs(wide) > big)
        if beyond.any():
            raise OnnxUnsupported(
                f"Cast to {np.dtype(dtype).name} with saturate=0 of {int(beyond.sum())} value(s) beyond its range "
                f"(largest {big:g}; onnxruntime and ONNX's reference give some such values different results)"
            )
    if not saturate:
        return x.astype(dtype)
    if to in _FNUZ and np.isinf(wide).any():
        raise OnnxUnsupported(
            f"Cast of an infinity to {np.dtype(dtype).name} with saturate=1 (ONNX's table says NaN, its runtimes "
            "give the type's largest value)"
        )
    return np.clip(wide, -big, big).astype(dtype)


def _via_float32(x, to, dtype, saturate):
    """`_cast` of float64 x to a type narrower than float32 as onnxruntime casts it, through float32
    (two roundings); OnnxUnsupported where that gives other values than one rounding (ONNX's reference)."""
    with np.errstate(all="ignore"):
        twice = _cast_once(x.astype(np.float32), to, dtype, saturate)
        once = _cast_once(x, to, dtype, saturate)
    if not np.array_equal(once.astype(np.float32), twice.astype(np.float32), equal_nan=True):
        raise OnnxUnsupported(
            f"Cast of float64 values to {np.dtype(dtype).name} that round otherwise through float32 (onnxruntime "
            "rounds them twice, via float32; ONNX's reference once)"
        )
    return twice


def _dense(sparse, to_array):
    """The dense array of an ONNX SparseTensorProto (indices linear, or one row per value)."""
    dims = tuple(int(d) for d in sparse.dims)
    values, index = to_array(sparse.values), to_array(sparse.indices).astype(np.int64)
    out = np.zeros(int(np.prod(dims)), values.dtype)
    out[index if index.ndim == 1 else np.ravel_multi_index(tuple(index.T), dims)] = values
    return out.reshape(dims)


class _Batch:
    """The symbolic batch size inside folded shape arithmetic (Shape -> Gather -> Concat -> Reshape)."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


def onnx_key(node) -> str:
    """The registry's key of an ONNX node: its op type, prefixed by "domain:" outside the default domain."""
    return node.op_type if node.domain in _DOMAINS else f"{node.domain}:{node.op_type}"


# Ops whose activation scales and zero points onnxruntime takes of shape () only (its contrib schema:
# "must be a scalar"); the others take () or (1,).
_SCALARS_ONLY = ("com.microsoft:QLinearAdd", "com.microsoft:QLinearAveragePool")


class QConst(NamedTuple):
    """A constant a DequantizeLinear reads (QDQ weights and biases): the integer array, its scale and
    zero point (1-D, one value per tensor or per slice along `axis`)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


class _Skip(Exception):
    """An input shape is unknown because an earlier node failed; that node is already reported."""


@default_env()
def import_onnx(path) -> G.Graph:
    """Read an ONNX model (float32 NCHW CNN, one input, one output) as a validated Graph; a model
    quantized by onnxruntime's quantizer (QDQ or QOperator format) becomes an int8 Graph
    (docs/int8.md).

    The batch axis may be symbolic or fixed; the Graph runs any batch size. Metadata property
    "velcro.meta" (JSON object) becomes Graph.meta; "velcro.preprocessing" (JSON) becomes
    Graph.meta["preprocessing"].
    Raises ModelError naming the file for an unreadable or inconsistent model, and one
    UnsupportedOpError listing every node that cannot be converted and the supported ops.
    """
    path = checked_path(path, ModelError, "ONNX file")
    model = _load(path)
    try:
        graph = _Importer(model).run()
    except ModelError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    _check_valid(model, path)
    return graph


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


def _check_valid(model, path: Path) -> None:
    """ModelError where ONNX's strict inference finds types or inferred shapes that clash, which
    onnxruntime refuses as an invalid model. The shapes the file declares for its tensors are left out
    (cleared in `model`, which the conversion no longer needs): onnxruntime runs a model whose declared
    shapes are stale or wrong (a ceil_mode pool declared as PyTorch sizes it) with a warning. Run after
    the conversion, whose refusals name the node more plainly."""
    import onnx

    for vi in [*model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise ModelError(f"{path}: not a valid ONNX model ({' '.join(str(e).split())})") from None
    except Exception:  # noqa: BLE001 - the inference cannot run (a model beyond protobuf's 2 GB): the conversion's checks alone
        return


def _node_label(node, index):
    return f"'{node.op_type}' (node '{node.name}')" if node.name else f"'{node.op_type}' (unnamed node #{index})"


def _input_name(node, k, what, required):
    """The tensor name of input k, '' where the node leaves it out (OnnxUnsupported if required)."""
    t = node.input[k] if k < len(node.input) else ""
    if not t and required:
        raise OnnxUnsupported(f"{what} is missing")
    return t


def _attrs(node) -> dict:
    """A node's attributes by name; ModelError for a name given twice (onnxruntime refuses the graph,
    ONNX's reference evaluator takes the last value)."""
    from onnx import helper

    twice = repeated(a.name for a in node.attribute)
    if twice:
        raise ModelError(f"node '{node.name}' ({node.op_type}): attribute(s) {', '.join(map(repr, twice))} given twice")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _quantized_constant(x, scale, zero_point, a):
    """QuantizeLinear of a float32 constant (a weight quantized in the graph, as quantize_static's
    AddQDQPairToWeight writes it) as onnxruntime computes it (`quant.quantize_linear`), per tensor or
    per axis; None (not folded: the node is then refused as a quantize of a constant) for any other
    form: block quantization, another code type, a scale that is no positive finite float32."""
    from .quant import along_axis, quantize_linear

    typed = {0: None, 2: np.dtype(np.uint8), 3: np.dtype(np.int8)}.get(a.get("output_dtype", 0), False)
    a.get("saturate")  # for float8 codes only: int8 and uint8 codes always saturate
    axis = a.get("axis", 1)  # read: one scale leaves it unused
    if a.get("block_size", 0) or typed is False or x.dtype != np.float32 or scale.dtype != np.float32:
        return None
    if zero_point is None:
        zero_point = np.zeros(scale.shape, typed or np.uint8)
    if zero_point.dtype not in (np.int8, np.uint8) or typed not in (None, zero_point.dtype):
        return None
    if not np.all(np.isfinite(scale) & (scale > 0)):
        return None
    if scale.size == zero_point.size == 1:  # per tensor, of shape () or (1,) each, as onnxruntime takes them
        return quantize_linear(x, scale.reshape(()), zero_point.reshape(()), zero_point.dtype)
    if scale.shape != zero_point.shape or scale.ndim != 1:
        return None
    if x.ndim == 0 or x.shape[onnx_axis(axis, x.ndim)] != scale.size:
        return None
    axis = onnx_axis(axis, x.ndim)
    return quantize_linear(x, along_axis(scale, x.ndim, axis), along_axis(zero_point, x.ndim, axis), zero_point.dtype)


class _Attrs(dict):
    """A node's ONNX attributes (`_attrs`) that remember which ones were looked at (`read`), so that
    an attribute no converter read, with a value other than ONNX's default, refuses the node instead
    of being ignored (`_unread`)."""

    def __init__(self, node):
        super().__init__(_attrs(node))
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def __iter__(self):  # iterated over (also by `{**a}`): every attribute seen
        self.read.update(super().keys())
        return super().__iter__()

    def items(self):
        self.read.update(super().keys())
        return super().items()


def _schema(node, opset):
    """ONNX's schema of a node of the default domain at the model's opset; None for other domains
    (com.microsoft's ops have no schema in the onnx package) or an op type ONNX does not define."""
    return _schema_of(node.op_type, opset) if node.domain in _DOMAINS else None


@functools.lru_cache(maxsize=512)
def _schema_of(op_type, opset):
    from onnx import defs

    try:
        return defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None


def _unread(a: _Attrs, schema) -> list[str]:
    """The attributes of a node no converter read, as "name=value", leaving out those at ONNX's
    default value (the same as absent) in its `schema` (None: no defaults known)."""
    from onnx import helper

    left = []
    for name in sorted(set(dict.keys(a)) - a.read):
        value = dict.__getitem__(a, name)
        spec = None if schema is None else schema.attributes.get(name)
        if spec is not None and spec.default_value.type and helper.get_attribute_value(spec.default_value) == value:
            continue
        left.append(_shown_attr(name, value))
    return left


def _shown_attr(name, value) -> str:
    shown = value.decode() if isinstance(value, bytes) else value
    return f"{name}={shown!r}" if isinstance(shown, str) else f"{name}={shown}"


def _check_forms(g, opset) -> None:
    """ModelError for what makes a graph invalid to ONNX, and onnxruntime refuse it, in any node, on
    the data path or not, before any is folded or converted: a tensor written twice (by two nodes, by a
    node and as a graph input or initializer, two initializers of one name), and a node of the default
    domain whose form its opset's schema does not allow (`_check_form`); two nodes of one name."""
    twice = sorted(t for t, k in Counter(n.name for n in g.node if n.name).items() if k > 1)
    if twice:
        raise ModelError(f"two or more nodes named {', '.join(map(repr, twice[:5]))}; ONNX node names are unique")
    twice = sorted(t for t, k in Counter(i.name for i in g.initializer).items() if k > 1)
    if twice:  # onnxruntime takes one of them, depending on the shape; onnx's reference the last
        raise ModelError(
            f"initializer {', '.join(map(repr, twice[:5]))} stored twice; ONNX initializer names are unique"
        )
    defined = {t.name for t in (*g.input, *g.initializer)}
    for i, node in enumerate(g.node):
        _check_form(node, _node_label(node, i), opset)
        for t in node.output:
            if t and t in defined:
                raise ModelError(
                    f"tensor '{t}' is written twice (by {_node_label(node, i)}); an ONNX tensor has one producer"
                )
            defined.add(t)


def _check_form(node, label, opset) -> None:
    """ModelError where a node of the default domain is of an op its opset does not define yet, has more
    or fewer inputs or outputs than ONNX allows, a required output without a name, an attribute its
    schema does not define or of another type (an INT where ONNX defines INTS) or a required attribute
    left out. Checked before a converter reads the attributes, which would take them as they come."""
    from onnx import AttributeProto, defs, helper

    if node.domain not in _DOMAINS:
        return
    schema = _schema(node, opset)
    if schema is None:
        if defs.has(node.op_type):
            since = defs.get_all_schemas_with_history()
            first = min((s.since_version for s in since if s.name == node.op_type and s.domain == ""), default=None)
            raise ModelError(f"{label}: {node.op_type} is defined from opset {first}; the model's opset is {opset}")
        return  # not an ONNX op: the conversion names it
    for what, n, lo, hi in (
        ("inputs", len(node.input), schema.min_input, schema.max_input),
        ("outputs", len(node.output), schema.min_output, schema.max_output),
    ):
        if not lo <= n <= hi:
            most = "" if hi == lo else " or more" if hi >= 2**31 - 1 else f" to {hi}"  # or more: variadic
            raise ModelError(f"{label}: {node.op_type} takes {lo}{most} {what}, found {n}")
    if not all(node.output[: schema.min_output]):
        k = list(node.output[: schema.min_output]).index("")
        raise ModelError(f"{label}: its output {k} has no name; ONNX requires one")
    kind = AttributeProto.AttributeType.Name
    for attr in node.attribute:
        spec = schema.attributes.get(attr.name)
        if spec is None:
            try:
                shown = _shown_attr(attr.name, helper.get_attribute_value(attr))
            except Exception:  # noqa: BLE001 - a value of no type: its name says enough
                shown = attr.name
            raise ModelError(f"{label}: attribute {shown} is not defined for {node.op_type} at opset {opset}")
        if attr.type != spec.type.value:
            shown = kind(attr.type) if attr.type in AttributeProto.AttributeType.values() else str(attr.type)
            raise ModelError(f"{label}: attribute {attr.name} is {shown}; ONNX defines it as {kind(spec.type.value)}")
    given = {attr.name for attr in node.attribute}
    missing = [k for k, spec in schema.attributes.items() if spec.required and k not in given]
    if missing:
        raise ModelError(f"{label}: required attribute {', '.join(missing)} is missing")


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
        versions: dict[str, set] = {}
        for o in model.opset_import:
            versions.setdefault("" if o.domain in _DOMAINS else o.domain, set()).add(o.version)
        for domain, vs in versions.items():  # ONNX's reference evaluator takes the first, onnxruntime the last
            if len(vs) > 1:
                name = f"domain '{domain}'" if domain else "the default domain"
                raise ModelError(f"opset imports give {name} {len(vs)} versions ({', '.join(map(str, sorted(vs)))})")
        self.opset = next(iter(versions.get("", {1})))
        self.nodes: list[G.Node] = []
        self.index: dict[str, int] = {}  # velcro node name -> position in self.nodes
        self.params: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}  # ONNX tensor -> constant (object dtype if symbolic)
        self.alias: dict[str, str] = {}  # ONNX tensor -> graph tensor
        self.used_names = {G.INPUT}
        # ONNX node names that are graph names as they are keep them: a name another node's comes to
        # when cleaned ('act/1' gives 'act.1') does not take it, whichever comes first
        # (not those that become no graph node: an Identity, a Dropout, a constant)
        passed = {"Identity", "Dropout", "Constant"}
        self.kept_names = {
            n.name
            for n in self.g.node
            if n.name and n.op_type not in passed and graph_node_name(n.name, n.op_type) == n.name
        }
        self.unsupported: list[str] = []
        self.skipped = False
        self.bias_free: dict[str, str] = {}  # ONNX output read once -> its linear node without bias
        # ONNX output of a node fused into its reader -> (its ONNX input, the graph tensor that input is)
        self.pending: dict[str, tuple[str, str]] = {}
        self._shape_cache: dict[str, tuple | None] = {}
        self.BATCH = BATCH
        # quantized models (QDQ and QOperator formats)
        self.producer = {t: n for n in self.g.node for t in n.output if t}
        self.q: dict[str, QParams | None] = {G.INPUT: None}  # graph tensor -> its quantization
        self.dq_views: dict[str, str] = {}  # ONNX tensor = DequantizeLinear(q) -> the quantized graph tensor q
        self._dequantized: dict[str, str] = {}  # quantized graph tensor -> its dequantize node, if one was needed
        self._materialize = False  # a float op is converting: its dequantized inputs need real float tensors
        self.refused: dict[str, str] = {}  # a constant's tensor -> why the node making it was refused

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> G.Graph:
        if self.g.sparse_initializer:
            names = ", ".join(repr(t.values.name) for t in self.g.sparse_initializer[:5])
            raise UnsupportedOpError(f"sparse initializer(s) {names}: not read by this importer; store them dense")
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
        _check_forms(self.g, self.opset)
        live, self.readers, self._reader_nodes = self._live(out_name)
        unknown_op = False
        for i, node in enumerate(self.g.node):
            try:
                if i not in live and any(t in self.refused for t in node.input):
                    why = next(self.refused[t] for t in node.input if t in self.refused)
                    self.refused.update(dict.fromkeys(node.output, why))
                    continue
                if self._fold(node):
                    continue
                if i not in live:
                    continue
                self._convert(node, i)
            except OnnxUnsupported as e:
                if i not in live:  # off the data path: a constant no live node may read (`const` says why)
                    self.refused.update(dict.fromkeys(node.output, _node_label(node, i) + (f": {e}" if str(e) else "")))
                    continue
                why = f": {e}" if str(e) else ""
                self.unsupported.append(_node_label(node, i) + why)
                unknown_op = unknown_op or not str(e)
                self._placeholder(node, i)
            except _Skip:
                self.skipped = True
                self._placeholder(node, i)
        if self.unsupported:  # the list of ops where an op type is not known, not for a refused attribute
            listed = f". Supported ops: {', '.join(SUPPORTED_ONNX_OPS)}" if unknown_op else ""
            raise UnsupportedOpError(f"unsupported ONNX node(s): {'; '.join(self.unsupported)}{listed}")
        if out_name not in self.alias:
            raise ModelError(f"graph output '{out_name}' is a constant or is not produced by any node")
        output = self.alias[out_name]
        declared = self.g.output[0].type.tensor_type.elem_type
        if self.q.get(output) is not None and declared == 1:  # 1: FLOAT
            raise ModelError(
                f"graph output '{out_name}' is declared float32, and the graph leaves {self.q[output].dtype} codes "
                "there (no DequantizeLinear)"
            )
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
        twice = repeated(p.key for p in self.model.metadata_props)
        if twice:  # onnx's checker refuses them; which value a reader takes is its own choice
            raise ModelError(f"metadata key(s) {', '.join(map(repr, twice))} given twice")
        props = {p.key: p.value for p in self.model.metadata_props}
        meta = {}
        for key in ("velcro.meta", "velcro.preprocessing"):
            if key not in props:
                continue
            try:
                value = parse_json(props[key])
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
            key = onnx_key(node)
            found = [t[key].onnx_data_inputs for t in (ops.ONNX_IMPORTS, ops.ONNX_QUANTIZED_IMPORTS) if key in t]
            data = None if None in found else sorted({k for d in found or [(0,)] for k in d})
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

    def _new_name(self, node, index, suffix="", base=None):
        """A unique graph name: `base` (a QOperator node's float name, empty for an unnamed node),
        else from the ONNX node's name, else op type and index (ONNX node names are optional)."""
        own = base is None and not suffix and node.name in self.kept_names
        base = base or graph_node_name(node.name, node.op_type) or f"{node.op_type}_{index}"
        return self._unique(base + suffix, own)

    def _unique(self, base, own=False):
        """`base`, or base_2, base_3, ...: a name no node has, nor keeps (`kept_names`) unless it is its own."""
        name, k = base, 2
        while name in self.used_names or (name in self.kept_names and not (own and name == base)):
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def add(self, node, index, op, inputs, attrs=None, params=None, output=None, suffix="", base=None):
        """Add a graph node converted from ONNX `node`, named after it (or after `base`), its output
        standing for the ONNX tensor `output` (default: the node's first output; "" for a step no ONNX
        tensor names, which any name made up for it might: `r#pooled` is a valid one). Float parameters
        are stored as float32, integer ones (quantized weights, biases) in their own dtype."""
        name = self._emit(self._new_name(node, index, suffix, base), op, inputs, attrs, params)
        output = node.output[0] if output is None else output
        if output:
            self.alias[output] = name
        return name

    def _emit(self, name, op, inputs, attrs=None, params=None):
        prm = {}
        for role, array in (params or {}).items():
            key = f"{name}.{role}"
            a = np.asarray(array)
            self.params[key] = np.ascontiguousarray(a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32))
            prm[role] = key
        self.index[name] = len(self.nodes)
        n = G.Node(name, op, tuple(inputs), attrs or {}, prm)
        self.nodes.append(n)
        opdef = ops.get(op, name)  # a node the engine refuses (a pool of mixed types) is named here, before
        self.q[name] = opdef.out_q(n, opdef.check(n), tuple(self.q.get(t) for t in n.inputs))  # its readers
        return name

    def _placeholder(self, node, index):
        for t in node.output:
            if t:
                self.alias[t] = f"<{node.op_type} #{index}>"

    def data(self, node, k=0):
        """The graph tensor holding input k. A DequantizeLinear's output stands for the quantized
        tensor it reads; while a float op converts, for a dequantize node of it (made once)."""
        t = node.input[k] if k < len(node.input) else ""
        if t in self.dq_views:
            base = self.dq_views[t]
            return self._dequantize(base) if self._materialize else base
        if t in self.values:
            raise OnnxUnsupported(f"input {k} is a constant; expects activations")
        if t not in self.alias:
            who = f"node '{node.name}'" if node.name else f"an unnamed '{node.op_type}' node"
            raise ModelError(f"{who}: reads tensor '{t}' before it is produced (ONNX lists nodes in topological order)")
        return self.alias[t]

    def const(self, node, k, what, required=True):
        t = _input_name(node, k, what, required)
        if not t:
            return None
        v = self.values.get(t)
        if v is None and t in self.refused:
            raise OnnxUnsupported(f"{what} ('{t}') comes from {self.refused[t]}")
        dq = self.producer.get(t)
        if v is None and dq is not None and onnx_key(dq) == "DequantizeLinear" and dq.input[0] in self.values:
            raise OnnxUnsupported(  # a QDQ op whose data input or output is float runs as a float op here
                f"{what} ('{t}') is a DequantizeLinear of quantized weights read by a float op: its data "
                "input or its output is float32, not between QuantizeLinear -> DequantizeLinear pairs (QDQ form)"
            )
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
        a = _Attrs(node)
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
            self._check_read(node, a)
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
        self._check_read(node, a)
        self.values[node.output[0]] = np.asarray(v, dtype=v.dtype) if isinstance(v, np.ndarray) else np.asarray(v)
        return True

    def _fold_op(self, op, vals, a):
        from onnx import helper

        x = vals[0] if vals else None
        symbolic = any(v is not None and v.dtype == object for v in vals)
        if op == "Constant":
            if "value" in a:
                return self.to_array(a["value"])
            if "sparse_value" in a:
                return _dense(a["sparse_value"], self.to_array)
            if "value_string" in a or "value_strings" in a:
                raise OnnxUnsupported("a Constant of strings")
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
            to = a["to"]
            return x if symbolic else _cast(x, to, helper.tensor_dtype_to_np_dtype(to), a.get("saturate", 1))
        if op == "Gather":
            return np.asarray(np.take(x, vals[1].astype(np.int64), axis=a.get("axis", 0)), dtype=x.dtype)
        if op in ("Unsqueeze", "Squeeze"):
            axes = a.get("axes", list(vals[1]) if len(vals) > 1 and vals[1] is not None else None)
            if op == "Squeeze":
                return np.squeeze(x, axis=None if axes is None else tuple(int(i) for i in axes))
            rank = x.ndim + len(axes)
            for ax in sorted(onnx_axis(i, rank) for i in axes):
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
        if op == "QuantizeLinear":
            return _quantized_constant(x, vals[1], vals[2] if len(vals) > 2 else None, a)
        return None

    # -- conversion ----------------------------------------------------------------------------
    def _convert(self, node, index):
        key = onnx_key(node)
        float_op, q_op = ops.ONNX_IMPORTS.get(key), ops.ONNX_QUANTIZED_IMPORTS.get(key)
        if node.domain not in _DOMAINS and float_op is None and q_op is None:
            raise OnnxUnsupported(f"domain '{node.domain}'")
        op = node.op_type
        a = _Attrs(node)
        if key in ("Identity", "Dropout"):
            self._check_outputs(node)
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                mode = self.const(node, 2, "training_mode")
                ratio = self.const(node, 1, "ratio", required=False)  # absent: ONNX's 0.5
                # a ratio of 0 drops nothing and scales by 1 / (1 - 0): the identity
                zero = ratio is not None and np.size(ratio) == 1 and np.asarray(ratio).reshape(-1)[0] == 0
                if bool(np.asarray(mode).reshape(-1)[0]) and not zero:
                    raise OnnxUnsupported("training_mode is true")
            if op == "Dropout":  # before opset 7, is_test=0 (the default) drops elements: training mode
                if self.opset < 7 and not a.get("is_test", 0):
                    raise OnnxUnsupported("is_test=0 before opset 7: training mode")
                a.read.update(("ratio", "seed", "consumed_inputs"))  # what an inference Dropout ignores
            self._check_read(node, a)
            if node.input and node.input[0] in self.dq_views:
                self.dq_view(node, index, self.dq_views[node.input[0]])
            else:
                self.alias[node.output[0]] = self.data(node)
            return
        reads_quantized = any(self.is_quantized(t) for t in node.input if t)
        on_values = reads_quantized and float_op is not None and self._float_on_dequantized(node)
        if on_values:
            reads_quantized = False  # the float op on real values, as onnxruntime runs it
        handler = q_op if q_op is not None and (reads_quantized or float_op is None) else float_op
        if handler is None:
            raise OnnxUnsupported("")
        if reads_quantized and handler is float_op and float_op.fused_by_onnxruntime:
            raise OnnxUnsupported(
                f"{op} reading a quantized tensor: onnxruntime runs it as {float_op.fused_by_onnxruntime}, whose "
                "arithmetic this reference does not model (a float op here would differ by a step)"
            )
        self._check_outputs(node)
        self._materialize = handler.tensors == "float" or on_values
        try:
            handler.from_onnx(node, index, a, self)
        finally:
            self._materialize = False
        self._check_read(node, a)

    def _check_read(self, node, a: _Attrs) -> None:
        """OnnxUnsupported where the converter (or the folding) left an attribute unread that is not
        at ONNX's default: ignored, it would change what the node computes without a word."""
        left = _unread(a, _schema(node, self.opset))  # its form was checked first (`_check_forms`)
        if left:
            raise OnnxUnsupported(f"attribute {', '.join(left)} (not supported)")

    # -- quantized models ------------------------------------------------------------------------
    def _float_on_dequantized(self, node) -> bool:
        """Whether a node that reads quantized tensors only through DequantizeLinear (QDQ format) is a
        float op: its output is not read by one QuantizeLinear alone (or is the graph output), so no
        quantized op stands in for it (onnxruntime runs the float op on the dequantized values)."""
        quantized = [t for t in node.input if t and self.is_quantized(t)]
        if any(t not in self.dq_views for t in quantized):
            return False
        return self._quantize_reader(node) is None

    def _quantize_reader(self, node):
        """The QuantizeLinear that alone reads node's output (not the graph output), else None."""
        readers = self.reader_nodes(node.output[0])
        alone = node.output[0] != self.output_name and len(readers) == 1
        return readers[0] if alone and onnx_key(readers[0]) == "QuantizeLinear" else None

    def is_quantized(self, tensor) -> bool:
        """Whether ONNX `tensor` is quantized, or a DequantizeLinear of a quantized tensor."""
        return tensor in self.dq_views or self.q.get(self.alias.get(tensor, "")) is not None

    def quantization(self, tensor) -> QParams | None:
        """The QParams of a graph tensor (None: float32)."""
        return self.q.get(tensor)

    def dq_view(self, node, index, base):
        """Node's output stands for the quantized graph tensor `base` (a DequantizeLinear of it, or
        an Identity of one); as the graph output, made a dequantize node named after the node."""
        self.dq_views[node.output[0]] = base
        if node.output[0] == self.output_name:
            self.add(node, index, "dequantize", [base])

    def _dequantize(self, base) -> str:
        if base not in self._dequantized:
            self._dequantized[base] = self._emit(self._unique(f"{base}_dequantized"), "dequantize", (base,))
        return self._dequantized[base]

    def scale_zero_point(self, node, k_scale, k_zero, what, dtype="uint8") -> QParams:
        """The per-tensor quantization a node's scale (input k_scale) and zero point (k_zero;
        absent: 0 of a QuantizeLinear's `output_dtype`, else of `dtype`, the type of the codes the
        node reads) give, checked: a positive finite float32 scalar, an int8/uint8 scalar."""
        s = self.const(node, k_scale, f"{what} scale")
        z = self.const(node, k_zero, f"{what} zero point", required=False)
        code = _attrs(node).get("output_dtype", 0) if onnx_key(node) == "QuantizeLinear" else 0
        typed = {0: None, 2: np.dtype(np.uint8), 3: np.dtype(np.int8)}  # TensorProto UINT8, INT8
        if code not in typed:
            raise OnnxUnsupported(f"{what}: output_dtype {code}; supported: int8 (3), uint8 (2)")
        if z is not None and typed[code] not in (None, np.asarray(z).dtype):
            found = np.asarray(z).dtype
            raise ModelError(f"node '{node.name}': output_dtype {typed[code]} and a zero point of {found}")
        z = np.zeros((), typed[code] or np.dtype(dtype)) if z is None else np.asarray(z)
        if s.size != 1 or z.size != 1:
            raise OnnxUnsupported(f"{what}: per-axis quantization of activations; expects one scale and zero point")
        scalars_only = onnx_key(node) in _SCALARS_ONLY
        if not (is_scalar(s) and is_scalar(z)) or scalars_only and (np.ndim(s) or z.ndim):  # as onnxruntime
            shapes, want = f"{np.shape(s)} and {z.shape}", "()" if scalars_only else "() or (1,)"
            raise OnnxUnsupported(f"{what}: scale and zero point of shapes {shapes}; expects scalars, of shape {want}")
        if z.dtype not in (np.int8, np.uint8):
            raise OnnxUnsupported(f"{what}: zero point of type {z.dtype}; supported: int8, uint8")
        scale = np.float32(np.asarray(s).reshape(-1)[0])
        if s.dtype != np.float32 or not (np.isfinite(scale) and scale > 0):
            raise ModelError(f"node '{node.name}': {what} scale expects a positive finite float32, found {s.dtype} {s}")
        return QParams(float(scale), int(z.reshape(-1)[0]), z.dtype.name)

    def input_q(self, node, k, k_scale, k_zero) -> str:
        """QOperator: the graph tensor at input k, checked to be quantized with the scale and zero
        point the node gives at inputs k_scale and k_zero."""
        x = self.data(node, k)
        have = self.q.get(x)
        want = self.scale_zero_point(node, k_scale, k_zero, f"input {k}", "uint8" if have is None else have.dtype)
        if have != want:
            raise OnnxUnsupported(f"input {k} ('{node.input[k]}') is quantized as {have}, the node reads it as {want}")
        return x

    def output_q(self, node) -> QParams:
        """QDQ: the quantization of node's output, from the one QuantizeLinear that reads it."""
        q = self._quantize_reader(node)
        if q is None:
            raise OnnxUnsupported("on dequantized inputs, its output must be read by one QuantizeLinear (QDQ format)")
        return self.scale_zero_point(q, 1, 2, "output")

    def qconst(self, node, k, what, required=True) -> QConst | None:
        """QDQ: the integer initializer, scale and zero point of the DequantizeLinear feeding input k."""
        t = _input_name(node, k, what, required)
        if not t:
            return None
        dq = self.producer.get(t)
        if dq is None or onnx_key(dq) != "DequantizeLinear" or dq.input[0] not in self.values:
            raise OnnxUnsupported(
                f"{what} ('{t}') expects a DequantizeLinear of an initializer, or of a QuantizeLinear of a float32 "
                "initializer to int8/uint8 per tensor or per axis (QDQ format)"
            )
        q = self.values[dq.input[0]]
        scale = np.asarray(self.const(dq, 1, f"{what} scale"))
        zp = self.const(dq, 2, f"{what} zero point", required=False)
        at_most_1d(f"{what} scale and zero point", scale, zp)
        zp = np.zeros(1, q.dtype) if zp is None else np.asarray(zp)
        if scale.dtype != np.float32 or not np.all(np.isfinite(scale) & (scale > 0)):
            raise ModelError(f"node '{dq.name}': {what} scale expects positive finite float32 values")
        axis = int(_attrs(dq).get("axis", 1))
        return QConst(q, scale.reshape(-1), zp.reshape(-1), axis + q.ndim if axis < 0 else axis)

    def add_quantized(self, node, index, op, inputs, attrs, params=None, base=None, site=None):
        """Add a quantized producer (conv, linear, add). onnxruntime's quantizer drops a ReLU or
        Clip(0, 6) after such a producer when the producer's output range starts at 0 (its zero
        point is the type's minimum) and writes the activation's output tensor instead; then a
        qrelu site follows the producer, named after that tensor (`site`, QDQ format) or after the
        producer with ".relu" (QOperator format, where the tensor's name is gone), unless the
        output is read by an explicit Relu or Clip. The qrelu changes no value (docs/int8.md)."""
        name = self.add(node, index, op, inputs, attrs, params, base=base)
        q = self.q.get(name)
        if q is None or q.zero_point != (0 if q.dtype == "uint8" else -128) or self._explicit_activation(node):
            return name
        base_name = f"{name}.relu" if site is None else (_tensor_node_name(site) or f"{name}.relu")
        self.alias[node.output[0]] = self._emit(self._unique(base_name), "qrelu", (name,))
        return name

    def _explicit_activation(self, node) -> bool:
        """Whether node's output reaches a Relu or Clip directly, or through QuantizeLinear ->
        DequantizeLinear (QDQ with the activations kept)."""
        todo, seen = [node.output[0]], set()
        while todo:
            t = todo.pop()
            for r in self.reader_nodes(t):
                key = onnx_key(r)
                if key in _FOLDABLE_ACTIVATIONS:
                    return True
                if key in ("QuantizeLinear", "DequantizeLinear", "Identity") and r.output[0] not in seen:
                    seen.add(r.output[0])
                    todo.append(r.output[0])
        return False

    def tensor_name(self, tensor) -> str:
        """A graph name after an ONNX tensor's name (torch's '/a/relu/Relu_output_0' gives 'a.relu')."""
        return _tensor_node_name(tensor) or "tensor"

    def qoperator_name(self, node, float_type) -> str:
        """A graph name for a QOperator node: onnxruntime's quantizer names it after the float node
        with "_quant" appended, which goes."""
        return graph_node_name(node.name.removesuffix("_quant"), float_type)

    def spatial(self, node, a, x, kernel, dilation=(1, 1)):
        """Strides and (top, left, bottom, right) pads from ONNX attributes, auto_pad resolved.

        auto_pad SAME_* and VALID are refused where ONNX implementations disagree on what they
        mean: with ceil_mode (SAME: onnx's shape inference rounds the output size up, onnxruntime
        does not, onnx's reference refuses; VALID, where the sizes differ: onnxruntime sizes the
        output as without auto_pad, the spec's formula and onnx's reference one smaller), and
        SAME_* where the output size ceil(size / stride) asks for a negative total padding (the
        windows end before the input does; onnxruntime and onnx's reference then shift the
        windows, each rounding the shift its own way, TensorFlow does not)."""
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
        if auto not in ("VALID", "SAME_UPPER", "SAME_LOWER"):
            raise OnnxUnsupported(f"auto_pad '{auto}'")
        hw = self.shape(x)[1:]
        ceil = a.get("ceil_mode", 0)
        if auto == "VALID":
            extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
            sizes = zip(hw, extents, stride, strict=True)
            if ceil and any(-(-(n - e) // s) + 1 != -(-(n - e + 1) // s) for n, e, s in sizes):
                raise OnnxUnsupported(  # onnxruntime: as pads 0 with ceil_mode; the spec and its reference: one less
                    f"auto_pad VALID with ceil_mode 1 on input {tuple(hw)} (ONNX implementations differ on its "
                    "output size; write pads)"
                )
            return stride, [0, 0, 0, 0]
        if ceil:
            raise OnnxUnsupported(f"auto_pad {auto} with ceil_mode 1 (ONNX implementations differ on it; write pads)")
        begin, end = [], []
        for axis, size, k, s, d in zip("HW", hw, kernel, stride, dilation, strict=True):
            total = (-(-size // s) - 1) * s + (k - 1) * d + 1 - size
            if total < 0:
                raise OnnxUnsupported(
                    f"auto_pad {auto} asks for padding {total} along {axis} (size {size}, kernel {k}, stride {s}): "
                    "ONNX implementations differ on which pixels such windows read; write pads"
                )
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return stride, begin + end


def _tensor_node_name(tensor: str) -> str:
    """A graph name from an ONNX tensor name: torch's '/layer1/relu/Relu_output_0' gives 'layer1.relu'."""
    t = re.sub(r"_output_\d+$", "", tensor)
    last = t.rsplit("/", 1)[-1]
    typ = re.fullmatch(r"(Relu|Clip)(_\d+)?", last)
    return graph_node_name(t, typ.group(1) if typ else "")


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
