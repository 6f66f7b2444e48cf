"""The simulator's only formatter: text tables, CSV and PNG plots of SimResult and sweeps."""

from __future__ import annotations

import csv
import io

from velcro_ref.fileio import atomic_path
from velcro_ref.jsonout import dumps

from .energy import COMPONENTS
from .simulate import COUNT_FIELDS


def _table(header, rows) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _uj(pj):
    return f"{pj / 1e6:.2f}"


def _kib(n):
    return f"{n / 1024:.1f}"


def format_result(result) -> str:
    """Per-layer table and totals as text (energy in uJ, traffic in KiB, per image)."""
    a = result.arch
    head = f"{result.model_name or 'model'} on {a.name} ({a.rows}x{a.cols} {a.dataflow}, {a.clock_mhz:g} MHz)"
    total_d = result.total_dense
    if result.compressed is None:
        header = ["layer", "op", "macs", "compute", "stall", "cycles", "util", "dram_kib", "energy_uj"]
        rows = [
            [
                layer.name,
                layer.op,
                d.macs,
                d.compute_cycles,
                d.stall_cycles,
                d.cycles,
                f"{d.utilization(a):.2f}",
                _kib(d.dram_bytes),
                _uj(d.energy_pj),
            ]
            for layer, d in zip(result.layers, result.dense, strict=True)
        ]
        rows.append(
            [
                "total",
                "",
                total_d.macs,
                total_d.compute_cycles,
                total_d.stall_cycles,
                total_d.cycles,
                f"{total_d.utilization(a):.2f}",
                _kib(total_d.dram_bytes),
                _uj(total_d.energy_pj),
            ]
        )
        latency = total_d.cycles / (a.clock_mhz * 1e3)
        return f"{head}\n{_table(header, rows)}\nlatency {latency:.3f} ms, energy {_uj(total_d.energy_pj)} uJ per image"
    header = [
        "layer",
        "op",
        "macs",
        "macs_saved",
        "cycles",
        "cycles_vc",
        "speedup",
        "dram_kib",
        "dram_kib_vc",
        "energy_uj",
        "energy_uj_vc",
        "saving",
    ]
    total_c = result.total_compressed

    def row(name, op, d, c):
        speed = d.cycles / c.cycles if c.cycles else 1.0
        saving = 1 - c.energy_pj / d.energy_pj if d.energy_pj else 0.0
        return [
            name,
            op,
            d.macs,
            d.macs - c.macs,
            d.cycles,
            c.cycles,
            f"{speed:.3f}",
            _kib(d.dram_bytes),
            _kib(c.dram_bytes),
            _uj(d.energy_pj),
            _uj(c.energy_pj),
            f"{saving:.1%}",
        ]

    rows = [
        row(layer.name, layer.op, d, c)
        for layer, d, c in zip(result.layers, result.dense, result.compressed, strict=True)
    ]
    rows.append(row("total", "", total_d, total_c))
    parts = ", ".join(f"{k} {_uj(total_d.energy[k])}->{_uj(total_c.energy[k])}" for k in COMPONENTS)
    return (
        f"{head}; _vc = VELCRO-compressed\n{_table(header, rows)}\n"
        f"energy by component (uJ, dense->compressed): {parts}\n"
        f"mask overhead: {_kib(total_c.mask_bytes)} KiB bitmap traffic per image, "
        f"{_kib(result.mask_storage_bytes)} KiB stored (bitmaps + constants)"
    )


def _flat(prefix, stats, arch) -> dict:
    out = {f"{prefix}{f}": getattr(stats, f) for f in COUNT_FIELDS}
    out[f"{prefix}utilization"] = stats.utilization(arch)
    out[f"{prefix}energy_pj"] = stats.energy_pj
    out.update({f"{prefix}energy_{k}_pj": v for k, v in stats.energy.items()})
    return out


def result_rows(result) -> list[dict]:
    """One flat dict per layer plus a `total` row; compressed columns are prefixed `compressed_`."""
    a = result.arch
    rows = []
    comp = result.compressed or [None] * len(result.layers)
    for layer, d, c in zip(result.layers, result.dense, comp, strict=True):
        r = {"name": layer.name, "op": layer.op, "unit": layer.unit, **layer.loops, **_flat("", d, a)}
        if c is not None:
            r.update(_flat("compressed_", c, a))
        rows.append(r)
    total = {"name": "total", "op": "", "unit": "", **_flat("", result.total_dense, a)}
    if result.compressed is not None:
        total.update(_flat("compressed_", result.total_compressed, a))
    rows.append(total)
    return rows


def _write_csv(path, rows) -> None:
    buf = io.StringIO()
    fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_csv(result, path) -> None:
    _write_csv(path, result_rows(result))


def write_json(doc, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(doc) + "\n")


def sweep_rows(points) -> list[dict]:
    """One flat dict per sweep point: the changed fields, then dense (and compressed) totals."""
    rows = []
    for point, result in points:
        a = result.arch
        d = result.total_dense
        r = {
            **point,
            "cycles": d.cycles,
            "utilization": d.utilization(a),
            "dram_bytes": d.dram_bytes,
            "energy_pj": d.energy_pj,
        }
        c = result.total_compressed
        if c is not None:
            r.update(
                compressed_cycles=c.cycles,
                compressed_energy_pj=c.energy_pj,
                speedup=d.cycles / c.cycles if c.cycles else 1.0,
                energy_saving=1 - c.energy_pj / d.energy_pj if d.energy_pj else 0.0,
            )
        rows.append(r)
    return rows


def format_sweep(points) -> str:
    rows = sweep_rows(points)
    header = list(rows[0])
    fmt = {"utilization": "{:.3f}", "speedup": "{:.3f}", "energy_saving": "{:.1%}"}

    def cell(k, v):
        if k in fmt:
            return fmt[k].format(v)
        if k.endswith("energy_pj"):
            return f"{v / 1e6:.2f}"
        return str(v)

    header_names = [h.replace("energy_pj", "energy_uj") for h in header]
    return _table(header_names, [[cell(k, r[k]) for k in header] for r in rows])


def write_sweep_csv(points, path) -> None:
    _write_csv(path, sweep_rows(points))


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_result(result, path) -> None:
    """PNG: per-layer cycles (dense vs compressed) and total energy by component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in result.layers]
    x = range(len(names))
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(max(10, len(names) * 0.25 + 4), 5), gridspec_kw={"width_ratios": [3, 1]}
    )
    ax1.bar(x, [d.cycles for d in result.dense], label="dense", color="tab:gray")
    if result.compressed is not None:
        ax1.bar(x, [c.cycles for c in result.compressed], width=0.5, label="VELCRO", color="tab:blue")
    ax1.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax1.set_ylabel("cycles per image")
    ax1.set_title(f"{result.model_name} on {result.arch.name}")
    ax1.legend()
    sides = [("dense", result.total_dense)]
    if result.compressed is not None:
        sides.append(("VELCRO", result.total_compressed))
    bottom = [0.0] * len(sides)
    for comp in COMPONENTS:
        vals = [s.energy[comp] / 1e6 for _, s in sides]
        ax2.bar([n for n, _ in sides], vals, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_ylabel("energy per image (uJ)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sweep(points, path) -> None:
    """PNG: energy against cycles per design point (dense, and compressed if masked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for point, result in points:
        label = ",".join(str(v) for v in point.values())
        d = result.total_dense
        ax.scatter(d.cycles, d.energy_pj / 1e6, color="tab:gray")
        ax.annotate(label, (d.cycles, d.energy_pj / 1e6), fontsize=6)
        c = result.total_compressed
        if c is not None:
            ax.scatter(c.cycles, c.energy_pj / 1e6, color="tab:blue")
            ax.plot([d.cycles, c.cycles], [d.energy_pj / 1e6, c.energy_pj / 1e6], color="tab:blue", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("cycles per image")
    ax.set_ylabel("energy per image (uJ)")
    ax.set_title(f"design sweep ({', '.join(points[0][0])}); gray dense, blue VELCRO")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
