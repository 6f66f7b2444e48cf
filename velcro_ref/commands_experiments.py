"""CLI: locality, sweep, demo (experiments on Fashion-MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

from .commands_engine import add_model_arg, print_json
from .errors import UsageError
from .fileio import write_text
from .jsonout import dumps


def _task_classes(args):
    from . import data

    if bool(args.task) == bool(args.classes):
        raise UsageError("give exactly one of --task NAME or --classes LIST")
    if args.classes:
        return data.parse_classes(args.classes), f"classes {args.classes}"
    tasks = data.load_tasks()
    if args.task not in tasks:
        raise UsageError(f"unknown task '{args.task}'; tasks: {', '.join(tasks)}")
    return tasks[args.task]["classes"], args.task


def _progress(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)


def cmd_locality(args):
    from .engine import load_model
    from .experiments import locality, profile_task

    model = load_model(args.model)
    classes, label = _task_classes(args)
    with _progress(2 * args.samples, "profile", "img") as bar:
        task = profile_task(model, classes, args.samples, args.data_dir, progress=bar)
        general = profile_task(model, tuple(range(10)), task.n_images, args.data_dir, progress=bar)
    res = locality(task, general, args.threshold)
    if args.plot:
        from .plots import plot_locality

        plot_locality(res, args.plot, f"{Path(args.model).stem}, {label}")
    doc = {k: v for k, v in res.items() if not k.endswith("_variances")}
    doc.update(model=args.model, task=label, classes=list(classes))
    if args.json:
        print_json(doc)
        return 0
    print(f"{label}: {doc['n_elements']:,} activation elements, {doc['n_images']} images each (task vs all 10 classes)")
    print(f"  median variance ratio task/general: {doc['median_variance_ratio']:.3f}")
    print(
        f"  elements under {args.threshold:g} x site mean variance: task {doc['share_under_threshold_task']:.1%}, "
        f"general {doc['share_under_threshold_general']:.1%}"
    )
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_sweep(args):
    from .engine import load_model
    from .experiments import parse_ratios, profile_task, sweep, task_images

    if not 0 <= args.tolerance < 100:
        raise UsageError(f"--tolerance is in percentage points in [0, 100), got {args.tolerance}")
    ratios = parse_ratios(args.ratios)
    model = load_model(args.model)
    classes, label = _task_classes(args)
    with _progress(args.profile_samples, "profile", "img") as bar:
        stats = profile_task(model, classes, args.profile_samples, args.data_dir, progress=bar)
    x, y = task_images(model, classes, "test", args.samples, args.data_dir)
    with _progress(len(ratios), f"sweep {args.policy}", "ratio") as bar:
        res = sweep(model, stats, x, y, classes, ratios, args.policy, args.tolerance / 100, progress=bar)
    res.update(model=args.model, task=label)
    if args.output:
        write_text(args.output, dumps(res, indent=1))
    if args.plot:
        from .plots import plot_sweep

        plot_sweep([res], args.plot, f"{Path(args.model).stem}, {label}")
    if args.json:
        print_json(res)
        return 0
    n = res["n_eval_images"]
    print(f"{label} ({n} test images; one image = {100 / n:.3f} points), policy {args.policy}")
    print(f"{'ratio':>6} {'CSR':>7} {'accuracy':>9} {'task acc.':>9}")
    for p in res["points"]:
        print(f"{p['ratio']:>6.2f} {p['csr']:>7.2%} {p['accuracy']:>9.2%} {p['accuracy_task']:>9.2%}")
    for key, what in (("best_csr_no_loss", "no accuracy loss"), ("best_csr_tolerance", f"within {args.tolerance} pts")):
        b = res[key]
        print(f"largest CSR with {what}: " + ("none" if b is None else f"{b['csr']:.2%} at ratio {b['ratio']:g}"))
    g = res["best_accuracy_gain"]
    print(f"largest accuracy gain: {100 * g['gain']:+.2f} pts ({g['gain_images']:+d} images) at ratio {g['ratio']:g}")
    return 0


def update_readme(readme, summary):
    text = Path(readme).read_text()
    start, end = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
    if start not in text or end not in text:
        raise UsageError(f"{readme}: no {start} ... {end} block to replace")
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{summary}{end}", text, flags=re.S)
    write_text(readme, new)


def cmd_demo(args):
    from .demo import WEIGHTS_DIR, run_demo, summary_markdown

    report = run_demo(
        args.output,
        weights_dir=args.weights or WEIGHTS_DIR,
        quick=args.quick,
        ratios=args.ratios,
        policies=args.policies.split(",") if args.policies else None,
        profile_n=args.profile_samples,
        eval_n=args.samples,
        data_dir=args.data_dir,
        models=args.models.split(",") if args.models else None,
        tasks=args.tasks.split(",") if args.tasks else None,
    )
    summary = summary_markdown(report)
    print(summary)
    print(f"report in {args.output}/ (summary.md, report.json, PNG plots), {report['elapsed_s']:.0f} s")
    if args.readme:
        update_readme(args.readme, summary)
        print(f"updated {args.readme}")
    return 0


def _data_args(p):
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: $VELCRO_DATA or the Debian path)")


def register(sub):
    p = sub.add_parser(
        "locality",
        help="value locality of a task vs the general case",
        description="Compare per-element activation variances of a specialized task with all ten classes "
        "(same number of images).",
    )
    add_model_arg(p)
    p.add_argument("--task", help="task name from tasks.toml")
    p.add_argument("--classes", help="task classes instead of --task, e.g. 1,3")
    p.add_argument("--samples", type=int, default=2000, help="train images for each of the two profiles (default 2000)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.01,
        help="near-constant: variance below this x the site's mean general variance (default 0.01)",
    )
    p.add_argument("--plot", help="write the CDF plot here (PNG)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _data_args(p)
    p.set_defaults(func=cmd_locality)

    p = sub.add_parser(
        "sweep",
        help="accuracy and CSR over compression ratios",
        description="Sweep compression ratios on a task: both accuracies and the CSR at each ratio.",
    )
    add_model_arg(p)
    p.add_argument("--task", help="task name from tasks.toml")
    p.add_argument("--classes", help="task classes instead of --task, e.g. 1,3")
    p.add_argument("--ratios", default="0:0.9:0.05", help="start:stop:step or a comma list (default 0:0.9:0.05)")
    p.add_argument(
        "--policy", default="uniform", choices=["uniform", "budget", "channel"], help="mask policy (default uniform)"
    )
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy tolerance in percentage points (default 0.5)")
    p.add_argument(
        "--profile-samples", type=int, default=2000, help="train images of the task for the statistics (default 2000)"
    )
    p.add_argument("--samples", type=int, help="evaluate on at most this many test images (default: all of the task)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="write accuracy vs CSR here (PNG)")
    p.add_argument("-o", "--output", help="write the JSON here too")
    _data_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "demo",
        help="the main job: locality and sweeps for every shipped model and task",
        description="Run the value-locality analysis and the sweeps for every model in weights/ and every task, "
        "into a report folder.",
    )
    p.add_argument("-o", "--output", default="reports/demo", help="report folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="reduced setting: 2 tasks, 3 ratios, fewer images")
    p.add_argument("--weights", help="weights folder with manifest.json (default: the shipped weights/)")
    p.add_argument("--models", help="comma list of model names (default: all in the manifest)")
    p.add_argument("--tasks", help="comma list of task names (default: all)")
    p.add_argument("--ratios", help="ratio grid, start:stop:step or list (default 0:0.6:0.1, --quick 0:0.6:0.3)")
    p.add_argument("--policies", help="comma list of policies (default uniform,budget,channel)")
    p.add_argument("--profile-samples", type=int, help="train images per profile (default 1000, --quick 300)")
    p.add_argument("--samples", type=int, help="test images per task (default 500, --quick 200; 0 = all)")
    p.add_argument("--readme", help="replace the demo-results block of this README with the summary")
    _data_args(p)
    p.set_defaults(func=cmd_demo)
