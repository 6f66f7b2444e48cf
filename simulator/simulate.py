"""simulate(): price a model dense and VELCRO-compressed on one accelerator; sweep() over a grid.

Every figure derived from the counts (totals, speedup, saving, latency, utilisation, the compute-only
view, the per-site mask overhead) is computed here; report.py only formats them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from velcro_ref.errors import UsageError
from velcro_ref.fileio import checked_path
from velcro_ref.fpenv import default_env

from .arch import Arch, load_arch, with_changes
from .compute import array_compute, vector_compute
from .energy import COMPONENTS, ON_CHIP, layer_energy, mask_table_energy
from .memory import layer_traffic, stall_cycles
from .workload import Layer, build_workload

COUNT_FIELDS = (
    "macs",
    "ops",
    "compute_cycles",
    "stall_cycles",
    "mask_stall_cycles",
    "cycles",
    "ifmap_sram_bytes",
    "filter_sram_bytes",
    "ofmap_sram_bytes",
    "dram_bytes",
    "mask_bytes",
)
# Images priced together (weights and bitmaps fetched once per batch): 1 to MAX_BATCH.
MAX_BATCH = 1024
# Energy views: "full" is everything the accelerator spends; "compute" the work on the chip only
# (array, register files, on-chip buffers, vector unit, mask table), without DRAM and leakage.
VIEWS = ("full", "compute")
# A sweep prices the whole model at every point of its grid.
MAX_SWEEP_POINTS = 1000


def _per(value, b):
    """value / b, kept an int when b divides it."""
    if isinstance(value, int) and value % b == 0:
        return value // b
    return value / b


@dataclass(frozen=True)
class Stats:
    """One layer (or a total) on one side, dense or compressed; counts per image, energy in pJ.

    At a batch of B images the counts are the batch's divided by B (ints where B divides them).
    `mask_table_pj` is the on-chip part of energy["mask"] (the mask-table reads and writes).
    """

    macs: int
    ops: int
    compute_cycles: int
    stall_cycles: int
    mask_stall_cycles: int
    cycles: int
    ifmap_sram_bytes: int
    filter_sram_bytes: int
    ofmap_sram_bytes: int
    dram_bytes: int
    mask_bytes: int
    energy: dict
    mask_table_pj: float = 0.0

    @property
    def energy_pj(self) -> float:
        return sum(self.energy.values())

    @property
    def compute_energy_pj(self) -> float:
        """The compute-only view: on-chip components and mask-table bytes; no DRAM, no leakage."""
        return sum(self.energy[c] for c in ON_CHIP) + self.mask_table_pj

    def view_energy_pj(self, view: str) -> float:
        """All energy of the view, mask overhead included."""
        return self.energy_pj if view == "full" else self.compute_energy_pj

    def mask_energy_pj(self, view: str) -> float:
        """The mask overhead in the view: bitmap DRAM bytes and mask-table bytes, or the table alone."""
        return self.energy["mask"] if view == "full" else self.mask_table_pj

    def work_energy_pj(self, view: str) -> float:
        """The energy of the view without the mask overhead: the layer's own work and traffic."""
        parts = [c for c in COMPONENTS if c != "mask"] if view == "full" else ON_CHIP
        return sum(self.energy[c] for c in parts)

    def utilization(self, arch: Arch) -> float:
        """MACs over the array's MAC slots in the cycles taken; 0.0 for no cycles."""
        return self.macs / (self.cycles * arch.rows * arch.cols) if self.cycles else 0.0

    def latency_ms(self, arch: Arch) -> float:
        return self.cycles / (arch.clock_mhz * 1e3)

    @default_env()
    def to_json(self, arch: Arch, compute_only: bool = False) -> dict:
        out = {f: getattr(self, f) for f in COUNT_FIELDS}
        out["utilization"] = self.utilization(arch)
        out["energy_pj"] = self.energy_pj
        out["energy_breakdown_pj"] = dict(self.energy)
        if compute_only:
            out["compute_energy_pj"] = self.compute_energy_pj
        return out

    def per_image(self, b: int) -> Stats:
        """These batch counts as per-image figures at a batch of `b`."""
        if b == 1:
            return self
        counts = {f: _per(getattr(self, f), b) for f in COUNT_FIELDS}
        energy = {k: v / b for k, v in self.energy.items()}
        return Stats(**counts, energy=energy, mask_table_pj=self.mask_table_pj / b)

    @staticmethod
    def sum(items) -> Stats:
        items = list(items)
        counts = {f: sum(getattr(s, f) for s in items) for f in COUNT_FIELDS}
        energy = {c: sum(s.energy[c] for s in items) for c in COMPONENTS}
        return Stats(**counts, energy=energy, mask_table_pj=sum(s.mask_table_pj for s in items))


def simulate_layer(layer: Layer, arch: Arch) -> Stats:
    """Cycles, traffic and energy of one layer record on `arch` (masked if the record has a skip array)."""
    comp = (array_compute if layer.unit == "array" else vector_compute)(layer, arch)
    traffic = layer_traffic(layer, arch, comp)
    stall = stall_cycles(traffic.dram_bytes, comp.compute_cycles, arch)
    own = stall_cycles(traffic.dram_bytes - traffic.mask_dram_bytes, comp.compute_cycles, arch)
    cycles = comp.compute_cycles + stall
    return Stats(
        macs=comp.macs,
        ops=comp.ops,
        compute_cycles=comp.compute_cycles,
        stall_cycles=stall,
        mask_stall_cycles=stall - own,
        cycles=cycles,
        ifmap_sram_bytes=traffic.ifmap_sram_bytes,
        filter_sram_bytes=traffic.filter_sram_bytes,
        ofmap_sram_bytes=traffic.ofmap_sram_bytes,
        dram_bytes=traffic.dram_bytes,
        mask_bytes=traffic.mask_dram_bytes,
        energy=layer_energy(arch, comp, traffic, cycles, stall - own),
        mask_table_pj=mask_table_energy(arch, traffic),
    )


def speedup(dense_cycles, compressed_cycles) -> float | None:
    """Dense over compressed cycles; None unless both sides take cycles."""
    return dense_cycles / compressed_cycles if compressed_cycles and dense_cycles else None


def saving(dense_pj, compressed_pj) -> float | None:
    """The fraction of the dense energy saved (negative when compression costs more); None for no dense energy."""
    return 1.0 - compressed_pj / dense_pj if dense_pj else None


@dataclass(frozen=True)
class Comparison:
    """Dense against compressed, one layer or the total. In JSON an undefined speedup reads 1.0 and an
    undefined saving 0.0 (a side that takes no cycles, a layer with no dense energy)."""

    macs_saved: int
    speedup: float | None
    energy_saving: float | None
    compute_energy_saving: float | None = None

    @staticmethod
    def of(dense: Stats, comp: Stats) -> Comparison:
        return Comparison(
            dense.macs - comp.macs,
            speedup(dense.cycles, comp.cycles),
            saving(dense.energy_pj, comp.energy_pj),
            saving(dense.compute_energy_pj, comp.compute_energy_pj),
        )

    @default_env()
    def to_json(self, compute_only: bool = False) -> dict:
        out = {
            "macs_saved": self.macs_saved,
            "speedup": 1.0 if self.speedup is None else self.speedup,
            "energy_saving": 0.0 if self.energy_saving is None else self.energy_saving,
        }
        if compute_only:
            out["compute_energy_saving"] = 0.0 if self.compute_energy_saving is None else self.compute_energy_saving
        return out


@dataclass(frozen=True)
class Line:
    """One line of the result table, per image: a layer without its mask overhead ("layer"), a masked
    site's mask overhead ("mask": its bitmap loaded from DRAM and the mask-table reads of all its
    layers) or the whole model ("total"). Energies are in one view (VIEWS); a figure a line does
    not have is None (a mask line has no dense side, a result without masks no compressed side)."""

    kind: str
    name: str
    op: str
    macs_saved: int | None
    dense: Stats | None
    compressed: Stats | None
    dram_bytes: float | None
    dram_bytes_vc: float | None
    energy_pj: float | None
    energy_pj_vc: float | None
    speedup: float | None = None
    saving: float | None = None
    cycles_vc: float | None = None  # the compressed side's cycles, a layer's without the bitmap's stall


def _side_by_side(kind, name, op, d: Stats, c: Stats | None, view: str, with_mask: bool) -> Line:
    """A table line of dense `d` against compressed `c` (or None), with or without the mask overhead."""
    if c is None:
        return Line(kind, name, op, None, d, None, d.dram_bytes, None, d.view_energy_pj(view), None)
    if with_mask:
        e, e_vc, dram_vc, cycles_vc = d.view_energy_pj(view), c.view_energy_pj(view), c.dram_bytes, c.cycles
    else:  # the bitmap's bytes, and the stall they add, are the mask line's
        e, e_vc, dram_vc = d.work_energy_pj(view), c.work_energy_pj(view), c.dram_bytes - c.mask_bytes
        cycles_vc = c.cycles - c.mask_stall_cycles
    return Line(
        kind,
        name,
        op,
        d.macs - c.macs,
        d,
        c,
        d.dram_bytes,
        dram_vc,
        e,
        e_vc,
        speedup(d.cycles, cycles_vc),
        saving(e, e_vc),
        cycles_vc,
    )


@dataclass
class SimResult:
    """Per-layer and total Stats, dense and (with masks) compressed, and the figures derived from them.
    `compressed` is None without masks. Counts are per image at a batch of `batch` images. The
    report formats these figures; it derives none of its own."""

    arch: Arch
    model_name: str
    layers: list
    dense: list
    compressed: list | None
    mask_storage_bytes: int = 0
    batch: int = 1
    batch_totals: tuple = (None, None)  # (dense, compressed) summed over the layers' batch counts

    @cached_property
    def total_dense(self) -> Stats:
        return self._total(self.dense, self.batch_totals[0])

    @cached_property
    def total_compressed(self) -> Stats | None:
        return None if self.compressed is None else self._total(self.compressed, self.batch_totals[1])

    def _total(self, per_image, batch_total) -> Stats:
        """The total per image: the batch's total divided by B (so ints where B divides the
        batch's counts, not a sum of the layers' quotients), or the layers' sum at batch 1."""
        return Stats.sum(per_image) if batch_total is None else batch_total.per_image(self.batch)

    @cached_property
    def comparisons(self) -> list[Comparison] | None:
        """Per layer, dense against compressed; None without masks."""
        if self.compressed is None:
            return None
        return [Comparison.of(d, c) for d, c in zip(self.dense, self.compressed, strict=True)]

    @cached_property
    def total_comparison(self) -> Comparison | None:
        return None if self.compressed is None else Comparison.of(self.total_dense, self.total_compressed)

    def latency_ms(self) -> tuple[float, float | None]:
        """Time per image (dense, compressed); at a batch an image's result comes with the whole batch."""
        c = self.total_compressed
        return self.total_dense.latency_ms(self.arch), None if c is None else c.latency_ms(self.arch)

    def batch_latency_ms(self) -> tuple[float, float | None]:
        """Time of the whole batch (dense, compressed)."""
        d, c = self.latency_ms()
        return d * self.batch, None if c is None else c * self.batch

    def lines(self, view: str = "full") -> list[Line]:
        """The table: one line per layer, each masked site's mask line after its last layer, the total.

        Layer lines leave the mask overhead out (DRAM bytes and energy), so that a layer's saving is
        what skipping its work saves; the site's mask line carries the overhead and the total has all.
        """
        if view not in VIEWS:
            raise UsageError(f"unknown energy view {view!r}; choose from {', '.join(VIEWS)}")
        comp = self.compressed or [None] * len(self.layers)
        last = {layer.site: i for i, layer in enumerate(self.layers) if layer.site is not None}
        out = []
        for i, (layer, d, c) in enumerate(zip(self.layers, self.dense, comp, strict=True)):
            out.append(_side_by_side("layer", layer.name, layer.op, d, c, view, with_mask=False))
            for site in [s for s, j in last.items() if j == i]:
                users = [self.compressed[k] for k, other in enumerate(self.layers) if other.site == site]
                bitmap = sum(u.mask_bytes for u in users)
                energy = sum(u.mask_energy_pj(view) for u in users)
                stall = sum(u.mask_stall_cycles for u in users)  # the cycles the bitmap's load adds
                line = Line("mask", f"{site} mask", "mask", None, None, None, None, bitmap, None, energy)
                out.append(replace(line, cycles_vc=stall))
        out.append(_side_by_side("total", "total", "", self.total_dense, self.total_compressed, view, with_mask=True))
        return out

    @default_env()
    def to_json(self, compute_only: bool = False) -> dict:
        """{"layers": [...], "total": {...}}; with masks each entry has `dense` and `compressed`.

        With `compute_only` every side adds `compute_energy_pj` and every comparison
        `compute_energy_saving`; at a batch above 1 the document names it (`batch`) and the total
        adds `batch_latency_ms`, the time of the whole batch.
        """
        a, co = self.arch, compute_only
        layers = []
        for i, layer in enumerate(self.layers):
            entry = {"name": layer.name, "op": layer.op, "unit": layer.unit, "loops": layer.loops}
            if self.compressed is None:
                entry.update(self.dense[i].to_json(a, co))
            else:
                d, c = self.dense[i], self.compressed[i]
                entry.update(dense=d.to_json(a, co), compressed=c.to_json(a, co), **self.comparisons[i].to_json(co))
            layers.append(entry)
        d = self.total_dense
        if self.compressed is None:
            total = d.to_json(a, co)
            total["latency_ms"] = d.latency_ms(a)
        else:
            c = self.total_compressed
            total = {"dense": d.to_json(a, co), "compressed": c.to_json(a, co), **self.total_comparison.to_json(co)}
            total["dense"]["latency_ms"] = d.latency_ms(a)
            total["compressed"]["latency_ms"] = c.latency_ms(a)
            total["mask_storage_bytes"] = self.mask_storage_bytes
        if self.batch != 1:
            batch_d, batch_c = self.batch_latency_ms()
            if self.compressed is None:
                total["batch_latency_ms"] = batch_d
            else:
                total["dense"]["batch_latency_ms"], total["compressed"]["batch_latency_ms"] = batch_d, batch_c
        doc = {"model": self.model_name, "arch": a.to_json()}
        if self.batch != 1:
            doc["batch"] = self.batch
        return {**doc, "layers": layers, "total": total}


def _as_model(model):
    from velcro_ref.engine import Model
    from velcro_ref.graph import Graph

    if isinstance(model, Graph):
        return Model(model)
    if not isinstance(model, Model):
        raise UsageError(f"simulate expects a velcro_ref Model or Graph, got {type(model).__name__}")
    return model


def _arch(arch) -> Arch:
    """An Arch as it is, else a preset name or a .toml path (UsageError for anything else)."""
    if isinstance(arch, Arch):
        return arch
    return load_arch(arch if isinstance(arch, str) else checked_path(arch, UsageError, "accel"))


# A quantized model's accumulators: int32 (docs/int8.md).
ACCUMULATOR_BITS = 32


def model_precision(arch: Arch, model) -> Arch:
    """`arch` priced with a quantized model's own operand sizes: its activations' and weights' bits
    (8 for int8/uint8) and int32 accumulators. A float model keeps the arch's [precision]."""
    q = [st.q for st in model.plan.nodes if st.q is not None]
    if not q:
        return arch
    bits = 8 * max(x.np_dtype.itemsize for x in q)
    return replace(arch, operand_bits=bits, accumulator_bits=ACCUMULATOR_BITS)


def check_batch(batch) -> int:
    """`batch` as an int if it is an integer (a NumPy one included) from 1 to MAX_BATCH; raises
    UsageError otherwise."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"batch must be an integer from 1 to {MAX_BATCH}, got {batch!r}")
    return int(batch)


def simulate_workload(layers, arch, masked: bool, model_name: str = "", batch: int = 1) -> SimResult:
    """Simulate prepared workload records (see build_workload): dense always, compressed if `masked`.

    A batch of `batch` images runs as one record per layer (Layer.batched); figures are per image.
    """
    arch, b = _arch(arch), check_batch(batch)
    dense = [simulate_layer(layer.dense().batched(b), arch) for layer in layers]
    compressed = [simulate_layer(layer.batched(b), arch) for layer in layers] if masked else None
    totals = (Stats.sum(dense), None if compressed is None else Stats.sum(compressed)) if b > 1 else (None, None)
    dense = [s.per_image(b) for s in dense]
    compressed = None if compressed is None else [s.per_image(b) for s in compressed]
    storage = sum(layer.bitmap_bytes + layer.n_consts * arch.operand_bytes for layer in layers)
    return SimResult(arch, model_name, list(layers), dense, compressed, storage if masked else 0, b, totals)


@default_env()
def simulate(model, arch, masks=None, batch: int = 1) -> SimResult:
    """Price `model` (velcro_ref Model or Graph) on `arch` (Arch, preset name or .toml path).

    With `masks` (a MaskSet of the model) every layer is priced dense and compressed. `batch`
    images (1 to MAX_BATCH) run together: weights and mask bitmaps are fetched once per batch.
    Counts are per image. A quantized model is priced with its own operand sizes
    (`model_precision`: 8-bit operands, 32-bit accumulators), whatever the arch's [precision].
    Raises ArchError, MaskError or UsageError for bad input.
    """
    batch = check_batch(batch)
    model = _as_model(model)
    layers = build_workload(model, masks)
    arch = model_precision(_arch(arch), model)
    return simulate_workload(layers, arch, masks is not None, model.meta.get("name", model.path or ""), batch)


def parse_sweep(specs) -> dict:
    """["rows=8,16", "dataflow=weight_stationary"] -> {"rows": [8, 16], "dataflow": [...]}.

    Raises UsageError for a malformed spec, an unknown or repeated key, a value its field does not
    accept (docs/simulator.md gives the ranges) or gives twice, or more than MAX_SWEEP_POINTS
    points, listing every bad value at once.
    """
    from .arch import SWEEP_KEYS, sweep_problem

    grid, problems = {}, []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise UsageError(f"--sweep expects KEY=V1,V2,..., got {spec!r}")
        if key not in SWEEP_KEYS:
            raise UsageError(f"--sweep: unknown key '{key}'; choose from {', '.join(SWEEP_KEYS)}")
        if key in grid:
            raise UsageError(f"--sweep: key '{key}' given twice; list all its values once, e.g. {key}=V1,V2")
        try:
            grid[key] = [SWEEP_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise UsageError(f"--sweep: {key} expects {SWEEP_KEYS[key].__name__} values, got {values!r}") from None
        problems += [p for v in grid[key] if (p := sweep_problem(key, v))]
        twice = sorted({str(v) for v in grid[key] if grid[key].count(v) > 1})
        if twice:  # each design point once, as --exclude, --accels and --classes refuse a repeat
            problems.append(f"{key} gives {', '.join(twice)} twice")
    if problems:
        raise UsageError("--sweep: " + "; ".join(problems))
    n_points = math.prod(len(v) for v in grid.values())
    if n_points > MAX_SWEEP_POINTS:
        raise UsageError(f"--sweep: {n_points:,} design points; at most {MAX_SWEEP_POINTS:,}")
    return grid


@default_env()
def sweep(model, arch, grid: dict, masks=None, batch: int = 1) -> list[tuple[dict, SimResult]]:
    """Simulate every point of the Cartesian product of `grid` (field -> values) around `arch`."""
    batch = check_batch(batch)
    model = _as_model(model)
    base = model_precision(_arch(arch), model)
    layers = build_workload(model, masks)
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        # a NumPy number (np.arange, np.linspace) as the Python number it holds
        point = {k: v.item() if isinstance(v, np.generic) else v for k, v in zip(keys, values, strict=True)}
        result = simulate_workload(
            layers, with_changes(base, **point), masks is not None, model.meta.get("name", ""), batch
        )
        out.append((point, result))
    return out
