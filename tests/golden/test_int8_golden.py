"""int8 golden vectors (`velcro golden --accumulators` on an int8 model) read with h5py alone.

The files are written through the command; every check reads them with h5py and NumPy only (the
functions below import nothing of velcro_ref) and recomputes each layer from the file's own
numbers: a conv's int32 accumulators from its int8 input, weights, bias and zero points; its output
from those accumulators by the requantization the file names (gemmlowp's and TFLite's fixed point,
transcribed here, or onnxruntime's float32 multiply); masked elements from the site's int8
constants. docs/formats.md documents the layout.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import velcro_ref
from velcro_ref import cli
from velcro_ref.engine import Model
from velcro_ref.model_io import save_model
from velcro_ref.zoo import build_zoo

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# -- reading (h5py and NumPy only) ---------------------------------------------------------------
def nodes(f):
    order = json.loads(f.attrs["node_order"])
    return [(name, f[f"nodes/{k:03d}_{name.replace('%', '%25').replace('/', '%2F')}"]) for k, name in enumerate(order)]


def acc_of_conv(x, x_zp, w, bias, attrs):
    k, cg, kh, kw = w.shape
    stride = attrs.get("stride", 1)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    p = attrs.get("pads", 0)
    pt, pl, pb, pr = (p,) * 4 if isinstance(p, int) else (p * 2 if len(p) == 2 else p)
    groups = attrs.get("groups", 1)
    n, c, h, wd = x.shape
    oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr), np.int64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x.astype(np.int64) - x_zp
    acc = np.zeros((n, k, oh, ow), np.int64) + bias.astype(np.int64)[None, :, None, None]
    kg = k // groups
    for o in range(k):
        g = o // kg
        for fy in range(kh):
            for fx in range(kw):
                patch = xp[:, g * cg : (g + 1) * cg, fy : fy + sh * (oh - 1) + 1 : sh, fx : fx + sw * (ow - 1) + 1 : sw]
                acc[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, fy, fx].astype(np.int64))
    return acc


def fixed_point(acc, m, shift):
    """TFLite MultiplyByQuantizedMultiplier with gemmlowp's SaturatingRoundingDoublingHighMul and
    RoundingDivideByPOT, element by element in Python integers."""
    out = np.empty(acc.shape, np.int64)
    for i, a in np.ndenumerate(acc):
        s = int(shift[i[1]])
        x = max(min(int(a) << max(s, 0), INT32_MAX), INT32_MIN)
        mm = int(m[i[1]])
        if x == INT32_MIN and mm == INT32_MIN:
            h = INT32_MAX
        else:
            v = x * mm + ((1 << 30) if x * mm >= 0 else 1 - (1 << 30))
            h = v // 2**31 if v >= 0 else -((-v) // 2**31)  # C's division, toward zero
        e = max(-s, 0)
        mask = (1 << e) - 1
        rem, threshold = h & mask, (mask >> 1) + (1 if h < 0 else 0)
        out[i] = (h >> e) + (1 if rem > threshold else 0)
    return out


def ort_requant(acc, scale, zp, lo, hi):
    shape = [1, -1] + [1] * (acc.ndim - 2)
    v = acc.astype(np.float32) * scale.astype(np.float32).reshape(shape)
    v = np.minimum(np.maximum(v, np.float32(lo - zp)), np.float32(hi - zp))
    return np.rint(v).astype(np.int64) + zp


def check_golden(path):
    """Every int8 conv/linear of the file recomputed from its own numbers; returns the count."""
    checked = 0
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "velcro-golden" and f.attrs["format_version"] == 2
        groups = dict(nodes(f))
        for name, g in groups.items():
            if g.attrs["op"] not in ("qconv2d", "qlinear"):
                continue
            x, w, out = g["input_0"][()], g["weight"][()], g["output"][()]
            bias = g["bias"][()] if "bias" in g else np.zeros(w.shape[0], np.int32)
            assert x.dtype in (np.int8, np.uint8) and w.dtype == np.int8 and bias.dtype == np.int32
            x_zp = int(g.attrs["input_0_zero_point"])
            if g.attrs["op"] == "qconv2d":
                acc = acc_of_conv(x, x_zp, w, bias, json.loads(g.attrs["attrs"]))
            else:
                acc = (x.astype(np.int64) - x_zp) @ w.astype(np.int64).T + bias
            skipped = g["skipped"][()] if "skipped" in g else np.zeros(acc.shape[1:], bool)
            stored = g["accumulators"][()]
            assert stored.dtype == np.int32
            assert np.array_equal(stored[:, ~skipped], acc[:, ~skipped]), name
            assert np.all(stored[:, skipped] == 0), name
            zp, lo, hi = int(g.attrs["output_zero_point"]), int(g.attrs["output_min"]), int(g.attrs["output_max"])
            if g.attrs["requant"] == "fixed_point":
                m, s = g["multiplier"][()], g["shift"][()]
                real = (
                    np.float64(g.attrs["input_0_scale"])
                    * g["w_scale"][()].astype(np.float64)
                    / np.float64(g.attrs["output_scale"])
                )
                assert np.allclose(m.astype(np.float64) * 2.0 ** (s.astype(np.float64) - 31), real, rtol=2**-30)
                y = np.clip(fixed_point(acc, m, s) + zp, lo, hi)
            else:
                y = ort_requant(acc, g["requant_scale"][()], zp, lo, hi)
            assert np.array_equal(out[:, ~skipped], y[:, ~skipped]), name
            checked += 1
        for key, sg in f.get("sites", {}).items():
            mask, const_q = sg["mask"][()], sg["constants_q"][()]
            site = next(g for n, g in groups.items() if n.replace("/", "%2F") == key)
            assert np.all(site["output"][()][:, mask] == const_q[mask]), key
            scale, zp = np.float32(sg.attrs["site_scale"]), int(sg.attrs["site_zero_point"])
            info = np.iinfo(const_q.dtype)
            want = np.clip(np.rint(sg["constants"][()].astype(np.float32) / scale) + zp, info.min, info.max)
            assert np.array_equal(const_q, want.astype(const_q.dtype)), key
    return checked


# -- writing (through the command) ----------------------------------------------------------------
@pytest.fixture(scope="module", params=[("mobilenet_v2", "fixed_point", "int8"), ("resnet18", "ort", "uint8")])
def golden_file(request, tmp_path_factory):
    name, requant, act = request.param
    d = tmp_path_factory.mktemp(f"golden_{name}")
    fmodel = Model(build_zoo(name, input_size=16, num_classes=10, width=0.25, seed=3))
    rng = np.random.default_rng(0)
    stats = velcro_ref.profile(fmodel, rng.uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
    qmodel = velcro_ref.quantize(fmodel, stats, per_channel=True, activations=act, requant=requant)
    save_model(qmodel.graph, d / "m.h5")
    qstats = velcro_ref.profile(qmodel, rng.uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
    velcro_ref.save_masks(velcro_ref.compress(qstats, 0.3), d / "masks.h5")
    np.save(d / "x.npy", rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    args = ["golden", d / "m.h5", "--input", d / "x.npy", "--masks", d / "masks.h5", "--accumulators", "-o", d / "g.h5"]
    assert cli.main([str(a) for a in args]) == 0
    return d / "g.h5", qmodel


def test_int8_golden_layers_recompute_from_the_files_own_numbers(golden_file):
    path, qmodel = golden_file
    n_layers = sum(1 for st in qmodel.plan.nodes if st.op in ("qconv2d", "qlinear"))
    assert check_golden(path) == n_layers


def test_int8_golden_holds_the_tensors_quantization_and_masks(golden_file):
    path, qmodel = golden_file
    with h5py.File(path, "r") as f:
        groups = dict(nodes(f))
        for st in qmodel.plan.nodes:
            g = groups[st.name]
            if st.q is not None:
                assert g["output"].dtype == np.dtype(st.q.dtype)
                assert g.attrs["output_dtype"] == st.q.dtype
                assert np.float32(g.attrs["output_scale"]) == np.float32(st.q.scale)
                assert int(g.attrs["output_zero_point"]) == st.q.zero_point
        assert set(f["sites"]) == set(qmodel.sites)
        masked = sum(int(f[f"sites/{s}/mask"][()].sum()) for s in f["sites"])
        assert masked > 0


def test_accumulators_of_a_float_model_are_refused(tmp_path, capsys):
    save_model(build_zoo("resnet18", input_size=16, num_classes=10, width=0.25, seed=3), tmp_path / "f.h5")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    args = ["golden", tmp_path / "f.h5", "--input", tmp_path / "x.npy", "--accumulators", "-o", tmp_path / "g.h5"]
    assert cli.main([str(a) for a in args]) == 2
    assert "int8" in capsys.readouterr().err
    assert not (tmp_path / "g.h5").exists()
