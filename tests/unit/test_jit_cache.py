"""Numba's on-disk cache follows every kernel source (velcro_ref/kernels/jit.py): a kernel whose
own file is unchanged is compiled afresh when a file it is built from changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import velcro_ref
from velcro_ref.kernels import jit

PACKAGE = Path(velcro_ref.__file__).resolve().parent

# Runs one small cached kernel (`value_range` inlines `range_lanes` of kernels/simd.py) of the
# package copy on sys.path and prints where the package came from and the kernels' cache counts.
PROBE = """
import json, numpy as np, velcro_ref
from velcro_ref.kernels import moments
moments.value_range(np.arange(64, dtype=np.float32))
hits = misses = 0
for name in dir(moments):
    stats = getattr(getattr(moments, name), "stats", None)
    if stats is not None:
        hits += sum(stats.cache_hits.values())
        misses += sum(stats.cache_misses.values())
print(json.dumps({"file": velcro_ref.__file__, "hits": hits, "misses": misses}))
"""


def _copy_package(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "velcro_ref", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _probe(root, cache):
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(cache)}
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sources_digest_changes_with_every_kernel_source_and_only_those(tmp_path):
    root = _copy_package(tmp_path) / "velcro_ref"
    base = jit.sources_digest(root)
    assert base == jit.sources_digest(PACKAGE) == jit.SOURCES
    for rel in ("kernels/simd.py", "kernels/conv/geom.py", "kernels/int8/requant.py", "threads.py"):
        path = root / rel
        text = path.read_bytes()
        path.write_bytes(text + b"\n")
        assert jit.sources_digest(root) != base, rel
        path.write_bytes(text)
        assert jit.sources_digest(root) == base
    (root / "cli.py").write_bytes((root / "cli.py").read_bytes() + b"\n")  # no jitted code is built from it
    assert jit.sources_digest(root) == base


def test_cached_kernel_is_compiled_afresh_when_only_an_intrinsic_it_inlines_changed(tmp_path):
    """Numba alone would load the old machine code here: moments.py is unchanged."""
    root, cache = _copy_package(tmp_path), tmp_path / "cache"
    first = _probe(root, cache)
    assert Path(first["file"]).resolve().is_relative_to(root.resolve())
    assert first["misses"] > 0 and first["hits"] == 0
    again = _probe(root, cache)
    assert again["hits"] > 0 and again["misses"] == 0  # the cache is in use
    simd = root / "velcro_ref" / "kernels" / "simd.py"
    simd.write_text(simd.read_text() + "\n# a change in simd.py only\n")
    after = _probe(root, cache)
    assert after["misses"] > 0 and after["hits"] == 0
    assert _probe(root, cache)["hits"] > 0  # and cached again under the new sources


def test_every_jitted_function_of_the_package_goes_through_its_njit():
    """A kernel decorated with Numba's own njit, or jitted outside the digested sources, would
    escape the digest."""
    digested = set(jit.kernel_sources())
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "jit.py":
            continue
        text = path.read_text()
        if re.search(r"^from numba import .*\bnjit\b|numba\.njit\(", text, re.M):
            offenders.append(f"{path.name}: Numba's own njit")
        if "@njit" in text and path not in digested:
            offenders.append(f"{path.name}: jitted outside the digested sources")
    assert offenders == []


# Dense convs through `dispatch.PLANES_RUNS`, which call the parallel kernels: they can be cached
# only while nothing it compiles in asks Numba for its thread count (a dynamic global).
CONV_PROBE = """
import json, numpy as np
from velcro_ref.kernels.conv import conv_geom, dispatch, prepare_conv
g = conv_geom(8, 6, 6, 16, (3, 3), (1, 1), (1, 1, 1, 1))
cw = prepare_conv(np.ones((16, 8, 3, 3), np.float32), None, g)
x, out = np.ones((1, 8, 6, 6), np.float32), np.empty((1, 16, 6, 6), np.float32)
dispatch.conv2d(x, cw, g, None, out)
g1 = conv_geom(8, 6, 6, 16, (1, 1))  # one chain, filters in lanes: masked with lane bits
skip = np.arange(16 * 36).reshape(16, 6, 6) % 3 == 0
dispatch.conv2d(x, prepare_conv(np.ones((16, 8, 1, 1), np.float32), None, g1), g1, skip, out)
stats = [run.stats for run in dispatch.PLANES_RUNS]
hits, misses = (sum(sum(getattr(s, k).values()) for s in stats) for k in ("cache_hits", "cache_misses"))
print(json.dumps({"hits": hits, "misses": misses}))
"""


def test_the_dense_conv_entry_is_loaded_from_the_cache():
    """Else every process would compile it, and the kernels it calls, afresh (4 s and more)."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    for _ in range(2):  # the first may compile it (the cache of this test run)
        res = subprocess.run([sys.executable, "-c", CONV_PROBE], env=env, capture_output=True, text=True, check=True)
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts == {"hits": 2, "misses": 0}, res.stderr[-2000:]  # dense, and masked with lane bits
