"""`velcro eval` needs one score per class: an output of another shape, or fewer classes than the labels name,
is one `error:` line (exit 1), never a number and never a traceback. `velcro import-onnx` refuses a model of
several outputs the same way."""

import json
import subprocess
import sys

import numpy as np
import pytest
from oracle64 import write_model

from velcro_ref import cli


def run_cli(capsys, *args):
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code, out, err, *needles):
    assert code == 1, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "accuracy" not in out
    return lines[0]


def linear_model(path, n_classes, weight=None):
    """input (1, 2, 2) -> flatten -> linear with n_classes outputs."""
    rng = np.random.default_rng(n_classes)
    w = rng.standard_normal((n_classes, 4)) if weight is None else weight
    nodes = [
        {"name": "flat", "op": "flatten", "inputs": ["input"], "attrs": {}, "params": {}},
        {"name": "fc", "op": "linear", "inputs": ["flat"], "attrs": {}, "params": {"weight": "fc.weight"}},
    ]
    write_model(path, (1, 2, 2), "fc", nodes, {"fc.weight": w})
    return path


def conv_model(path):
    """input (1, 4, 4) -> conv 1x1 with 4 output channels: the output is (N, 4, 4, 4)."""
    attrs = {"out_channels": 4, "kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pads": [0] * 4, "groups": 1}
    nodes = [{"name": "conv", "op": "conv2d", "inputs": ["input"], "attrs": attrs, "params": {"weight": "w"}}]
    write_model(path, (1, 4, 4), "conv", nodes, {"w": np.ones((4, 1, 1, 1))})
    return path


def images(path, shape, labels):
    x = np.random.default_rng(0).standard_normal((len(labels), *shape)).astype(np.float32)
    np.savez(path, x=x, y=np.asarray(labels, np.int64))
    return path, x


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_eval_of_a_4d_output_is_refused(tmp_path, capsys, json_flag):
    model = conv_model(tmp_path / "conv.h5")
    imgs, _ = images(tmp_path / "x.npz", (1, 4, 4), [0, 1, 2, 3])
    line = error_line(*run_cli(capsys, "eval", model, "--images", imgs, *json_flag), "(N, classes)", "(N, 4, 4, 4)")
    assert "'conv'" in line


@pytest.mark.parametrize("n_classes, labels, named", [(3, [0, 1, 2, 3], "class 3"), (1, [0, 1, 2], "class 2")])
def test_eval_with_fewer_classes_than_the_labels_name_is_refused(tmp_path, capsys, n_classes, labels, named):
    model = linear_model(tmp_path / "m.h5", n_classes)
    imgs, _ = images(tmp_path / "x.npz", (1, 2, 2), labels)
    error_line(*run_cli(capsys, "eval", model, "--images", imgs, "--json"), named, f"{n_classes} class(es)")


def test_eval_with_a_task_class_beyond_the_output_is_refused(tmp_path, capsys):
    model = linear_model(tmp_path / "m.h5", 3)
    imgs, _ = images(tmp_path / "x.npz", (1, 2, 2), [0, 1, 2, 0])
    # class 5 has no images: the image set is refused first, or the output check; either names class 5
    error_line(*run_cli(capsys, "eval", model, "--images", imgs, "--classes", "1,5"), "5")


def test_eval_with_a_negative_label_is_refused(tmp_path, capsys):
    model = linear_model(tmp_path / "m.h5", 3)
    imgs, _ = images(tmp_path / "x.npz", (1, 2, 2), [0, 1, -1, 2])
    error_line(*run_cli(capsys, "eval", model, "--images", imgs), "class -1")


def test_eval_of_one_score_per_class_gives_the_accuracy_by_hand(tmp_path, capsys):
    # scores = x flattened (identity weight): the predicted class is the argmax of each image's 4 pixels
    model = linear_model(tmp_path / "m.h5", 4, weight=np.eye(4))
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    imgs, x = images(tmp_path / "x.npz", (1, 2, 2), labels)
    code, out, err = run_cli(capsys, "eval", model, "--images", imgs, "--json")
    assert code == 0, err
    want = float(np.mean(x.reshape(len(x), 4).argmax(axis=1) == np.asarray(labels)))
    assert json.loads(out)["dense"]["accuracy"] == pytest.approx(want, abs=1e-12)


def test_import_onnx_of_several_outputs_is_one_error_line(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])]
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, 3]) for t in ("a", "b")]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "two.onnx"
    src.write_bytes(m.SerializeToString())
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", "import-onnx", str(src), "-o", str(tmp_path / "two.h5")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "exactly one graph output, found 2" in lines[0], res.stderr
    assert not (tmp_path / "two.h5").exists()


@pytest.mark.parametrize("order", ["0,2,3", "3,2,0", "2,3,0"])
def test_tied_top_scores_go_to_the_lowest_class_whatever_the_order_of_the_classes(tmp_path, capsys, order):
    # identity weight: the scores are the 4 pixels. Image 0 ties classes 0 and 2 (label 2), image 1
    # ties 2 and 3 (label 2), image 2 ties 0 and 3 (label 3), image 3 is class 0 alone: the lowest
    # index wins each tie, so images 1 and 3 count among the task classes 0, 2, 3 (and in the full
    # output), in any order of the classes.
    model = linear_model(tmp_path / "m.h5", 4, weight=np.eye(4))
    x = np.array([[5, 1, 5, 0], [1, 0, 7, 7], [4, 1, 2, 4], [9, 0, 0, 0]], np.float32).reshape(4, 1, 2, 2)
    np.savez(tmp_path / "x.npz", x=x, y=np.array([2, 2, 3, 0]))
    code, out, err = run_cli(capsys, "eval", model, "--images", tmp_path / "x.npz", "--classes", order, "--json")
    assert code == 0, err
    dense = json.loads(out)["dense"]
    assert dense["accuracy"] == pytest.approx(2 / 4) and dense["accuracy_task"] == pytest.approx(2 / 4)


def test_evaluate_refuses_labels_of_another_count(model, images):
    """One label for many images broadcast against every batch (a wrong accuracy, no error)."""
    from velcro_ref.errors import InputError
    from velcro_ref.evaluation import evaluate

    x, y = images
    for labels in (y[:1], y[: len(x) - 1]):
        with pytest.raises(InputError, match=f"{len(x)} images but {len(labels)} labels"):
            evaluate(model, x, labels, (0, 1))


def test_eval_warns_of_images_whose_scores_overflowed(tmp_path, capsys):
    """Scores of +inf (a linear layer overflowing float32) gave an accuracy with exit 0 and no word."""
    w = np.array([[3e38, 3e38, 3e38, 3e38], [1, 1, 1, 1], [-1, -1, -1, -1]], np.float32)
    model = linear_model(tmp_path / "m.h5", 3, w)
    x = np.ones((4, 1, 2, 2), np.float32)
    x[2:] = 1e-38  # images 2 and 3: finite scores
    np.savez(tmp_path / "x.npz", x=x, y=np.array([0, 1, 1, 2], np.int64))
    code, out, err = run_cli(capsys, "eval", model, "--images", tmp_path / "x.npz", "--json")
    assert code == 0, err
    assert json.loads(out)["dense"]["inf_images"] == 2
    (line,) = err.splitlines()
    assert line.startswith("warning: dense: 2 of 4 images have an infinite score"), line
    np.savez(tmp_path / "x.npz", x=x[2:], y=np.array([1, 2], np.int64))
    code, out, err = run_cli(capsys, "eval", model, "--images", tmp_path / "x.npz", "--json")
    assert code == 0 and err == "" and json.loads(out)["dense"]["inf_images"] == 0


@pytest.mark.parametrize(
    "x, digits, percent, text",
    [
        (0.99995520, 4, False, ">0.9999"),  # a CSR whose last layer still runs: printed "1.0000"
        (108522 / 108544, 1, True, ">99.9%"),  # 99.98% of the elements masked: printed "100.0%"
        (5 / 108544, 1, True, "<0.1%"),  # printed "0.0%"
        (1.0, 1, True, "100.0%"),
        (0.0, 4, False, "0.0000"),
        (0.93185, 2, True, "93.19%"),
        (0.5, 4, False, "0.5000"),
    ],
)
def test_a_share_short_of_all_or_none_never_reads_as_all_or_none(x, digits, percent, text):
    from velcro_ref.cli_util import share_text

    assert share_text(x, digits, percent) == text


def test_compress_of_a_ratio_short_of_1_does_not_print_100_percent(tmp_path, capsys):
    """`compress --ratio 0.9999`: 108,522 of 108,544 elements masked printed "(100.0%)"."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    import velcro_ref

    m = velcro_ref.load_model(root / "weights" / "resnet18.h5")
    x = np.random.default_rng(0).standard_normal((4, *m.input_shape)).astype(np.float32)
    velcro_ref.save_stats(velcro_ref.profile(m, x), tmp_path / "s.h5")
    assert cli.main(["compress", str(tmp_path / "s.h5"), "--ratio", "0.9999", "-o", str(tmp_path / "m.h5")]) == 0
    out = capsys.readouterr().out
    assert "(>99.9%)" in out and "100.0%" not in out, out
