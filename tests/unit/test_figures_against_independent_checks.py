"""Figures of the golden-vector, interval, evaluation and demo paths against checks recomputed here:
the tensors a golden file names, the paired interval of a change with gains and losses, accuracy
over a partial last batch, and the demo's choices worked by hand."""

import json
import math

import h5py
import numpy as np
import pytest

from velcro_ref.intervals import paired_change


def test_golden_node_inputs_are_the_outputs_of_the_tensors_they_name(velcro, model_file, tmp_path):
    """docs/formats.md: input_<i> is the tensor named by the node's `inputs`; an add or concat whose
    second input was written as its first held the wrong tensor under the right name."""
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = velcro("golden", model_file, "--input", tmp_path / "x.npy", "-o", tmp_path / "g.h5")
    assert res.code == 0, res.err
    checked = 0
    with h5py.File(tmp_path / "g.h5") as f:
        outputs = {}
        for key in f["nodes"]:  # listed in execution order
            g = f["nodes"][key]
            names = json.loads(g.attrs["inputs"])
            for i, name in enumerate(names):
                want = f["input"][()] if name not in outputs else outputs[name]
                np.testing.assert_array_equal(g[f"input_{i}"][()], want, err_msg=f"{key} input_{i} ({name})")
                checked += i > 0
            outputs[g.attrs["name"]] = g["output"][()]
    assert checked > 0  # the model has nodes of two inputs (its residual adds)


def _pairs(n, won, lost):
    base = np.zeros(n, bool)
    new = np.zeros(n, bool)
    base[:lost] = True
    new[lost : lost + won] = True
    return base, new


def _cp(x, n, alpha=0.05):
    """Clopper-Pearson ends by bisection on binomial tails summed directly in float64."""

    def at_most(k, p):
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))

    def solve(f):  # f decreasing in p, find f(p) = alpha / 2
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > alpha / 2 else (lo, mid)
        return (lo + hi) / 2

    # P(X >= x) increases in p: lower end solves P(X >= x) = alpha / 2
    if x == 0:
        low = 0.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if 1 - at_most(x - 1, mid) > alpha / 2 else (mid, hi)
        low = (lo + hi) / 2
    high = 1.0 if x == n else solve(lambda p: at_most(x, p))
    return low, high


@pytest.mark.parametrize("won, lost, n", [(9, 3, 500), (4, 11, 200), (7, 7, 60)])
def test_paired_change_interval_with_gains_and_losses(won, lost, n):
    """Both ends of the change's interval are (d / n)(2 pi - 1) at the Clopper-Pearson ends of
    won of d = won + lost changed images; the tests by hand had no lost image (won = d)."""
    ch = paired_change(*_pairs(n, won, lost))
    d = won + lost
    lo, hi = _cp(won, d)
    assert (ch["won"], ch["lost"], ch["change_images"]) == (won, lost, won - lost)
    assert ch["ci"] == pytest.approx([d / n * (2 * lo - 1), d / n * (2 * hi - 1)], abs=1e-9)
    tail = sum(math.comb(d, i) for i in range(min(won, lost) + 1)) / 2**d
    assert ch["p_value"] == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


@pytest.mark.parametrize("batch", [7, 16, 39, 40, 128])
def test_accuracy_and_macs_count_every_image_of_a_partial_last_batch(model, images, batch):
    """Accuracy over all 40 images whatever the batch (7 and 16 leave a partial last batch), against
    top-1 recomputed here from one run of every image; task accuracy among the task's classes only."""
    from velcro_ref.evaluation import evaluate

    x, y = images
    scores = model.run(x)
    classes = np.array([0, 2, 3])
    want = float(np.mean(scores.argmax(axis=1) == y))
    want_task = float(np.mean(classes[scores[:, classes].argmax(axis=1)] == y))
    res = evaluate(model, x, y, [3, 0, 2], batch=batch, per_image=True)
    assert res["n_images"] == 40 and len(res["correct"]) == 40
    assert res["accuracy"] == pytest.approx(want) and res["accuracy_task"] == pytest.approx(want_task)
    assert res["macs"] == pytest.approx(sum(model.layer_macs().values()))


def _summary(ratio, csr, correct):
    return {"ratio": ratio, "csr": csr, "correct": correct}


def test_choices_break_ties_as_docs_demo_md_says():
    """docs/demo.md: no loss is the largest CSR with at least the dense correct count, then more
    correct, then the lower ratio; best gain the most correct, then the lower ratio. Two ratios of one
    CSR (a policy that gives the same masks) and two of one count, worked by hand."""
    from velcro_ref.demo import choose_ratios

    points = [
        _summary(0.0, 0.0, 90),
        _summary(0.1, 0.2, 91),
        _summary(0.2, 0.2, 93),  # same CSR, more correct: no loss
        _summary(0.3, 0.3, 89),  # a loss
        _summary(0.4, 0.25, 93),  # same count as 0.2 at a higher ratio: not the best gain
    ]
    assert choose_ratios(points) == {"no_loss": 0.4, "best_gain": 0.2}
    points[-1] = _summary(0.4, 0.25, 88)
    assert choose_ratios(points) == {"no_loss": 0.2, "best_gain": 0.2}
    points = [_summary(0.0, 0.0, 50), _summary(0.5, 0.4, 50), _summary(0.6, 0.4, 50)]
    assert choose_ratios(points) == {"no_loss": 0.5, "best_gain": 0.0}


def test_a_summary_counts_full_and_task_accuracy_from_their_own_images():
    """summarize: accuracy from `correct`, task accuracy from `correct_task`, CSR from the MACs, and the
    change against dense from the per-image pairs."""
    from velcro_ref.demo import summarize

    dense = {"ratio": 0.0, "macs": 200.0, "correct": np.array([1, 1, 0, 0, 1], bool),
             "correct_task": np.array([1, 1, 1, 0, 1], bool), "inf_images": 0}  # fmt: skip
    point = {"ratio": 0.3, "macs": 150.0, "correct": np.array([1, 0, 1, 1, 1], bool),
             "correct_task": np.array([1, 1, 1, 1, 1], bool), "inf_images": 0}  # fmt: skip
    s = summarize(point, dense)
    assert (s["n_images"], s["correct"], s["accuracy"], s["accuracy_task"]) == (5, 4, 0.8, 1.0)
    assert s["csr"] == pytest.approx(0.25)
    assert (s["change"]["won"], s["change"]["lost"], s["change"]["change_images"]) == (2, 1, 1)


def test_sweep_best_csr_breaks_a_tie_of_csr_for_the_more_accurate_point():
    """Two ratios of one CSR (the same masks): the sweep's best CSR at no loss and within the tolerance is
    the more accurate of them, worked by hand on 500 images."""
    from velcro_ref.experiments import sweep_summary

    def point(correct, macs):
        return {"accuracy": correct / 500, "accuracy_task": correct / 500, "macs": macs, "inf_images": 0}

    dense = point(400, 1000)
    res = sweep_summary(dense, [0.0, 0.2, 0.3], [dense, point(401, 700), point(404, 700)], "uniform",
                        (5, 7, 9), 0.01, 500, 100)  # fmt: skip
    assert res["best_csr_no_loss"]["ratio"] == 0.3 and res["best_csr_no_loss"]["accuracy"] == 404 / 500
    assert res["best_csr_tolerance"]["ratio"] == 0.3
    assert res["best_csr_no_loss"]["csr"] == pytest.approx(0.3)


def test_locality_counts_a_variance_at_the_threshold_as_not_below_it():
    """docs/demo.md: an element is near-constant when its variance is below threshold x the mean general
    variance of its site; one exactly at it is not (variances 0.25 0.5 0.5 1 against a mean of 1)."""
    from velcro_ref.experiments import locality
    from velcro_ref.stats import SiteStats, Stats

    def stats(variances):
        site = SiteStats.empty((4,))
        site.count[:] = 8
        site.m2[:] = 8 * np.asarray(variances, np.float64)
        return Stats("f" * 16, {"s": site}, (), 8)

    res = locality(stats([0.25, 0.5, 0.5, 1.0]), stats([1.0, 1.0, 1.0, 1.0]), threshold=0.5)
    assert res["share_under_threshold_task"] == 0.25
    assert res["share_under_threshold_general"] == 0.0


def _fig(ratio, csr, acc, won=0, lost=0):
    ch = paired_change(*_pairs(100, won, lost))
    return {"ratio": ratio, "csr": csr, "accuracy": acc, "accuracy_task": acc, "change": ch}


def _hand_report():
    """One model, one task, one policy: validation and test figures that differ everywhere."""
    sim = {"speedup": 1.25, "energy_saving": 0.1, "compute_energy_saving": 0.2}
    choice = {"ratio": 0.3, "validation": _fig(0.3, 0.10, 0.95, 2, 0), "test": _fig(0.3, 0.25, 0.90, 0, 1)}
    pol = {"validation": [], "no_loss": dict(choice, accelerator={"edge16": sim}), "best_gain": dict(choice)}
    task = {
        "dense": {"test": {"accuracy": 0.91}},
        "locality": {"median_variance_ratio": 0.5},
        "policies": {"uniform": pol},
    }
    return {
        "settings": {"policies": ["uniform"], "accelerators": ["edge16"]},
        "models": {"m": {"variant": "float32", "tasks": {"footwear": task}}},
    }


def test_the_readme_table_and_the_choices_table_show_test_figures_at_the_chosen_ratio():
    """README.md / docs/demo.md: every figure of the results table is a test figure at the chosen ratio;
    the choices table shows the test CSR beside validation and test accuracies."""
    from velcro_ref.demo_report import choices_table, results_table

    report = _hand_report()
    head, rows = results_table(report)
    row = dict(zip(head, rows[0], strict=True))
    assert row["dense acc. (test)"] == "91.0%"
    assert row["CSR no loss (uniform)"].startswith("25.0% (r=0.3): -1 (-1.00 [")
    assert row["best gain (uniform)"].startswith("25.0% (r=0.3): -1 (-1.00 [")
    assert row["edge16 speedup"] == "1.250x" and row["edge16 energy saving (compute only)"] == "10.0% (20.0%)"
    head, rows = choices_table(report["models"]["m"]["tasks"]["footwear"])
    for r in rows:
        cells = dict(zip(head, r, strict=True))
        assert cells["CSR"] == "25.0%" and cells["r"] == "0.3"
        assert cells["validation acc."] == "95.00%" and cells["test acc."] == "90.00%"
        assert cells["validation change"].startswith("+2 (+2.00 [")
        assert cells["test change (images, points [95% interval])"].startswith("-1 (-1.00 [")
