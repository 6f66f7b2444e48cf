"""`velcro demo`: the paper's questions on the shipped weights and Fashion-MNIST, as a report folder.

For every model of weights/manifest.json and every task of tasks.toml: the value-locality analysis,
ratio sweeps for each policy on validation images, the ratios chosen there (largest CSR with no loss,
largest gain), their test accuracy with a 95% interval, and their cycles and energy on accelerators.
docs/demo.md describes the image sets, the choice and the interval.

Every unit of work (a profile, an evaluation point, a simulation) is one call of a function of a
Model and plain arguments (class tuples, numbers, image ranges, a Stats), made through a runner, so
that units can run anywhere: in this process (LocalUnits) or as tasks on a Dask cluster
(velcro_ref.distributed.Units); the work of one model and task is finished and
its files are written (atomically) before the next begins, so an interrupted demo keeps what it
finished. report.json, summary.md and index.html are written last.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import data
from .engine import load_model
from .errors import DataError, UsageError
from .evaluation import check_macs, check_sites, csr, evaluate
from .experiments import locality, parse_ratios, profile_task
from .fileio import parse_json, write_text
from .intervals import paired_change
from .jsonout import dumps
from .policies import POLICIES, make_masks

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
ACCELS = ("edge16", "ws32")  # an output-stationary and a weight-stationary preset (docs/simulator.md)
FULL = {"ratios": "0:0.9:0.1", "profile_n": 1000, "val_n": 500, "test_n": 500}
QUICK = {"ratios": "0:0.9:0.3", "profile_n": 300, "val_n": 200, "test_n": 200}
VERSIONED = ("numpy", "numba", "h5py", "onnxruntime", "matplotlib", "tqdm")


def read_manifest(weights_dir, key="models") -> list[dict]:
    """The models listed under `key` of the weights folder's manifest.json ("models": the float
    models, "int8_models": their int8 versions), each with its `path`."""
    path = Path(weights_dir) / "manifest.json"
    try:
        doc = parse_json(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the weights manifest ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{path}: expects a manifest of format {MANIFEST_FORMAT}, found {found!r}")
    models = doc.get(key)
    if not isinstance(models, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("file"), str) for m in models
    ):
        raise DataError(f'{path}: expects {{"{key}": [{{"name": ..., "file": ...}}, ...]}}')
    names = [m["name"] for m in models]
    for m in models:
        where = f"{path}: model '{m['name']}'"
        if not _NAME.fullmatch(m["name"]) or m["name"] in (".", ".."):  # it names the report's files
            raise DataError(f"{where}: a name takes letters, digits, '_', '-' and '.' only")
        if names.count(m["name"]) > 1:
            raise DataError(f"{where}: listed twice (a report keeps one entry per name)")
        if "fingerprint" in m and not isinstance(m["fingerprint"], str):
            raise DataError(f"{where}: fingerprint expects the model's fingerprint as text, found {m['fingerprint']!r}")
        acc = m.get("test_accuracy")
        if acc is None:
            continue
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
            raise DataError(f"{where}: test_accuracy expects a fraction in [0, 1], found {acc!r}")
        # the report prints it as the accuracy of this file on the whole test split
        if "fingerprint" not in m:
            raise DataError(f"{where}: a test_accuracy needs the fingerprint of the model it was measured on")
        if m.get("test_images") != data.SPLIT_SIZES["test"]:
            raise DataError(
                f"{where}: test_images expects {data.SPLIT_SIZES['test']} (a test_accuracy over the whole test "
                f"split), found {m.get('test_images')!r}"
            )
    return [dict(m, path=str(Path(weights_dir) / m["file"])) for m in models]


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MANIFEST_FORMAT = "velcro-weights/1"


def check_models(manifest, weights_dir) -> None:
    """Before any work: DataError unless each model file is the model its manifest entry describes
    (where the entry records a `fingerprint`: the entry's test accuracy is printed beside the demo's
    figures); ModelError / StatsError for a model without MACs or activation sites (`check_macs`,
    `check_sites`), which the demo's figures need."""
    for m in manifest:
        model = _model(m["path"])
        check_macs(model)
        check_sites(model)
        if "fingerprint" in m and model.fingerprint != m["fingerprint"]:
            raise DataError(
                f"{Path(weights_dir) / 'manifest.json'}: model '{m['name']}': {m['file']} is not the model the "
                f"manifest describes (fingerprint {m['fingerprint'][:12]}...; its test accuracy is of that model)"
            )


# -- units of work: plain arguments in, plain results out ------------------------------------------


@functools.lru_cache(maxsize=2)
def _model(path):
    """A model loaded once per process (a worker running many points of it reuses it)."""
    return load_model(path)


def _images(model, classes, images, data_dir, given):
    """The task's images `images` = (split, first, n): `given` as (x, labels) when the caller read
    them; on a cluster with shared data, `given` a SharedImages, read here and held to the client's
    digest of them (`dask_tasks.images_of`); else read here."""
    if isinstance(given, tuple):
        return given
    if given is not None:
        from .dask_tasks import images_of

        return images_of(model, given)
    split, first, n = images
    return data.task_images(model, tuple(classes), split, n, data_dir, first)


def profile_unit(model, classes, images, data_dir=None, given=None):
    """Statistics of the preprocessing set `images` (split, first, n) of `classes`."""
    x, _ = _images(model, classes, images, data_dir, given)
    return profile_task(model, tuple(classes), len(x), x=x)


def point_masks(model, stats, policy, ratio):
    """The MaskSet of one point: `policy` at `ratio` from the task's statistics."""
    return make_masks(policy, stats, ratio, model.site_costs())


def evaluate_point(model, classes, stats, policy, ratio, images, data_dir=None, batch=128, given=None) -> dict:
    """One evaluation point: the task's images `images` = (split, first, n), the n images of `classes`
    in `split` after its first `first`, run dense (ratio 0) or with `policy`'s masks at `ratio`.

    Returns {"policy", "ratio", "images", "macs" (executed, per image), "correct", "correct_task"
    (bool per image), "inf_images" (images with an infinite score, `evaluation.evaluate`)}.
    """
    x, y = _images(model, classes, images, data_dir, given)
    masks = None if ratio == 0 else point_masks(model, stats, policy, ratio)
    res = evaluate(model, x, y, tuple(classes), masks=masks, batch=batch, per_image=True)
    return {
        "policy": policy,
        "ratio": ratio,
        "images": list(images),
        "macs": res["macs"],
        "correct": res["correct"],
        "correct_task": res["correct_task"],
        "inf_images": res["inf_images"],
    }


def simulate_point(model, stats, policy, ratio, accel, batch=1) -> dict:
    """The accelerator's figures for one point: what `velcro simulate MODEL --masks M --accel ACCEL
    --batch B --json --compute-only` prints under "total", for the masks of `policy` at `ratio`."""
    import simulator

    return simulator.simulate(model, accel, point_masks(model, stats, policy, ratio), batch).to_json(True)["total"]


# -- the run ---------------------------------------------------------------------------------------


def summarize(point, dense) -> dict:
    """A point's figures on one image set, with its change against dense on the same images."""
    n = len(point["correct"])
    return {
        "ratio": point["ratio"],
        "n_images": n,
        "correct": int(point["correct"].sum()),
        "accuracy": int(point["correct"].sum()) / n,
        "accuracy_task": int(point["correct_task"].sum()) / n,
        "macs": point["macs"],
        "csr": csr(dense["macs"], point["macs"]),
        "change": paired_change(dense["correct"], point["correct"]),
        "inf_images": point["inf_images"],
    }


def overflowed(report) -> list[str]:
    """Where a report's evaluations met images with an infinite score: "model/task set policy@ratio"
    for each summary whose `inf_images` is not 0 (the dense runs as "dense")."""
    out = set()
    for name, entry in report["models"].items():
        for task, res in entry["tasks"].items():
            found = [("dense", s, res["dense"][s]) for s in ("validation", "test")]
            for policy, pe in res["policies"].items():
                found += [(policy, "validation", p) for p in pe["validation"]]
                found += [(policy, "test", pe[key]["test"]) for key in ("no_loss", "best_gain")]
            for policy, split, summ in found:
                if summ["inf_images"]:
                    where = "dense" if summ["ratio"] == 0 else f"{policy}@{summ['ratio']:g}"
                    out.add(f"{name}/{task} {split} {where}")
    return sorted(out)


def choose_ratios(points) -> dict:
    """The ratios chosen on one image set from a policy's summaries (ratio 0, the dense run, included):
    "no_loss", the largest CSR with at least as many correct images as dense (then more correct, then
    the lower ratio), and "best_gain", the most correct images (then the lower ratio)."""
    dense = next(p for p in points if p["ratio"] == 0)
    ok = [p for p in points if p["correct"] >= dense["correct"]]
    no_loss = max(ok, key=lambda p: (p["csr"], p["correct"], -p["ratio"]))
    best_gain = max(points, key=lambda p: (p["correct"], -p["ratio"]))
    return {"no_loss": no_loss["ratio"], "best_gain": best_gain["ratio"]}


def software_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("velcro-ref", *VERSIONED):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["platform"] = platform.platform()
    out["cpus"] = os.cpu_count()
    return out


def _check_choices(manifest, all_tasks, models, tasks, policies, accels):
    for what, asked, known in (("model", models, [m["name"] for m in manifest]), ("task", tasks, list(all_tasks))):
        unknown = [a for a in asked or () if a not in known]
        if unknown:
            raise UsageError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    unknown = [p for p in policies or () if p not in POLICIES]
    if unknown:
        raise UsageError(f"unknown policy(ies) {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    for what, asked in (("model", models), ("task", tasks), ("policy", policies), ("accelerator", accels)):
        twice = sorted({a for a in asked or () if list(asked).count(a) > 1})
        if twice:  # each would be run and reported twice
            raise UsageError(f"{what} {', '.join(twice)} given twice")
    from simulator import load_arch

    return {a: load_arch(a) for a in accels}


def _described(arch) -> str:
    return arch.description or f"{arch.rows}x{arch.cols} {arch.dataflow.replace('_', ' ')}"


def run_demo(
    out_dir,
    weights_dir=WEIGHTS_DIR,
    quick=False,
    ratios=None,
    policies=None,
    profile_n=None,
    val_n=None,
    eval_n=None,
    data_dir=None,
    models=None,
    tasks=None,
    accels=None,
    progress=True,
    client=None,
    shared_data=False,
    int8=False,
):
    """Run the demo into out_dir; returns the report dict (also written as report.json).

    eval_n is the number of test images per task (0: all of the task's); val_n the validation
    images, the task's train images that follow its profile_n preprocessing images. With a
    dask.distributed `client`, the units of work run as tasks on its cluster; `shared_data`: the
    workers read Fashion-MNIST from data_dir themselves instead of receiving the images. `int8`:
    the manifest's int8 models instead of the float ones.
    """
    from tqdm import tqdm

    from .demo_report import summary_markdown, write_html
    from .plots import plot_accelerator, plot_choices, plot_locality

    t0 = time.perf_counter()
    defaults = QUICK if quick else FULL
    manifest = read_manifest(weights_dir, "int8_models" if int8 else "models")
    all_tasks = data.load_tasks()
    accels = list(accels or ACCELS)
    archs = _check_choices(manifest, all_tasks, models, tasks, policies, accels)  # read here: tasks take them
    arch_descriptions = [_described(a) for a in archs.values()]
    if models:
        manifest = [m for m in manifest if m["name"] in models]
    check_models(manifest, weights_dir)
    task_names = list(tasks or (list(all_tasks)[:2] if quick else all_tasks))
    grid = parse_ratios(ratios or defaults["ratios"])
    grid = sorted({0.0, *grid})  # ratio 0 is the dense run every choice can fall back to
    if len(grid) == 1:  # only a given grid lacks one
        raise UsageError("--ratios with no ratio above 0: no policy would run, no mask would be made")
    policies = list(policies or (["uniform", "channel"] if quick else POLICIES))
    profile_n = profile_n or defaults["profile_n"]
    val_n = val_n or defaults["val_n"]
    eval_n = eval_n if eval_n is not None else defaults["test_n"]
    sets = {
        "preprocessing": ("train", 0, profile_n),
        "validation": ("train", profile_n, val_n),
        "test": ("test", 0, eval_n or None),  # 0: every test image of the task
    }
    train_labels = data.load_fashion_mnist("train", data_dir)[1]
    for task in task_names:
        have = int(np.count_nonzero(np.isin(train_labels, all_tasks[task]["classes"])))
        if have <= profile_n:
            raise UsageError(
                f"--profile-samples {profile_n} leaves no validation image: task '{task}' has {have} train images"
            )
    data.resolve_data_dir(data_dir)  # the test files too, before the report folder is made
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {
            "ratios": grid,
            "policies": policies,
            "profile_images": profile_n,
            "validation_images": val_n,
            "eval_images_per_task": eval_n or "all test images of the task",
            "accelerators": accels,
            "accelerator_descriptions": arch_descriptions,
            "accelerator_batch": 1,
            "quick": quick,
            "int8": int8,
        },
        "software": software_versions(),
        "models": {},
    }
    n_masked = len(policies) * sum(r > 0 for r in grid)
    per_task = 1 + (1 + n_masked) + (1 + 2 * len(policies)) + len(policies) * len(accels)
    bar = tqdm(
        total=len(manifest) * (1 + len(task_names) * per_task),
        desc="demo",
        unit="step",
        disable=None if progress else True,  # None: hidden when stderr is not a terminal
        leave=False,
        dynamic_ncols=True,
    )
    if client is None:
        runner = LocalUnits()
    else:
        from .distributed import Units

        runner = Units(client, data_dir, shared_data)
    try:
        for m in manifest:
            t_model = time.perf_counter()
            name, path = m["name"], m["path"]
            bar.set_postfix_str(f"{name}: general stats")
            call = dict(model_path=path, classes=tuple(range(10)), images=sets["preprocessing"], data_dir=data_dir)
            [general] = runner.run(profile_unit, [call], bar)
            entry = {
                "file": m["file"],
                # a quantized model's variant is its activations' type (int8 or uint8)
                "variant": m.get("variant", m.get("quantization", {}).get("activations", "float32")),
                "test_accuracy_10class": m.get("test_accuracy"),
                "tasks": {},
            }
            report["models"][name] = entry
            for task in task_names:
                classes = all_tasks[task]["classes"]
                result = _run_task(
                    runner, name, path, task, classes, general, grid, policies, archs, sets, data_dir, bar
                )
                result["plots"] = {
                    "locality": f"locality_{name}_{task}.png",
                    "sweep": f"sweep_{name}_{task}.png",
                    "accelerator": f"accelerator_{name}_{task}.png",
                }
                plot_locality(result.pop("_locality"), out / result["plots"]["locality"], f"{name}, task {task}")
                plot_choices(result, out / result["plots"]["sweep"], f"{name}, task {task}")
                plot_accelerator(result, out / result["plots"]["accelerator"], f"{name}, task {task}")
                entry["tasks"][task] = result
                # with the run's settings: a folder reused by a run of other settings may hold both runs' files
                write_text(out / f"{name}_{task}.json", dumps(dict(result, settings=report["settings"]), indent=1))
            entry["elapsed_s"] = time.perf_counter() - t_model
            runner.done_with(path)
    finally:  # an error ends the bar before its line is printed
        bar.close()
    report["elapsed_s"] = time.perf_counter() - t0
    write_text(out / "report.json", dumps(report, indent=1))
    write_text(out / "summary.md", summary_markdown(report))
    write_html(report, out)
    return report


class LocalUnits:
    """Runs the demo's units of work in this process. A call is the unit's keyword arguments with
    `model_path` in place of its Model; velcro_ref.distributed.Units runs the same calls as tasks."""

    def run(self, fn, calls, bar=None) -> list:
        """fn(model, **kwargs) for each call of `calls`, in order."""
        out = []
        for kwargs in calls:
            kwargs = dict(kwargs)
            out.append(fn(_model(kwargs.pop("model_path")), **kwargs))
            if bar is not None:
                bar.update(1)
        return out

    def done_with(self, path) -> None:
        _model.cache_clear()


def _run_task(runner, name, path, task, classes, general, grid, policies, archs, sets, data_dir, bar):
    """Profile, sweep on validation, choose, test the choices and price them: one model and task."""
    bar.set_postfix_str(f"{name}/{task}: profile")
    call = dict(model_path=path, classes=classes, images=sets["preprocessing"], data_dir=data_dir)
    [stats] = runner.run(profile_unit, [call], bar)
    loc = locality(stats, general)
    common = dict(model_path=path, classes=classes, stats=stats, data_dir=data_dir)

    bar.set_postfix_str(f"{name}/{task}: validation")
    grid_points = [(None, 0.0)] + [(p, r) for p in policies for r in grid if r > 0]
    calls = [dict(common, policy=p, ratio=r, images=sets["validation"]) for p, r in grid_points]
    dense_val, *points = runner.run(evaluate_point, calls, bar)
    val = {p: [summarize(dense_val, dense_val)] for p in policies}
    for point in points:
        val[point["policy"]].append(summarize(point, dense_val))
    chosen = {p: choose_ratios(val[p]) for p in policies}

    bar.set_postfix_str(f"{name}/{task}: test")
    picked = sorted({(p, r) for p in policies for r in chosen[p].values() if r > 0})
    calls = [dict(common, policy=p, ratio=r, images=sets["test"]) for p, r in [(None, 0.0), *picked]]
    dense_test, *points = runner.run(evaluate_point, calls, bar)
    bar.update(2 * len(policies) - len(picked))  # the steps of choices at ratio 0 or tested once for two
    tested = {(p["policy"], p["ratio"]): p for p in points}

    bar.set_postfix_str(f"{name}/{task}: accelerators")
    calls = [  # the Arch read by the client: a worker's own file or preset of that name may differ
        dict(model_path=path, stats=stats, policy=p, ratio=chosen[p]["no_loss"], accel=arch)
        for p in policies
        for arch in archs.values()
    ]
    sims = iter(runner.run(simulate_point, calls, bar))
    policies_out = {}
    for policy in policies:
        at = {p["ratio"]: p for p in val[policy]}
        entry = {"validation": val[policy]}
        for key, r in chosen[policy].items():
            test = dense_test if r == 0 else tested[policy, r]
            entry[key] = {"ratio": r, "validation": at[r], "test": summarize(test, dense_test)}
        entry["no_loss"]["accelerator"] = {a: next(sims) for a in archs}
        policies_out[policy] = entry
    images = {key: {"split": s, "first": f, "n": n} for key, (s, f, n) in sets.items()}
    images["preprocessing"]["n"] = stats.n_images
    images["validation"]["n"] = len(dense_val["correct"])
    images["test"]["n"] = len(dense_test["correct"])
    return {
        "classes": list(classes),
        "images": images,
        "locality": {k: v for k, v in loc.items() if not k.endswith("_variances")},
        "_locality": loc,
        "dense": {"validation": summarize(dense_val, dense_val), "test": summarize(dense_test, dense_test)},
        "policies": policies_out,
    }
