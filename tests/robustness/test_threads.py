"""Thread pools during a run are the engine's choice whatever was imported first, and a user's own
settings are respected: read back with threadpoolctl and Numba from inside an observer."""

import json
import os
import subprocess
import sys

import pytest

# Imports NumPy and onnxruntime before velcro_ref (as a notebook would), runs a masked model
# with an observer that reads the pools' settings while the run is on, then prints them, the
# settings after the run, and those before it.
SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime  # noqa: F401
import numba
from threadpoolctl import threadpool_info, threadpool_limits

import velcro_ref
from velcro_ref.engine import Model
from velcro_ref.masks import build_masks, uniform_ratios
from velcro_ref.stats import collect_stats
from velcro_ref.zoo import build_zoo

def pools():
    info = threadpool_info()
    return {
        "numba": numba.get_num_threads(),
        "blas": [p["num_threads"] for p in info if p["user_api"] == "blas"],
        "openmp": [p["num_threads"] for p in info if p["user_api"] == "openmp"],
    }

class Watch:
    def __init__(self):
        self.seen = []

    def on_site(self, name, y):
        self.seen.append(pools())

mode = sys.argv[1]
if mode == "numba1":
    numba.set_num_threads(1)
if mode == "blas2":
    threadpool_limits(2, user_api="blas")
model = Model(build_zoo("resnet18", input_size=16, width=0.125, num_classes=4))
x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
stats = collect_stats(model, x, batch=3)  # Numba's OpenMP runtime is loaded from here on
if mode == "omp1":
    threadpool_limits(1, user_api="openmp")
masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
before = pools()
watch = Watch()
model.run(x, masks=masks, observer=watch)
print(json.dumps({"before": before, "during": watch.seen, "after": pools()}))
"""


def _run(mode, env_extra=None):
    env = {
        k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cores():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "mode, env, numba_threads",
    [
        ("default", {}, None),  # every core: NUMBA_NUM_THREADS's default
        ("numba1", {}, 1),  # the caller's numba.set_num_threads(1)
        ("default", {"NUMBA_NUM_THREADS": "1"}, 1),
        ("omp1", {}, 1),  # the caller's threadpoolctl limit on the OpenMP runtime Numba loaded
        ("blas2", {}, None),  # the caller's BLAS limit: set to 1 for the run, 2 again after it
    ],
)
def test_pools_during_a_masked_run_are_the_engines_choice(mode, env, numba_threads):
    got = _run(mode, env)
    want_numba = _cores() if numba_threads is None else numba_threads
    assert got["during"], "the observer saw no site"
    for seen in got["during"]:
        assert seen["numba"] == want_numba
        assert seen["blas"] and all(n == 1 for n in seen["blas"])  # NumPy's OpenBLAS, imported first
    assert got["after"] == got["before"]  # everything put back
    if mode == "blas2":
        assert got["after"]["blas"] == [2] * len(got["after"]["blas"])


FORK = """
import multiprocessing as mp, sys, threading, time
import numpy as np
import velcro_ref
import velcro_ref.threads
from velcro_ref.stats import StatsCollector

model = velcro_ref.load_model(sys.argv[1])
x = np.random.default_rng(0).random((512, *model.input_shape), dtype=np.float32)


def job(k):
    try:
        if k == 0:
            return model.run(x[:3]).tolist()
        if k == 1:
            return model.run(x).sum().item()  # a batch whose input check runs threaded
        StatsCollector(model).add_batch(x[:8])
    except Exception as e:
        return f"{type(e).__name__}: {e}"


ctx = mp.get_context("fork")
with ctx.Pool(1) as pool:  # forked before any run: the child runs the model
    before = pool.apply_async(job, (0,)).get(120)
want = model.run(x[:3]).tolist()
stop = threading.Event()
busy = threading.Thread(target=lambda: [model.run(x[:64]) for _ in iter(stop.is_set, True)])
busy.start()
time.sleep(0.3)  # a run of the parent's other thread holds the model's lock at the fork
try:
    with ctx.Pool(2) as pool:
        after = pool.map_async(job, range(3)).get(120)
finally:
    stop.set()
    busy.join()
gnu = velcro_ref.threads.numba.threading_layer() == "omp" and any(
    c.prefix == "libgomp" for c in velcro_ref.threads._pools()[1]
)
print(json.dumps({"before": before == want, "after": after, "want": want, "gnu": gnu}))
"""


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_a_process_forked_after_the_engine_ran_refuses_runs_in_one_line(layer):
    """GNU OpenMP's pool does not survive a fork: a child forked after the engine ran was ended by
    Numba at its first parallel kernel (SIGTERM; `multiprocessing.Pool.map` then waited forever),
    and one forked while another thread ran the model hung on the model's lock. Such a child's runs
    are refused in one line; a child forked before any run runs the model. Under another threading
    layer the child runs, also where the parent's other thread held the model's lock at the fork (it
    waited for ever: the child's models get fresh locks)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    script = "import json\n" + FORK
    model = os.path.join(os.path.dirname(__file__), "..", "..", "weights", "resnet18.h5")
    res = subprocess.run([sys.executable, "-c", script, model], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["before"] is True
    assert len(got["after"]) == 3
    assert got["gnu"] == (layer == "default")  # this machine's Numba takes GNU OpenMP by default
    if not got["gnu"]:  # another threading layer, which survives a fork: the child runs
        assert got["after"][0] == got["want"] and isinstance(got["after"][1], float) and got["after"][2] is None
        return
    for message in got["after"]:
        assert isinstance(message, str) and message.startswith("VelcroError: this process was forked after velcro_ref")
        assert "\n" not in message
