"""The demo's documents: the Markdown summary (and the README's results block) and index.html.

Both show the same tables, made once here from the report dict (velcro_ref/demo.py). index.html is
one self-contained page: plots embedded as base64 PNG, styles inline, links only within the page,
so that it opens from the file system with no network.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from .cli_util import share_text
from .fileio import write_text
from .intervals import paired_change

PAPER = (
    "13.5-30% CSR with no accuracy loss; +2-20% accuracy at low compression targets (ImageNet, Gabbay & Shomron 2021)"
)
PAPER_FPGA = "24-27% less energy at a CSR near 30% (FPGA, compute only, Gabbay & Shomron 2021)"


# -- figures as text -------------------------------------------------------------------------------


def _pct(x, digits=1):
    return "n/a" if x is None else share_text(x, digits)


def change_text(ch) -> str:
    """`+12 (+2.40 [+1.13, +2.40])*` (12 of 500 images gained, none lost): images gained (lost) against
    dense, then the change in points with its 95% interval; * where the interval leaves out 0."""
    if ch["won"] + ch["lost"] == 0:
        return "+0 (none changed)"
    lo, hi = (100 * v for v in ch["ci"])
    real = "*" if lo > 0 or hi < 0 else ""
    return f"{ch['change_images']:+d} ({100 * ch['change']:+.2f} [{lo:+.2f}, {hi:+.2f}]){real}"


def _example() -> str:
    """The change text of 12 images gained and none lost of 500, computed (a hand-written example
    may be one the method never prints)."""
    base = np.zeros(500, bool)
    new = base.copy()
    new[:12] = True
    return change_text(paired_change(base, new))


EXAMPLE = _example()


def point_text(point) -> str:
    """A chosen point on the test images: `30.0% (r=0.3): -1 (-0.20 [-0.20, +0.19])` (one of 500 lost)."""
    return f"{_pct(point['csr'])} (r={point['ratio']:g}): {change_text(point['change'])}"


def _energy(pj) -> str:
    """pJ in the unit that shows it with at most 4 significant digits, trailing zeros left out (pJ, nJ,
    uJ, mJ: 382 uJ, 2.48 uJ); 0 for none."""
    if pj == 0:
        return "0"
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.4g} {unit}"
    return f"{pj:.4g} pJ"


def _bytes(n) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:g} B"


def _saving(s) -> str:
    return f"{100 * s:.1f}%"


def _model_label(name, entry) -> str:
    variant = entry.get("variant", "float32")
    return name if variant == "float32" or name.endswith(f"_{variant}") else f"{name} ({variant})"


# -- tables: (header, rows of strings) -------------------------------------------------------------


def results_table(report):
    """One row per model and task: the README's table."""
    s = report["settings"]
    policies, accel = s["policies"], s["accelerators"][0]
    head = ["model", "task", "dense acc. (test)"]
    head += [f"CSR no loss ({p})" for p in policies]
    head += [f"best gain ({policies[0]})", f"{accel} speedup", f"{accel} energy saving (compute only)"]
    head += ["median var. ratio task/general"]
    rows = []
    for name, entry in report["models"].items():
        for task, r in entry["tasks"].items():
            pol = r["policies"]
            first = pol[policies[0]]
            sim = first["no_loss"]["accelerator"][accel]
            row = [_model_label(name, entry), task, _pct(r["dense"]["test"]["accuracy"])]
            row += [point_text(pol[p]["no_loss"]["test"]) for p in policies]
            row += [point_text(first["best_gain"]["test"])]
            saving = f"{_saving(sim['energy_saving'])} ({_saving(sim['compute_energy_saving'])})"
            row += [f"{sim['speedup']:.3f}x", saving]
            row += [f"{r['locality']['median_variance_ratio']:.3f}"]
            rows.append(row)
    return head, rows


def accelerator_table(report):
    """One row per model, task, policy and accelerator, at the policy's no-loss ratio."""
    head = ["model", "task", "policy", "r", "CSR", "accelerator", "cycles (dense -> VELCRO)", "speedup"]
    head += ["DRAM traffic", "energy", "saving", "compute-only energy", "saving"]
    rows = []
    for name, entry in report["models"].items():
        for task, r in entry["tasks"].items():
            for policy, res in r["policies"].items():
                nl = res["no_loss"]
                for accel, t in nl["accelerator"].items():
                    d, c = t["dense"], t["compressed"]
                    rows.append(
                        [
                            _model_label(name, entry),
                            task,
                            policy,
                            f"{nl['ratio']:g}",
                            _pct(nl["test"]["csr"]),
                            accel,
                            f"{d['cycles']:,} -> {c['cycles']:,}",
                            f"{t['speedup']:.3f}x",
                            f"{_bytes(d['dram_bytes'])} -> {_bytes(c['dram_bytes'])}",
                            f"{_energy(d['energy_pj'])} -> {_energy(c['energy_pj'])}",
                            _saving(t["energy_saving"]),
                            f"{_energy(d['compute_energy_pj'])} -> {_energy(c['compute_energy_pj'])}",
                            _saving(t["compute_energy_saving"]),
                        ]
                    )
    return head, rows


def choices_table(result):
    """One task: for each policy and choice, the ratio and its validation and test figures."""
    head = ["policy", "chosen on validation", "r", "CSR", "validation acc.", "validation change"]
    head += ["test acc.", "test change (images, points [95% interval])"]
    rows = []
    for policy, res in result["policies"].items():
        for key, label in (("no_loss", "largest CSR with no loss"), ("best_gain", "largest gain")):
            c = res[key]
            v, t = c["validation"], c["test"]
            rows.append(
                [
                    policy,
                    label,
                    f"{c['ratio']:g}",
                    _pct(t["csr"]),
                    _pct(v["accuracy"], 2),
                    change_text(v["change"]),
                    _pct(t["accuracy"], 2),
                    change_text(t["change"]),
                ]
            )
    return head, rows


def breakdown_subject(result) -> str:
    """Which policy and ratio `breakdown_table` shows: "POLICY at its no-loss ratio r=R"."""
    policy, entry = next(iter(result["policies"].items()))
    return f"{policy} at its no-loss ratio r={entry['no_loss']['ratio']:g}"


def breakdown_table(result):
    """One task, first policy at its no-loss ratio: energy per image by component on each accelerator."""
    first = next(iter(result["policies"].values()))["no_loss"]["accelerator"]
    accels = list(first)
    components = list(next(iter(first.values()))["dense"]["energy_breakdown_pj"])
    head = ["component"] + [f"{a} {side}" for a in accels for side in ("dense", "VELCRO")]
    rows = []
    for comp in components + ["total", "compute only"]:
        row = [comp]
        for a in accels:
            for side in ("dense", "compressed"):
                s = first[a][side]
                pj = {"total": s["energy_pj"], "compute only": s["compute_energy_pj"]}.get(comp)
                row.append(_energy(s["energy_breakdown_pj"][comp] if pj is None else pj))
        rows.append(row)
    return head, rows


def _markdown(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


# -- words -----------------------------------------------------------------------------------------


def _used(report, key, asked) -> str:
    """How many images of set `key` the tasks used: one number, or the range where tasks differ (a
    task holds fewer images than were asked for); what was asked where no task ran."""
    ns = sorted({t["images"][key]["n"] for m in report["models"].values() for t in m["tasks"].values()})
    if not ns:
        return str(asked)
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]} - {ns[-1]}"


def settings_table(report) -> list:
    """The report's settings as (setting, value) rows; an image count that the tasks did not all use in
    full reads "5000 asked, 3000 used"."""
    rows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)] for k, v in report["settings"].items()]
    for row in rows:
        which = {"validation_images": "validation", "eval_images_per_task": "test"}.get(row[0])
        if which is not None and _used(report, which, row[1]) != row[1]:
            row[1] += f" asked, {_used(report, which, row[1])} used"
    return rows


def _ratios_text(ratios) -> str:
    """The ratio grid: "Ratios a..b (n points)" where it is evenly spaced (the steps within 1e-9 of the
    span, and of the 1e-10 a range's points are rounded to, `experiments.parse_ratios`), else every
    ratio; each to 10 significant digits, so that two ratios never read alike."""
    steps = np.diff(ratios)
    if len(ratios) > 1 and np.ptp(steps) <= 1e-9 * (ratios[-1] - ratios[0]) + 1e-10:
        return f"Ratios {ratios[0]:.10g}..{ratios[-1]:.10g} ({len(ratios)} points)"
    return f"Ratio{'s' * (len(ratios) > 1)} {', '.join(f'{r:.10g}' for r in ratios)}"


def _images_line(report) -> str:
    s = report["settings"]
    return (
        f"{_ratios_text(s['ratios'])}, policies {', '.join(s['policies'])}; "
        f"per task {_used(report, 'preprocessing', s['profile_images'])} preprocessing images (its first train "
        f"images), {_used(report, 'validation', s['validation_images'])} validation images (its next train "
        f"images) and {_used(report, 'test', s['eval_images_per_task'])} test images (its first); demo time "
        f"{report.get('elapsed_s', 0):.0f} s."
    )


def notes(report) -> list[tuple[str, str]]:
    """(title, paragraph) pairs: how the figures were made."""
    s = report["settings"]
    accels = ", ".join(f"{a} ({d})" for a, d in zip(s["accelerators"], s["accelerator_descriptions"], strict=True))
    return [
        (
            "Image sets",
            "For each task, three disjoint sets of Fashion-MNIST images of the task's classes, in the data "
            "set's order: the preprocessing set, the task's first "
            f"{_used(report, 'preprocessing', s['profile_images'])} train images (the statistics the masks come "
            "from); the validation set, the task's next "
            f"{_used(report, 'validation', s['validation_images'])} train images (where the ratios are chosen); the "
            f"test set, the task's first {_used(report, 'test', s['eval_images_per_task'])} test images (what the "
            "tables report). No test image is read before "
            "the ratios are chosen. The shipped models were trained on all 60,000 train images, so the "
            "validation images were seen in training: the dense model is more accurate on them than on test "
            "images, and a choice there asks which ratios keep the model's answers on images it knows.",
        ),
        (
            "Choice of ratios",
            "For each policy, 'no loss' is the largest CSR whose validation accuracy (top-1 over all ten "
            "outputs) is at or above the dense model's on the same images (ties: more correct images, then "
            "the lower ratio); 'best gain' is the ratio with the most correct validation images (ties: the "
            "lower ratio). Ratio 0, the dense model, is always a candidate. Test accuracy and CSR are then "
            "measured at the chosen ratios.",
        ),
        (
            "Accuracy changes and their intervals",
            f"A change reads '{EXAMPLE}': test images gained (or lost) against the dense "
            "model on the same images, then the change in accuracy points with its 95% interval; * marks an "
            "interval that leaves out 0. Dense and compressed runs see the same images, so the comparison is "
            "paired and only the images whose prediction changed carry information. Of the d changed images, "
            "'won' are right only when compressed; with no real change, won is Binomial(d, 1/2) (the exact "
            "McNemar test). The interval is Clopper and Pearson's exact interval for P(won | changed), mapped "
            "to the accuracy change (d / n)(2P - 1). It is used rather than a Wilson or normal interval "
            "because d is small here (often 0-10 images), where the coverage of approximate intervals "
            "swings with the count and falls below 95% at some counts, while the exact interval covers at "
            "least 95% at every count; and rather than an interval on two separate accuracies, which would "
            "ignore the pairing and be as wide whether 2 or 40 predictions changed. It leaves out 0 exactly "
            "when the exact McNemar test rejects 'no change' at 5%. It is conditional on d: with no changed "
            "prediction it is the single point 0, printed 'none changed'. A * on the best of several ratios "
            "is one test among several: read a single * near 0 with that in mind.",
        ),
        (
            "Accelerators",
            f"At each policy's no-loss ratio the model is priced dense and compressed on {accels}, batch "
            f"{s['accelerator_batch']}, by the simulator (docs/simulator.md). The figures are what `velcro "
            "simulate MODEL --masks MASKS --accel A --json --compute-only` prints under total, MASKS being "
            "`velcro compress` of the task's preprocessing statistics at that policy and ratio. Energy counts "
            "everything (DRAM and leakage included); compute only counts the array, register files, on-chip "
            f"buffers, vector unit and mask table, the view of the paper's figure: {PAPER_FPGA}.",
        ),
    ]


def readme_block(report) -> str:
    """The results block `velcro demo --readme` puts into the README."""
    s = report["settings"]
    accel, policy = s["accelerators"][0], s["policies"][0]
    lines = [
        _images_line(report),
        "Ratios are chosen on the validation images; every figure in the table is measured on the test "
        f"images at the chosen ratio. A change reads `{EXAMPLE}`: test images gained or "
        "lost against dense, the change in points and its exact 95% interval (McNemar/Clopper-Pearson on "
        f"the changed predictions), * where it leaves out 0. {accel}: speedup and energy saving per image "
        f"at the {policy} no-loss ratio, all energy and (in brackets) compute only.",
        f"Paper (ImageNet): {PAPER}; {PAPER_FPGA}.",
        "",
        "Dense 10-class test accuracy (10000 images, from the weights' manifest): "
        + ", ".join(f"{_model_label(n, e)} {_pct(e['test_accuracy_10class'])}" for n, e in report["models"].items())
        + ".",
        "",
        *_markdown(*results_table(report)),
    ]
    return "\n".join(lines) + "\n"


def summary_markdown(report) -> str:
    """summary.md: the README block, the accelerator figures and the notes."""
    lines = [readme_block(report), "## Accelerators at each policy's no-loss ratio (per image)", ""]
    lines += _markdown(*accelerator_table(report))
    lines += ["", "## Notes", ""]
    for title, text in notes(report):
        lines += [f"**{title}.** {text}", ""]
    return "\n".join(lines)


# -- index.html ------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img { max-width: 100%; margin: 0.3em 0; border: 1px solid #eee; }
section.task { border-top: 2px solid #ddd; margin-top: 2em; }
p.small { font-size: 0.9em; color: #444; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _html_table(head, rows) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _anchor(*parts) -> str:
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


def html_page(report, out_dir) -> str:
    """index.html's text: every plot of the report read from out_dir and embedded."""
    out_dir = Path(out_dir)
    body = [
        "<h1>VELCRO demo: specialized tasks on Fashion-MNIST</h1>",
        f"<p>{_e(_images_line(report))}</p>",
        f"<p class=small>Paper (ImageNet): {_e(PAPER)}; {_e(PAPER_FPGA)}.</p>",
        "<h2>Contents</h2>",
        "<ul>",
    ]
    for name, entry in report["models"].items():
        links = ", ".join(f'<a href="#{_anchor(name, t)}">{_e(t)}</a>' for t in entry["tasks"])
        body.append(f"<li>{_e(_model_label(name, entry))}: {links}</li>")
    body += [
        '<li><a href="#settings">settings, software, time</a></li>',
        '<li><a href="#notes">how the figures were made</a></li>',
        "</ul>",
        "<h2>Results</h2>",
        f"<p class=small>{_e(readme_block(report).splitlines()[1])}</p>",
        "<p class=small>Dense 10-class test accuracy (10000 images, from the weights' manifest): "
        + _e(", ".join(f"{n} {_pct(e['test_accuracy_10class'])}" for n, e in report["models"].items()))
        + "</p>",
        _html_table(*results_table(report)),
        "<h2>Accelerators at each policy's no-loss ratio (per image)</h2>",
        _html_table(*accelerator_table(report)),
    ]
    for name, entry in report["models"].items():
        for task, r in entry["tasks"].items():
            im = r["images"]
            body += [
                f'<section class=task id="{_anchor(name, task)}">',
                f"<h2>{_e(_model_label(name, entry))}, task {_e(task)} (classes {_e(r['classes'])})</h2>",
                f"<p class=small>{im['preprocessing']['n']} preprocessing, {im['validation']['n']} validation "
                f"and {im['test']['n']} test images; dense accuracy {_pct(r['dense']['validation']['accuracy'], 2)} "
                f"(validation), {_pct(r['dense']['test']['accuracy'], 2)} (test); median variance ratio "
                f"task/general {r['locality']['median_variance_ratio']:.3f}.</p>",
                _html_table(*choices_table(r)),
                f"<h3>Energy per image by component: {_e(breakdown_subject(r))}</h3>",
                _html_table(*breakdown_table(r)),
            ]
            for kind in ("sweep", "accelerator", "locality"):
                body.append(_png(out_dir / r["plots"][kind], f"{kind}: {name}, {task}"))
            body.append("</section>")
    settings_rows = settings_table(report)
    time_rows = [["whole demo", f"{report.get('elapsed_s', 0):.1f} s"]]
    time_rows += [[n, f"{e['elapsed_s']:.1f} s"] for n, e in report["models"].items() if "elapsed_s" in e]
    body += [
        '<h2 id="settings">Settings</h2>',
        _html_table(["setting", "value"], settings_rows),
        "<h2>Software</h2>",
        _html_table(["package", "version"], [[k, str(v)] for k, v in report["software"].items()]),
        "<h2>Time taken</h2>",
        _html_table(["part", "time"], time_rows),
        '<h2 id="notes">How the figures were made</h2>',
    ]
    body += [f"<p><b>{_e(title)}.</b> {_e(text)}</p>" for title, text in notes(report)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>VELCRO demo report</title>\n"
        f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_html(report, out_dir) -> None:
    write_text(Path(out_dir) / "index.html", html_page(report, out_dir))
