"""Bad input gives one line `error: ...` naming the file or node, a non-zero exit, no traceback."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from velcro_ref.model_io import save_model
from velcro_ref.zoo import build_zoo


def velcro(*args):
    return subprocess.run([sys.executable, "-m", "velcro_ref.cli", *map(str, args)], capture_output=True, text=True)


def assert_one_line_error(res, *needles, code=1):
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "small.h5"
    save_model(build_zoo("resnet18", input_size=16, width=0.125, num_classes=4), path)
    return path


def _copy(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def test_not_hdf5(tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_text("not a model")
    assert_one_line_error(velcro("info", bad), str(bad), "not an HDF5 file")


def test_truncated(tmp_path, model_file):
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(model_file.read_bytes()[:4000])
    assert_one_line_error(velcro("info", bad), str(bad))


def test_missing_parameter(tmp_path, model_file):
    bad = _copy(model_file, tmp_path / "missing.h5", lambda f: f["params"].__delitem__("layer1.0.conv1.weight"))
    assert_one_line_error(velcro("info", bad), str(bad), "layer1.0.conv1.weight")


def test_wrong_parameter_shape(tmp_path, model_file):
    def edit(f):
        del f["params/layer2.0.conv2.weight"]
        f["params"].create_dataset("layer2.0.conv2.weight", data=np.zeros((4, 3, 3, 3), np.float32))

    bad = _copy(model_file, tmp_path / "shape.h5", edit)
    assert_one_line_error(velcro("info", bad), str(bad), "layer2.0.conv2")


def test_nan_weight(tmp_path, model_file):
    def edit(f):
        f["params/fc.weight"][0, 0] = np.nan

    bad = _copy(model_file, tmp_path / "nan.h5", edit)
    assert_one_line_error(velcro("info", bad), str(bad), "fc.weight", "NaN")


def test_wrong_input_shape(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 17, 16), np.float32))
    assert_one_line_error(velcro("infer", model_file, "--input", x), "input", "(N, 3, 16, 16)", "(1, 3, 17, 16)")


def test_usage_error_exits_2(model_file):
    res = velcro("zoo", "vgg", "-o", "x.h5")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_infer_writes_output_and_macs(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    res = velcro("infer", model_file, "--input", x, "-o", tmp_path / "y.npy", "--json")
    assert res.returncode == 0, res.stderr
    import json

    doc = json.loads(res.stdout)
    assert np.load(tmp_path / "y.npy").shape == (2, 4)
    assert doc["total_macs"] == sum(doc["macs"].values()) > 0
