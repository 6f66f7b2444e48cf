"""Accelerator descriptions: TOML (format velcro-arch/1) -> a validated frozen Arch.

Every problem in a file is collected and raised as one ArchError, so a user fixes them in one pass.
"""

from __future__ import annotations

import math
import numbers
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from velcro_ref.errors import ArchError, UnknownPresetError
from velcro_ref.fileio import parse_toml
from velcro_ref.fpenv import default_env

FORMAT = "velcro-arch/1"
ARCH_DIR = Path(__file__).parent / "archs"
DATAFLOWS = ("output_stationary", "weight_stationary")
# Energy actions; units are fixed here and documented in docs/simulator.md.
ENERGY_KEYS = {
    "mac": "one multiply-accumulate",
    "rf": "one PE register-file access",
    "ifmap_sram": "one byte read or written in the ifmap buffer",
    "filter_sram": "one byte read or written in the filter buffer",
    "ofmap_sram": "one byte read or written in the ofmap buffer",
    "dram": "one byte read or written in DRAM",
    "mask_table": "one byte written or read in the mask/constant table",
    "vector_op": "one vector-unit operation",
    "leakage": "one clock cycle of the whole accelerator",
}


def _positive_int(v):
    """An integer (Python's or NumPy's), not a bool, above 0."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


def _number(v):
    """An integer or a finite real (TOML also has inf and nan; NumPy numbers in an Arch made in code);
    not a bool."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return False
    return isinstance(v, numbers.Integral) or math.isfinite(v)  # an int too large for a float: its range


def _positive_number(v):
    return _number(v) and v > 0


def _bits(v):
    return _positive_int(v) and v % 8 == 0


# section -> key -> (field name, check, expectation text)
SCHEMA = {
    "array": {
        "rows": ("rows", _positive_int, "a positive integer"),
        "cols": ("cols", _positive_int, "a positive integer"),
        "dataflow": ("dataflow", lambda v: v in DATAFLOWS, f"one of {', '.join(DATAFLOWS)}"),
        "clock_mhz": ("clock_mhz", _positive_number, "a positive number"),
        "pe_weights": ("pe_weights", _positive_int, "a positive integer"),
    },
    "precision": {
        "operand_bits": ("operand_bits", _bits, "a positive multiple of 8"),
        "accumulator_bits": ("accumulator_bits", _bits, "a positive multiple of 8"),
    },
    "buffers": {
        "ifmap_kib": ("ifmap_kib", _positive_number, "a positive number"),
        "filter_kib": ("filter_kib", _positive_number, "a positive number"),
        "ofmap_kib": ("ofmap_kib", _positive_number, "a positive number"),
    },
    "dram": {"bytes_per_cycle": ("dram_bytes_per_cycle", _positive_number, "a positive number")},
    "vector": {"lanes": ("vector_lanes", _positive_int, "a positive integer")},
}
# Plausible range of every numeric field, inclusive (docs/simulator.md gives the reasons). Beyond
# them a figure is a typo or a test of the tool, and the arithmetic would leave float range.
RANGES = {
    "rows": (1, 1024),
    "cols": (1, 1024),
    "clock_mhz": (1, 10_000),
    "pe_weights": (1, 65_536),
    "operand_bits": (8, 64),
    "accumulator_bits": (8, 128),
    "ifmap_kib": (0.0625, 1_048_576),
    "filter_kib": (0.0625, 1_048_576),
    "ofmap_kib": (0.0625, 1_048_576),
    "dram_bytes_per_cycle": (0.01, 65_536),
    "vector_lanes": (1, 4096),
}
ENERGY_RANGE_PJ = (0, 1_000_000)
# An accelerator description is a few KiB of text; a larger file is not one.
MAX_FILE_BYTES = 1 << 20


def _shown(v) -> str:
    """A value as a message shows it: its repr, cut to 60 characters (a file can hold any value)."""
    try:
        text = repr(v)
    except ValueError:  # an integer beyond Python's digit limit for str(): 4300 digits, maybe in a list
        text = f"an integer of {v.bit_length():,} bits" if isinstance(v, int) else f"a {type(v).__name__} too long"
    return text if len(text) <= 60 else text[:57] + "..."


def _num(v) -> str:
    return f"{int(v):,}" if float(v).is_integer() else repr(v)


def field_problem(where: str, field: str, value, check, expect) -> str | None:
    """The problem of one field's value (wrong type or sign, or outside RANGES), or None."""
    if not check(value):
        return f"{where} must be {expect}, got {_shown(value)}"
    if field in RANGES:
        lo, hi = RANGES[field]
        if not lo <= value <= hi:
            return f"{where} must be from {_num(lo)} to {_num(hi)} (its plausible range), got {_shown(value)}"
    return None


TOP_KEYS = ("format", "name", "description", *SCHEMA, "energy")


class _Frozen(dict):
    """A dict that refuses changes once made (an Arch's checked energies); it pickles, copies and
    dumps to JSON as a dict does."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("an Arch's energies are read-only; make another Arch (dataclasses.replace)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return _Frozen, (dict(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class Arch:
    """One accelerator. Buffers are double-buffered SRAMs; energy_pj maps ENERGY_KEYS to pJ.

    pe_weights: weights one PE holds at once (its weight register file, in operands); the
    weight-stationary schedule runs that many row folds back to back (docs/simulator.md).
    """

    name: str
    rows: int
    cols: int
    dataflow: str
    clock_mhz: float
    pe_weights: int
    operand_bits: int
    accumulator_bits: int
    ifmap_kib: float
    filter_kib: float
    ofmap_kib: float
    dram_bytes_per_cycle: float
    vector_lanes: int
    energy_pj: dict
    energy_source: dict
    description: str = ""
    source: str = "<memory>"

    def __post_init__(self):
        """The checks of a velcro-arch/1 file, for an Arch made in code too (ArchError listing every problem)."""
        doc = {section: {key: getattr(self, f) for key, (f, _, _) in keys.items()} for section, keys in SCHEMA.items()}
        problems = []
        for section in SCHEMA:
            _check_table(doc, section, problems)
        _check_bits({f: getattr(self, f) for f in ("accumulator_bits", "operand_bits")}, problems)
        pj, src = self.energy_pj, self.energy_source
        if isinstance(pj, Mapping) and isinstance(src, Mapping):
            _check_energy({"energy": {k: {"pj": pj.get(k), "source": src.get(k)} for k in {**pj, **src}}}, problems)
        else:
            problems.append("energy_pj and energy_source must be mappings keyed by the [energy] actions")
        for key in ("name", "description", "source"):
            if not isinstance(getattr(self, key), str):
                problems.append(f"{key} must be a string, got {_shown(getattr(self, key))}")
        if problems:
            raise ArchError(f"{self.source}: {len(problems)} problem(s): " + "; ".join(problems))
        object.__setattr__(self, "energy_pj", _Frozen({k: float(v) for k, v in pj.items()}))  # read-only
        object.__setattr__(self, "energy_source", _Frozen(src))  # copies: the checked figures are the priced
        for f in (f for keys in SCHEMA.values() for f, _, _ in keys.values()):  # NumPy numbers as Python's
            v = getattr(self, f)
            if isinstance(v, numbers.Number):
                object.__setattr__(self, f, int(v) if isinstance(v, numbers.Integral) else float(v))

    @property
    def operand_bytes(self) -> int:
        return self.operand_bits // 8

    @property
    def accumulator_bytes(self) -> int:
        return self.accumulator_bits // 8

    @default_env()
    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("energy_pj", "energy_source")}
        out["energy"] = {k: {"pj": self.energy_pj[k], "source": self.energy_source[k]} for k in ENERGY_KEYS}
        return out


def _qualify(section, key):
    return f"[{section}].{key}" if section else key


def _check_table(doc, section, problems):
    """Problems of one [section]: missing, unknown and invalid keys; returns the valid values."""
    schema = SCHEMA[section]
    table = doc.get(section)
    if not isinstance(table, dict):
        problems.append(f"[{section}] is missing" if table is None else f"[{section}] must be a table")
        return {}
    values = {}
    for key in sorted(set(table) - set(schema)):
        problems.append(f"unknown key {_qualify(section, key)}; valid keys: {', '.join(schema)}")
    for key, (field, check, expect) in schema.items():
        where = _qualify(section, key)
        if key not in table:
            problems.append(f"{where} is missing ({expect})")
        elif problem := field_problem(where, field, table[key], check, expect):
            problems.append(problem)
        else:
            values[field] = table[key]
    return values


def _check_energy(doc, problems):
    table = doc.get("energy")
    if not isinstance(table, dict):
        problems.append("[energy] is missing" if table is None else "[energy] must be a table")
        return {}, {}
    pj, source = {}, {}
    for key in sorted(set(table) - set(ENERGY_KEYS)):
        problems.append(f"unknown key [energy].{key}; valid keys: {', '.join(ENERGY_KEYS)}")
    for key in ENERGY_KEYS:
        entry = table.get(key)
        where = f"[energy].{key}"
        if entry is None:
            problems.append(f'{where} is missing ({{ pj = <number>, source = "<publication>" }})')
            continue
        if not isinstance(entry, dict):
            problems.append(f'{where} must be {{ pj = <number>, source = "<publication>" }}, got {_shown(entry)}')
            continue
        for extra in sorted(set(entry) - {"pj", "source"}):
            problems.append(f"unknown key {where}.{extra}; valid keys: pj, source")
        v, s = entry.get("pj"), entry.get("source")
        lo, hi = ENERGY_RANGE_PJ
        if not (_number(v) and v >= 0):
            problems.append(f"{where}.pj must be a non-negative number, got {_shown(v)}")
        elif not lo <= v <= hi:
            problems.append(
                f"{where}.pj must be from {_num(lo)} to {_num(hi)} pJ (its plausible range), got {_shown(v)}"
            )
        else:
            pj[key] = float(v)
        if not (isinstance(s, str) and s.strip()):
            problems.append(f"{where}.source must name the publication of the figure, got {_shown(s)}")
        else:
            source[key] = s
    return pj, source


def _check_bits(values, problems):
    """Accumulators at least as wide as operands (where both are valid)."""
    bits = [values.get(k) for k in ("accumulator_bits", "operand_bits")]
    if None not in bits and _bits(bits[0]) and _bits(bits[1]) and bits[0] < bits[1]:
        problems.append(f"[precision].accumulator_bits ({bits[0]}) must be at least operand_bits ({bits[1]})")


@default_env()
def parse_arch(text: str, source: str = "<string>") -> Arch:
    """Parse and validate a velcro-arch/1 TOML document. Raises one ArchError listing every problem."""
    try:
        doc = parse_toml(text)
    except tomllib.TOMLDecodeError as e:
        raise ArchError(f"{source}: not valid TOML ({e})") from None
    except ValueError as e:  # a decimal integer beyond Python's digit limit for int(), nesting too deep
        raise ArchError(f"{source}: not an accelerator description ({e})") from None
    problems = []
    for key in sorted(set(doc) - set(TOP_KEYS)):
        problems.append(f"unknown key {key}; valid keys: {', '.join(TOP_KEYS)}")
    if doc.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}, got {_shown(doc.get('format'))}")
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            problems.append(f"{key} must be a string, got {_shown(doc[key])}")
    values = {}
    for section in SCHEMA:
        values.update(_check_table(doc, section, problems))
    pj, src = _check_energy(doc, problems)
    _check_bits(values, problems)
    if problems:
        raise ArchError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems))
    name = doc.get("name") or Path(source).stem
    return Arch(
        name=name, energy_pj=pj, energy_source=src, description=doc.get("description", ""), source=source, **values
    )


def presets() -> list[str]:
    """Names of the accelerator descriptions shipped in simulator/archs/."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.toml"))


@default_env()
def load_arch(spec) -> Arch:
    """A preset name (see presets()) or a path to a TOML file (a preset's name first, where a file of
    that name without a .toml suffix exists too). Raises ArchError."""
    path = Path(spec)
    if path.suffix.lower() != ".toml":
        if str(spec) in presets():
            path = ARCH_DIR / f"{spec}.toml"
        elif not str(spec) or not path.exists():  # Path("") is "."
            raise UnknownPresetError(f"unknown accelerator '{spec}'; presets: {', '.join(presets())}, or a TOML file")
    try:
        if not path.is_file():
            kind = "missing" if not path.exists() else "not a regular file"
            raise ArchError(f"{spec}: cannot be read ({kind}); expects a TOML file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ArchError(f"{spec}: {path.stat().st_size:,} bytes; an accelerator description is at most 1 MiB")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ArchError(f"{spec}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ArchError(f"{spec}: not UTF-8 text (undecodable byte at offset {e.start}); expects a TOML file") from None
    return parse_arch(text, str(spec))


SWEEP_KEYS = {
    "rows": int,
    "cols": int,
    "dataflow": str,
    "clock_mhz": float,
    "pe_weights": int,
    "ifmap_kib": float,
    "filter_kib": float,
    "ofmap_kib": float,
    "dram_bytes_per_cycle": float,
    "vector_lanes": int,
}
_SECTION_OF = {field: (section, key) for section, keys in SCHEMA.items() for key, (field, _, _) in keys.items()}


def with_changes(arch: Arch, **changes) -> Arch:
    """A copy of `arch` with some array/buffer/DRAM fields changed, validated like a file."""
    problems = [p for field, value in changes.items() if (p := sweep_problem(field, value))]
    if problems:
        raise ArchError(f"{arch.source}: " + "; ".join(problems))
    return replace(arch, **changes)


def sweep_problem(field: str, value) -> str | None:
    """The problem of changing `field` to `value` (an unknown field, a bad or implausible value), or None."""
    if field not in SWEEP_KEYS:
        return f"cannot change '{field}'; choose from {', '.join(SWEEP_KEYS)}"
    section, key = _SECTION_OF[field]
    _, check, expect = SCHEMA[section][key]
    return field_problem(field, field, value, check, expect)
