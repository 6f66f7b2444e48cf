"""Bad input gives one line `error: ...` naming the file or node, a non-zero exit, no traceback."""

import numpy as np
from robust_util import edited_copy as _copy
from robust_util import velcro_process as velcro


def assert_one_line_error(res, *needles, code=1):
    res.error_line(*needles, code=code)


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
    assert res.code == 2 and "Traceback" not in res.err


def test_infer_writes_output_and_macs(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    res = velcro("infer", model_file, "--input", x, "-o", tmp_path / "y.npy", "--json")
    assert res.code == 0, res.err
    import json

    doc = json.loads(res.out)
    assert np.load(tmp_path / "y.npy").shape == (2, 4)
    assert doc["total_macs"] == sum(doc["macs"].values()) > 0
