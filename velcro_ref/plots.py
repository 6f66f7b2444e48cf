"""PNG plots of the experiments (matplotlib stays in this module)."""

from __future__ import annotations

import numpy as np

from .fileio import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_locality(result, path, title):
    """CDF of per-element variance (normalised by the site's mean general variance), task vs general."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    floor = 1e-8
    for key, label in (("general_variances", "general (all 10 classes)"), ("task_variances", "specialized task")):
        v = np.sort(np.maximum(result[key], floor))
        ax.plot(v, np.arange(1, v.size + 1) / v.size, label=label)
    ax.axvline(result["threshold"], color="grey", ls=":", label=f"threshold {result['threshold']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("element variance / mean general variance of its site (below 1e-8 drawn at 1e-8)")
    ax.set_ylabel("share of activation elements")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_sweep(results, path, title):
    """Accuracy against CSR for one or more sweeps (one line per policy), dense baseline dashed."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        csr = [p["csr"] * 100 for p in res["points"]]
        acc = [p["accuracy"] * 100 for p in res["points"]]
        ax.plot(csr, acc, marker="o", ms=3, label=f"{res['policy']}")
    base = results[0]["baseline_accuracy"] * 100
    ax.axhline(base, color="grey", ls="--", label=f"dense {base:.2f}%")
    ax.set_xlabel("compression-saving ratio (% of MACs skipped)")
    ax.set_ylabel("accuracy on the task's images, 10-class prediction (%)")
    ax.set_title(f"{title} ({results[0]['n_eval_images']} test images)")
    accs = [p["accuracy"] * 100 for r in results for p in r["points"]]
    ax.set_ylim(min(min(accs), base) - 1, min(100.5, max(max(accs), base) + 1))  # every measured point shown
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_choices(result, path, title):
    """A demo task's sweeps: the change in accuracy against dense over CSR on the validation images,
    one line per policy, and the test change at the ratios chosen there with its 95% interval."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    n_val = result["images"]["validation"]["n"]
    n_test = result["images"]["test"]["n"]
    ys = [0.0]
    for i, (policy, res) in enumerate(result["policies"].items()):
        color = f"C{i}"
        pts = res["validation"]
        ch = [100 * p["change"]["change"] for p in pts]
        ys += ch
        ax.plot([100 * p["csr"] for p in pts], ch, marker="o", ms=3, color=color, label=f"{policy}: validation")
        for key, marker in (("no_loss", "*"), ("best_gain", "D")):
            t = res[key]["test"]
            if key == "best_gain" and res["best_gain"]["ratio"] == res["no_loss"]["ratio"]:
                continue
            lo, hi = (100 * v for v in t["change"]["ci"])
            y = 100 * t["change"]["change"]
            ax.errorbar(
                100 * t["csr"], y, yerr=[[y - lo], [hi - y]], fmt=marker, ms=9 if marker == "*" else 5,
                color=color, mec="black", mew=0.5, capsize=3,
            )  # fmt: skip
            ys += [lo, hi]
    ax.plot([], [], "*", color="grey", mec="black", ms=9, label="test: no loss on validation (95% interval)")
    ax.plot([], [], "D", color="grey", mec="black", ms=5, label="test: best gain on validation")
    ax.axhline(0, color="grey", ls="--", lw=1)
    ax.set_xlabel("compression-saving ratio (% of MACs skipped)")
    ax.set_ylabel("accuracy change against dense (points)")
    ax.set_title(f"{title} ({n_val} validation, {n_test} test images)", fontsize=10)
    ax.set_ylim(max(min(ys) - 1, -15), max(ys) + 1)  # a collapse far below dense is cut at -15 points
    if min(ys) - 1 < -15:
        ax.text(0.99, 0.01, f"cut at -15 points (lowest {min(ys):.1f})", transform=ax.transAxes, ha="right", fontsize=7)
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_accelerator(result, path, title):
    """A demo task on the accelerators, at each policy's no-loss ratio: energy per image by component,
    dense against VELCRO, for the first policy; speedup and energy savings (all energy and compute
    only) for every policy."""
    plt = _figure()
    policies = list(result["policies"])
    first = result["policies"][policies[0]]["no_loss"]
    accels = list(first["accelerator"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    bars, labels = [], []
    for a in accels:
        t = first["accelerator"][a]
        bars += [t["dense"]["energy_breakdown_pj"], t["compressed"]["energy_breakdown_pj"]]
        labels += [f"{a}\ndense", f"{a}\nVELCRO"]
    bottom = np.zeros(len(bars))
    for j, comp in enumerate(bars[0]):
        vals = np.array([b[comp] / 1e6 for b in bars])
        if vals.any():
            ax1.bar(labels, vals, bottom=bottom, label=comp, color=f"C{j}")
        bottom += vals
    ax1.set_ylabel("energy per image (uJ)")
    ax1.set_title(f"{title}: {policies[0]} at r={first['ratio']:g}", fontsize=10)
    ax1.legend(fontsize=7, ncol=2)
    width = 0.8 / max(1, len(policies))
    x = np.arange(3 * len(accels))
    for i, policy in enumerate(policies):
        nl = result["policies"][policy]["no_loss"]
        vals = []
        for a in accels:
            t = nl["accelerator"][a]
            vals += [100 * (1 - 1 / t["speedup"]), 100 * t["energy_saving"], 100 * t["compute_energy_saving"]]
        ax2.bar(x + (i - (len(policies) - 1) / 2) * width, vals, width, label=f"{policy} (r={nl['ratio']:g})")
    names = [f"{a}\n{k}" for a in accels for k in ("cycles", "energy", "compute only")]
    ax2.set_xticks(x, names, fontsize=7)
    ax2.set_ylabel("saving against dense (%)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_title("at each policy's no-loss ratio", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
