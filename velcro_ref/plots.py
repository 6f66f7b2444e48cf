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
    ax.set_ylabel("specialized-task accuracy (%)")
    ax.set_title(f"{title} ({results[0]['n_eval_images']} test images)")
    lo = min(min(p["accuracy"] for p in r["points"]) for r in results) * 100
    ax.set_ylim(max(lo - 1, base - 15), min(100.5, base + 5))
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
