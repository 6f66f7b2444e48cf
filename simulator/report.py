"""The simulator's only formatter: text tables, CSV and PNG plots of SimResult and sweeps."""

from __future__ import annotations

import csv
import io
import json

from velcro_ref import jsonout
from velcro_ref.fileio import atomic_path
from velcro_ref.fpenv import default_env

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


def _sig4(value, units, step) -> str:
    """`value` in the unit of `units` (each `step` times the one before) that shows it with 4 significant
    digits and at most 3 before the point (1000 KiB reads 0.9766 MiB); below 1 of the first unit, 3
    significant digits; past the last unit's 9999, a power of ten. Only zero prints as 0."""
    if value == 0:
        return "0"
    rounded = float(f"{value:.4g}")
    i = 0
    while i + 1 < len(units) and abs(rounded) >= 1000 * step**i:
        i += 1
    v = value / step**i
    r = float(f"{v:.4g}")
    if abs(r) < 1:  # '#': 0.690, not 0.69; 0.9995 KiB (1023.5 B), not 1.00
        return f"{v:#.{3 if i == 0 else 4}g} {units[i]}"
    if abs(r) >= 10_000:  # past the last unit: 4 significant digits as a power of ten (2.211e+05 J)
        return f"{v:#.4g} {units[i]}"
    decimals = max(0, 4 - len(str(int(abs(r)))))
    return f"{v:.{decimals}f} {units[i]}"


def _energy(pj) -> str:
    """Energy in pJ, nJ, uJ, mJ or J, whichever shows it: 376.0 pJ, 4.183 nJ, 418.3 uJ; 0 only for 0."""
    return _sig4(pj, ("pJ", "nJ", "uJ", "mJ", "J"), 1000)


def _time(ms) -> str:
    """A time given in ms, in ns, us, ms or s, whichever shows it: 726.0 us, 1.760 us."""
    return _sig4(ms * 1e6, ("ns", "us", "ms", "s"), 1000)


def _bytes(n) -> str:
    """Bytes in B, KiB, MiB or GiB: 6 B, 13.20 KiB; fractions of a byte appear at a batch (per image)."""
    if n == 0:
        return "0"
    if abs(n) < 1000 and float(n).is_integer():
        return f"{n:g} B"
    return _sig4(n, ("B", "KiB", "MiB", "GiB"), 1024)


def _count(v) -> str:
    """An int, or a per-image count at a batch (one decimal when the batch does not divide it)."""
    if isinstance(v, int) or v.is_integer():
        return str(int(v))
    return f"{v:.1f}"


def _speedup(x) -> str:
    return "" if x is None else f"{x:.3f}"


NO_SAVING = "none: no dense energy"


def _saving(s) -> str:
    """A saving as a percentage; nothing where it is undefined (no dense energy); a cost above twice
    the dense one as a multiple ("11.1x dense"), which a percentage like -1011.7% hides."""
    if s is None:
        return ""
    if s < -1:
        return f"{1 - s:.1f}x dense"
    return f"{s:.1%}"


def _latency(result) -> str:
    """ "latency D -> C" per image; at a batch the time per image and the batch's."""
    pair = [t for t in result.latency_ms() if t is not None]
    text = " -> ".join(_time(t) for t in pair)
    if result.batch == 1:
        return f"latency {text}"
    whole = " -> ".join(_time(t) for t in result.batch_latency_ms() if t is not None)
    return f"time {text} per image (the batch of {result.batch}: {whole})"


def _view_note(view) -> str:
    return "; energy: compute only (no DRAM, no leakage)" if view == "compute" else ""


COMPUTE_ONLY = "compute only (array, register files, on-chip buffers, vector unit, mask table; no DRAM, no leakage)"


@default_env()
def format_result(result, compute_only: bool = False) -> str:
    """Per-layer table and totals as text, per image (at the result's batch); energies and bytes in
    the unit that shows each. With masks, each masked site's bitmap load and mask-table reads are a
    line of their own ("<site> mask") after the site's last layer, so that a layer's saving is what
    skipping its work saves; the total holds everything."""
    a = result.arch
    view = "compute" if compute_only else "full"
    per = "per image" if result.batch == 1 else f"per image at batch {result.batch}"
    head = f"{result.model_name or 'model'} on {a.name} ({a.rows}x{a.cols} {a.dataflow}, {a.clock_mhz:g} MHz), {per}"
    lines = result.lines(view)
    total_d, total_c = result.total_dense, result.total_compressed
    if total_c is None:
        header = ["layer", "op", "macs", "compute", "stall", "cycles", "util", "dram", "energy"]
        rows = [
            [
                ln.name,
                ln.op,
                _count(ln.dense.macs),
                _count(ln.dense.compute_cycles),
                _count(ln.dense.stall_cycles),
                _count(ln.dense.cycles),
                f"{ln.dense.utilization(a):.2f}",
                _bytes(ln.dram_bytes),
                _energy(ln.energy_pj),
            ]
            for ln in lines
        ]
        return (
            f"{head}{_view_note(view)}\n{_table(header, rows)}\n"
            f"{_latency(result)}, energy {_energy(total_d.energy_pj)} per image; "
            f"{COMPUTE_ONLY}: {_energy(total_d.compute_energy_pj)}"
        )
    header = [
        "layer",
        "op",
        "macs",
        "macs_saved",
        "cycles",
        "cycles_vc",
        "speedup",
        "dram",
        "dram_vc",
        "energy",
        "energy_vc",
        "saving",
    ]
    rows = []
    for ln in lines:
        if ln.kind == "mask":
            rows.append(
                [
                    ln.name,
                    ln.op,
                    "",
                    "",
                    "",
                    _count(ln.cycles_vc),
                    "",
                    "",
                    _bytes(ln.dram_bytes_vc),
                    "",
                    _energy(ln.energy_pj_vc),
                    "",
                ]
            )
            continue
        d = ln.dense
        rows.append(
            [
                ln.name,
                ln.op,
                _count(d.macs),
                _count(ln.macs_saved),
                _count(d.cycles),
                _count(ln.cycles_vc),
                _speedup(ln.speedup),
                _bytes(ln.dram_bytes),
                _bytes(ln.dram_bytes_vc),
                _energy(ln.energy_pj),
                _energy(ln.energy_pj_vc),
                _saving(ln.saving),
            ]
        )
    parts = ", ".join(f"{k} {_energy(total_d.energy[k])} -> {_energy(total_c.energy[k])}" for k in COMPONENTS)
    cmp = result.total_comparison
    return (
        f"{head}; _vc = VELCRO-compressed{_view_note(view)}\n{_table(header, rows)}\n"
        f"energy by component (dense -> compressed): {parts}\n"
        f"mask overhead (the '<site> mask' lines): {_bytes(total_c.mask_bytes)} of bitmaps from DRAM and "
        f"mask-table reads, {_energy(total_c.mask_energy_pj('full'))} "
        f"({_energy(total_c.mask_table_pj)} on chip); {_bytes(result.mask_storage_bytes)} stored "
        f"(bitmaps + constants)\n"
        f"{COMPUTE_ONLY}: {_energy(total_d.compute_energy_pj)} -> {_energy(total_c.compute_energy_pj)}, "
        f"saving {_saving(cmp.compute_energy_saving) or NO_SAVING}\n"
        f"{_latency(result)}, energy {_energy(total_d.energy_pj)} -> "
        f"{_energy(total_c.energy_pj)} (saving {_saving(cmp.energy_saving) or NO_SAVING}) {per}"
    )


def _flat(prefix, stats, arch, compute_only=False) -> dict:
    out = {f"{prefix}{f}": getattr(stats, f) for f in COUNT_FIELDS}
    out[f"{prefix}utilization"] = stats.utilization(arch)
    out[f"{prefix}energy_pj"] = stats.energy_pj
    out.update({f"{prefix}energy_{k}_pj": v for k, v in stats.energy.items()})
    if compute_only:
        out[f"{prefix}compute_energy_pj"] = stats.compute_energy_pj
    return out


@default_env()
def result_rows(result, compute_only: bool = False) -> list[dict]:
    """One flat dict per layer plus a `total` row; compressed columns are prefixed `compressed_`.
    At a batch above 1 every row names it (`batch`); figures are per image. The total row adds the
    JSON total's latencies (`latency_ms`, and `batch_latency_ms` above batch 1)."""
    a, co = result.arch, compute_only
    batch = {"batch": result.batch} if result.batch != 1 else {}
    rows = []
    comp = result.compressed or [None] * len(result.layers)
    cmps = result.comparisons or [None] * len(result.layers)
    for layer, d, c, cmp in zip(result.layers, result.dense, comp, cmps, strict=True):
        r = {"name": layer.name, "op": layer.op, "unit": layer.unit, **batch, **layer.loops, **_flat("", d, a, co)}
        if c is not None:
            r.update(_flat("compressed_", c, a, co), **cmp.to_json(co))  # the comparisons of the JSON
        rows.append(r)
    total = {"name": "total", "op": "", "unit": "", **batch, **_flat("", result.total_dense, a, co)}
    if result.compressed is not None:
        total.update(_flat("compressed_", result.total_compressed, a, co), **result.total_comparison.to_json(co))
    total.update(_latencies(result, 0))
    if result.compressed is not None:
        total.update(_latencies(result, 1))
    rows.append(total)
    return rows


def _latencies(result, side) -> dict:
    """The latencies of the JSON's total for a CSV row, dense (side 0) or compressed (1, columns
    prefixed `compressed_`): per image, and the whole batch's above batch 1."""
    prefix = ("", "compressed_")[side]
    out = {f"{prefix}latency_ms": result.latency_ms()[side]}
    if result.batch != 1:
        out[f"{prefix}batch_latency_ms"] = result.batch_latency_ms()[side]
    return out


def _write_csv(path, rows) -> None:
    buf = io.StringIO()
    fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_csv(result, path, compute_only: bool = False) -> None:
    _write_csv(path, result_rows(result, compute_only))


def json_text(doc: dict) -> tuple[str, list[str]]:
    """Strict JSON text of `doc` (indent 2, newline-terminated) and the places of figures that were not
    finite. Such a figure is written as null and the document gains "not_finite": {"fields", "reason"},
    so that every strict parser reads the output (no bare NaN or Infinity)."""
    bad = []
    clean = jsonout.clean(doc, bad)
    if bad:
        clean["not_finite"] = {
            "fields": bad,
            "reason": "the figure overflowed or is undefined; written as null",
        }
    return json.dumps(clean, indent=2, allow_nan=False) + "\n", bad


def write_json(doc, path) -> list[str]:
    text, bad = json_text(doc)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return bad


def sweep_rows(points, compute_only: bool = False, stand_ins: bool = True) -> list[dict]:
    """One flat dict per sweep point: the changed fields, then dense (and compressed) totals. A speedup
    or saving that is undefined is the JSON's stand-in (1.0, 0.0), or None without stand_ins."""
    rows = []
    for point, result in points:
        a = result.arch
        d = result.total_dense
        r = {**point, **({"batch": result.batch} if result.batch != 1 else {})}
        r.update(cycles=d.cycles, utilization=d.utilization(a), dram_bytes=d.dram_bytes, energy_pj=d.energy_pj)
        r.update(_latencies(result, 0))
        if compute_only:
            r["compute_energy_pj"] = d.compute_energy_pj
        c = result.total_compressed
        if c is not None:
            cmp = result.total_comparison
            if stand_ins:
                figures = cmp.to_json(compute_only)
            else:
                figures = {"speedup": cmp.speedup, "energy_saving": cmp.energy_saving}
                figures["compute_energy_saving"] = cmp.compute_energy_saving
            r.update(
                compressed_cycles=c.cycles,
                compressed_energy_pj=c.energy_pj,
                speedup=figures["speedup"],
                energy_saving=figures["energy_saving"],
            )
            r.update(_latencies(result, 1))
            if compute_only:
                r.update(
                    compressed_compute_energy_pj=c.compute_energy_pj,
                    compute_energy_saving=figures["compute_energy_saving"],
                )
        rows.append(r)
    return rows


def sweep_json(points, compute_only: bool = False) -> dict:
    """{"points": [{"point": {...}, <the total of SimResult.to_json>}, ...]}, with "batch" first above 1."""
    batch = points[0][1].batch if points else 1
    doc = {"batch": batch} if batch != 1 else {}
    doc["points"] = [{"point": p, **r.to_json(compute_only)["total"]} for p, r in points]
    return doc


def format_sweep(points, compute_only: bool = False) -> str:
    """One line per design point (its totals per image); energies and bytes in the unit that shows each."""
    rows = sweep_rows(points, compute_only, stand_ins=False)
    header = list(rows[0])

    def cell(k, v):
        if k in ("utilization", "speedup"):
            return "" if v is None else f"{v:.3f}"  # undefined: as the layer table leaves it
        if k.endswith("saving"):
            return _saving(v)
        if k.endswith("energy_pj"):
            return _energy(v)
        if k == "dram_bytes":
            return _bytes(v)
        if k.endswith("latency_ms"):
            return _time(v)
        return _count(v) if k.endswith("cycles") else str(v)

    names = [h.removesuffix("_pj").removesuffix("_bytes").removesuffix("_ms") for h in header]
    return _table(names, [[cell(k, r[k]) for k in header] for r in rows])


def write_sweep_csv(points, path, compute_only: bool = False) -> None:
    _write_csv(path, sweep_rows(points, compute_only))


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
