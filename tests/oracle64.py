"""A plain NumPy float64 interpreter of a velcro-model file as written (docs/formats.md), for tests.

It reads the HDF5 file with h5py alone and runs the nodes one at a time in the file's node order:
no batch-norm folding, no plan, no shared buffers, nothing imported from velcro_ref. Every op of the
format is here, with PyTorch's semantics (the docs' output-size rule, -inf padding for max pooling,
the avg-pool divisor that counts padding only up to the padded edge). In masked-equivalence mode a
site's masked elements are overwritten with their constants right after the site is computed, and
the walk goes on from there.

Beside every value the walk carries an error scale for a float32 engine running the same graph:
`magnitude` (per element, the same graph run on absolute values: |W| * |x| + |b| and so on, an
upper bound of every term that reaches the element) and `rel` (per tensor, the sum over the
longest chain of ops of (terms summed + a few) * u, u = 2**-24). A float32 evaluation of a K-term
sum in any order is off by at most K * u * (sum of |terms|) (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., eq. 3.5); ReLU, max and clamps do not grow an error; batch norm
folded into the conv before it rounds the weights once more, which the batch norm's own terms
cover. So the engine's value of a tensor lies within rel * magnitude of the exact one, and
`tolerance(name)` is twice that.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import h5py
import numpy as np

INPUT = "input"
ACTIVATIONS = ("relu", "relu6")
U32 = 2.0**-24  # unit roundoff of float32
SLACK = 4  # rounding steps per op beyond its summed terms (scale/shift, division, the final store)


class OracleError(Exception):
    """The file is not a model the oracle can read as written."""


@dataclass
class ModelFile:
    """A model file as written: the graph JSON, float32 parameters by key, the stored fingerprint."""

    graph: dict
    params: dict
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def nodes(self) -> list:
        return self.graph["nodes"]

    @property
    def output(self) -> str:
        return self.graph["output"]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.graph["input_shape"])

    def sites(self) -> list[str]:
        """Names of the activation nodes (relu, relu6) in node order."""
        return [n["name"] for n in self.nodes if n["op"] in ACTIVATIONS]


# --- file I/O --------------------------------------------------------------------------------------------


def decode_key(h5_name: str) -> str:
    """A parameter key from its dataset name: '%2F' is '/', '%25' is '%' (one left-to-right pass)."""
    return re.sub(r"%(2F|25)", lambda m: "/" if m.group(1) == "2F" else "%", h5_name)


def encode_key(key: str) -> str:
    return "".join({"%": "%25", "/": "%2F"}.get(ch, ch) for ch in key)


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _text(v[()])
    return str(v)


def read_model(path) -> ModelFile:
    """Read a velcro-model file with h5py: graph JSON attribute, float32 `params/<key>` datasets."""
    with h5py.File(path, "r") as f:
        if _text(f.attrs["format"]) != "velcro-model" or int(f.attrs["format_version"]) != 1:
            raise OracleError(f"{path}: not a velcro-model version 1 file")
        graph = json.loads(_text(f.attrs["graph"]))
        meta = json.loads(_text(f.attrs["meta"])) if "meta" in f.attrs else {}
        params = {}
        for name, ds in f["params"].items():
            a = ds[()]
            if a.dtype != np.float32:
                raise OracleError(f"{path}: parameter {name!r} is {a.dtype}, the format stores float32")
            params[decode_key(name)] = a
        return ModelFile(graph, params, _text(f.attrs["fingerprint"]), meta)


def fingerprint(graph: dict, params: dict) -> str:
    """sha256 over the graph JSON (sorted keys) and every parameter's key, shape and float32 bytes, in key order."""
    h = hashlib.sha256(json.dumps(graph, sort_keys=True).encode())
    for key in sorted(params):
        a = np.ascontiguousarray(params[key], dtype=np.float32)
        h.update(key.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _text_attr(obj, name, text):
    data = text.encode("utf-8")
    obj.attrs.create(name, data=np.bytes_(data), dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def write_model(path, input_shape, output, nodes, params, meta=None) -> str:
    """Write a model file from the docs alone (HDF5 1.8 format, fixed-length UTF-8 text attributes).

    nodes: dicts {"name", "op", "inputs", "attrs", "params"}; params: key -> array (stored float32).
    Returns the fingerprint.
    """
    graph = {"input_shape": list(input_shape), "output": output, "nodes": nodes}
    params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    fp = fingerprint(graph, params)
    with h5py.File(path, "w", libver=("v108", "v108")) as f:
        _text_attr(f, "format", "velcro-model")
        f.attrs["format_version"] = 1
        _text_attr(f, "fingerprint", fp)
        _text_attr(f, "graph", json.dumps(graph))
        _text_attr(f, "meta", json.dumps(meta or {}))
        g = f.create_group("params")
        for key in sorted(params):
            g.create_dataset(encode_key(key), data=params[key])
    return fp


# --- ops: (values, magnitudes) in float64 -----------------------------------------------------------------


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _pads(v):
    if np.isscalar(v):
        return (int(v),) * 4
    if len(v) == 2:
        return (int(v[0]), int(v[1]), int(v[0]), int(v[1]))
    return tuple(int(p) for p in v)


def _attr(node, key):
    try:
        return node["attrs"][key]
    except KeyError:
        raise OracleError(f"node {node['name']!r}: attribute {key!r} missing (the oracle takes no defaults)") from None


def out_size(size, k, stride, pad_lo, pad_hi, dilation=1, ceil_mode=False):
    """docs/formats.md: floor((size + pads - dilation*(k-1) - 1) / stride) + 1; under ceil_mode the
    ceiling, as long as the last window starts inside the left-padded input."""
    num = size + pad_lo + pad_hi - dilation * (k - 1) - 1
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_lo:
        out -= 1
    return out


def conv2d(x, w, b, stride, dilation, pads, groups):
    """x (N, C, H, W), w (K, C/groups, kh, kw), b (K,) or None; zero padding (top, left, bottom, right)."""
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = stride, dilation, pads
    if c != cg * groups or k % groups:
        raise OracleError(f"conv2d: {c} input channels, weight {w.shape}, groups {groups}")
    oh, ow = out_size(h, kh, sh, pt, pb, dh), out_size(wd, kw, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, k, oh, ow))
    kg = k // groups
    for g in range(groups):
        xg, wg = xp[:, g * cg : (g + 1) * cg], w[g * kg : (g + 1) * kg]
        for fy in range(kh):
            for fx in range(kw):
                y0, x0 = fy * dh, fx * dw
                patch = xg[:, :, y0 : y0 + sh * (oh - 1) + 1 : sh, x0 : x0 + sw * (ow - 1) + 1 : sw]
                out[:, g * kg : (g + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, wg[:, :, fy, fx])
    if b is not None:
        out += b[None, :, None, None]
    return out


def _pool_windows(x, kernel, stride, pads, ceil_mode, fill):
    """Output size and the window taps of x (N, C, H, W): padded with `fill` on every side as far
    as the last window reaches (beyond the bottom/right pads under ceil_mode)."""
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, stride, pads
    oh, ow = out_size(h, kh, sh, pt, pb, 1, ceil_mode), out_size(w, kw, sw, pl, pr, 1, ceil_mode)
    extra_b = max(pb, (oh - 1) * sh + kh - pt - h)
    extra_r = max(pr, (ow - 1) * sw + kw - pl - w)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, extra_b), (pl, extra_r)), constant_values=fill)
    taps = [
        xp[:, :, fy : fy + sh * (oh - 1) + 1 : sh, fx : fx + sw * (ow - 1) + 1 : sw]
        for fy in range(kh)
        for fx in range(kw)
    ]
    return oh, ow, taps


def max_pool(x, kernel, stride, pads, ceil_mode):
    _, _, taps = _pool_windows(x, kernel, stride, pads, ceil_mode, -np.inf)
    return np.max(taps, axis=0)


def avg_pool(x, kernel, stride, pads, ceil_mode, count_include_pad):
    """Sum over the window / divisor. With count_include_pad the divisor counts the window's
    positions up to the padded edge (H + bottom pad), else only the positions inside the input."""
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, stride, pads
    oh, ow, taps = _pool_windows(x, kernel, stride, pads, ceil_mode, 0.0)

    def counts(n_out, size, k, s, lo, hi):
        start = np.arange(n_out) * s - lo
        if count_include_pad:
            return np.minimum(start + k, size + hi) - start
        return np.minimum(start + k, size) - np.maximum(start, 0)

    div = np.outer(counts(oh, h, kh, sh, pt, pb), counts(ow, w, kw, sw, pl, pr))
    return np.sum(taps, axis=0) / div


def softmax(x):
    """Over axis 1 (the features of an (N, F) tensor)."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass
class Run:
    """Every tensor of one walk: float64 values, per-element magnitudes, per-tensor relative error scale."""

    values: dict
    magnitude: dict
    rel: dict

    def __getitem__(self, name):
        return self.values[name]

    def tolerance(self, name) -> np.ndarray:
        """Per element: how far a float32 engine's value of tensor `name` may lie from this one."""
        return 2.0 * self.rel[name] * self.magnitude[name] + np.finfo(np.float32).tiny


def _site_masks(masks):
    if masks is None:
        return {}
    return getattr(masks, "sites", masks)


def run(model: ModelFile, x, masks=None) -> Run:
    """Run a batch x (N, C, H, W) through every node of `model` in node order, in float64.

    masks: None, or {site: (mask bool (C, H, W), constants)} (or an object with such a `.sites`):
    after a site is computed, its masked elements become the constants (masked equivalence).
    Returns a Run with every tensor, the graph input included.
    """
    x = np.asarray(x, dtype=np.float64)
    sites = _site_masks(masks)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    val, mag, rel = {INPUT: x}, {INPUT: np.abs(x)}, {INPUT: 0.0}
    for node in model.nodes:
        name, op = node["name"], node["op"]
        if name in val:
            raise OracleError(f"node {name!r}: a tensor of that name exists already")
        xs = [val[t] for t in node["inputs"]]
        ms = [mag[t] for t in node["inputs"]]
        prm = {role: p[key] for role, key in node.get("params", {}).items()}
        rel_in = max(rel[t] for t in node["inputs"])
        terms = 1  # values summed into one output element
        if op == "conv2d":
            w = prm["weight"]
            args = (
                _pair(_attr(node, "stride")),
                _pair(_attr(node, "dilation")),
                _pads(_attr(node, "pads")),
                int(_attr(node, "groups")),
            )
            if w.shape[0] != int(_attr(node, "out_channels")) or tuple(w.shape[2:]) != _pair(_attr(node, "kernel")):
                raise OracleError(f"node {name!r}: weight {w.shape} disagrees with out_channels and kernel")
            b = prm.get("bias")
            y = conv2d(xs[0], w, b, *args)
            m = conv2d(ms[0], np.abs(w), None if b is None else np.abs(b), *args)
            terms = int(np.prod(w.shape[1:])) + 1
        elif op == "batch_norm":
            eps = float(_attr(node, "eps"))
            s = prm["gamma"] / np.sqrt(prm["var"] + eps)
            c = (slice(None), None, None)
            y = (xs[0] - prm["mean"][c]) * s[c] + prm["beta"][c]
            m = np.abs(s)[c] * ms[0] + np.abs(s * prm["mean"])[c] + np.abs(prm["beta"])[c]
            terms = 3
        elif op == "relu":
            y, m = np.maximum(xs[0], 0.0), ms[0]
        elif op == "relu6":
            y, m = np.clip(xs[0], 0.0, 6.0), ms[0]
        elif op in ("max_pool", "avg_pool"):
            kernel, stride, pads = (
                _pair(_attr(node, "kernel")),
                _pair(_attr(node, "stride")),
                _pads(_attr(node, "pads")),
            )
            ceil_mode = bool(_attr(node, "ceil_mode"))
            if op == "max_pool":
                y = max_pool(xs[0], kernel, stride, pads, ceil_mode)
                m = max_pool(ms[0], kernel, stride, pads, ceil_mode)
            else:
                cip = bool(_attr(node, "count_include_pad"))
                y = avg_pool(xs[0], kernel, stride, pads, ceil_mode, cip)
                m = avg_pool(ms[0], kernel, stride, pads, ceil_mode, cip)
                terms = kernel[0] * kernel[1]
        elif op == "global_avg_pool":
            y, m = xs[0].mean(axis=(2, 3), keepdims=True), ms[0].mean(axis=(2, 3), keepdims=True)
            terms = xs[0].shape[2] * xs[0].shape[3]
        elif op == "add":
            y, m = xs[0] + xs[1], ms[0] + ms[1]
            terms = 2
        elif op == "concat":
            y, m = np.concatenate(xs, axis=1), np.concatenate(ms, axis=1)
        elif op == "flatten":
            y, m = xs[0].reshape(len(x), -1), ms[0].reshape(len(x), -1)
        elif op == "dropout":  # inference: the identity
            y, m = xs[0], ms[0]
        elif op == "softmax":
            if xs[0].ndim != 2:
                raise OracleError(f"node {name!r}: softmax of a rank-{xs[0].ndim} tensor (the oracle takes (N, F))")
            y = softmax(xs[0])
            # inputs off by at most E change every probability by a factor within exp(+-2E) ~ 1 +- 2E
            m = y * (1.0 + 2.0 * ms[0].max(axis=1, keepdims=True))
            terms = xs[0].shape[1] + SLACK  # the sum, and exp's own few ulps
        elif op == "linear":
            if xs[0].ndim != 2:
                raise OracleError(f"node {name!r}: linear of a rank-{xs[0].ndim} tensor")
            w, b = prm["weight"], prm.get("bias")
            y, m = xs[0] @ w.T, ms[0] @ np.abs(w).T
            if b is not None:
                y, m = y + b, m + np.abs(b)
            terms = w.shape[1] + 1
        else:
            raise OracleError(f"node {name!r}: unknown op {op!r}")
        if name in sites:
            mask, const = (np.asarray(a) for a in sites[name])
            mask = mask.astype(bool)
            const = np.asarray(const, dtype=np.float32).astype(np.float64)
            y = np.where(mask[None], const[None], y)
            m = np.where(mask[None], np.abs(const)[None], m)
        val[name], mag[name] = y, m
        rel[name] = rel_in + (terms + SLACK) * U32
    return Run(val, mag, rel)


def live_nodes(model: ModelFile) -> set[str]:
    """Names of the nodes on some path to the graph output (the output's node included)."""
    by_name = {n["name"]: n for n in model.nodes}
    live, stack = set(), [model.output]
    while stack:
        t = stack.pop()
        if t in by_name and t not in live:
            live.add(t)
            stack.extend(by_name[t]["inputs"])
    return live
