"""`velcro rtl-vectors`: one conv layer of an int8 golden file as RTL vectors, the golden values as
they are, and one-line refusals of what the array cannot take."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import velcro_ref
from velcro_ref import cli
from velcro_ref.model_io import save_model
from velcro_ref.rtl_vectors import read_rtl_vectors
from velcro_ref.zoo import build_zoo

LAYER = "layer1.0.conv1"  # 3x3 conv feeding the site layer1.0.relu1 alone


def run(*args) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rtlvec")
    fmodel = velcro_ref.Model(build_zoo("resnet18", input_size=16, num_classes=10, width=0.25, seed=2))
    rng = np.random.default_rng(0)
    stats = velcro_ref.profile(fmodel, rng.uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
    np.save(d / "x.npy", rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    for requant in ("fixed_point", "ort"):
        q = velcro_ref.quantize(fmodel, stats, per_channel=True, requant=requant)
        save_model(q.graph, d / f"{requant}.h5")
        qstats = velcro_ref.profile(q, rng.uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
        velcro_ref.save_masks(velcro_ref.compress(qstats, 0.4), d / f"{requant}.masks.h5")
        m = ["--masks", d / f"{requant}.masks.h5"]
        assert (
            run(
                "golden", d / f"{requant}.h5", "--input", d / "x.npy", *m, "--accumulators", "-o", d / f"{requant}.g.h5"
            )
            == 0
        )
    assert run("golden", d / "fixed_point.h5", "--input", d / "x.npy", "-o", d / "no_acc.g.h5") == 0
    return d


def test_vectors_hold_the_golden_values_of_the_layer(files, tmp_path, capsys):
    assert run("rtl-vectors", files / "fixed_point.g.h5", "--layer", LAYER, "--array", "4x8", "--image", 1,
               "-o", tmp_path / "v") == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    vec = read_rtl_vectors(tmp_path / "v")
    assert (vec.rows, vec.cols, vec.layer) == (4, 8, LAYER)
    with h5py.File(files / "fixed_point.g.h5", "r") as f:
        g = next(f["nodes"][k] for k in f["nodes"] if f["nodes"][k].attrs["name"] == LAYER)
        skip = g["skipped"][()]
        const = f["sites/layer1.0.relu1/constants_q"][()]
        assert np.array_equal(vec.tensor("input"), g["input_0"][1])
        assert np.array_equal(vec.tensor("weight"), g["weight"][()])
        assert np.array_equal(vec.tensor("bias"), g["bias"][()])
        assert np.array_equal(vec.tensor("multiplier"), g["multiplier"][()])
        assert np.array_equal(vec.tensor("shift"), g["shift"][()])
        assert np.array_equal(vec.tensor("acc"), g["accumulators"][1])
        assert np.array_equal(vec.tensor("skip"), skip) and skip.any()
        # a masked element's expected output is the constant of the site the conv feeds
        assert np.array_equal(vec.tensor("output"), np.where(skip, const, g["output"][1]))
        q = vec.manifest["quant"]
        assert q["input_zero_point"] == g.attrs["input_0_zero_point"]
        assert q["output_zero_point"] == g.attrs["output_zero_point"]


@pytest.mark.parametrize(
    "golden, layer, needle",
    [
        ("ort.g.h5", LAYER, "requantizes in 'ort' mode"),
        ("no_acc.g.h5", LAYER, "no accumulators; write it with `velcro golden --accumulators`"),
        ("fixed_point.g.h5", "fc", "expected an int8 conv layer (qconv2d), found a qlinear node's vectors"),
        ("fixed_point.g.h5", "nope", "no such node; int8 conv layers: conv1, layer1.0.conv1"),
        ("fixed_point.h5", LAYER, "format: expected velcro-golden, found 'velcro-model'"),
    ],
)
def test_what_the_array_cannot_take_is_refused_in_one_line(files, tmp_path, capsys, golden, layer, needle):
    assert run("rtl-vectors", files / golden, "--layer", layer, "-o", tmp_path / "v") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "v" / "manifest.json").exists()


def test_bad_array_and_image_are_usage_errors(files, tmp_path, capsys):
    g = files / "fixed_point.g.h5"
    for array in ("8", "1x8", "8x300", "axb"):
        assert run("rtl-vectors", g, "--layer", LAYER, "--array", array, "-o", tmp_path / "v") == 2
    assert run("rtl-vectors", g, "--layer", LAYER, "--image", 2, "-o", tmp_path / "v") == 1
    assert "image 2 out of range" in capsys.readouterr().err


def _layer_group(f):
    return next(f["nodes"][k] for k in f["nodes"] if f["nodes"][k].attrs["name"] == LAYER)


def _retype(name, dtype, scale=1.0):
    def edit(f):
        g = _layer_group(f)
        data = (g[name][()] * scale).astype(dtype)
        del g[name]
        g[name] = data

    return edit


def _fill(name, value):
    def edit(f):
        _layer_group(f)[name][...] = value

    return edit


def _set_attrs(text):
    def edit(f):
        _layer_group(f).attrs["attrs"] = text

    return edit


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_retype("shift", np.float64, 1.05), "dataset 'shift': expected int32, found float64"),
        (_retype("accumulators", np.int64), "dataset 'accumulators': expected int32, found int64"),
        (_retype("bias", ">i4"), "dataset 'bias': expected int32, found >i4"),
        (_set_attrs('{"kernel": [3, 3], "pads": [1, 1, 1]}'), "expected 4 whole numbers, found [1, 1, 1]"),
        (_set_attrs('{"kernel": [3, 3], "stride": "2"}'), "expected 2 whole numbers, found '2'"),
        (_set_attrs("null"), "attrs: expected a JSON object, found NoneType"),
        (lambda f: f.attrs.__setitem__("format_version", 3), "format_version: expected 2"),
        (_fill("shift", 31), "g.h5: layer 'layer1.0.conv1': acc << shift leaves int32"),
    ],
    ids=["float-shift", "int64-acc", "big-endian-bias", "3-pads", "text-stride", "null-attrs", "version-3", "wide"],
)
def test_a_damaged_golden_layer_is_refused_in_one_line_not_cast(files, tmp_path, capsys, edit, needle):
    """A float shift of -7.3 was written as -7 and an int64 accumulator cast to int32 (exit 0); damaged
    geometry attributes ended in a traceback; a version-3 file was called 'a qconv2d node's vectors'."""
    from robust_util import edited_copy

    edited_copy(files / "fixed_point.g.h5", tmp_path / "g.h5", edit)
    assert run("rtl-vectors", tmp_path / "g.h5", "--layer", LAYER, "-o", tmp_path / "v") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "v" / "manifest.json").exists()


def _vectors(files, tmp_path):
    assert run("rtl-vectors", files / "fixed_point.g.h5", "--layer", LAYER, "--array", "4x4", "-o", tmp_path) == 0
    return tmp_path


def _edit_line(name, i, change):
    def edit(root):
        lines = (root / name).read_text().splitlines()
        lines[i] = change(lines[i])
        (root / name).write_text("\n".join(lines) + "\n")

    return edit


def _drop_last_line(name):
    def edit(root):
        (root / name).write_text("".join((root / name).read_text().splitlines(True)[:-1]))

    return edit


def _edit_manifest(change):
    def edit(root):
        m = json.loads((root / "manifest.json").read_text())
        change(m)
        (root / "manifest.json").write_text(json.dumps(m))

    return edit


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_edit_line("output.hex", 0, lambda w: "-1"), "output.hex:1: expected a word of 8 bits as 2 lowercase"),
        (_edit_line("tile_out.hex", -1, lambda w: w[:-1]), "tile_out.hex:"),
        (_edit_line("tile_act.hex", 0, lambda w: "1" + w), "tile_act.hex:1: expected a word of 32 bits"),
        (_edit_line("acc.hex", 0, lambda w: w.upper().replace("0", "F")), "acc.hex:1:"),
        (_edit_line("shift.hex", 0, lambda w: "1f_"), "shift.hex:1:"),
        (_drop_last_line("tile_act.hex"), "tile_act.hex: expected"),
        (_edit_manifest(lambda m: m.pop("files")), "files: expected a table of hex files, found nothing"),
        (_edit_manifest(lambda m: m["files"].__setitem__("input", "input.hex")), "file 'input': expected a table"),
        (_edit_manifest(lambda m: m.pop("tiles")), "tiles: expected a list, found nothing"),
        (_edit_manifest(lambda m: m["tiles"][0].pop("pixels")), "tile 0: expected group, k0, cols and pixels"),
        (_edit_manifest(lambda m: m["files"]["output"].__setitem__("shape", [3, 1])), "file 'output': shape"),
        (_edit_manifest(lambda m: m["files"]["acc"].__setitem__("word_bits", 8)), "file 'acc': word_bits"),
    ],
    ids=["signed", "cut-short", "too-wide", "upper-case", "underscore", "one-word-short", "no-files",
         "entry-text", "no-tiles", "tile-fields", "shape", "word-bits"],
)  # fmt: skip
def test_vector_files_read_back_are_refused_in_one_line_where_they_are_not_as_written(files, tmp_path, edit, needle):
    """read_rtl_vectors read a word cut short ('818c80a'), a signed or a too-wide word as numbers (a
    replay then blamed the RTL), and a manifest without its files or tiles ended in a traceback."""
    from velcro_ref.rtl_vectors import RtlVectorError

    root = _vectors(files, tmp_path / "v")
    read_rtl_vectors(root)  # as written: read
    edit(root)
    with pytest.raises(RtlVectorError) as e:
        read_rtl_vectors(root)
    message = str(e.value)
    assert "\n" not in message and needle in message, message


def test_a_per_tensor_weight_scale_is_listed_per_filter_in_the_manifest(files, tmp_path):
    """The command wrote weight_scales null for per-tensor weights (their one scale dropped), where
    write_rtl_vectors given the scale lists it per filter."""
    fmodel = velcro_ref.Model(build_zoo("resnet18", input_size=16, num_classes=10, width=0.25, seed=2))
    rng = np.random.default_rng(0)
    stats = velcro_ref.profile(fmodel, rng.uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
    q = velcro_ref.quantize(fmodel, stats, per_channel=False, requant="fixed_point")
    save_model(q.graph, tmp_path / "pt.h5")
    assert run("golden", tmp_path / "pt.h5", "--input", files / "x.npy", "--accumulators", "-o", tmp_path / "g.h5") == 0
    assert run("rtl-vectors", tmp_path / "g.h5", "--layer", LAYER, "-o", tmp_path / "v") == 0
    with h5py.File(tmp_path / "g.h5", "r") as f:
        g = _layer_group(f)
        scale, k = float(np.asarray(g["w_scale"][()]).reshape(-1)[0]), g["weight"].shape[0]
        assert np.asarray(g["w_scale"][()]).size == 1
    assert read_rtl_vectors(tmp_path / "v").manifest["quant"]["weight_scales"] == [scale] * k


@pytest.mark.parametrize("which", ["all", "site op"])
def test_text_attributes_stored_as_fixed_length_strings_give_the_same_vectors(files, tmp_path, which):
    """h5py reads a fixed-length string attribute as bytes: the nodes' `op` read so found no site op, and
    the masked outputs' expected values became the layer's own golden output instead of the site's int8
    constants (exit 0); every text attribute so stored was refused as "a b'qconv2d' node's vectors"."""
    import filecmp
    import shutil

    fixed = tmp_path / "fixed.g.h5"
    shutil.copy(files / "fixed_point.g.h5", fixed)

    def to_fixed(obj):
        for key, v in list(obj.attrs.items()):
            site_op = key == "op" and obj.attrs.get("name") == "layer1.0.relu1"
            if isinstance(v, str) and (which == "all" or site_op):
                b = v.encode()
                obj.attrs[key] = np.array(b, dtype=h5py.string_dtype("utf-8", len(b)))

    with h5py.File(fixed, "r+") as f:
        to_fixed(f)
        f.visititems(lambda name, obj: to_fixed(obj))
        assert sum(isinstance(g.attrs["op"], bytes) for g in f["nodes"].values()) == (
            1 if which == "site op" else len(f["nodes"])
        )
    for src, out in ((files / "fixed_point.g.h5", "a"), (fixed, "b")):
        assert run("rtl-vectors", src, "--layer", LAYER, "--array", "4x8", "-o", tmp_path / out) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    match, differ, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert (differ, errors) == ([], [])


def _srdhm(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on Python integers (docs/int8.md)."""
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) >> 31
    return q if ab + nudge >= 0 else -q


def _rdbpot(x, e):
    """RoundingDivideByPOT: x / 2^e rounded half away from zero."""
    if e == 0:
        return x
    mask = (1 << e) - 1
    rem, thr = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


@pytest.mark.parametrize("layer", [LAYER, "conv1"])  # conv1 reads the input: its zero points differ
def test_the_tile_streams_replayed_by_hand_give_the_expected_accumulators_and_outputs(files, tmp_path, layer):
    """Replay every tile as docs/rtl.md describes the array: PE (r, c) accumulates bias + sum over the
    window of (act - input_zero_point) * wgt, requantizes with its column's multiplier and shift and
    clamps; a skipped PE gives its constant. The manifest's zero points, counts and streams together
    must reproduce tile_acc and tile_out (and so the golden values) bit for bit."""
    assert run("rtl-vectors", files / "fixed_point.g.h5", "--layer", layer, "--array", "4x8", "--image", 1,
               "-o", tmp_path / "v") == 0  # fmt: skip
    vec = read_rtl_vectors(tmp_path / "v")
    m, rows, cols, win = vec.manifest, vec.rows, vec.cols, vec.window
    q = m["quant"]
    zx, zy, lo, hi = q["input_zero_point"], q["output_zero_point"], q["output_min"], q["output_max"]
    nt = len(vec.tiles)
    act = vec.lanes("tile_act").reshape(nt, win, rows)
    wgt = vec.lanes("tile_wgt").reshape(nt, win, cols)
    skip = vec.lanes("tile_skip").reshape(nt, rows, cols).astype(bool)
    const = vec.lanes("tile_const").reshape(nt, rows, cols)
    bias, mult, shift = (vec.lanes(k).reshape(nt, cols) for k in ("tile_bias", "tile_mult", "tile_shift"))
    t_acc = vec.lanes("tile_acc").reshape(nt, rows, cols)
    t_out = vec.lanes("tile_out").reshape(nt, rows, cols)
    used = 0
    for t in range(nt):
        acc = bias[t][None, :] + (act[t] - zx).T @ wgt[t]  # (rows, cols)
        for r in range(rows):
            for c in range(cols):
                if skip[t, r, c]:
                    assert t_out[t, r, c] == const[t, r, c] and t_acc[t, r, c] == 0
                    continue
                used += 1
                a = int(acc[r, c])
                assert a == t_acc[t, r, c], (t, r, c)
                s = int(shift[t, c])
                y = _rdbpot(_srdhm(a << max(s, 0), int(mult[t, c])), max(-s, 0)) + zy
                assert min(max(y, lo), hi) == t_out[t, r, c], (t, r, c)
    c = m["counts"]
    assert used == c["output_elements"] - c["masked_elements"]
    assert c["masked_elements"] == int(vec.tensor("skip").sum())
    assert c["macs_executed"] == used * win
    if layer == "conv1":
        assert zx != zy  # the case that tells the input's zero point from the output's
