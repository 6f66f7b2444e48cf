"""Helpers of the distributed tests: stats comparisons, an in-process LocalCluster, a real `dask
scheduler` with `dask worker` processes on 127.0.0.1, a CLI result."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
from distributed import Client, LocalCluster
from threadpoolctl import threadpool_limits

from velcro_ref.engine import Model

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "resnet18.h5"
DASK = Path(sys.executable).with_name("dask")
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def assert_same_stats(got, want, rtol=1e-9):
    """Counts exact; mean, M2, min and max within rtol relative, element by element; the ranges of
    the other tensors (min and max of float32 values) exact."""
    assert (got.n_images, tuple(got.classes), got.fingerprint) == (want.n_images, tuple(want.classes), want.fingerprint)
    assert got.ranges == want.ranges and got.ranges
    assert list(got.sites) == list(want.sites)
    for name, g in got.sites.items():
        w = want.sites[name]
        np.testing.assert_array_equal(g.count, w.count, err_msg=f"{name}.count")
        for fld in ("mean", "m2", "min", "max"):
            np.testing.assert_allclose(getattr(g, fld), getattr(w, fld), rtol=rtol, atol=0, err_msg=f"{name}.{fld}")


def assert_identical_stats(a, b):
    assert (a.n_images, tuple(a.classes), a.fingerprint) == (b.n_images, tuple(b.classes), b.fingerprint)
    assert a.ranges == b.ranges
    for name, s in a.sites.items():
        for fld in ("count", "shift", "shifted_mean", "m2", "min", "max"):
            assert getattr(s, fld).tobytes() == getattr(b.sites[name], fld).tobytes(), f"{name}.{fld}"


class RealCluster:
    """`dask scheduler` and `dask worker`s as processes of their own sessions, on 127.0.0.1."""

    def __init__(self, tmp, n_workers=2):
        self.file = tmp / "scheduler.json"
        env = {**os.environ, **WORKER_ENV}
        common = dict(cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    self.file,
                ],
                **common,
            )
        ]
        try:
            self._wait(lambda: self.file.exists() and self.file.stat().st_size > 0, "the scheduler file")
            self.address = json.loads(self.file.read_text())["address"]
            worker = [DASK, "worker", "--scheduler-file", self.file, "--nthreads", "1", "--nworkers", "1"]
            worker += ["--host", "127.0.0.1", "--no-dashboard"]
            self.procs += [subprocess.Popen(worker, **common) for _ in range(n_workers)]
            if n_workers:
                with Client(self.address, timeout=30, set_as_default=False) as c:
                    c.wait_for_workers(n_workers, timeout=60)
        except BaseException:
            self.close()
            raise

    def _wait(self, ready, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"the test cluster did not start ({what})")
            time.sleep(0.1)

    def close(self):
        """SIGTERM to every process group (the workers' nannies and their worker processes too),
        SIGKILL after 10 s; then checks that none of their processes is left."""
        for p in reversed(self.procs):
            with _gone():
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with _gone():
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        deadline = time.monotonic() + 10
        for p in self.procs:
            while _group_alive(p.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with _gone():
                os.killpg(p.pid, signal.SIGKILL)
            assert not _group_alive(p.pid), f"processes of group {p.pid} left"


class _gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def _group_alive(pgid) -> bool:
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return False


def one_process(model):
    """The same model object is never shared with a cluster's run: a fresh Model of its graph."""
    return Model(model.graph, path=model.path)


def _non_daemon_threads():
    return {t for t in threading.enumerate() if not t.daemon and t.is_alive()}


@contextlib.contextmanager
def inprocess_cluster(n_workers=2):
    """A Client of an in-process LocalCluster of n_workers (worker threads in this process, one thread
    each), closed at the end with a check that it left no thread. The workers hold BLAS to one thread
    process-wide; it is given back at the end. (A cluster of another size is a new one: scaling one
    down raced in dask's own bookkeeping, a KeyError in LocalCluster.close.)"""
    before = _non_daemon_threads()
    with threadpool_limits(limits=1):
        kw = dict(dashboard_address=None, worker_dashboard_address=None)
        with warnings.catch_warnings():  # the scheduler's /health server moves off a busy port 8787
            warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, **kw)
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    deadline = time.monotonic() + 10
    while _non_daemon_threads() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _non_daemon_threads() - before, f"threads left: {_non_daemon_threads() - before}"
