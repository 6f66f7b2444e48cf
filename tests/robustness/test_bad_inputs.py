"""Bad inputs (arrays and image sets): one line saying what was expected and found, and no output file."""

import numpy as np
import pytest
from robust_util import ROOT, velcro_process


def npy(tmp_path, array, name="x.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "array, needles",
    [
        (np.zeros((3, 16, 16), np.float32), ["expects shape (N, 3, 16, 16), found (3, 16, 16)"]),
        (np.zeros((1, 1, 3, 16, 16), np.float32), ["expects shape (N, 3, 16, 16), found (1, 1, 3, 16, 16)"]),
        (np.zeros((2, 1, 16, 16), np.float32), ["expects shape (N, 3, 16, 16), found (2, 1, 16, 16)"]),
        (np.zeros((2, 3, 16, 16), np.float64), ["expects dtype float32, found float64"]),
        (np.zeros((2, 3, 16, 16), np.uint8), ["expects dtype float32, found uint8"]),
        (np.zeros((0, 3, 16, 16), np.float32), ["the batch is empty"]),
    ],
    ids=["rank-3", "rank-5", "channels", "float64", "uint8", "empty"],
)
def test_bad_input_array(velcro, tmp_path, model_file, array, needles):
    res = velcro("infer", model_file, "--input", npy(tmp_path, array), "-o", tmp_path / "y.npy")
    res.error_line("input", *needles)
    assert not (tmp_path / "y.npy").exists()


def test_nan_inputs_are_counted(velcro, tmp_path, model_file):
    x = np.zeros((2, 3, 16, 16), np.float32)
    x[1, 2, 3, 4] = np.nan
    x[0, 0, 0, 0] = -np.inf
    velcro("infer", model_file, "--input", npy(tmp_path, x)).error_line("input: 2 NaN/Inf value(s) of 1536")


@pytest.mark.parametrize(
    "content, needles",
    [
        (b"not an array", ["cannot read input as .npy"]),
        (None, ["cannot read input as .npy"]),  # a pickled object array
    ],
    ids=["garbage", "pickle"],
)
def test_unreadable_input_file(velcro, tmp_path, model_file, content, needles):
    path = tmp_path / "x.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    velcro("infer", model_file, "--input", path).error_line(str(path), *needles)


def test_missing_input_file(velcro, tmp_path, model_file):
    velcro("infer", model_file, "--input", tmp_path / "nope.npy").error_line(str(tmp_path / "nope.npy"))


@pytest.mark.parametrize(
    "arrays, needles",
    [
        ({"x": np.zeros((0, 3, 16, 16), np.float32), "y": np.zeros(0, np.int64)}, ["empty"]),
        ({"x": np.zeros((4, 3, 16, 16), np.float32)}, ["expects an .npz with arrays 'x' and 'y'"]),
        ({"x": np.zeros((4, 3, 16, 16), np.float32), "y": np.zeros(3, np.int64)}, ["4 images but 3 labels"]),
        ({"x": np.zeros((4, 3, 8, 8), np.float32), "y": np.zeros(4, np.int64)}, ["expects shape (N, 3, 16, 16)"]),
        ({"x": np.zeros((4, 3, 16, 16), np.float64), "y": np.zeros(4, np.int64)}, ["expects dtype float32"]),
        (
            {"x": np.zeros((4, 3, 16, 16), np.float32), "y": np.full(4, 1.7)},
            ["'y' expects a 1-D array of integer labels, found float64 (4,)"],
        ),
        (
            {"x": np.zeros((4, 3, 16, 16), np.float32), "y": np.zeros((4, 1), np.int64)},
            ["'y' expects a 1-D array of integer labels, found int64 (4, 1)"],
        ),
        ({"x": np.float32(1.0), "y": np.zeros(4, np.int64)}, ["0 images but 4 labels"]),
    ],
    ids=[
        "empty-image-set",
        "no-labels",
        "label-count",
        "image-shape",
        "image-dtype",
        "float-labels",
        "2-d-labels",
        "scalar-images",
    ],
)
def test_bad_image_set(velcro, tmp_path, model_file, arrays, needles):
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    out = tmp_path / "s.h5"
    velcro("profile", model_file, "--images", path, "-o", out).error_line(*needles)
    assert not out.exists()


def test_nan_image_late_in_the_set_stops_profile_without_output(velcro, tmp_path, model_file):
    x = np.random.default_rng(1).standard_normal((24, 3, 16, 16)).astype(np.float32)
    x[21, 1, 2, 3] = np.nan
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=np.zeros(24, np.int64))
    out = tmp_path / "s.h5"
    res = velcro("profile", model_file, "--images", path, "-o", out, "--batch", "4", "--checkpoint-every", "0")
    res.error_line("NaN")
    assert not out.exists()


def test_nan_image_is_reported_with_file_and_image_index(velcro, tmp_path, model_file):
    x = np.zeros((24, 3, 16, 16), np.float32)
    x[21, 1, 2, 3] = np.nan
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=np.zeros(24, np.int64))
    velcro("profile", model_file, "--images", path, "-o", tmp_path / "s.h5").error_line(str(path), "21")


def test_nan_image_index_is_its_position_in_the_file_when_classes_are_selected(velcro, tmp_path, model_file):
    x = np.zeros((24, 3, 16, 16), np.float32)
    x[21, 0, 0, 0] = np.inf
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=np.arange(24) % 2)  # image 21 is the 11th of class 1
    res = velcro("profile", model_file, "--images", path, "--classes", "1", "-o", tmp_path / "s.h5")
    res.error_line(str(path), "first NaN/Inf in image 21 ")


def test_a_float32_overflow_inside_the_network_stops_profile_without_output(velcro, tmp_path):
    """A 1x1 conv whose sum overflows float32 (+inf in the engine's order) feeding a relu6, which
    bounds it to 6: the output looks finite, but the conv's range is infinite. profile names the
    tensor and writes nothing (a stats file with an infinite range is one no reader accepts)."""
    from oracle64 import write_model

    attrs = {"out_channels": 1, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    nodes = [
        {"name": "conv", "op": "conv2d", "inputs": ["input"], "attrs": attrs, "params": {"weight": "w"}},
        {"name": "act", "op": "relu6", "inputs": ["conv"], "attrs": {}, "params": {}},
    ]
    model = tmp_path / "m.h5"
    write_model(model, (2, 1, 1), "act", nodes, {"w": np.array([1e38, -1e38]).reshape(1, 2, 1, 1)})
    path = tmp_path / "set.npz"
    np.savez(path, x=np.full((4, 2, 1, 1), 10.0, np.float32), y=np.zeros(4, np.int64))
    out = tmp_path / "s.h5"
    velcro("profile", model, "--images", path, "-o", out).error_line("tensor 'conv' took values", "overflowed")
    assert not out.exists()


def test_an_overflow_in_an_add_stops_profile_in_one_line_without_numpy_warnings(tmp_path):
    """The add, computed by NumPy, printed its RuntimeWarning (two lines) before the one-line error."""
    from oracle64 import write_model

    attrs = {"out_channels": 1, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    nodes = [
        {"name": "conv", "op": "conv2d", "inputs": ["input"], "attrs": attrs, "params": {"weight": "w"}},
        {"name": "sum", "op": "add", "inputs": ["conv", "conv"], "attrs": {}, "params": {}},
        {"name": "act", "op": "relu6", "inputs": ["sum"], "attrs": {}, "params": {}},
    ]
    model = tmp_path / "m.h5"
    write_model(model, (2, 1, 1), "act", nodes, {"w": np.array([1e37, 1e37]).reshape(1, 2, 1, 1)})
    path = tmp_path / "set.npz"
    np.savez(path, x=np.full((4, 2, 1, 1), 10.0, np.float32), y=np.zeros(4, np.int64))
    res = velcro_process("profile", model, "--images", path, "-o", tmp_path / "s.h5")
    assert res.code == 1 and res.err.splitlines() == [res.err.strip()], res.err
    assert "tensor 'sum' took values" in res.err and not (tmp_path / "s.h5").exists()


def test_raw_pixels_as_an_image_set_of_a_model_with_preprocessing_are_refused(velcro, tmp_path):
    """Whole numbers 0..255 in --images of a shipped model (which records its preprocessing) ran and
    scored near chance with exit 0; they are refused, naming the preprocessing. The same images
    preprocessed are taken."""
    from velcro_ref import data
    from velcro_ref.engine import load_model

    model = ROOT / "weights" / "resnet18.h5"
    images, labels = data.load_fashion_mnist("test")
    raw = tmp_path / "raw.npz"
    np.savez(raw, x=images[:20, None].astype(np.float32), y=labels[:20])
    velcro("eval", model, "--images", raw).error_line(str(raw), "raw pixels", "preprocessed")
    np.savez(raw, x=images[:20, None].astype(np.float32) * np.float32(0.999), y=labels[:20])  # not whole numbers
    velcro("eval", model, "--images", raw).error_line(str(raw), "raw pixels", "preprocessed")
    good = tmp_path / "good.npz"
    np.savez(good, x=data.preprocess(images[:20], load_model(model).meta["preprocessing"]), y=labels[:20])
    assert velcro("eval", model, "--images", good).code == 0


def test_classes_of_an_image_set_are_named_as_the_model_names_them(velcro, tmp_path):
    """--classes named only Fashion-MNIST's ten, so class 15 of a 20-class model could be evaluated but
    not chosen; a model's own class names are taken too ('_' for ' ' either way). A label the model has
    no score for is refused by eval, not by the image set (a profile of a one-score model takes 0/1)."""
    import dataclasses
    import json

    from velcro_ref import data
    from velcro_ref.engine import load_model
    from velcro_ref.model_io import load_graph, save_model
    from velcro_ref.zoo import build_zoo

    shipped = ROOT / "weights" / "resnet18.h5"
    images, labels = data.load_fashion_mnist("test")
    x = data.preprocess(images[:30], load_model(shipped).meta["preprocessing"])
    y = np.where(labels[:30] == 9, 15, labels[:30]).astype(np.int64)
    assert (y == 15).any()
    np.savez(tmp_path / "y15.npz", x=x, y=y)
    save_model(build_zoo("resnet18", 28, 1, 20, 0.25, 0), tmp_path / "z20.h5")
    res = velcro("eval", tmp_path / "z20.h5", "--images", tmp_path / "y15.npz", "--classes", "1,15", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["n_images"] == int(np.isin(y, [1, 15]).sum())
    res = velcro("eval", tmp_path / "z20.h5", "--images", tmp_path / "y15.npz", "--classes", "20")
    res.error_line("--classes: class 20 out of range; valid: 0-19", code=2)
    velcro("eval", shipped, "--images", tmp_path / "y15.npz").error_line("class 15", "10 class(es)")
    g = load_graph(shipped)
    names = [f"kind_{i}" for i in range(10)]
    save_model(dataclasses.replace(g, meta={**g.meta, "classes": names}), tmp_path / "named.h5")
    res = velcro(
        "eval", tmp_path / "named.h5", "--images", tmp_path / "y15.npz", "--classes", "kind_1,KIND 2", "--json"
    )
    assert res.code == 0, res.err
    assert json.loads(res.out)["classes"] == [1, 2]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "{m}", "--images", "{x}", "--split", "train"], "--split: options that choose images"),
        (["profile", "{m}", "--images", "{x}", "--data-dir", "{d}", "-o", "{d}/s.h5"], "--data-dir: options that"),
        (["golden", "{m}", "--input", "{n}", "--split", "train", "-o", "{d}/g.h5"], "with --input they would be"),
        (["golden", "{m}", "--input", "{n}", "--data-dir", "{d}", "-o", "{d}/g.h5"], "with --input they would be"),
    ],
    ids=["eval-split", "profile-data-dir", "golden-split", "golden-data-dir"],
)
def test_options_that_would_be_ignored_with_an_image_file_are_refused(velcro, tmp_path, model_file, args, needle):
    x = np.zeros((4, 3, 16, 16), np.float32)
    np.savez(tmp_path / "x.npz", x=x, y=np.zeros(4, np.int64))
    np.save(tmp_path / "x.npy", x)
    fill = {"m": model_file, "x": tmp_path / "x.npz", "n": tmp_path / "x.npy", "d": tmp_path}
    velcro(*[a.format(**fill) for a in args]).error_line(needle, code=2)


@pytest.mark.parametrize("token", ["²", "①"])
def test_a_class_written_with_a_unicode_digit_python_cannot_read_is_one_error_line(velcro, tmp_path, token):
    model = ROOT / "weights" / "resnet18.h5"
    velcro("eval", model, "--data", "fashion-mnist", "--classes", token, "--samples", "5").error_line(
        f"unknown class '{token}'", code=2
    )
