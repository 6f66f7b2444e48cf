"""What runs on a Dask worker: the model plugin and the task functions (docs/distributed.md).

A model reaches each worker once, in a worker plugin that holds its graph; the worker keeps the
graph keyed by its fingerprint, and a task names the model by that fingerprint and the client's
sources (`model_key`), so no task carries weights, and a worker of other sources, even one that
joined after the check of the workers there at the start, refuses every task. A Model runs in
one thread at a time (it owns its buffers), so a task borrows one from the worker's pool and
gives it back: the pool grows to the number of tasks running at once, and a Model's buffers
serve every task after its first. Tasks run single-threaded: a
worker is one process with one thread, and the engine's BLAS and Numba pools are held to one
thread at run time (the nanny sets OPENBLAS/OMP/MKL_NUM_THREADS but not NUMBA_NUM_THREADS:
dask/distributed issue 9075).

The client side (cutting shards, folding results, the CLI flags) is velcro_ref/distributed.py.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .data import digest
from .errors import ClusterError, DataError, ModelError
from .fpenv import default_env
from .kernels.jit import sources_digest

MAX_MODELS = 8  # models a worker keeps loaded (a demo uses three)
_GRAPHS: OrderedDict = OrderedDict()  # fingerprint -> (Graph, path), in this worker process
_IDLE: dict = {}  # fingerprint -> Models of it no task is running
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SharedImages:
    """Images a worker reads itself: Fashion-MNIST images `start` .. `stop` - 1 of `classes` in
    `split`, from `data_dir` (None: $VELCRO_DATA or the Debian path, as the worker sees them),
    preprocessed as the model says. `sha` is the digest of the same images on the client,
    `labels_sha` of their labels where a task reads them (None: a profile, which does not)."""

    split: str
    classes: tuple
    start: int
    stop: int
    sha: str
    data_dir: str | None = None
    labels_sha: str | None = None


def single_threaded() -> None:
    """One thread for Numba's parallel kernels in the calling thread (Numba's setting is per
    thread, so every task makes it)."""
    import numba

    numba.set_num_threads(1)


class ModelPlugin(WorkerPlugin):
    """Loads one model on every worker, present and future, once: `graph` is the model file's
    graph, checked against `fingerprint` after the transfer."""

    idempotent = True  # the name carries the fingerprint: one registration per model and cluster

    def __init__(self, graph, path, fingerprint, sources):
        self.graph, self.path, self.fingerprint, self.sources = graph, path, fingerprint, sources

    @property
    def name(self) -> str:
        return f"velcro-model-{self.fingerprint[:16]}-{self.sources[:8]}"

    def setup(self, worker=None):
        from threadpoolctl import threadpool_limits

        from .engine import Model

        # A worker of another velcro_ref (another commit under one version number) would compute with
        # other code, and its shards would mix into the client's results without a word.
        if package_sources() != self.sources:
            raise ClusterError(
                f"{_where()}: runs velcro_ref of other sources than the client's (digest {package_sources()[:12]} "
                f"against {self.sources[:12]}); install the client's velcro-ref on every worker"
            )

        # The BLAS and OpenMP pools of the whole process, left so: a worker process runs tasks only.
        # (A worker in the client's process, processes=False, limits the client too.)
        threadpool_limits(limits=1)
        model = Model(self.graph, path=self.path)
        if model.fingerprint != self.fingerprint:
            raise ModelError(f"{self.path}: the model arrived as {model.fingerprint}, expected {self.fingerprint}")
        _GRAPHS[self.fingerprint] = (self.graph, self.path)
        while len(_GRAPHS) > MAX_MODELS:
            _GRAPHS.popitem(last=False)


def dask_setup(worker) -> None:
    """Preloaded by the workers of a local cluster (`distributed._local_cluster`): SIGINT ignored. A
    terminal's Ctrl-C reaches the whole process group; the client, which started these workers, closes them."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def package_files() -> list[Path]:
    """Every source and data file of the velcro_ref and simulator packages in this process (the
    tasks file and the accelerator presets among them), in order."""
    velcro = Path(__file__).resolve().parent
    packages = (velcro, velcro.parent / "simulator")
    return sorted(f for package in packages for ext in ("*.py", "*.toml") for f in package.rglob(ext))


@functools.cache
def package_sources() -> str:
    """SHA-256 over the paths and bytes of `package_files`."""
    return sources_digest(Path(__file__).resolve().parent.parent, package_files())


def model_key(fingerprint, sources) -> str:
    """What a task names its model by: the model's fingerprint and the client's sources."""
    return f"{fingerprint}:{sources}"


def has_model(fingerprint) -> bool:
    """Whether this worker holds the graph of model `fingerprint` (run on every worker by the client)."""
    with _LOCK:
        return fingerprint in _GRAPHS


@contextlib.contextmanager
def model_of(key):
    """A Model of the graph the plugin brought for the model `key` (`model_key`), this task's alone
    until the block ends; the calling thread runs single-threaded from here. ClusterError on a
    worker whose sources are not the client's."""
    from .engine import Model

    fingerprint, sources = key.split(":")
    if sources != package_sources():  # a worker of other sources that joined later (docs/distributed.md)
        raise ClusterError(
            f"{_where()}: runs velcro_ref of other sources than the client's (digest {package_sources()[:12]} "
            f"against {sources[:12]}); install the client's velcro-ref on every worker"
        )
    single_threaded()
    with _LOCK:
        if fingerprint not in _GRAPHS:
            raise ModelError(f"{_where()}: model {fingerprint} is not loaded on this worker (its plugin was removed)")
        for fp in [fp for fp in _IDLE if fp not in _GRAPHS]:  # models of graphs the plugins' cache let go
            del _IDLE[fp]
        idle = _IDLE.setdefault(fingerprint, [])
        model = idle.pop() if idle else None
        graph, path = _GRAPHS[fingerprint]
    if model is None:
        model = Model(graph, path=path)
    try:
        yield model
    finally:
        with _LOCK:
            if fingerprint in _GRAPHS:
                _IDLE.setdefault(fingerprint, []).append(model)


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except ValueError:
        return "worker"


def images_of(model, images):
    """(x, labels or None) of a task: arrays sent by the client as they are, SharedImages read here."""
    if not isinstance(images, SharedImages):
        return images
    from . import data

    x, y = data.task_images(model, images.classes, images.split, images.stop, images.data_dir)
    x, y = np.ascontiguousarray(x[images.start :]), np.ascontiguousarray(y[images.start :])
    other_labels = images.labels_sha is not None and digest(y) != images.labels_sha
    if len(x) != images.stop - images.start or digest(x) != images.sha or other_labels:
        where = images.data_dir or "the worker's Fashion-MNIST folder"
        raise DataError(
            f"{_where()}: {where} holds other images or labels than the client's ({images.split} images "
            f"{images.start}..{images.stop - 1} of classes {list(images.classes)}); give every worker the same data"
        )
    return x, y


def hold(value):
    """A task whose result is its argument: data many tasks read, kept where the scheduler can
    make it again if the worker holding it is lost (a scattered value could not be)."""
    return value


@default_env()  # a worker may have inherited other settings
def profile_images(key, images, batch, classes):
    """Stats (velcro_ref.stats.Stats) of a shard or of a whole preprocessing set, in batches of
    `batch` as a one-process run makes them."""
    from .stats import collect_stats

    with model_of(key) as model:
        x, _ = images_of(model, images)
        return collect_stats(model, x, batch=batch, classes=classes)


@default_env()
def sweep_point(key, stats, images, classes, ratio, policy, batch):
    """One point of a sweep: experiments.sweep_point on this worker."""
    from .experiments import sweep_point as point

    with model_of(key) as model:
        x, y = images_of(model, images)
        return point(model, stats, x, y, classes, ratio, policy, batch)


@default_env()
def run_unit(fn, key, **kwargs):
    """A unit of work of the demo (velcro_ref/demo.py): fn(model, **kwargs) on this worker."""
    with model_of(key) as model:
        return fn(model, **kwargs)
