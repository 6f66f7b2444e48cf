"""`velcro demo`: end to end on the shipped weights and real data; on a tiny model, the ratios chosen without
test images, the accelerator figures against `velcro simulate` and the self-contained index.html."""

import base64
import dataclasses
import gzip
import json
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from velcro_ref import cli, data
from velcro_ref.demo import choose_ratios, run_demo
from velcro_ref.engine import load_model
from velcro_ref.policies import POLICIES

ROOT = Path(__file__).resolve().parents[2]


def test_demo_quick_writes_a_complete_report(tmp_path):
    out = tmp_path / "report"
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", "demo", "--quick", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert (out / "summary.md").read_text().startswith("Ratios")
    assert (out / "index.html").stat().st_size > 0
    assert report["models"]
    for name, entry in report["models"].items():
        assert entry["tasks"]
        for task, r in entry["tasks"].items():
            assert (out / f"sweep_{name}_{task}.png").stat().st_size > 0
            assert (out / f"locality_{name}_{task}.png").stat().st_size > 0
            assert (out / f"accelerator_{name}_{task}.png").stat().st_size > 0
            assert r["images"]["validation"]["n"] > 0 and r["images"]["test"]["n"] > 0
            for res in r["policies"].values():
                csrs = [p["csr"] for p in res["validation"]]
                assert csrs[0] == 0.0 and csrs == sorted(csrs) and csrs[-1] > 0


# -- the choice --------------------------------------------------------------------------------------


def summary(ratio, csr, correct):
    return {"ratio": ratio, "csr": csr, "correct": correct}


def test_choose_ratios_takes_the_largest_csr_at_no_loss_and_the_most_correct_images():
    points = [
        summary(0.0, 0.0, 90),
        summary(0.1, 0.1, 92),
        summary(0.2, 0.2, 92),
        summary(0.3, 0.3, 90),  # no loss: equal to dense
        summary(0.4, 0.4, 89),  # a loss, whatever comes after
        summary(0.5, 0.5, 91),
        summary(0.6, 0.55, 85),
    ]
    # 0.5 is at no loss too and has the largest CSR; 0.1 and 0.2 tie on the gain: the lower ratio
    assert choose_ratios(points) == {"no_loss": 0.5, "best_gain": 0.1}
    assert choose_ratios([summary(0.0, 0.0, 50), summary(0.5, 0.4, 49)]) == {"no_loss": 0.0, "best_gain": 0.0}


def test_validation_images_are_the_task_train_images_after_the_preprocessing_set():
    model = load_model(ROOT / "weights" / "resnet18.h5")
    images, labels = data.load_fashion_mnist("train")
    rows = np.flatnonzero((labels == 1) | (labels == 8))  # the task's train images, in order
    x_pre, _ = data.task_images(model, (1, 8), "train", 100)
    x_val, y_val = data.task_images(model, (1, 8), "train", 50, start=100)
    pre = model.meta["preprocessing"]
    want = (images[rows[100:150]].astype(np.float32) * pre["scale"] - pre["mean"][0]) / pre["std"][0]
    np.testing.assert_allclose(x_val[:, 0], want, rtol=1e-6)
    np.testing.assert_array_equal(y_val, labels[rows[100:150]])
    assert not np.isin(rows[100:150], rows[:100]).any() and len(x_pre) == 100


def write_idx_labels(path, labels):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 0x00000801, len(labels)) + np.asarray(labels, np.uint8).tobytes())


def test_ratio_choice_never_reads_test_images(tmp_path):
    """Test labels that make the dense model 0% accurate would make every ratio 'no loss' on test, so a choice
    made there would take the top of the grid; the choice made on validation images does not move."""
    src = Path(data.DEBIAN_DIR)
    weights = ROOT / "weights"
    task, classes = "footwear", (5, 7, 9)
    settings = dict(
        weights_dir=weights, models=["resnet18"], tasks=[task], policies=["uniform", "channel"],
        ratios="0,0.5,0.9", profile_n=200, val_n=200, eval_n=200, accels=["edge16"], progress=False,
    )  # fmt: skip
    real = run_demo(tmp_path / "real", data_dir=src, **settings)

    # the same test images, each labelled with a task class the dense model does not predict
    model = load_model(weights / "resnet18.h5")
    _, labels = data.load_fashion_mnist("test", src)
    rows = np.flatnonzero(np.isin(labels, classes))[: settings["eval_n"]]  # the demo's test images
    x, _ = data.task_images(model, classes, "test", settings["eval_n"], src)
    predicted = model.run(x).argmax(axis=1)
    wrong = labels.copy()
    wrong[rows] = np.where(predicted == classes[0], classes[1], classes[0])
    other = tmp_path / "data"
    other.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (other / name).symlink_to(src / name)
    write_idx_labels(other / "t10k-labels-idx1-ubyte.gz", wrong)
    moved = run_demo(tmp_path / "moved", data_dir=other, **settings)

    a = real["models"]["resnet18"]["tasks"][task]
    b = moved["models"]["resnet18"]["tasks"][task]
    assert b["dense"]["test"]["accuracy"] == 0.0 < a["dense"]["test"]["accuracy"]  # the labels were read
    for policy in settings["policies"]:
        pa, pb = a["policies"][policy], b["policies"][policy]
        assert pa["validation"] == pb["validation"]
        assert pa["no_loss"]["ratio"] == pb["no_loss"]["ratio"] and pa["best_gain"]["ratio"] == pb["best_gain"]["ratio"]
        assert pa["no_loss"]["accelerator"] == pb["no_loss"]["accelerator"]
    # on the relabelled test images every ratio is at no loss: a choice there would take 0.9 for every policy
    assert any(a["policies"][p]["no_loss"]["ratio"] < 0.9 for p in settings["policies"])


# -- a tiny model: accelerator figures and index.html ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from velcro_ref.model_io import save_model
    from velcro_ref.zoo import build_zoo

    weights = tmp_path_factory.mktemp("weights")
    save_model(build_zoo("resnet18", input_size=28, in_channels=1, width=0.125, num_classes=10), weights / "tiny.h5")
    (weights / "manifest.json").write_text(
        json.dumps({"format": "velcro-weights/1", "models": [{"name": "tiny", "file": "tiny.h5"}]})
    )
    out = tmp_path_factory.mktemp("report")
    report = run_demo(
        out, weights_dir=weights, quick=True, tasks=["footwear"], policies=list(POLICIES), ratios="0,0.5,0.9",
        profile_n=300, val_n=100, eval_n=100, progress=False,
    )  # fmt: skip
    return weights / "tiny.h5", out, report


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_accelerator_figures_equal_velcro_simulate_on_the_same_masks(tiny_demo, tmp_path, capsys):
    model, _, report = tiny_demo
    result = report["models"]["tiny"]["tasks"]["footwear"]
    assert report["settings"]["accelerators"] == ["edge16", "ws32"]
    stats = tmp_path / "s.h5"
    n = report["settings"]["profile_images"]
    run_cli(capsys, "profile", model, "--data", "fashion-mnist", "--classes", "5,7,9", "--samples", n, "-o", stats)
    compressed = 0
    for policy, res in result["policies"].items():
        r = res["no_loss"]["ratio"]
        masks = tmp_path / f"{policy}.h5"
        run_cli(capsys, "compress", stats, "--ratio", r, "--policy", policy, "--model", model, "-o", masks)
        for accel, figures in res["no_loss"]["accelerator"].items():
            doc = json.loads(
                run_cli(capsys, "simulate", model, "--masks", masks, "--accel", accel, "--json", "--compute-only")
            )
            assert figures == doc["total"], (policy, accel)
            compressed += figures["macs_saved"] > 0
    assert compressed > 0  # some of the chosen masks skip work


class PageChecker(HTMLParser):
    """Tags closed in order, and every reference a tag makes."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.refs, self.ids, self.images = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)

    def _attrs(self, tag, attrs):
        for key, value in attrs:
            if key == "id":
                self.ids.add(value)
            if key in ("src", "href", "srcset", "data", "action", "poster", "background", "cite", "formaction"):
                self.refs.append((tag, key, value))
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag in ("script", "link", "iframe", "object", "embed", "base"):
            self.problems.append(f"<{tag}> tag")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_index_html_is_well_formed_self_contained_and_embeds_every_plot(tiny_demo):
    _, out, _ = tiny_demo
    text = (out / "index.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = PageChecker()
    page.feed(text)
    page.close()
    assert page.problems == [] and page.stack == []
    prefix = "data:image/png;base64,"
    for tag, key, value in page.refs:
        if key == "href":
            assert value.startswith("#") and value[1:] in page.ids, (tag, value)
        else:
            assert (tag, key) == ("img", "src") and value.startswith(prefix), (tag, key, value[:40])
    assert "url(" not in text and "@import" not in text
    embedded = sorted(base64.b64decode(src[len(prefix) :]) for src in page.images)
    plots = sorted(p.read_bytes() for p in out.glob("*.png"))
    assert len(plots) == 3 and embedded == plots  # locality, sweep and accelerator of the one task


def test_energy_by_component_names_the_policy_and_ratio_it_shows(tiny_demo):
    _, out, report = tiny_demo
    text = (out / "index.html").read_text(encoding="utf-8")
    result = report["models"]["tiny"]["tasks"]["footwear"]
    policy, entry = next(iter(result["policies"].items()))
    ratio = entry["no_loss"]["ratio"]
    head = f"<h3>Energy per image by component: {policy} at its no-loss ratio r={ratio:g}</h3>"
    assert text.count(head) == 1
    table = text.split(head)[1].split("</table>")[0]
    cells = [re.findall(r"<t[hd]>([^<]*)</t[hd]>", row) for row in table.split("<tr>")[1:]]
    total = next(row for row in cells if row[0] == "total")
    value, unit = total[cells[0].index("edge16 VELCRO")].split()
    pj = float(value) * {"pJ": 1, "nJ": 1e3, "uJ": 1e6, "mJ": 1e9}[unit]
    assert pj == pytest.approx(entry["no_loss"]["accelerator"]["edge16"]["compressed"]["energy_pj"], rel=1e-3)


def test_int8_demo_runs_the_int8_models_and_fills_only_the_int8_readme_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        "x\n<!-- demo-results:start -->\nfloat\n<!-- demo-results:end -->\n"
        "<!-- demo-int8-results:start -->\nold\n<!-- demo-int8-results:end -->\n"
    )
    args = ["demo", "--int8", "--models", "resnet18_int8", "--tasks", "footwear", "--policies", "uniform"]
    args += ["--ratios", "0,0.5", "--accels", "edge16", "--profile-samples", "100", "--val-samples", "50"]
    run_cli(capsys, *args, "--samples", "50", "-o", tmp_path / "r", "--readme", readme)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    [entry] = [m for m in manifest["int8_models"] if m["name"] == "resnet18_int8"]
    assert report["settings"]["int8"] is True
    assert list(report["models"]) == ["resnet18_int8"]
    assert report["models"]["resnet18_int8"]["file"] == entry["file"]
    assert report["models"]["resnet18_int8"]["variant"] == entry["quantization"]["activations"] == "int8"
    text = readme.read_text()
    assert "\nfloat\n" in text and "\nold\n" not in text
    block = text.split("<!-- demo-int8-results:start -->")[1].split("<!-- demo-int8-results:end -->")[0]
    assert "| resnet18_int8 | footwear |" in block


def test_the_change_example_of_the_docs_and_reports_is_one_the_method_prints():
    """12 of 500 images gained, none lost, through paired_change and change_text: the example that
    docs/demo.md and every report header show (a hand-written `+4 ... *` could never be starred:
    4 gained has an exact McNemar p of at least 0.125)."""
    from velcro_ref.demo_report import EXAMPLE, change_text
    from velcro_ref.intervals import paired_change

    base = np.zeros(500, bool)
    new = base.copy()
    new[:12] = True
    assert change_text(paired_change(base, new)) == EXAMPLE == "+12 (+2.40 [+1.13, +2.40])*"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "demo.md").read_text()
    assert f"A change reads `{EXAMPLE}`" in docs


def test_the_report_states_the_images_the_tasks_used_not_the_number_asked_for():
    """--samples 5000 on a task of 3000 test images: the text said 5000 while 3000 were run."""
    from velcro_ref.demo_report import _images_line, notes

    def task(test_n):
        return {"images": {"preprocessing": {"n": 300}, "validation": {"n": 100}, "test": {"n": test_n}}}

    settings = {"ratios": [0.0, 0.5], "policies": ["uniform"], "profile_images": 300, "validation_images": 100}
    settings.update(eval_images_per_task=5000, accelerators=[], accelerator_descriptions=[], accelerator_batch=1)
    one = {"settings": settings, "models": {"m": {"tasks": {"footwear": task(3000)}}}}
    assert "3000 test images" in _images_line(one) and "5000" not in _images_line(one)
    assert "first 3000 test images" in dict(notes(one))["Image sets"]
    two = {"settings": settings, "models": {"m": {"tasks": {"a": task(3000), "b": task(2000)}}}}
    assert "2000 - 3000 test images" in _images_line(two)
    from velcro_ref.demo_report import settings_table

    rows = dict(map(tuple, settings_table(two)))  # the html page's Settings table
    assert (rows["eval_images_per_task"], rows["validation_images"]) == ("5000 asked, 2000 - 3000 used", "100")


def test_a_data_directory_without_the_test_files_is_refused_before_the_report_folder_is_made(tmp_path, capsys):
    """The demo read the train files, made the report folder, then failed on the test files, leaving it empty."""
    src = data.resolve_data_dir()
    trainonly = tmp_path / "trainonly"
    trainonly.mkdir()
    for name in data.SPLIT_FILES["train"]:
        (trainonly / name).symlink_to(src / name)
    out = tmp_path / "report"
    args = ["demo", "--quick", "--models", "resnet18", "--tasks", "footwear", "-o", str(out)]
    assert cli.main([*args, "--data-dir", str(trainonly)]) == 1
    assert "t10k-images-idx3-ubyte.gz not found" in capsys.readouterr().err
    assert not out.exists()


def test_points_count_images_whose_scores_overflowed_and_the_demo_warns_where(tiny_demo, monkeypatch, capsys):
    """An accuracy of the report could come from +inf scores (float32 overflowed on the test images
    though not on the profile images) with no word: each summary counts them (`inf_images`) and
    `velcro demo` names the model, task, image set and point in a warning."""
    import copy

    from robust_util import overflowing_model

    from velcro_ref import demo

    model, x = overflowing_model()
    labels = np.zeros(7, np.int64)
    point = demo.evaluate_point(model, (0, 1), None, None, 0.0, ("test", 0, 7), given=(x, labels))
    assert point["inf_images"] == int(np.isinf(model.run(x)).any(axis=1).sum()) == 3
    assert demo.summarize(point, point)["inf_images"] == 3

    _, _, report = tiny_demo
    assert demo.overflowed(report) == []  # the tiny model's scores are finite
    hit = copy.deepcopy(report)
    task = hit["models"]["tiny"]["tasks"]["footwear"]
    policy = next(iter(task["policies"]))
    masked = next(p for p in task["policies"][policy]["validation"] if p["ratio"] > 0)
    masked["inf_images"] = 2
    task["dense"]["test"]["inf_images"] = 1
    where = ["tiny/footwear test dense", f"tiny/footwear validation {policy}@{masked['ratio']:g}"]
    assert demo.overflowed(hit) == sorted(where)

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: hit)
    assert cli.main(["demo", "--quick"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: some images have an infinite score") and "; ".join(sorted(where)) in line, line


def _weights(tmp_path, entries, fmt="velcro-weights/1"):
    """A weights folder with the shipped resnet18.h5 and googlenet.h5 and a manifest of `entries`."""
    w = tmp_path / "w"
    w.mkdir()
    for name in ("resnet18.h5", "googlenet.h5"):
        (w / name).symlink_to(ROOT / "weights" / name)
    (w / "manifest.json").write_text(json.dumps({"format": fmt, "models": entries}))
    return w


def _shipped(name):
    return next(m for m in json.loads((ROOT / "weights" / "manifest.json").read_text())["models"] if m["name"] == name)


@pytest.mark.parametrize(
    "entries, needle",
    [
        (
            [dict(_shipped("resnet18"), file="googlenet.h5")],
            "googlenet.h5 is not the model the manifest",
        ),
        ([{"name": "a", "file": "resnet18.h5", "fingerprint": 12345}], "fingerprint expects the model's fingerprint"),
        ([{"name": "a", "file": "resnet18.h5", "test_accuracy": "93%"}], "test_accuracy expects a fraction in [0, 1]"),
        ([{"name": "a", "file": "resnet18.h5", "test_accuracy": 93.19}], "test_accuracy expects a fraction in [0, 1]"),
        ([{"name": "../escaped", "file": "resnet18.h5"}], "a name takes letters, digits"),
        ([{"name": "a", "file": "resnet18.h5"}, {"name": "a", "file": "googlenet.h5"}], "model 'a': listed twice"),
        (
            [{k: v for k, v in _shipped("resnet18").items() if k != "fingerprint"}],
            "a test_accuracy needs the fingerprint of the model it was measured on",
        ),
        ([dict(_shipped("resnet18"), test_images=37)], "test_images expects 10000"),
        ([dict(_shipped("resnet18"), test_images=True)], "test_images expects 10000"),
        ([_shipped("resnet18")], "expects a manifest of format velcro-weights/1, found 'velcro-weights/9'"),
    ],
    ids=[
        "other-file",
        "number-fingerprint",
        "text-accuracy",
        "percent-accuracy",
        "path-name",
        "twice",
        "accuracy-without-fingerprint",
        "accuracy-of-fewer-images",
        "bool-images",
        "other-format",
    ],
)
def test_a_manifest_entry_that_is_not_what_the_report_would_print_is_refused_before_any_work(
    tmp_path, capsys, entries, needle
):
    """Another model's file under a name printed that name's manifest accuracy (93.2%) beside the
    other model's figures; a text accuracy crashed after all the work; a name with a path wrote
    outside the report folder; a name listed twice kept one of the two runs. Exit 0 for three. An
    accuracy without the fingerprint of its model, or of fewer test images, was printed as the
    accuracy "(10000 images, velcro engine)" of the file."""
    fmt = "velcro-weights/9" if "format" in needle else "velcro-weights/1"
    w = _weights(tmp_path, entries, fmt)
    code = cli.main(["demo", "--weights", str(w), "-o", str(tmp_path / "r"), "--quick"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_an_output_folder_that_is_a_default_input_is_refused(tmp_path, capsys, monkeypatch):
    """-o weights/ (the default --weights) or -o onto the default data folder wrote the report's files
    into it; only the same folders given by flag were refused."""
    from velcro_ref import demo

    def ran(*a, **k):  # were the check to fail, the demo would write into the folders: it must not run
        raise AssertionError("the demo ran")

    monkeypatch.setattr(demo, "run_demo", ran)
    monkeypatch.chdir(ROOT)
    for out in ("weights", "./weights/", data.resolve_data_dir(None)):
        code = cli.main(["demo", "-o", str(out), "--quick"])
        err = capsys.readouterr().err
        assert code == 2 and "names the input" in err and err.count("\n") == 1, err


def test_an_output_onto_a_file_of_the_data_folder_named_with_a_tilde_is_refused(tmp_path, capsys, monkeypatch):
    """With VELCRO_DATA='~/fm', `velcro sweep --plot ~/fm/<labels file>` overwrote the labels: the
    data folder is read with ~ expanded, the guard compared the path unexpanded."""
    from velcro_ref import api

    fm = tmp_path / "fm"
    fm.mkdir()
    src = Path(data.resolve_data_dir(None))
    for pair in data.SPLIT_FILES.values():
        for name in pair:  # the labels copied (a regression writes over them), the images linked
            (fm / name).write_bytes((src / name).read_bytes()) if "labels" in name else (fm / name).symlink_to(
                src / name
            )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(data.ENV_VAR, "~/fm")

    def ran(*a, **k):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(api, "sweep", ran)
    target = fm / data.SPLIT_FILES["test"][1]
    before = target.read_bytes()
    code = cli.main(["sweep", str(ROOT / "weights" / "resnet18.h5"), "--task", "footwear", "--plot", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "names the input" in err, err
    assert target.read_bytes() == before


@pytest.mark.parametrize("policies", [["--policies", "channel"], []])
def test_a_grid_with_no_masked_ratio_is_refused(tmp_path, capsys, monkeypatch, policies):
    """Without --policies the default policies ran at ratio 0 alone: a report with no mask in it."""

    def work(*args, **kwargs):
        raise AssertionError("the demo started its work")

    monkeypatch.setattr(data, "load_fashion_mnist", work)
    code = cli.main(["demo", "-o", str(tmp_path / "r"), "--ratios", "0", *policies])
    err = capsys.readouterr().err
    assert code == 2 and "no policy would run" in err, err
    assert not (tmp_path / "r").exists()


def test_each_task_file_carries_the_settings_of_its_run(tiny_demo):
    _, out, report = tiny_demo
    task = json.loads((out / "tiny_footwear.json").read_text())
    assert task["settings"] == json.loads(json.dumps(report["settings"]))
    assert {k: v for k, v in task.items() if k != "settings"} == json.loads(
        json.dumps(report["models"]["tiny"]["tasks"]["footwear"])
    )


def test_a_model_without_sites_or_macs_is_refused_before_any_work(tmp_path, capsys):
    """The demo profiled such a model and then ended in a ValueError (locality) or a division by 0 MACs."""
    from velcro_ref.graph import INPUT, Graph, Node
    from velcro_ref.model_io import save_model

    w = tmp_path / "w"
    w.mkdir()
    flat = Node("f", "flatten", (INPUT,))
    save_model(Graph((flat, Node("r", "relu", ("f",))), (1, 28, 28), "r", {}), w / "nomac.h5")
    fc = Node("l", "linear", ("f",), {}, {"weight": "w"})
    save_model(Graph((flat, fc), (1, 28, 28), "l", {"w": np.ones((10, 784), np.float32)}), w / "nosite.h5")
    for name, needle in (("nomac", "executes no MAC"), ("nosite", "no activation site")):
        (w / "manifest.json").write_text(
            json.dumps({"format": "velcro-weights/1", "models": [{"name": name, "file": f"{name}.h5"}]})
        )
        code = cli.main(["demo", "--weights", str(w), "-o", str(tmp_path / "r"), "--quick"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert f"{name}.h5" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "text",
    ["<!-- demo-results:end -->\nold\n<!-- demo-results:start -->\n", "no block\n", "<!-- demo-results:start -->\n"],
    ids=["end-before-start", "none", "no-end"],
)
def test_a_readme_without_a_whole_block_is_refused_before_any_work(tmp_path, capsys, monkeypatch, text):
    """Markers in the wrong order passed the check: the demo printed "updated" and replaced nothing."""
    from velcro_ref import demo

    def ran(*a, **k):
        raise AssertionError("the demo ran")

    monkeypatch.setattr(demo, "run_demo", ran)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    code = cli.main(["demo", "-o", str(tmp_path / "r"), "--readme", str(readme)])
    err = capsys.readouterr().err
    assert code == 2 and "block to replace" in err, err
    assert readme.read_text() == text


def test_an_accelerator_file_is_read_once_by_the_client_and_sent_to_the_tasks(tiny_demo, tmp_path, monkeypatch):
    """A task read --accels FILE.toml itself: on a cluster each worker read its own file of that path (one
    with other rows priced the demo its way, exit 0). Here the file is spoiled once the tasks start."""
    from simulator import load_arch
    from simulator.arch import ARCH_DIR, Arch
    from velcro_ref import demo

    model, _, _ = tiny_demo
    spec = tmp_path / "mine.toml"
    spec.write_text((ARCH_DIR / "edge16.toml").read_text())
    real, seen = demo.simulate_point, []

    def spoiling(model, stats, policy, ratio, accel, batch=1):
        spec.write_text("not toml [")
        seen.append(accel)
        return real(model, stats, policy, ratio, accel, batch)

    monkeypatch.setattr(demo, "simulate_point", spoiling)
    report = run_demo(
        tmp_path / "out", weights_dir=model.parent, tasks=["footwear"], policies=["uniform"], ratios="0,0.5",
        profile_n=100, val_n=50, eval_n=50, accels=[str(spec)], progress=False,
    )  # fmt: skip
    preset = dataclasses.replace(load_arch(ARCH_DIR / "edge16.toml"), source=str(spec))
    assert seen and all(isinstance(a, Arch) and a == preset for a in seen)
    figures = report["models"]["tiny"]["tasks"]["footwear"]["policies"]["uniform"]["no_loss"]["accelerator"]
    assert list(figures) == [str(spec)]


def test_the_report_names_each_ratio_of_a_grid_that_is_not_evenly_spaced():
    """--ratios 0.1,0.4: the text read "Ratios 0..0.4 (3 points)", as if 0, 0.2, 0.4 were run."""
    from velcro_ref.demo_report import _images_line
    from velcro_ref.experiments import parse_ratios

    task = {"images": {"preprocessing": {"n": 30}, "validation": {"n": 10}, "test": {"n": 20}}}
    settings = {"policies": ["uniform"], "profile_images": 30, "validation_images": 10, "eval_images_per_task": 20}
    for ratios, text in [
        ([0.0, 0.1, 0.4], "Ratios 0, 0.1, 0.4, "),
        ([0.3], "Ratio 0.3, "),
        ([0.0, 0.3, 0.6, 0.9], "Ratios 0..0.9 (4 points), "),
        ([round(0.1 * i, 10) for i in range(10)], "Ratios 0..0.9 (10 points), "),
        ([0.0, 1e-10, 5e-10], "Ratios 0, 1e-10, 5e-10, "),
        ([0.1, 0.1000000001, 0.1000000003], "Ratios 0.1, 0.1000000001, 0.1000000003, "),
        (parse_ratios("0:0.05:0.009740641234"), "Ratios 0..0.0487032062 (6 points), "),  # points rounded to 1e-10
    ]:
        report = {"settings": {**settings, "ratios": ratios}, "models": {"m": {"tasks": {"t": task}}}}
        assert _images_line(report).startswith(text), (ratios, _images_line(report))


def test_the_validation_figures_are_of_the_train_images_after_the_preprocessing_set(tiny_demo):
    """docs/demo.md: validation is the task's next train images after its profile_n preprocessing images;
    the dense validation count recomputed here from those images (and not one image earlier) by top-1."""
    path, _, report = tiny_demo
    r = report["models"]["tiny"]["tasks"]["footwear"]
    assert r["images"]["preprocessing"] == {"split": "train", "first": 0, "n": 300}
    assert r["images"]["validation"] == {"split": "train", "first": 300, "n": 100}
    model = load_model(path)
    images, labels = data.load_fashion_mnist("train")
    rows = np.flatnonzero(np.isin(labels, (5, 7, 9)))[300:400]
    pre = model.meta["preprocessing"]
    x = ((images[rows].astype(np.float32) * pre["scale"] - pre["mean"][0]) / pre["std"][0])[:, None]
    correct = model.run(x.astype(np.float32)).argmax(axis=1) == labels[rows]
    assert r["dense"]["validation"]["correct"] == int(correct.sum())
    for policy in r["policies"].values():
        assert policy["validation"][0]["correct"] == int(correct.sum())
