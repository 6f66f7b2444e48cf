"""`velcro demo`: the paper's questions on the shipped weights and Fashion-MNIST, as a report folder.

For every model of weights/manifest.json and every task of tasks.toml: the value-locality
analysis and ratio sweeps for each policy. Every file is written atomically as soon as it is
ready, so an interrupted demo keeps what it finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import data
from .engine import load_model
from .errors import DataError, UsageError
from .experiments import locality, parse_ratios, profile_task, sweep
from .fileio import write_text
from .jsonout import dumps
from .policies import POLICIES

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PAPER = (
    "13.5-30% CSR with no accuracy loss; +2-20% accuracy at low compression targets (ImageNet, Gabbay & Shomron 2021)"
)


def read_manifest(weights_dir) -> list[dict]:
    path = Path(weights_dir) / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the weights manifest ({e})") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("file"), str) for m in models
    ):
        raise DataError(f'{path}: expects {{"models": [{{"name": ..., "file": ...}}, ...]}}')
    return [dict(m, path=str(Path(weights_dir) / m["file"])) for m in models]


def _strip(res):
    return {k: v for k, v in res.items() if k not in ("task_variances", "general_variances")}


def run_demo(
    out_dir,
    weights_dir=WEIGHTS_DIR,
    quick=False,
    ratios=None,
    policies=None,
    profile_n=None,
    eval_n=None,
    data_dir=None,
    models=None,
    tasks=None,
    progress=True,
    client=None,
    shared_data=False,
):
    """Run the demo into out_dir; returns the report dict (also written as report.json). With a
    dask.distributed `client`, its profiles and sweep points run as tasks on the client's cluster
    (velcro_ref/distributed.py); `shared_data`: the workers read Fashion-MNIST from data_dir."""
    from tqdm import tqdm

    from .plots import plot_locality, plot_sweep

    manifest = read_manifest(weights_dir)
    all_tasks = data.load_tasks()
    for what, asked, known in (("model", models, [m["name"] for m in manifest]), ("task", tasks, list(all_tasks))):
        unknown = [a for a in asked or () if a not in known]
        if unknown:
            raise UsageError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    unknown = [p for p in policies or () if p not in POLICIES]
    if unknown:
        raise UsageError(f"unknown policy(ies) {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if models:
        manifest = [m for m in manifest if m["name"] in models]
    task_names = list(tasks or (list(all_tasks)[:2] if quick else all_tasks))
    # `velcro sweep` evaluates on every test image of a task when one needs a finer accuracy resolution.
    ratios = parse_ratios(ratios or ("0:0.6:0.3" if quick else "0:0.6:0.1"))
    policies = policies or (["uniform", "channel"] if quick else list(POLICIES))
    profile_n = profile_n or (300 if quick else 1000)
    eval_n = eval_n if eval_n is not None else (200 if quick else 500)
    eval_n = eval_n or None  # 0: every test image of the task
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {
            "ratios": ratios,
            "policies": policies,
            "profile_images": profile_n,
            "eval_images_per_task": eval_n or "all test images of the task",
            "quick": quick,
        },
        "models": {},
    }
    total = len(manifest) * len(task_names) * (1 + len(policies) * len(ratios))
    bar = tqdm(total=total, desc="demo", unit="step", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    profile, run_sweep = profile_task, sweep
    if client is not None:
        from .distributed import Jobs

        jobs = Jobs(client, data_dir, shared_data)
        classes_of = [all_tasks[t]["classes"] for t in task_names]
        jobs.submit_demo([m["path"] for m in manifest], classes_of, policies, ratios, profile_n, eval_n)
        profile, run_sweep = jobs.profile, jobs.sweep
    for m in manifest:
        model = load_model(m["path"])
        name = m["name"]
        bar.set_postfix_str(f"{name}: general stats")
        general = profile(model, tuple(range(10)), profile_n, data_dir)
        entry = {"file": m["file"], "test_accuracy_10class": m.get("test_accuracy"), "tasks": {}}
        report["models"][name] = entry
        for task in task_names:
            classes = all_tasks[task]["classes"]
            bar.set_postfix_str(f"{name}/{task}: profile")
            stats = profile(model, classes, profile_n, data_dir)
            loc = locality(stats, general)
            plot_locality(loc, out / f"locality_{name}_{task}.png", f"{name}, task {task}")
            bar.update(1)
            x, y = data.task_images(model, classes, "test", eval_n, data_dir)
            sweeps = []
            for policy in policies:
                bar.set_postfix_str(f"{name}/{task}: {policy}")
                sweeps.append(run_sweep(model, stats, x, y, classes, ratios, policy, progress=bar))
            plot_sweep(sweeps, out / f"sweep_{name}_{task}.png", f"{name}, task {task}")
            result = {"classes": list(classes), "locality": _strip(loc), "sweeps": {s["policy"]: s for s in sweeps}}
            entry["tasks"][task] = result
            write_text(out / f"{name}_{task}.json", dumps(result, indent=1))
    bar.close()
    report["elapsed_s"] = time.perf_counter() - t0
    write_text(out / "report.json", dumps(report, indent=1))
    write_text(out / "summary.md", summary_markdown(report))
    return report


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_markdown(report) -> str:
    """The Markdown summary (also what `velcro demo --readme` puts into the README)."""
    s = report["settings"]
    lines = [
        f"Ratios {s['ratios'][0]}..{s['ratios'][-1]} ({len(s['ratios'])} points), "
        f"{s['profile_images']} preprocessing images per task (train split), evaluation on "
        f"{s['eval_images_per_task']} (test split); demo time {report.get('elapsed_s', 0):.0f} s.",
        f"Paper (ImageNet): {PAPER}.",
        "",
        "Dense 10-class test accuracy (10000 images, velcro engine): "
        + ", ".join(f"{n} {_pct(e['test_accuracy_10class'])}" for n, e in report["models"].items())
        + ".",
        "",
    ]
    policies = s["policies"]
    head = "| model | task | dense task acc. | " + " | ".join(f"CSR no loss ({p})" for p in policies)
    head += " | best gain (uniform) | median var. ratio task/general |"
    lines += [head, "|" + "---|" * (4 + len(policies) + 1)]
    for name, entry in report["models"].items():
        for task, r in entry["tasks"].items():
            uni = r["sweeps"][policies[0]]
            cells = []
            for p in policies:
                b = r["sweeps"][p]["best_csr_no_loss"]
                cells.append("none" if b is None else f"{_pct(b['csr'])} (r={b['ratio']:g})")
            g = uni["best_accuracy_gain"]
            gain = (
                f"{100 * g['gain']:+.2f} pts ({g['gain_images']:+d} of {uni['n_eval_images']} images, r={g['ratio']:g})"
            )
            lines.append(
                f"| {name} | {task} | {_pct(uni['baseline_accuracy'])} | "
                + " | ".join(cells)
                + f" | {gain} | {r['locality']['median_variance_ratio']:.3f} |"
            )
    return "\n".join(lines) + "\n"
