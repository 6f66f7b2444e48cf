"""Outputs, executed MACs, statistics, masks and simulator figures equal the pinned digests bit for bit."""

import json

from pinned import PINS, compute


def test_outputs_stats_masks_and_simulator_figures_match_their_pins():
    pinned = json.loads(PINS.read_text())
    now = compute()
    assert sorted(now) == sorted(pinned)
    changed = sorted(k for k in now if now[k] != pinned[k])
    assert not changed, f"{len(changed)} of {len(now)} digests changed: {', '.join(changed[:12])}"
