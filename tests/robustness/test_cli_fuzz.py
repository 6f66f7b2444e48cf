"""Hypothesis fuzzes the options of the real `velcro` command with hostile values: floats that are NaN,
infinite, huge or subnormal; integers around 0, -1 and 2^63; empty, very long and non-UTF-8 strings; paths to
special files. Whatever the value: exit code 0, 1 or 2, no traceback, the inputs unchanged, an answer within a
time limit."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robust_util import ROOT

from velcro_ref.masks import build_masks, save_masks, uniform_ratios
from velcro_ref.model_io import save_model
from velcro_ref.stats import collect_stats, save_stats

TIME_LIMIT_S = 120

FLOATS = st.sampled_from(["nan", "inf", "-inf", "1e308", "1e-320", "-0.0", "-1", "0", "0.5", "1", "1e9", "-1e-9"])
INTS = st.sampled_from(["0", "-1", "1", "2", str(2**63), str(2**63 - 1), str(-(2**63)), "99999999999", "7"])
STRINGS = st.sampled_from(["", " ", "x" * 300, "\udcff\udcfe", "a,b", "1,,3", "--", "-1", "%2F", "."])
PATHS = st.sampled_from(["/dev/null", "/dev/zero", "{d}/fifo", "{d}", "{d}/nope.h5", "", "{d}/m.h5", "{d}/x.npy"])
# Outputs never name the fixture files here: writing one that the command does not read is allowed; an
# output naming an input is a row of test_hostile_cli.py.
OUT_PATHS = st.sampled_from(["/dev/null", "/dev/zero", "{d}/fifo", "{d}", "{d}/new.out", "", ".", "/"])

# command template, the options to fuzz and the strategy of each
TARGETS = [
    (
        "profile {d}/m.h5 --images {d}/x.npz -o {d}/out.h5",
        {"--batch": INTS, "--samples": INTS, "--checkpoint-every": INTS},
    ),
    ("compress {d}/s.h5 -o {d}/out.h5", {"--ratio": FLOATS, "--policy": STRINGS, "--exclude": STRINGS}),
    ("infer {d}/m.h5 --input {d}/x.npy", {"-o": OUT_PATHS, "--masks": PATHS, "--input": PATHS}),
    (
        "zoo resnet18 --input-size 16 --width 0.125 -o {d}/z.h5",
        {"--seed": INTS, "--width": FLOATS, "--num-classes": INTS},
    ),
    (
        "locality {d}/m.h5 --classes 1,3 --samples 20",
        {"--threshold": FLOATS, "--plot": OUT_PATHS, "--classes": STRINGS},
    ),
    ("sweep {d}/m.h5 --classes 1,3 --profile-samples 20 --samples 20", {"--ratios": STRINGS, "--tolerance": FLOATS}),
    ("simulate {d}/m.h5 --accel edge16", {"--batch": INTS, "--csv": OUT_PATHS, "--masks": PATHS, "--accel": STRINGS}),
    ("stats merge {d}/s.h5 {d}/s.h5", {"-o": OUT_PATHS}),
    ("golden {d}/m.h5 --input {d}/x.npy", {"-o": OUT_PATHS, "--masks": PATHS}),
]
INPUTS = ("m.h5", "x.npz", "x.npy", "s.h5", "k.h5")


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_graph, model, images):
    d = tmp_path_factory.mktemp("fuzz")
    save_model(small_graph, d / "m.h5")
    np.savez(d / "x.npz", x=images[0], y=images[1])
    np.save(d / "x.npy", images[0][:2])
    stats = collect_stats(model, images[0], batch=16)
    save_stats(stats, d / "s.h5")
    save_masks(build_masks(stats, uniform_ratios(stats, 0.3), {"name": "uniform"}), d / "k.h5")
    os.mkfifo(d / "fifo")
    return d


def digests(d):
    return {name: hashlib.sha256((d / name).read_bytes()).hexdigest() for name in INPUTS}


@st.composite
def invocations(draw):
    template, options = draw(st.sampled_from(TARGETS))
    chosen = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=2, unique=True))
    extra = []
    for flag in chosen:
        extra += [flag, draw(options[flag])]
    return template.split() + extra


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=invocations())
def test_hostile_option_values_end_in_0_1_or_2_without_traceback(work, argv):
    before = digests(work)
    args = [a.replace("{d}", str(work)) for a in argv]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"}
    try:
        res = subprocess.run(
            [sys.executable, "-m", "velcro_ref.cli", *args],
            capture_output=True,
            cwd=ROOT,
            env=env,
            timeout=TIME_LIMIT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {TIME_LIMIT_S} s: velcro {' '.join(map(repr, args))}")
    err = res.stderr.decode(errors="replace")
    assert res.returncode in (0, 1, 2), (args, res.returncode, err)
    assert "Traceback" not in err, (args, err)
    if res.returncode:
        assert any(line.startswith("error: ") for line in err.splitlines()), (args, err)
    assert digests(work) == before, args
    assert Path("/dev/null").is_char_device()
