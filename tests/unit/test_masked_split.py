"""The sampled kernels' threads get runs of units of about equal work (`masked.unit_cuts`)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from velcro_ref.kernels.conv import masked, schedule


@given(
    st.integers(1, 12),  # filters
    st.integers(1, 40),  # positions
    st.integers(1, 16),  # positions per tile
    st.integers(1, 3),  # images
    st.integers(1, 5),  # runs
    st.integers(0, 2**31),
)
def test_unit_cuts_cover_every_unit_once_in_runs_of_about_equal_work(k_n, p_n, tile_p, n_n, parts, seed):
    rng = np.random.default_rng(seed)
    sg = rng.random((k_n, p_n)) < rng.random((k_n, 1))  # filters of different densities
    part = np.flatnonzero(~sg.all(axis=1))
    pairs, bounds, _ = schedule.pair_schedule(sg, part, tile_p)
    n_tiles = -(-p_n // tile_p)
    cuts = masked.unit_cuts(bounds, n_tiles, n_n, parts)
    n_units = n_n * n_tiles * pairs.shape[0]
    assert cuts[0] == 0 and cuts[-1] == n_units and np.all(np.diff(cuts) >= 0)
    # a unit's work from the mask itself: the outputs of its pair in its tile, plus UNIT_COST
    work = []
    for u in range(n_units):
        t, r = (u // pairs.shape[0]) % n_tiles, u % pairs.shape[0]
        k1, k2 = pairs[r]
        cols = slice(t * tile_p, min(p_n, (t + 1) * tile_p))
        outputs = (~sg[k1, cols]).sum() + (0 if k2 == k1 else (~sg[k2, cols]).sum())
        work.append(outputs + masked.UNIT_COST)
    work = np.array(work, np.int64)
    runs = np.array([work[cuts[i] : cuts[i + 1]].sum() for i in range(parts)])
    assert runs.sum() == work.sum()
    share = work.sum() / parts
    assert np.all(np.abs(runs - share) <= work.max(initial=0))  # each run ends at most one unit off
