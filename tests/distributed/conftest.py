"""Clusters for the distributed tests: an in-process LocalCluster, and a real `dask scheduler` with two
`dask worker` processes on 127.0.0.1; each closed after its tests, with a check that nothing is left.

The contract under test is "distributed equals one process": expected values come from the
one-process path of the same code, run with one BLAS thread as the workers are (OpenBLAS sums
depend on its thread count, so a two-thread run differs in float32 rounding; docs/distributed.md).
"""

import os
import time

import numpy as np
import psutil
import pytest
from dist_util import WEIGHTS, RealCluster, inprocess_cluster
from distributed import Client
from robust_util import Result, images_npz
from threadpoolctl import threadpool_info, threadpool_limits

from velcro_ref import cli
from velcro_ref.engine import load_model
from velcro_ref.model_io import save_model
from velcro_ref.zoo import build_zoo


def _pool_sizes():
    """{library file: its thread count} of the BLAS and OpenMP pools loaded, and Numba's thread count."""
    import numba

    return {i["filepath"]: i["num_threads"] for i in threadpool_info()}, numba.get_num_threads()


@pytest.fixture(autouse=True)
def process_state_given_back():
    """Every test leaves this process's BLAS, OpenMP and Numba thread counts and its environment as
    it found them (the tests after these ones compare runs in this process with runs in others). A
    pool first loaded during the test is not compared."""
    (pools, numba_threads), environ = _pool_sizes(), _environ()
    yield
    after, numba_after = _pool_sizes()
    assert {lib: after.get(lib) for lib in pools} == pools and numba_after == numba_threads
    assert _environ() == environ  # what later tests start inherits it (a nanny writes into it)


def _environ():
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@pytest.fixture
def velcro(capsys):
    """Run `velcro ARGS` in this process with one BLAS thread (as a worker runs); returns a Result."""

    def run(*args):
        with threadpool_limits(limits=1):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture(scope="session")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.h5"
    save_model(build_zoo("resnet18", input_size=16, width=0.125, num_classes=4), path)
    return path


@pytest.fixture(scope="session")
def small_model(small_model_file):
    model = load_model(small_model_file)
    model.run(np.zeros((2, *model.input_shape), np.float32))  # JIT-compiled (and cached) before workers start
    return model


@pytest.fixture(scope="session")
def images():
    """200 random images of the small model and their labels (4 classes)."""
    rng = np.random.default_rng(7)
    return rng.standard_normal((200, 3, 16, 16)).astype(np.float32), np.arange(200) % 4


@pytest.fixture(scope="session")
def images_file(tmp_path_factory, images):
    """This folder's images (its own `images`), not the session's other image file."""
    return images_npz(tmp_path_factory.mktemp("images") / "x.npz", images)


@pytest.fixture(scope="session")
def shipped_model():
    model = load_model(WEIGHTS)
    model.run(np.zeros((2, *model.input_shape), np.float32))
    return model


@pytest.fixture
def inprocess_client(small_model):
    """A Client of an in-process LocalCluster of two workers (`inprocess_cluster`)."""
    with inprocess_cluster(2) as client:
        yield client


def _children():
    """Child processes, less multiprocessing's resource tracker (one per process, started with the
    first spawned child and ended by Python at exit)."""
    kids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                kids.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return kids


@pytest.fixture
def no_leaked_processes():
    """Fails the test if it leaves a child process running (a local cluster not closed)."""
    before = _children()
    yield
    deadline = time.monotonic() + 15
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _children() - before, f"processes left: {_children() - before}"


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory, small_model, shipped_model):
    cluster = RealCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def real_client(real_cluster):
    with threadpool_limits(limits=1), Client(real_cluster.address, timeout=30, set_as_default=False) as client:
        yield client
