"""`velcro rtl-vectors`: one conv layer of an int8 golden file as RTL vectors, the golden values as
they are, and one-line refusals of what the array cannot take."""

from __future__ import annotations

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
