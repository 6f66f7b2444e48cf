"""CLI: locality, sweep, demo (experiments on Fashion-MNIST)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .cli_util import (
    add_data_dir_arg,
    add_file,
    add_policy_arg,
    add_ranged,
    add_task_args,
    command,
    count,
    number,
    print_json,
    progress,
    share_text,
    task_classes,
    text,
)
from .distributed import add_cluster_args, client_of, on_cluster
from .errors import UsageError
from .experiments import MAX_THRESHOLD
from .fileio import write_text
from .jsonout import dumps
from .policies import POLICIES


def cmd_locality(args):
    """value locality of a task vs the general case

    Compare per-element activation variances of a specialized task with all ten classes (same number of images).
    """
    from .api import locality
    from .engine import load_model

    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    classes, label = task_classes(args)
    with progress(2 * args.samples, "profile", "img") as bar:
        res = locality(
            model, classes=classes, samples=args.samples, threshold=args.threshold, data_dir=args.data_dir, progress=bar
        )
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
        f"  elements under {args.threshold:g} x site mean variance: "
        f"task {share_text(doc['share_under_threshold_task'])}, "
        f"general {share_text(doc['share_under_threshold_general'])}"
    )
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_sweep(args):
    """accuracy and CSR over compression ratios

    Sweep compression ratios on a task: both accuracies and the CSR at each ratio.
    """
    from .api import sweep
    from .engine import load_model
    from .experiments import parse_ratios

    if not 0 <= args.tolerance < 100:
        raise UsageError(f"--tolerance is in percentage points in [0, 100), got {args.tolerance}")
    ratios = parse_ratios(args.ratios)
    cluster = on_cluster(args)
    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    classes, label = task_classes(args)
    with client_of(args, cluster) as client, progress(len(ratios), f"sweep {args.policy}", "ratio") as bar:
        res = sweep(
            model,
            classes=classes,
            ratios=ratios,
            policy=args.policy,
            tolerance=args.tolerance,
            profile_samples=args.profile_samples,
            samples=args.samples,
            data_dir=args.data_dir,
            progress=bar,
            client=client,
            shared=args.shared_data,
        )
    res.update(model=args.model, task=label)
    overflowed = [p["ratio"] for p in res["points"] if p["inf_images"]]
    if overflowed:
        print(
            f"warning: at ratio(s) {', '.join(f'{r:g}' for r in overflowed)} some images have an infinite score "
            "(float32 overflowed; `inf_images` in the JSON): their top-1 class takes +inf as the largest score",
            file=sys.stderr,
        )
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
        shares = (share_text(p[k], 2) for k in ("csr", "accuracy", "accuracy_task"))
        print(f"{p['ratio']:>6g} " + " ".join(f"{t:>{w}}" for t, w in zip(shares, (7, 9, 9), strict=True)))
    within = f"within {args.tolerance} pts"
    for key, what in (("best_csr_no_loss", "with no accuracy loss"), ("best_csr_tolerance", within)):
        b = res[key]
        print(f"largest CSR {what}: " + ("none" if b is None else f"{share_text(b['csr'], 2)} at ratio {b['ratio']:g}"))
    g = res["best_accuracy_gain"]
    print(f"largest accuracy gain: {100 * g['gain']:+.2f} pts ({g['gain_images']:+d} images) at ratio {g['ratio']:g}")
    return 0


def _readme_block(readme, block) -> tuple[str, str, str]:
    """The README's text and the start and end markers of its `block`; UsageError if it has none."""
    text = Path(readme).read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in text or end not in text[text.index(start) :]:  # an end before the start replaces nothing
        raise UsageError(f"{readme}: no {start} ... {end} block to replace")
    return text, start, end


def update_readme(readme, summary, block="demo-results"):
    text, start, end = _readme_block(readme, block)
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{summary}{end}", text, flags=re.S)
    write_text(readme, new)


def cmd_demo(args):
    """the main job: locality, sweeps, chosen ratios and accelerator figures for every model and task

    For every model in weights/ and every task: the value-locality analysis, sweeps on validation images, the
    ratios chosen there with their test accuracy, and their cycles and energy on accelerators, into a report
    folder (index.html, summary.md, report.json, PNG plots). docs/demo.md explains the method.
    """
    from .demo import WEIGHTS_DIR, overflowed, run_demo
    from .demo_report import readme_block

    output = args.output or ("reports/demo-int8" if args.int8 else "reports/demo")
    block_name = "demo-int8-results" if args.int8 else "demo-results"
    if args.readme:  # before the work: a README without the block would be found out only at the end
        _readme_block(args.readme, block_name)
    with client_of(args, on_cluster(args)) as client:
        report = run_demo(
            output,
            weights_dir=args.weights or WEIGHTS_DIR,
            quick=args.quick,
            ratios=args.ratios,
            policies=args.policies.split(",") if args.policies else None,
            profile_n=args.profile_samples,
            val_n=args.val_samples,
            eval_n=args.samples,
            data_dir=args.data_dir,
            models=args.models.split(",") if args.models else None,
            tasks=args.tasks.split(",") if args.tasks else None,
            accels=args.accels.split(",") if args.accels else None,
            client=client,
            shared_data=args.shared_data,
            int8=args.int8,
        )
    block = readme_block(report)
    print(block)
    inf = overflowed(report)
    if inf:
        print(
            f"warning: some images have an infinite score (float32 overflowed; `inf_images` in report.json) in "
            f"{'; '.join(inf)}: their top-1 class takes +inf as the largest score",
            file=sys.stderr,
        )
    print(f"report in {output}/ (index.html, summary.md, report.json, PNG plots), {report['elapsed_s']:.0f} s")
    if args.readme:
        update_readme(args.readme, block, block_name)
        print(f"updated {args.readme}")
    return 0


def register(sub):
    p = command(sub, "locality", cmd_locality, model=True)
    add_task_args(p)
    add_ranged(p, "--samples", count(1, 60000), 2000, "train images for each of the two profiles")
    what = "near-constant: variance below this x the site's mean general variance"
    add_ranged(p, "--threshold", number(0, MAX_THRESHOLD, open_lo=True), 0.01, what)
    add_file(p, "--plot", role="out", help="write the CDF plot here (PNG)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_data_dir_arg(p)

    p = command(sub, "sweep", cmd_sweep, model=True)
    add_task_args(p)
    p.add_argument(
        "--ratios", type=text, default="0:0.9:0.05", help="start:stop:step or a comma list (default 0:0.9:0.05)"
    )
    add_policy_arg(p)
    add_ranged(
        p,
        "--tolerance",
        number(0, 100, open_hi=True),
        0.5,
        "accuracy tolerance in percentage points (the JSON gives it as a fraction, as its accuracies)",
    )
    add_ranged(p, "--profile-samples", count(1, 60000), 2000, "train images of the task for the statistics")
    p.add_argument(
        "--samples", type=count(1, 10000), help="evaluate on at most this many test images (default: all of the task)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_file(p, "--plot", role="out", help="write accuracy vs CSR here (PNG)")
    add_file(p, "-o", "--output", role="out", help="write the JSON here too")
    add_data_dir_arg(p)
    add_cluster_args(p)

    p = command(sub, "demo", cmd_demo)
    add_file(p, "-o", "--output", role="dir_out", help="report folder (default reports/demo, --int8 reports/demo-int8)")
    p.add_argument("--quick", action="store_true", help="reduced setting: 2 tasks, 4 ratios, 2 policies, fewer images")
    p.add_argument(
        "--int8",
        action="store_true",
        help="the shipped int8 models (the manifest's int8_models) instead of the float ones; "
        "--readme fills the int8 results block",
    )
    add_file(p, "--weights", role="dir_in", help="weights folder with manifest.json (default: the shipped weights/)")
    p.add_argument("--models", type=text, help="comma list of model names (default: all in the manifest)")
    p.add_argument("--tasks", type=text, help="comma list of task names (default: all)")
    p.add_argument(
        "--ratios", type=text, help="ratio grid, start:stop:step or list (default 0:0.9:0.1, --quick 0:0.9:0.3)"
    )
    p.add_argument("--policies", type=text, help=f"comma list of policies (default {','.join(POLICIES)})")
    p.add_argument(
        "--profile-samples",
        type=count(1, 60000),
        help="preprocessing images per task: its first train images (default 1000, --quick 300)",
    )
    p.add_argument(
        "--val-samples",
        type=count(1, 60000),
        help="validation images per task: its train images after the preprocessing ones (default 500, --quick 200)",
    )
    p.add_argument("--samples", type=count(0, 10000), help="test images per task (default 500, --quick 200; 0 = all)")
    p.add_argument(
        "--accels",
        type=text,
        help="comma list of accelerator presets or .toml files (default edge16,ws32; the first goes into the README)",
    )
    add_file(p, "--readme", role="inout", help="replace the demo-results block of this README with the results")
    add_data_dir_arg(p)
    add_cluster_args(p)
