"""What every test shares: hypothesis profiles (`ci`: derandomized, no deadline, since the first call of a
kernel JIT-compiles; `dev`), the in-process CLI runner, and a small model with its images, stats and masks.
Helpers that are not fixtures (real-process runner, edited copies, cached zoo graphs) are in robust_util.py."""

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from robust_util import N_CLASSES, Result, images_npz, zoo_graph

from velcro_ref import cli
from velcro_ref.engine import Model
from velcro_ref.masks import build_masks, save_masks, uniform_ratios
from velcro_ref.model_io import save_model
from velcro_ref.stats import collect_stats, save_stats

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# A test run started as a script's background job inherits SIGINT (and perhaps SIGTERM) ignored, and every
# command it starts would too: the command then keeps it ignored, as it should, and the tests that stop a
# command with a signal need the signals as a terminal session gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def velcro(capsys):
    """Run `velcro ARGS` in this process (fast); returns a Result."""

    def run(*args):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture(scope="session")
def small_graph():
    return zoo_graph("resnet18", input_size=16, width=0.125, num_classes=N_CLASSES)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory, small_graph):
    path = tmp_path_factory.mktemp("model") / "small.h5"
    save_model(small_graph, path)
    return path


@pytest.fixture(scope="session")
def model(small_graph, model_file):
    return Model(small_graph, path=str(model_file))


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    y = np.arange(40) % N_CLASSES
    return x, y


@pytest.fixture(scope="session")
def images_file(tmp_path_factory, images):
    return images_npz(tmp_path_factory.mktemp("images") / "x.npz", images)


@pytest.fixture(scope="session")
def stats_file(tmp_path_factory, model, images):
    path = tmp_path_factory.mktemp("stats") / "stats.h5"
    save_stats(collect_stats(model, images[0], batch=16, classes=tuple(range(N_CLASSES))), path)
    return path


@pytest.fixture(scope="session")
def mask_file(tmp_path_factory, model, images):
    stats = collect_stats(model, images[0], batch=16)
    path = tmp_path_factory.mktemp("masks") / "masks.h5"
    save_masks(build_masks(stats, uniform_ratios(stats, 0.3), {"name": "uniform", "ratio": 0.3}), path)
    return path
