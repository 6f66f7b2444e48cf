"""The op registry: one definition per op (base.Op), everything else derived from it.

Validation, shape inference, MACs, the engine's plan, ONNX import and export and the simulator's
workload all ask `get(name)`; nothing else lists ops. docs/adding-an-op.md adds one.
"""

from __future__ import annotations

from ..errors import UnsupportedOpError
from . import activation, batch_norm, conv, elementwise, linear, pool, quantized, shape
from .base import Op

REGISTRY: dict[str, Op] = {
    op.name: op
    for module in (conv, linear, batch_norm, pool, activation, elementwise, shape, quantized)
    for op in module.OPS
}
SUPPORTED_OPS = tuple(sorted(REGISTRY))
ACTIVATIONS = tuple(name for name in SUPPORTED_OPS if REGISTRY[name].site)
QUANTIZED = tuple(op.name for op in quantized.OPS)  # the ops of quantized models (format version 2)
# ONNX op type -> the op whose `from_onnx` converts it
ONNX_IMPORTS: dict[str, Op] = {t: op for op in REGISTRY.values() for t in op.onnx_types}


def get(name: str, node: str | None = None) -> Op:
    """The definition of op `name`; UnsupportedOpError (naming `node`) listing the supported ops."""
    op = REGISTRY.get(name) if isinstance(name, str) else None
    if op is None:
        where = f" (node '{node}')" if node is not None else ""
        raise UnsupportedOpError(f"unsupported op '{name}'{where}; supported: {', '.join(SUPPORTED_OPS)}")
    return op


__all__ = ["ACTIVATIONS", "ONNX_IMPORTS", "QUANTIZED", "REGISTRY", "SUPPORTED_OPS", "Op", "get"]
