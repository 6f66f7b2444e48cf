"""RTL test vectors of one int8 conv layer: `$readmemh` hex files and a `manifest.json`.

Two views of the same layer (docs/formats.md, docs/rtl.md): its tensors in natural order, for any
RTL, and its tiles on a ROWS x COLS output-stationary array in streaming order: which output
element each PE computes in which tile, the operand rows each tile streams, its skip bits and
constants, and the expected int32 accumulators and int8 outputs of each array row. The expected
values are inputs here, never computed: they come from the golden reference (`layer_from_golden`
reads one layer of a `velcro golden` file of an int8 model; `velcro rtl-vectors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UsageError, VelcroError
from .fileio import parse_json, write_text
from .golden_vectors import node_group
from .h5io import attr_str, escape_key
from .ops import REGISTRY

FORMAT = "velcro-rtl-vectors"
FORMAT_VERSION = 1
MAX_ARRAY = 256
ACCUMULATOR = "bias + sum over the window of (x - input_zero_point) * w, int32; 0 where masked"


class RtlVectorError(VelcroError):
    """Arrays for RTL vectors, or a vector directory, are invalid."""


@dataclass(frozen=True)
class QConvLayer:
    """One int8 conv layer of one image with its expected results, as the golden reference gives it.

    x (C, H, W) int8 or uint8; weight (K, C/groups, kh, kw) int8 (zero point 0); bias (K,) int32;
    pads (top, left, bottom, right). multiplier (K,) int32 and shift (K,) in [-31, 31] are
    TFLite's requantization parameters: real multiplier = multiplier * 2^(shift - 31).
    acc (K, OH, OW) int32 = bias + sum((x - x_zero_point) * w) (read only where not masked);
    y (K, OH, OW) int8 or uint8, equal to `constants` where `skip` is set.
    skip (K, OH, OW) bool and constants (K, OH, OW) of y's dtype, or None for a dense layer.
    y_min / y_max: the output clamp (default: y's dtype range; a fused ReLU raises y_min).
    """

    name: str
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    x_zero_point: int
    x_scale: float
    y_zero_point: int
    y_scale: float
    multiplier: np.ndarray
    shift: np.ndarray
    acc: np.ndarray
    y: np.ndarray
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    w_scales: np.ndarray | None = None
    skip: np.ndarray | None = None
    constants: np.ndarray | None = None
    y_min: int | None = None
    y_max: int | None = None


@dataclass(frozen=True)
class Tile:
    """One fold on the array: array row r computes output pixel pixels[r] (flat oy * OW + ox) of
    filters k0 .. k0 + n_cols - 1 of conv group `group`, one filter per array column."""

    index: int
    group: int
    k0: int
    n_cols: int
    pixels: tuple

    def element(self, r: int, c: int, out_width: int) -> tuple[int, int, int]:
        """(k, oy, ox) of the output element PE (r, c) computes in this tile."""
        oy, ox = divmod(self.pixels[r], out_width)
        return self.k0 + c, oy, ox


def _out_size(size, k, s, lo, hi, d):
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def _int_range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _check(ok, where, expected, found):
    if not ok:
        raise RtlVectorError(f"{where}: expected {expected}, found {found}")


def _check_layer(layer: QConvLayer) -> dict:
    """Validate every array of `layer`; returns the conv geometry."""
    n = f"layer '{layer.name}'"
    x, w = np.asarray(layer.x), np.asarray(layer.weight)
    _check(
        x.ndim == 3 and x.dtype in (np.int8, np.uint8),
        f"{n}: x",
        "an int8 or uint8 (C, H, W) array",
        f"{x.dtype} {x.shape}",
    )
    _check(
        w.ndim == 4 and w.dtype == np.int8,
        f"{n}: weight",
        "an int8 (K, C/groups, kh, kw) array",
        f"{w.dtype} {w.shape}",
    )
    c_in, h, wd = x.shape
    k, cg, kh, kw = w.shape
    g = layer.groups
    _check(
        isinstance(g, int) and g >= 1 and c_in % g == 0 and k % g == 0 and cg == c_in // g,
        f"{n}: groups",
        f"a divisor of C={c_in} and K={k} with C/groups = {cg}",
        g,
    )
    sh, sw = (int(v) for v in layer.stride)
    dh, dw = (int(v) for v in layer.dilation)
    pt, pl, pb, pr = (int(v) for v in layer.pads)
    _check(
        min(sh, sw, dh, dw) >= 1 and min(pt, pl, pb, pr) >= 0,
        f"{n}: stride/dilation/pads",
        "positive strides and dilations, pads >= 0",
        f"{layer.stride} {layer.dilation} {layer.pads}",
    )
    oh, ow = _out_size(h, kh, sh, pt, pb, dh), _out_size(wd, kw, sw, pl, pr, dw)
    _check(oh >= 1 and ow >= 1, f"{n}: output size", "at least 1x1", f"{oh}x{ow}")
    lo, hi = _int_range(x.dtype)
    _check(
        lo <= int(layer.x_zero_point) <= hi, f"{n}: x_zero_point", f"in [{lo}, {hi}] for {x.dtype}", layer.x_zero_point
    )
    for key, dtype in (("bias", np.int32), ("multiplier", np.int32)):
        a = np.asarray(getattr(layer, key))
        _check(a.shape == (k,) and a.dtype == dtype, f"{n}: {key}", f"{np.dtype(dtype)} ({k},)", f"{a.dtype} {a.shape}")
    s = np.asarray(layer.shift)
    _check(
        s.shape == (k,) and np.issubdtype(s.dtype, np.integer) and (s.size == 0 or -31 <= s.min() <= s.max() <= 31),
        f"{n}: shift",
        f"({k},) integers in [-31, 31]",
        f"{s.dtype} {s.shape}",
    )
    y, acc = np.asarray(layer.y), np.asarray(layer.acc)
    _check(
        y.shape == (k, oh, ow) and y.dtype in (np.int8, np.uint8),
        f"{n}: y",
        f"int8 or uint8 ({k}, {oh}, {ow})",
        f"{y.dtype} {y.shape}",
    )
    _check(
        acc.shape == (k, oh, ow) and acc.dtype == np.int32,
        f"{n}: acc",
        f"int32 ({k}, {oh}, {ow})",
        f"{acc.dtype} {acc.shape}",
    )
    ylo, yhi = _int_range(y.dtype)
    _check(
        ylo <= int(layer.y_zero_point) <= yhi,
        f"{n}: y_zero_point",
        f"in [{ylo}, {yhi}] for {y.dtype}",
        layer.y_zero_point,
    )
    y_min = ylo if layer.y_min is None else int(layer.y_min)
    y_max = yhi if layer.y_max is None else int(layer.y_max)
    _check(ylo <= y_min <= y_max <= yhi, f"{n}: y_min/y_max", f"{ylo} <= y_min <= y_max <= {yhi}", f"{y_min}, {y_max}")
    if (layer.skip is None) != (layer.constants is None):
        raise RtlVectorError(f"{n}: skip and constants: expected both or neither, found only one")
    if layer.skip is not None:
        skip, const = np.asarray(layer.skip), np.asarray(layer.constants)
        _check(
            skip.shape == (k, oh, ow) and skip.dtype == bool,
            f"{n}: skip",
            f"bool ({k}, {oh}, {ow})",
            f"{skip.dtype} {skip.shape}",
        )
        _check(
            const.shape == (k, oh, ow) and const.dtype == y.dtype,
            f"{n}: constants",
            f"{y.dtype} ({k}, {oh}, {ow})",
            f"{const.dtype} {const.shape}",
        )
        bad = np.argwhere(skip & (y != const))
        if len(bad):
            kk, yy, xx = (int(v) for v in bad[0])
            raise RtlVectorError(
                f"{n}: y at masked element (k={kk}, oy={yy}, ox={xx}): expected the constant "
                f"{int(const[kk, yy, xx])}, found {int(y[kk, yy, xx])}"
            )
    left = np.maximum(s.astype(np.int64), 0)[:, None, None]
    shifted = acc.astype(np.int64) << left  # |acc| < 2^31, left <= 31: within int64
    wide = (shifted < -(2**31)) | (shifted > 2**31 - 1)
    if layer.skip is not None:
        wide &= ~np.asarray(layer.skip)
    if wide.any():
        kk, yy, xx = (int(v) for v in np.argwhere(wide)[0])
        raise RtlVectorError(
            f"{n}: acc << shift leaves int32 at {int(wide.sum())} output(s), first (k={kk}, oy={yy}, ox={xx}): "
            f"{int(acc[kk, yy, xx])} << {int(s[kk])}; the golden output saturates there (docs/int8.md), "
            "the array's int32 shift wraps (docs/rtl.md)"
        )
    if layer.w_scales is not None:
        ws = np.asarray(layer.w_scales)
        _check(ws.shape in ((k,), ()), f"{n}: w_scales", f"a scalar or ({k},)", ws.shape)
    return {
        "c": c_in,
        "h": h,
        "w": wd,
        "k": k,
        "cg": cg,
        "kh": kh,
        "kw": kw,
        "oh": oh,
        "ow": ow,
        "g": g,
        "stride": (sh, sw),
        "dilation": (dh, dw),
        "pads": (pt, pl, pb, pr),
        "y_min": y_min,
        "y_max": y_max,
    }


def plan_tiles(skip, k: int, groups: int, n_pixels: int, rows: int, cols: int) -> list[Tile]:
    """Tiles of a conv layer on a rows x cols output-stationary array, in streaming order.

    Per conv group, filters go in chunks of `cols` consecutive filters; in each chunk the output
    pixels that any of its filters keeps (all of them without a mask) are packed `rows` to a fold
    in raster order (docs/simulator.md, "VELCRO on the accelerator"). skip: bool (k, n_pixels) or None.
    """
    kg = k // groups
    tiles = []
    for g in range(groups):
        for k0 in range(g * kg, (g + 1) * kg, cols):
            n_cols = min(cols, (g + 1) * kg - k0)
            if skip is None:
                needed = np.arange(n_pixels)
            else:
                needed = np.flatnonzero(~skip[k0 : k0 + n_cols].all(axis=0))
            for f in range(0, len(needed), rows):
                px = tuple(int(p) for p in needed[f : f + rows])
                tiles.append(Tile(len(tiles), g, k0, n_cols, px))
    return tiles


def _hex_lines(words, word_bits: int) -> str:
    digits = max(1, -(-word_bits // 4))
    return "".join(f"{v:0{digits}x}\n" for v in words)


def pack_words(lanes: np.ndarray, lane_bits: int) -> list[int]:
    """(n, L) integers -> n words of L * lane_bits bits, lane l in bits [l*b + b-1 : l*b] (two's complement)."""
    lanes = np.asarray(lanes, np.int64)
    u = (lanes & ((1 << lane_bits) - 1)).tolist()
    out = []
    for row in u:
        v = 0
        for lane in reversed(row):
            v = (v << lane_bits) | lane
        out.append(v)
    return out


def unpack_words(words, n_lanes: int, lane_bits: int, signed: bool) -> np.ndarray:
    """Inverse of pack_words: n words -> (n, n_lanes) int64."""
    mask = (1 << lane_bits) - 1
    out = np.empty((len(words), n_lanes), np.int64)
    for i, v in enumerate(words):
        for lane in range(n_lanes):
            out[i, lane] = (v >> (lane * lane_bits)) & mask
    if signed and lane_bits > 1:
        out[out >= 1 << (lane_bits - 1)] -= 1 << lane_bits
    return out


_HEX = frozenset("0123456789abcdefABCDEF_")
_LOWER_HEX = frozenset("0123456789abcdef")


def read_hex(path, word_bits: int | None = None) -> list[int]:
    """Words of a `$readmemh` file as unsigned ints (blank lines and // comments allowed; no @address).
    With word_bits, each word must be as the vector files write it (docs/formats.md): exactly
    ceil(word_bits / 4) lowercase hex digits, its value below 2^word_bits; else any hex digits and
    '_'. RtlVectorError naming the line otherwise (a sign, a word cut short or too wide)."""
    digits = None if word_bits is None else max(1, -(-word_bits // 4))
    words = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("//", 1)[0].strip()
        if not text:
            continue
        if digits is None:
            ok = set(text) <= _HEX and text.strip("_") != ""
            expected = "a hex word"
        else:
            ok = len(text) == digits and set(text) <= _LOWER_HEX and int(text, 16) >> word_bits == 0
            expected = f"a word of {word_bits} bits as {digits} lowercase hex digits"
        if not ok:
            raise RtlVectorError(f"{path}:{n}: expected {expected}, found {text!r}")
        words.append(int(text.replace("_", ""), 16))
    return words


@dataclass
class _Files:
    root: Path
    entries: dict = field(default_factory=dict)

    def write(self, key, fname, lanes, lane_bits, signed, order, shape=None):
        lanes = np.asarray(lanes)
        if lanes.ndim == 1:
            lanes = lanes[:, None]
        n_lanes = lanes.shape[1]
        words = pack_words(lanes, lane_bits)
        write_text(self.root / fname, _hex_lines(words, n_lanes * lane_bits))
        entry = {
            "file": fname,
            "words": len(words),
            "word_bits": n_lanes * lane_bits,
            "lanes": n_lanes,
            "lane_bits": lane_bits,
            "signed": signed,
            "order": order,
        }
        if shape is not None:
            entry["shape"] = list(shape)
        self.entries[key] = entry


def write_rtl_vectors(layer: QConvLayer, out_dir, rows: int = 8, cols: int = 8) -> dict:
    """Write the hex files and manifest.json of `layer` for a rows x cols array into `out_dir`.

    Returns the manifest. Raises RtlVectorError for arrays that do not describe one int8 conv layer
    with consistent results, or an array smaller than 2x2 or larger than 256x256.
    """
    for key, v in (("rows", rows), ("cols", cols)):
        _check(isinstance(v, int) and 2 <= v <= MAX_ARRAY, f"array {key}", f"an integer in [2, {MAX_ARRAY}]", v)
    geo = _check_layer(layer)
    x, w = np.asarray(layer.x), np.asarray(layer.weight)
    k, cg, kh, kw, oh, ow, g = (geo[key] for key in ("k", "cg", "kh", "kw", "oh", "ow", "g"))
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = geo["stride"], geo["dilation"], geo["pads"]
    zx = int(layer.x_zero_point)
    skip = None if layer.skip is None else np.asarray(layer.skip)
    const = np.zeros((k, oh, ow), np.asarray(layer.y).dtype) if layer.constants is None else np.asarray(layer.constants)
    masked = np.zeros((k, oh, ow), bool) if skip is None else skip
    acc = np.where(masked, 0, np.asarray(layer.acc)).astype(np.int64)
    y = np.asarray(layer.y).astype(np.int64)
    shift = np.asarray(layer.shift).astype(np.int64)
    window = cg * kh * kw

    # Operand of every output pixel at every window position (c, fy, fx), padding read as zx.
    xp = np.full((geo["c"], geo["h"] + pt + pb, geo["w"] + pl + pr), zx, np.int64)
    xp[:, pt : pt + geo["h"], pl : pl + geo["w"]] = x
    patches = np.empty((geo["c"], kh, kw, oh, ow), np.int64)
    for fy in range(kh):
        for fx in range(kw):
            patches[:, fy, fx] = xp[
                :, fy * dh : fy * dh + sh * (oh - 1) + 1 : sh, fx * dw : fx * dw + sw * (ow - 1) + 1 : sw
            ]
    patches = patches.reshape(g, window, oh * ow)
    w_rows = w.astype(np.int64).reshape(k, window)

    tiles = plan_tiles(None if skip is None else skip.reshape(k, oh * ow), k, g, oh * ow, rows, cols)
    nt = len(tiles)
    act = np.full((nt, window, rows), zx, np.int64)
    wgt = np.zeros((nt, window, cols), np.int64)
    t_skip = np.ones((nt, rows, cols), np.int64)
    t_const = np.zeros((nt, rows, cols), np.int64)
    t_bias = np.zeros((nt, cols), np.int64)
    t_mult = np.zeros((nt, cols), np.int64)
    t_shift = np.zeros((nt, cols), np.int64)
    t_acc = np.zeros((nt, rows, cols), np.int64)
    t_out = np.zeros((nt, rows, cols), np.int64)
    flat = {name: a.reshape(k, oh * ow) for name, a in (("m", masked), ("c", const), ("a", acc), ("y", y))}
    for t in tiles:
        px = np.asarray(t.pixels)
        ks = slice(t.k0, t.k0 + t.n_cols)
        nr, nc = len(px), t.n_cols
        act[t.index, :, :nr] = patches[t.group][:, px]
        wgt[t.index, :, :nc] = w_rows[ks].T
        t_skip[t.index, :nr, :nc] = flat["m"][ks][:, px].T
        t_const[t.index, :nr, :nc] = np.where(flat["m"][ks][:, px].T, flat["c"][ks][:, px].T, 0)
        t_acc[t.index, :nr, :nc] = flat["a"][ks][:, px].T
        t_out[t.index, :nr, :nc] = np.where(flat["m"][ks][:, px].T, flat["c"][ks][:, px].T, flat["y"][ks][:, px].T)
        t_bias[t.index, :nc] = np.asarray(layer.bias)[ks]
        t_mult[t.index, :nc] = np.asarray(layer.multiplier)[ks]
        t_shift[t.index, :nc] = shift[ks]

    root = Path(out_dir)
    # manifest.json goes last and an old one goes first: an interrupted run leaves no manifest,
    # never one that describes other hex files.
    (root / "manifest.json").unlink(missing_ok=True)
    f = _Files(root)
    x_signed, y_signed = x.dtype == np.int8, np.asarray(layer.y).dtype == np.int8
    f.write("input", "input.hex", x.reshape(-1), 8, x_signed, "c, h, w", x.shape)
    f.write("weight", "weight.hex", w.reshape(-1), 8, True, "k, c, fy, fx", w.shape)
    f.write("bias", "bias.hex", np.asarray(layer.bias), 32, True, "k", (k,))
    f.write("multiplier", "multiplier.hex", np.asarray(layer.multiplier), 32, True, "k", (k,))
    f.write("shift", "shift.hex", shift, 8, True, "k", (k,))
    f.write("skip", "skip.hex", masked.reshape(-1), 1, False, "k, oy, ox", (k, oh, ow))
    kept = np.where(masked, const, 0).reshape(-1)  # as documented: 0 where not masked, as tile_const
    f.write("constants", "constants.hex", kept, 8, y_signed, "k, oy, ox", (k, oh, ow))
    f.write("acc", "acc.hex", acc.reshape(-1), 32, True, "k, oy, ox", (k, oh, ow))
    f.write("output", "output.hex", y.reshape(-1), 8, y_signed, "k, oy, ox", (k, oh, ow))
    f.write("tile_act", "tile_act.hex", act.reshape(nt * window, rows), 8, x_signed, "tile, t; lane = array row")
    f.write("tile_wgt", "tile_wgt.hex", wgt.reshape(nt * window, cols), 8, True, "tile, t; lane = array column")
    f.write("tile_skip", "tile_skip.hex", t_skip.reshape(nt, rows * cols), 1, False, "tile; lane = r * cols + c")
    f.write("tile_const", "tile_const.hex", t_const.reshape(nt, rows * cols), 8, y_signed, "tile; lane = r * cols + c")
    f.write("tile_bias", "tile_bias.hex", t_bias, 32, True, "tile; lane = array column")
    f.write("tile_mult", "tile_mult.hex", t_mult, 32, True, "tile; lane = array column")
    f.write("tile_shift", "tile_shift.hex", t_shift, 8, True, "tile; lane = array column")
    f.write("tile_acc", "tile_acc.hex", t_acc.reshape(nt * rows, cols), 32, True, "tile, r; lane = array column")
    f.write("tile_out", "tile_out.hex", t_out.reshape(nt * rows, cols), 8, y_signed, "tile, r; lane = array column")

    ws = None if layer.w_scales is None else np.broadcast_to(np.asarray(layer.w_scales, np.float64), (k,)).tolist()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layer": layer.name,
        "op": "conv2d",
        "array": {"rows": rows, "cols": cols, "dataflow": "output_stationary"},
        "conv": {
            "in_channels": geo["c"],
            "in_height": geo["h"],
            "in_width": geo["w"],
            "out_channels": k,
            "out_height": oh,
            "out_width": ow,
            "kernel": [kh, kw],
            "stride": [sh, sw],
            "dilation": [dh, dw],
            "pads": [pt, pl, pb, pr],
            "groups": g,
        },
        "quant": {
            "input_dtype": str(x.dtype),
            "input_zero_point": zx,
            "input_scale": float(layer.x_scale),
            "weight_dtype": "int8",
            "weight_zero_point": 0,
            "weight_scales": ws,
            "output_dtype": str(np.asarray(layer.y).dtype),
            "output_zero_point": int(layer.y_zero_point),
            "output_scale": float(layer.y_scale),
            "output_min": geo["y_min"],
            "output_max": geo["y_max"],
            "requant": "fixed_point",
            "requant_formula": "clamp(RoundingDivideByPOT(SaturatingRoundingDoublingHighMul((acc << max(shift, 0)), "
            "multiplier), max(-shift, 0)) + output_zero_point, output_min, output_max)",
            "accumulator": ACCUMULATOR,
        },
        "window": window,
        "window_order": "c, fy, fx (c within the group); padding reads input_zero_point",
        "counts": {
            "tiles": nt,
            "output_elements": int(k * oh * ow),
            "masked_elements": int(masked.sum()),
            "macs_dense": int(k * oh * ow * window),
            "macs_executed": int((~masked).sum() * window),
        },
        "files": f.entries,
        "tiles": [{"group": t.group, "k0": t.k0, "cols": t.n_cols, "pixels": list(t.pixels)} for t in tiles],
    }
    write_text(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


@dataclass(frozen=True)
class RtlVectors:
    """A vector directory read back: the manifest, its tiles, and its hex files on demand."""

    root: Path
    manifest: dict
    tiles: tuple

    @property
    def rows(self) -> int:
        return self.manifest["array"]["rows"]

    @property
    def cols(self) -> int:
        return self.manifest["array"]["cols"]

    @property
    def window(self) -> int:
        return self.manifest["window"]

    @property
    def layer(self) -> str:
        return self.manifest["layer"]

    def words(self, key: str) -> list[int]:
        """The words of hex file `key` (a key of manifest["files"]) as unsigned ints."""
        entry = self._entry(key)
        words = read_hex(self.root / entry["file"], entry["word_bits"])
        _check(len(words) == entry["words"], f"{self.root / entry['file']}", f"{entry['words']} words", len(words))
        return words

    def lanes(self, key: str) -> np.ndarray:
        """(words, lanes) int64 of hex file `key`, signed where the manifest says so."""
        e = self._entry(key)
        return unpack_words(self.words(key), e["lanes"], e["lane_bits"], e["signed"])

    def tensor(self, key: str) -> np.ndarray:
        """A natural-order file (input, weight, bias, multiplier, shift, skip, constants, acc, output) in its shape."""
        e = self._entry(key)
        _check("shape" in e, f"{self.root}: file '{key}'", "a natural-order tensor", "a tile stream")
        a = self.lanes(key).reshape(e["shape"])
        return a.astype(bool) if e["lane_bits"] == 1 else a

    def _entry(self, key):
        files = self.manifest["files"]
        if key not in files:
            raise RtlVectorError(f"{self.root}/manifest.json: no file '{key}'; valid: {', '.join(files)}")
        return files[key]


def read_rtl_vectors(path) -> RtlVectors:
    """Read `path`/manifest.json (written by write_rtl_vectors) and check every hex file it lists
    against it (`RtlVectors.words`: the count of words, their digits and width). Raises
    RtlVectorError if it is missing, of another format or a newer version, damaged (a field
    missing or of another type), or lists a file that is not there or not as it says."""
    root = Path(path)
    mpath = root / "manifest.json"
    try:
        manifest = parse_json(mpath.read_text())
    except FileNotFoundError:
        raise RtlVectorError(f"{mpath}: expected an RTL vector manifest, found no file") from None
    except (OSError, ValueError) as e:
        raise RtlVectorError(f"{mpath}: expected JSON, found an unreadable file ({e})") from None
    _check(
        isinstance(manifest, dict) and manifest.get("format") == FORMAT,
        f"{mpath}: format",
        FORMAT,
        manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__,
    )
    version = manifest.get("format_version")
    _check(
        isinstance(version, int) and 1 <= version <= FORMAT_VERSION,
        f"{mpath}: format_version",
        f"1..{FORMAT_VERSION}",
        version,
    )
    files = manifest.get("files")
    _check(isinstance(files, dict) and files, f"{mpath}: files", "a table of hex files", _shown(files))
    for key, entry in files.items():
        where = f"{mpath}: file '{key}'"
        _check(isinstance(entry, dict), where, "a table", _shown(entry))
        for name, ok in _ENTRY_FIELDS.items():
            _check(ok(entry.get(name)), f"{where}: {name}", _ENTRY_EXPECTED[name], _shown(entry.get(name)))
        bits = entry["lanes"] * entry["lane_bits"]
        _check(entry["word_bits"] == bits, f"{where}: word_bits", f"lanes x lane_bits = {bits}", entry["word_bits"])
        if "shape" in entry:
            shape = entry["shape"]
            ok = isinstance(shape, list) and all(_is_count(d) for d in shape)
            ok = ok and int(np.prod(shape, dtype=np.int64)) == entry["words"] * entry["lanes"]
            _check(ok, f"{where}: shape", "whole numbers whose product is words x lanes", _shown(shape))
        _check((root / entry["file"]).is_file(), where, f"{root / entry['file']} to exist", "no file")
    tiles = manifest.get("tiles")
    _check(isinstance(tiles, list), f"{mpath}: tiles", "a list", _shown(tiles))
    for i, t in enumerate(tiles):
        ok = isinstance(t, dict) and all(_is_count(t.get(k)) for k in ("group", "k0", "cols"))
        ok = ok and isinstance(t.get("pixels"), list) and all(_is_count(p) for p in t["pixels"])
        _check(ok, f"{mpath}: tile {i}", "group, k0, cols and pixels (whole numbers)", json.dumps(t)[:80])
    vectors = RtlVectors(
        root, manifest, tuple(Tile(i, t["group"], t["k0"], t["cols"], tuple(t["pixels"])) for i, t in enumerate(tiles))
    )
    for key in files:
        vectors.words(key)
    return vectors


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _shown(v) -> str:
    """A manifest value as a message shows it: its repr (numbers, text), its type name, or "nothing"."""
    return "nothing" if v is None else type(v).__name__ if not isinstance(v, (int, str)) else repr(v)


_ENTRY_FIELDS = {
    "file": lambda v: isinstance(v, str) and v != "",
    "words": _is_count,
    "lanes": lambda v: _is_count(v) and v > 0,
    "lane_bits": lambda v: _is_count(v) and v > 0,
    "word_bits": _is_count,
    "signed": lambda v: isinstance(v, bool),
}
_ENTRY_EXPECTED = {
    "file": "a file name",
    "words": "a whole number",
    "lanes": "a whole number above 0",
    "lane_bits": "a whole number above 0",
    "word_bits": "a whole number",
    "signed": "true or false",
}


def parse_array(text: str) -> tuple[int, int]:
    """ "ROWSxCOLS" (e.g. "8x8") as two ints in [2, MAX_ARRAY]; UsageError otherwise."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):  # "²" is a digit to isdigit
        raise UsageError(f"--array expects ROWSxCOLS, e.g. 8x8, got {text!r}")
    rows, cols = (int(p) for p in parts)
    if not (2 <= rows <= MAX_ARRAY and 2 <= cols <= MAX_ARRAY):
        raise UsageError(f"--array expects rows and columns in [2, {MAX_ARRAY}], got {text}")
    return rows, cols


def layer_from_golden(path, layer: str, image: int = 0) -> QConvLayer:
    """One int8 conv layer of one image of a `velcro golden` file (format version 2, an int8 model,
    written with --accumulators) as a QConvLayer: the values the golden reference computed.

    The layer must requantize in fixed_point mode (what the RTL datapath computes; an `ort` layer
    multiplies in float32) and have int8 weights with zero point 0. With masks, a skipped output
    element's expected value is the constant of the activation site it feeds directly (its int8
    constant), or else the value the golden file holds for it (the zero point: docs/design.md).
    Raises RtlVectorError naming the file and the layer.
    """
    import h5py

    where = f"{path}: layer '{layer}'"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RtlVectorError(f"{path}: cannot be read as HDF5 ({e})") from None
    with f:
        try:
            return _golden_layer(f, path, layer, image, where)
        except (KeyError, ValueError, TypeError, OSError) as e:
            problem = f"{type(e).__name__}: {e}"
            raise RtlVectorError(f"{where}: the golden file is incomplete or damaged ({problem})") from None


def _golden_layer(f, path, layer, image, where) -> QConvLayer:
    """layer_from_golden on an open file (errors of a damaged file are the caller's)."""
    fmt, version = attr_str(f, "format", RtlVectorError, f"{path}: ", default=""), f.attrs.get("format_version")
    if fmt != "velcro-golden":
        raise RtlVectorError(f"{path}: format: expected velcro-golden, found {fmt!r}")
    try:
        order = parse_json(f.attrs["node_order"])
        groups = {name: f[node_group(k, len(order), name)] for k, name in enumerate(order)}
    except (KeyError, ValueError, TypeError) as e:
        raise RtlVectorError(f"{path}: not a complete golden file ({e})") from None

    def op_of(name):  # text attributes are variable- or fixed-length strings (bytes) alike
        return attr_str(groups[name], "op", RtlVectorError, f"{where}: node '{name}': ")

    convs = [n for n in groups if op_of(n) == "qconv2d"]
    if layer not in groups:
        shown = ", ".join(convs[:12]) + (" ..." if len(convs) > 12 else "")
        raise RtlVectorError(f"{where}: no such node; int8 conv layers: {shown or 'none'}")
    g = groups[layer]
    op = op_of(layer)
    if version not in (1, 2):
        raise RtlVectorError(f"{path}: format_version: expected 2 (an int8 model's golden file), found {version}")
    if version != 2 or op != "qconv2d":
        what = "a float model's" if version == 1 else f"a {op} node's"
        raise RtlVectorError(f"{where}: expected an int8 conv layer (qconv2d), found {what} vectors")
    for name, kinds in _GOLDEN_DTYPES.items():
        dt = g[name].dtype if name in g else None
        if dt is not None and (dt.name not in kinds or not dt.isnative):  # '>i4' is named int32 too
            raise RtlVectorError(
                f"{where}: dataset '{name}': expected {' or '.join(kinds)}, "
                f"found {dt.str if dt.name in kinds else dt.name} (the golden file is damaged)"
            )
    if attr_str(g, "requant", RtlVectorError, f"{where}: ", default="") != "fixed_point":
        raise RtlVectorError(
            f"{where}: requantizes in 'ort' mode (float32 multiply, onnxruntime's arithmetic); the RTL "
            "datapath computes fixed_point: quantize the model with `velcro quantize --requant fixed_point`"
        )
    if "accumulators" not in g:
        raise RtlVectorError(
            f"{where}: the golden file has no accumulators; write it with `velcro golden --accumulators`"
        )
    if "w_zero_point" in g and np.any(g["w_zero_point"][()] != 0):
        raise RtlVectorError(f"{where}: weights with a nonzero zero point; the array expects zero point 0")
    n_images = g["output"].shape[0]
    if not 0 <= image < n_images:
        raise RtlVectorError(f"{where}: image {image} out of range; the golden file holds {n_images}")
    a = parse_json(g.attrs["attrs"])
    if not isinstance(a, dict):
        raise RtlVectorError(f"{where}: attrs: expected a JSON object, found {type(a).__name__}")
    k = int(g["weight"].shape[0])
    y = g["output"][image]
    skip = g["skipped"][()].astype(bool) if "skipped" in g else None
    constants = None
    if skip is not None:
        constants = y.copy()
        readers = [n for n, r in groups.items() if layer in parse_json(r.attrs["inputs"])]
        site = readers[0] if len(readers) == 1 else None
        op = REGISTRY.get(op_of(site)) if site is not None else None
        if op is not None and op.site and f"sites/{escape_key(site)}" in f:
            constants = f[f"sites/{escape_key(site)}/constants_q"][()].astype(y.dtype)
        y = np.where(skip, constants, y)
    w_scale = g["w_scale"][()].astype(np.float64).reshape(-1)
    return QConvLayer(
        name=layer,
        x=g["input_0"][image],
        weight=g["weight"][()],
        bias=g["bias"][()] if "bias" in g else np.zeros(k, np.int32),
        x_zero_point=int(g.attrs["input_0_zero_point"]),
        x_scale=float(g.attrs["input_0_scale"]),
        y_zero_point=int(g.attrs["output_zero_point"]),
        y_scale=float(g.attrs["output_scale"]),
        multiplier=g["multiplier"][()].astype(np.int32),
        shift=g["shift"][()].astype(np.int64),
        acc=g["accumulators"][image].astype(np.int32),
        y=y,
        stride=_pair(a.get("stride", 1)),
        pads=_pads(a.get("pads", 0)),
        dilation=_pair(a.get("dilation", 1)),
        groups=int(a.get("groups", 1)),
        w_scales=w_scale if w_scale.size == k else np.full(k, w_scale[0]) if w_scale.size == 1 else None,
        skip=skip,
        constants=constants,
        y_min=int(g.attrs["output_min"]),
        y_max=int(g.attrs["output_max"]),
    )


# The dtypes `velcro golden` writes a qconv2d's datasets in; any other is a damaged file (a cast
# would turn a shift of -7.3 into -7 or wrap an int64 accumulator without a word).
_GOLDEN_DTYPES = {
    "input_0": ("int8", "uint8"),
    "output": ("int8", "uint8"),
    "weight": ("int8",),
    "bias": ("int32",),
    "multiplier": ("int32",),
    "shift": ("int32",),
    "accumulators": ("int32",),
    "skipped": ("bool",),
}


def _ints(v, n) -> tuple:
    """v as n whole numbers (bools and other types refused: ValueError)."""
    if not (isinstance(v, list) and len(v) == n and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
        raise ValueError(f"expected {n} whole numbers, found {v!r}")
    return tuple(v)


def _pair(v) -> tuple[int, int]:
    return _ints([v, v] if isinstance(v, int) and not isinstance(v, bool) else v, 2)


def _pads(v) -> tuple[int, int, int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * 4
    if isinstance(v, list) and len(v) == 2:
        return _ints(v + v, 4)
    return _ints(v, 4)
