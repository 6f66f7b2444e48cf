"""VELCRO masks: per activation site a bool (C, H, W) mask and float32 constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MaskSet:
    """Masks of one model. `sites` maps site name -> (mask bool, constants float32), same shape."""

    fingerprint: str
    sites: dict
    policy: dict = field(default_factory=dict)
    source: str = "<memory>"

    def n_masked(self) -> dict[str, int]:
        return {s: int(m.sum()) for s, (m, _) in self.sites.items()}


def empty_masks(model) -> MaskSet:
    """A MaskSet that masks nothing (runs exactly as dense)."""
    sites = {s: (np.zeros(shape, bool), np.zeros(shape, np.float32)) for s, shape in model.sites.items()}
    return MaskSet(model.fingerprint, sites, {"name": "empty"})
