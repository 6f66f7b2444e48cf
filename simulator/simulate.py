"""simulate(): price a model dense and VELCRO-compressed on one accelerator; sweep() over a grid."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

from velcro_ref.errors import UsageError

from .arch import Arch, load_arch, with_changes
from .compute import array_compute, vector_compute
from .energy import COMPONENTS, layer_energy
from .memory import layer_traffic, stall_cycles
from .workload import Layer, build_workload

COUNT_FIELDS = (
    "macs",
    "ops",
    "compute_cycles",
    "stall_cycles",
    "cycles",
    "ifmap_sram_bytes",
    "filter_sram_bytes",
    "ofmap_sram_bytes",
    "dram_bytes",
    "mask_bytes",
)


@dataclass(frozen=True)
class Stats:
    """One layer (or a total) on one side, dense or compressed; counts per image, energy in pJ."""

    macs: int
    ops: int
    compute_cycles: int
    stall_cycles: int
    cycles: int
    ifmap_sram_bytes: int
    filter_sram_bytes: int
    ofmap_sram_bytes: int
    dram_bytes: int
    mask_bytes: int
    energy: dict

    @property
    def energy_pj(self) -> float:
        return sum(self.energy.values())

    def utilization(self, arch: Arch) -> float:
        """MACs over the array's MAC slots in the cycles taken; 0.0 for no cycles."""
        return self.macs / (self.cycles * arch.rows * arch.cols) if self.cycles else 0.0

    def latency_ms(self, arch: Arch) -> float:
        return self.cycles / (arch.clock_mhz * 1e3)

    def to_json(self, arch: Arch) -> dict:
        out = {f: getattr(self, f) for f in COUNT_FIELDS}
        out["utilization"] = self.utilization(arch)
        out["energy_pj"] = self.energy_pj
        out["energy_breakdown_pj"] = dict(self.energy)
        return out

    @staticmethod
    def sum(items) -> Stats:
        items = list(items)
        counts = {f: sum(getattr(s, f) for s in items) for f in COUNT_FIELDS}
        energy = {c: sum(s.energy[c] for s in items) for c in COMPONENTS}
        return Stats(**counts, energy=energy)


def simulate_layer(layer: Layer, arch: Arch) -> Stats:
    """Cycles, traffic and energy of one layer record on `arch` (masked if the record has a skip array)."""
    comp = (array_compute if layer.unit == "array" else vector_compute)(layer, arch)
    traffic = layer_traffic(layer, arch, comp)
    stall = stall_cycles(traffic.dram_bytes, comp.compute_cycles, arch)
    cycles = comp.compute_cycles + stall
    return Stats(
        macs=comp.macs,
        ops=comp.ops,
        compute_cycles=comp.compute_cycles,
        stall_cycles=stall,
        cycles=cycles,
        ifmap_sram_bytes=traffic.ifmap_sram_bytes,
        filter_sram_bytes=traffic.filter_sram_bytes,
        ofmap_sram_bytes=traffic.ofmap_sram_bytes,
        dram_bytes=traffic.dram_bytes,
        mask_bytes=traffic.mask_dram_bytes,
        energy=layer_energy(arch, comp, traffic, cycles),
    )


def speedup(dense_cycles, compressed_cycles) -> float | None:
    """Dense over compressed cycles; None when the compressed side takes no cycles (nothing to divide)."""
    return dense_cycles / compressed_cycles if compressed_cycles else None


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

    @staticmethod
    def of(dense: Stats, comp: Stats) -> Comparison:
        return Comparison(
            dense.macs - comp.macs, speedup(dense.cycles, comp.cycles), saving(dense.energy_pj, comp.energy_pj)
        )

    def to_json(self) -> dict:
        return {
            "macs_saved": self.macs_saved,
            "speedup": 1.0 if self.speedup is None else self.speedup,
            "energy_saving": 0.0 if self.energy_saving is None else self.energy_saving,
        }


@dataclass
class SimResult:
    """Per-layer and total Stats, dense and (with masks) compressed, and the figures derived from them.
    `compressed` is None without masks. The report formats these figures; it derives none of its own."""

    arch: Arch
    model_name: str
    layers: list
    dense: list
    compressed: list | None
    mask_storage_bytes: int = 0

    @cached_property
    def total_dense(self) -> Stats:
        return Stats.sum(self.dense)

    @cached_property
    def total_compressed(self) -> Stats | None:
        return None if self.compressed is None else Stats.sum(self.compressed)

    @cached_property
    def comparisons(self) -> list[Comparison] | None:
        """Per layer, dense against compressed; None without masks."""
        if self.compressed is None:
            return None
        return [Comparison.of(d, c) for d, c in zip(self.dense, self.compressed, strict=True)]

    @cached_property
    def total_comparison(self) -> Comparison | None:
        return None if self.compressed is None else Comparison.of(self.total_dense, self.total_compressed)

    def to_json(self) -> dict:
        """{"layers": [...], "total": {...}}; with masks each entry has `dense` and `compressed`."""
        a = self.arch
        layers = []
        for i, layer in enumerate(self.layers):
            entry = {"name": layer.name, "op": layer.op, "unit": layer.unit, "loops": layer.loops}
            if self.compressed is None:
                entry.update(self.dense[i].to_json(a))
            else:
                d, c = self.dense[i], self.compressed[i]
                entry.update(dense=d.to_json(a), compressed=c.to_json(a), **self.comparisons[i].to_json())
            layers.append(entry)
        d = self.total_dense
        if self.compressed is None:
            total = d.to_json(a)
            total["latency_ms"] = d.latency_ms(a)
        else:
            c = self.total_compressed
            total = {"dense": d.to_json(a), "compressed": c.to_json(a), **self.total_comparison.to_json()}
            total["dense"]["latency_ms"] = d.latency_ms(a)
            total["compressed"]["latency_ms"] = c.latency_ms(a)
            total["mask_storage_bytes"] = self.mask_storage_bytes
        return {"model": self.model_name, "arch": a.to_json(), "layers": layers, "total": total}


def _as_model(model):
    from velcro_ref.engine import Model
    from velcro_ref.graph import Graph

    if isinstance(model, Graph):
        return Model(model)
    if not isinstance(model, Model):
        raise UsageError(f"simulate expects a velcro_ref Model or Graph, got {type(model).__name__}")
    return model


def _arch(arch) -> Arch:
    return arch if isinstance(arch, Arch) else load_arch(arch)


def simulate_workload(layers, arch, masked: bool, model_name: str = "") -> SimResult:
    """Simulate prepared workload records (see build_workload): dense always, compressed if `masked`."""
    arch = _arch(arch)
    dense = [simulate_layer(layer.dense(), arch) for layer in layers]
    compressed = [simulate_layer(layer, arch) for layer in layers] if masked else None
    storage = sum(layer.bitmap_bytes + layer.n_consts * arch.operand_bytes for layer in layers)
    return SimResult(arch, model_name, list(layers), dense, compressed, storage if masked else 0)


def simulate(model, arch, masks=None) -> SimResult:
    """Price `model` (velcro_ref Model or Graph) on `arch` (Arch, preset name or .toml path).

    With `masks` (a MaskSet of the model) every layer is priced dense and compressed.
    Counts are per image. Raises ArchError, MaskError or UsageError for bad input.
    """
    model = _as_model(model)
    layers = build_workload(model, masks)
    return simulate_workload(layers, arch, masks is not None, model.meta.get("name", model.path or ""))


def parse_sweep(specs) -> dict:
    """["rows=8,16", "dataflow=weight_stationary"] -> {"rows": [8, 16], "dataflow": [...]}."""
    from .arch import SWEEP_KEYS

    grid = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise UsageError(f"--sweep expects KEY=V1,V2,..., got {spec!r}")
        if key not in SWEEP_KEYS:
            raise UsageError(f"--sweep: unknown key '{key}'; choose from {', '.join(SWEEP_KEYS)}")
        try:
            grid[key] = [SWEEP_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise UsageError(f"--sweep: {key} expects {SWEEP_KEYS[key].__name__} values, got {values!r}") from None
    return grid


def sweep(model, arch, grid: dict, masks=None) -> list[tuple[dict, SimResult]]:
    """Simulate every point of the Cartesian product of `grid` (field -> values) around `arch`."""
    model = _as_model(model)
    base = _arch(arch)
    layers = build_workload(model, masks)
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        result = simulate_workload(layers, with_changes(base, **point), masks is not None, model.meta.get("name", ""))
        out.append((point, result))
    return out
