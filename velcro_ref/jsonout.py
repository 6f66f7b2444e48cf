"""JSON that every command prints or writes: strict JSON (RFC 8259), never a bare NaN or Infinity."""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def clean(doc, bad=None, where=""):
    """`doc` with NumPy scalars and arrays as Python values and every NaN or infinite float as None;
    with a list `bad`, the place of each such value ("a.b[2] (inf)") is appended to it.

    JSON has no NaN or Infinity; Python's json module would print them as bare words that strict
    parsers refuse. None prints as null, as JavaScript's JSON.stringify prints NaN and Infinity.
    """
    if isinstance(doc, dict):
        return {k: clean(v, bad, f"{where}.{k}" if where else str(k)) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [clean(v, bad, f"{where}[{i}]") for i, v in enumerate(doc)]
    if isinstance(doc, np.ndarray):
        return clean(doc.tolist(), bad, where)
    if isinstance(doc, (bool, np.bool_)):
        return bool(doc)
    if isinstance(doc, np.integer):
        return int(doc)
    if isinstance(doc, (float, np.floating)):
        if math.isfinite(doc):
            return float(doc)
        if bad is not None:
            bad.append(f"{where} ({float(doc)})")
        return None
    return doc


def numpy_scalar(v):
    """`json.dumps`'s `default`: a NumPy integer, float or bool as the Python one (exact), as a graph's
    attributes may hold them where they came from NumPy; TypeError for anything else."""
    if isinstance(v, (np.integer, np.float16, np.float32, np.float64, np.bool_)):
        return v.item()
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


def dumps(doc, indent=2) -> str:
    """Strict JSON text of `doc` (see clean)."""
    return json.dumps(clean(doc), indent=indent, allow_nan=False)


def print_json(doc, indent=2) -> None:
    """Print `doc` as strict JSON on stdout, with a final newline."""
    sys.stdout.write(dumps(doc, indent) + "\n")
