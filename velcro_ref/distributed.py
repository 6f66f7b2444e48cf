"""Profiles, sweeps and the demo on a Dask cluster: the client side (docs/distributed.md).

A profile is cut into shards of whole batches, one task each; every task returns the statistics
of its shard and the client folds them in shard order, shard 0 first, whatever order they finish
in. So the result depends neither on the number of workers nor on timing, and the shards folded so
far are one statistics file, the checkpoint `--resume` continues from. A sweep point and a demo
profile are one task each. What runs on the workers is velcro_ref/dask_tasks.py.

dask.distributed is an optional dependency (`pip install 'velcro-ref[dist]'`), imported only when
a cluster is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import uuid
import warnings
from dataclasses import dataclass

from .cli_util import add_ranged, count, number, text
from .errors import ClusterError, UsageError, VelcroError

CONNECT_TIMEOUT_S = 10.0
SHARD_BATCHES = 4  # batches per profile task: 1024 images at the default batch, seconds of work per task
# Worker processes of --workers: one thread each. The nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 but
# not NUMBA_NUM_THREADS (dask/distributed issue 9075); dask_tasks also limits the pools at run time.
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class SharedData:
    """Where the workers read a profile's images themselves instead of receiving them: the images
    are the first ones of `classes` in Fashion-MNIST's `split`, under `data_dir` (None: each worker's
    $VELCRO_DATA or the Debian path). The client checks every shard against its own copy."""

    split: str
    classes: tuple
    data_dir: str | None = None


# -- command-line flags (no dask import here: every command registers them) --


def add_cluster_args(p, shards=False):
    """--scheduler | --workers, --connect-timeout, --shared-data (and --shard-batches for a profile)."""
    g = p.add_argument_group("cluster (docs/distributed.md)")
    which = g.add_mutually_exclusive_group()
    which.add_argument(
        "--scheduler", type=text, metavar="ADDRESS", help="run the tasks on the Dask cluster of this scheduler"
    )
    which.add_argument(
        "--workers",
        type=count(1, 1024),
        metavar="N",
        help="run the tasks on a local Dask cluster of N single-threaded worker processes",
    )
    what = "seconds to reach the scheduler and find a worker there"
    add_ranged(g, "--connect-timeout", number(0, 3600, open_lo=True), CONNECT_TIMEOUT_S, what, True, metavar="S")
    g.add_argument(
        "--shared-data",
        action="store_true",
        help="the workers read Fashion-MNIST from --data-dir (a folder every worker sees at that path) "
        "instead of receiving the images from this process",
    )
    if shards:
        add_ranged(g, "--shard-batches", count(1, 1_000_000), SHARD_BATCHES, "batches per task", True, metavar="K")


# The cluster options that only a cluster run reads: (flag, argument, default).
_CLUSTER_ONLY = (
    ("--connect-timeout", "connect_timeout", CONNECT_TIMEOUT_S),
    ("--shard-batches", "shard_batches", SHARD_BATCHES),
)


def on_cluster(args) -> bool:
    """True when the command runs on a cluster; UsageError for --shared-data, --connect-timeout or
    --shard-batches without one (they would be ignored), or --shared-data with --images. Fills in
    the defaults of the options left out."""
    cluster = bool(getattr(args, "scheduler", None) or getattr(args, "workers", None))
    for flag, name, default in _CLUSTER_ONLY:
        if hasattr(args, name) and not cluster:
            raise UsageError(f"{flag} needs --scheduler ADDRESS or --workers N")
        setattr(args, name, getattr(args, name, default))
    if getattr(args, "shared_data", False):
        if not cluster:
            raise UsageError("--shared-data needs --scheduler ADDRESS or --workers N")
        if getattr(args, "images", None):
            raise UsageError("--shared-data reads Fashion-MNIST on the workers; an --images file is sent from here")
    return cluster


def shared_data_of(args, classes, split):
    """The SharedData of --shared-data (the data folder as an absolute path), or None."""
    if not args.shared_data:
        return None
    return SharedData(
        split, tuple(classes), os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else None
    )


def client_for(args):
    """`connect` with the command's flags."""
    return connect(args.scheduler, args.workers, args.connect_timeout)


def client_of(args, cluster):
    """`client_for(args)` when the command runs on a cluster, else a context giving None."""
    return client_for(args) if cluster else contextlib.nullcontext()


# -- the cluster --


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("running on a Dask cluster needs dask.distributed: pip install 'velcro-ref[dist]'") from None
    return distributed


@contextlib.contextmanager
def connect(scheduler=None, workers=None, timeout_s=CONNECT_TIMEOUT_S):
    """A dask.distributed Client of the scheduler at `scheduler` ("tcp://host:8786"), or of a new
    local cluster of `workers` single-threaded worker processes; closed (with the local cluster)
    on exit. Raises ClusterError naming the address when the scheduler cannot be reached, or has
    no worker, within timeout_s seconds. While it is open the client's own error log is silenced: a
    scheduler lost mid-run logged tracebacks before the one ClusterError that `result` raises."""
    _distributed()  # imported first: its import sets up its loggers
    log = logging.getLogger("distributed.client")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with _connect(scheduler, workers, timeout_s) as client:
            yield client
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _connect(scheduler, workers, timeout_s):
    if (scheduler is None) == (workers is None):
        raise UsageError("give a scheduler address or a number of workers")
    distributed = _distributed()
    if scheduler is not None:
        from distributed.comm.addressing import normalize_address

        try:  # before a Client exists: one that fails to parse its address complains again when collected
            normalize_address(scheduler)
        except ValueError as e:
            raise ClusterError(f"scheduler address {scheduler!r}: {e}; expects e.g. tcp://host:8786") from None
        try:
            # a bare connection first: a Client that fails to connect complains again when collected
            asyncio.run(_probe(distributed, scheduler, timeout_s))
            client = distributed.Client(scheduler, timeout=timeout_s, set_as_default=False)
        except Exception as e:  # whatever the connection attempt raised: the address is what the user can fix
            msg = f"cannot reach the Dask scheduler at {scheduler} within {timeout_s:g} s ({_causes(e)})"
            raise ClusterError(msg) from None
        with contextlib.closing(client):
            try:  # tasks given to a scheduler without workers would wait forever
                client.wait_for_workers(1, timeout=timeout_s)
            except TimeoutError:
                raise ClusterError(
                    f"the Dask scheduler at {scheduler} has no workers (waited {timeout_s:g} s)"
                ) from None
            yield client
        return
    import dask

    # A nanny sets its worker's variables (OMP/MKL/OPENBLAS_NUM_THREADS=1, ...) in this process's
    # environment before it starts the worker; they are put back once the cluster is closed, so
    # that what this process starts later gets the environment it had.
    environ = dict(os.environ)
    try:
        # A worker samples its threads' stacks every 10 ms for the dashboard: 15-20% more CPU time
        # for a profile measured on 2 cores (docs/distributed.md); the workers inherit this setting.
        with dask.config.set({"distributed.worker.profile.enabled": False}), warnings.catch_warnings():
            # without a dashboard the scheduler still serves /health, on 8787 or, if taken, any port
            warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
            before = set(distributed.SpecCluster._instances)
            try:  # a worker process that dies while starting fails the whole cluster's start
                with _children_quiet():
                    cluster = _local_cluster(distributed, workers)
            except Exception as e:
                why = f"the local Dask cluster of {workers} worker(s) did not start ({_causes(e)}); rerun"
                raise ClusterError(why) from None
            except BaseException:  # Ctrl-C or SIGTERM while it starts
                _close_half_started(distributed, before)
                raise
        with contextlib.closing(cluster), contextlib.closing(distributed.Client(cluster, set_as_default=False)) as c:
            yield c
    finally:
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)


@contextlib.contextmanager
def _children_quiet():
    """The processes started inside (the local workers) write their stderr to /dev/null: an interrupt
    while they start closes them (`_close_half_started`), and one still reading its start-up data from
    this process printed a traceback into this process's stderr, after its one line. Their errors reach
    the client as exceptions, and their logs are silenced all the same (`_local_cluster`). This
    process's own stderr is put back on exit."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to keep quiet
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _close_half_started(distributed, before) -> None:
    """Close the cluster an interrupt left half started (any cluster not in `before`, the ones that
    existed, a caller's own among them). Dask closes every cluster at exit, and one whose workers had
    not finished starting fails an assertion there: a traceback after the interrupt's one line."""
    for cluster in set(distributed.SpecCluster._instances) - before:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)
        distributed.SpecCluster._instances.discard(cluster)


def _causes(e) -> str:
    """An exception and its causes as one line, each without a closing period, its type's name where
    it has no text: "Nanny failed to start: Nanny failed to start worker process"."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen and len(seen) < 8:  # a chain may loop back on itself
        seen.add(id(e))
        text = " ".join(str(e).split()).rstrip(".") or type(e).__name__
        if not any(text in p for p in parts):  # a cause its effect already quotes adds nothing
            parts.append(text)
        e = e.__cause__
    return ": ".join(parts)


async def _probe(distributed, address, timeout_s):
    comm = await distributed.comm.connect(address, timeout=timeout_s)
    await comm.close()


def _local_cluster(distributed, workers):
    import dask

    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        worker_dashboard_address=None,
        env=WORKER_ENV,
        # a worker outliving the scheduler at close logs an error; a task's errors reach the client anyway
        silence_logs=logging.CRITICAL,
        **_with_preload(dask, "velcro_ref.dask_tasks"),
    )


def _with_preload(dask, module) -> dict:
    """The workers' preload settings of the Dask config, `module` added (with no arguments): the workers
    leave a terminal's Ctrl-C (sent to the whole process group) to this process, which closes them; each
    printed its KeyboardInterrupt traceback (`dask_tasks.dask_setup`)."""
    preload = dask.config.get("distributed.worker.preload", None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    argv = dask.config.get("distributed.worker.preload-argv", None) or []
    per_module = bool(argv) and all(isinstance(a, (list, tuple)) for a in argv)  # one list per preload
    kw = {"preload": [*preload, module]}
    if per_module:
        kw["preload_argv"] = [*argv, []]
    return kw


def send_model(client, model) -> str:
    """Load `model` on every worker of the cluster, present and future, once (a worker plugin with
    its graph); returns the key tasks name it by (`dask_tasks.model_key`: its fingerprint and the
    client's sources, which a task checks on its worker)."""
    from distributed.comm.core import CommClosedError

    from .dask_tasks import ModelPlugin, has_model, model_key, package_sources

    plugin = ModelPlugin(model.graph, model.path, model.fingerprint, package_sources())

    def registered(name, dask_scheduler=None) -> bool:  # on the scheduler (a local function: sent by value)
        plugins = getattr(dask_scheduler, "worker_plugins", None)
        return True if plugins is None else name in plugins  # a scheduler that does not say: as before

    try:
        _check_sources(client, plugin.sources)
        # A worker lets go of the oldest of more than MAX_MODELS models; the plugin of such a model is
        # still registered, and registering it again would send nothing: it is sent afresh. Only a
        # registered one is unregistered: the scheduler logs a traceback for any other.
        if not all(client.run(has_model, model.fingerprint).values()):
            if client.run_on_scheduler(registered, name=plugin.name):
                with contextlib.suppress(ValueError):  # gone meanwhile
                    client.unregister_worker_plugin(plugin.name)
        client.register_plugin(plugin)
    except ImportError as e:
        raise ClusterError(f"the workers cannot import velcro_ref ({e}); install velcro-ref on every worker") from None
    except (CommClosedError, ConnectionError) as e:  # a worker or the scheduler gone while the plugin was sent
        why = _causes(e)
        raise ClusterError(f"the cluster was lost while the model was sent to its workers ({why}); rerun") from None
    return model_key(model.fingerprint, plugin.sources)


def _check_sources(client, sources) -> None:
    """ClusterError unless every worker runs velcro_ref of the client's `sources` (a worker of another
    commit under one version number would compute its shards with other code, without a word). Asked
    of the workers there now; one joining later checks itself when it takes the model (ModelPlugin)."""
    from distributed.comm.core import CommClosedError

    from .dask_tasks import package_sources

    try:
        theirs = client.run(package_sources)
    except (CommClosedError, ConnectionError):  # the cluster lost: send_model says so
        raise
    except Exception as e:  # a velcro_ref without package_sources (its pickle names it), or none at all
        why = _causes(e)
        if "No module named 'velcro_ref" in why:
            why = f"the workers cannot import velcro_ref ({why}); install velcro-ref on every worker"
            raise ClusterError(why) from None
        raise ClusterError(
            f"a worker runs velcro_ref of other sources than the client's ({why}); install the client's "
            "velcro-ref on every worker"
        ) from None
    other = sorted(w for w, digest in theirs.items() if digest != sources)
    if other:
        raise ClusterError(
            f"worker(s) {', '.join(other[:3])} run velcro_ref of other sources than the client's (digest "
            f"{theirs[other[0]][:12]} against {sources[:12]}); install the client's velcro-ref on every worker"
        )


def result(future):
    """The future's result; ClusterError when the cluster lost the task (a worker crashing on it
    again and again, the scheduler gone). A VelcroError raised by the task comes back as it is."""
    import asyncio
    import concurrent.futures

    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except VelcroError:
        raise
    except KilledWorker as e:
        raise ClusterError(f"task {future.key}: the workers running it died ({e})") from None
    except (asyncio.CancelledError, concurrent.futures.CancelledError, OSError, TimeoutError) as e:
        why = f"task {future.key}: lost by the cluster ({_causes(e)}); rerun (profile: with --resume)"
        raise ClusterError(why) from None


def _n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def _token() -> str:
    return uuid.uuid4().hex[:12]


# -- profile --


def collect_stats(
    client,
    model,
    x,
    batch=256,
    classes=(),
    source="",
    progress=None,
    shard_batches=SHARD_BATCHES,
    shared=None,
    start=0,
    done=None,
    checkpoint=None,
    checkpoint_every=0,
):
    """Statistics of every site over images x[start:] (N, C, H, W) float32 on the cluster of
    `client`, merged into `done` (the Stats of x[:start], or None). Returns a Stats.

    Shards of `shard_batches` batches of `batch` images are tasks; their Stats are folded in shard
    order, so the result is the same for any number of workers and any finishing order, and equals
    a one-process run at the same threads per process to float64 rounding (Chan's formula). The
    images go with the tasks, or with `shared` (a SharedData) the workers read them and check them
    against x. checkpoint(stats), if given, is called with the folded stats (with a record of its
    shards in provenance["checkpoint"]) each time `checkpoint_every` more batches are folded.
    """
    from .dask_tasks import SharedImages, profile_images
    from .data import digest

    if batch < 1 or shard_batches < 1:
        raise UsageError(f"batch and shard_batches expect positive integers, got {batch} and {shard_batches}")
    fingerprint = send_model(client, model)
    size = batch * shard_batches
    bounds = [(a, min(a + size, len(x))) for a in range(start, len(x), size)]
    token = _token()

    def submit(i):
        a, b = bounds[i]
        if shared is None:
            images = (x[a:b], None)
        else:
            images = SharedImages(shared.split, tuple(shared.classes), a, b, digest(x[a:b]), shared.data_dir)
        key = f"velcro-profile-{token}-{a}-{b}"
        return client.submit(profile_images, fingerprint, images, batch, tuple(classes), key=key, pure=False)

    distributed = _distributed()
    window = max(4, 3 * _n_workers(client))  # shards in flight or waiting for their turn to be folded
    total, folded, pending, ready = done, 0, {}, {}
    since_checkpoint = 0
    ac = distributed.as_completed(loop=client.loop)
    try:
        while folded < len(bounds):
            while len(pending) + len(ready) < window and folded + len(pending) + len(ready) < len(bounds):
                i = folded + len(pending) + len(ready)
                f = submit(i)
                pending[f] = i
                ac.add(f)
            f = next(ac)
            ready[pending.pop(f)] = result(f)
            f.release()
            while folded in ready:
                part = ready.pop(folded)
                total = part if total is None else total.merge(part)
                total.classes, total.source = tuple(classes), source
                a, b = bounds[folded]
                folded += 1
                since_checkpoint += -(-(b - a) // batch)
                if progress is not None:
                    progress.update(b - a)
                if checkpoint is not None and checkpoint_every and since_checkpoint >= checkpoint_every:
                    record = {"images": int(total.n_images), "shard_images": size, "batch": batch, "shards": folded}
                    total.provenance = {**total.provenance, "checkpoint": record}
                    checkpoint(total)
                    total.provenance = {k: v for k, v in total.provenance.items() if k != "checkpoint"}
                    since_checkpoint = 0
    finally:
        if pending:
            client.cancel(list(pending))
    if total is not None:
        total.provenance = {k: v for k, v in total.provenance.items() if k != "checkpoint"}
    return total


# -- sweeps and the demo --


class Jobs:
    """Profiles and sweep points submitted as tasks; the answers come back as the one-process
    functions (experiments.profile_task, experiments.sweep) give them."""

    def __init__(self, client, data_dir=None, shared=False, batch=256, eval_batch=128):
        self.client, self.shared = client, shared
        self.data_dir = self._dir(data_dir)
        self.batch, self.eval_batch = batch, eval_batch
        self.token = _token()
        self._sent = {}  # fingerprint -> the key tasks name the model by
        self._profiles = {}  # (fingerprint, classes, n) -> future of Stats
        self._tests = {}  # (fingerprint, classes, n) -> (future of images, number of images)
        self._points = {}  # (fingerprint, classes, n, policy, ratios, n_eval) -> [future of dense, of each ratio]
        self._given = {}  # id of a Stats returned by `profile` -> (its key, the Stats)

    def _fingerprint(self, model):
        """The key tasks name `model` by (`send_model`), the model sent once."""
        if model.fingerprint not in self._sent:
            self._sent[model.fingerprint] = send_model(self.client, model)
        return self._sent[model.fingerprint]

    def _images(self, model, classes, split, n):
        """What a task gets for the first n images of classes in split: the arrays, or SharedImages."""
        from . import data
        from .dask_tasks import SharedImages
        from .data import digest

        x, y = data.task_images(model, classes, split, n, self.data_dir)
        if not self.shared:
            return (x, y), len(x)
        return SharedImages(split, tuple(classes), 0, len(x), digest(x), self.data_dir, digest(y)), len(x)

    def submit_profile(self, model, classes, n):
        """Submit the profile of the first n train images of classes (as experiments.profile_task)."""
        from .dask_tasks import profile_images

        key = (model.fingerprint, tuple(classes), n)
        if key not in self._profiles:
            fp = self._fingerprint(model)
            images, _ = self._images(model, classes, "train", n)
            name = f"velcro-stats-{self.token}-{len(self._profiles)}"
            self._profiles[key] = self.client.submit(
                profile_images, fp, images, self.batch, tuple(classes), key=name, pure=False
            )
        return self._profiles[key]

    def submit_sweep(self, model, classes, profile_n, eval_n, policy, ratios):
        """Submit a sweep's dense evaluation and its points (ratio 0 is the dense one, as in experiments.sweep)."""
        from .dask_tasks import hold, sweep_point

        stats = self.submit_profile(model, classes, profile_n)
        test_key = (model.fingerprint, tuple(classes), eval_n)
        if test_key not in self._tests:
            images, n = self._images(model, classes, "test", eval_n)
            name = f"velcro-test-images-{self.token}-{len(self._tests)}"
            # known by the number asked for and by the number there are (None: all of them)
            self._tests[test_key] = self._tests[test_key[:2] + (n,)] = (
                self.client.submit(hold, images, key=name, pure=False),
                n,
            )
        images, n = self._tests[test_key]
        key = (model.fingerprint, tuple(classes), profile_n, policy, tuple(ratios), n)
        if key not in self._points:
            fp = self._fingerprint(model)
            base = f"velcro-point-{self.token}-{len(self._points)}"
            args = (fp, stats, images, tuple(classes))
            self._points[key] = [
                self.client.submit(sweep_point, *args, r, policy, self.eval_batch, key=f"{base}-{j}", pure=False)
                for j, r in enumerate([0.0, *(r for r in ratios if r != 0)])
            ]
        return key

    def _dir(self, data_dir):
        """Where the workers read the images themselves: `~` and a relative path are this process's."""
        return os.path.abspath(os.path.expanduser(data_dir)) if self.shared and data_dir else data_dir

    def profile(self, model, classes, n, data_dir=None, batch=256, progress=None):
        """experiments.profile_task from the task's result (submitted now if it was not)."""
        key = (model.fingerprint, tuple(classes), n)
        if self._dir(data_dir) != self.data_dir or batch != self.batch:  # not the tasks': run here
            from .experiments import profile_task

            return profile_task(model, classes, n, data_dir, batch, progress)
        stats = result(self.submit_profile(model, classes, n))
        stats.source = f"fashion-mnist train classes {list(classes)}"
        self._given[id(stats)] = (key, stats)
        if progress is not None:
            progress.update(stats.n_images)
        return stats

    def sweep(
        self, model, stats, x, labels, classes, ratios, policy="uniform", tolerance=0.005, batch=128, progress=None
    ):
        """experiments.sweep from the tasks' results when `stats` came from `profile` and x are the
        first test images of classes; else it runs here."""
        from .experiments import sweep, sweep_summary

        given = self._given.get(id(stats))
        if given is None or given[1] is not stats or given[0][:2] != (model.fingerprint, tuple(classes)):
            return sweep(model, stats, x, labels, classes, ratios, policy, tolerance, batch, progress)
        if batch != self.eval_batch:
            return sweep(model, stats, x, labels, classes, ratios, policy, tolerance, batch, progress)
        key = self.submit_sweep(model, classes, given[0][2], len(x), policy, ratios)
        dense, *rest = (result(f) for f in self._points[key])
        rest = iter(rest)
        results = [dense if r == 0 else next(rest) for r in ratios]
        if progress is not None:
            progress.update(len(ratios))
        return sweep_summary(dense, ratios, results, policy, classes, tolerance, len(x), stats.n_images)


class Units:
    """The demo's units of work (velcro_ref/demo.py, LocalUnits) as tasks on the cluster of `client`:
    the calls of one `run` are submitted together and their results come back in order. The model
    reaches the workers once (send_model); the images are read here and sent once per set, or, with
    `shared`, read by the workers from data_dir; a result that a later call takes as an argument (a
    task's Stats) stays on the cluster and is passed by reference."""

    def __init__(self, client, data_dir=None, shared=False):
        from .engine import load_model

        self.client, self.shared = client, shared
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if shared and data_dir else data_dir
        self.token = _token()
        self._load = functools.lru_cache(maxsize=1)(load_model)
        self._fingerprints = {}  # model path -> the key tasks name it by (`send_model`)
        self._images = {}  # (path, classes, images) -> future of (x, labels)
        self._digests = {}  # (path, classes, images) -> SharedImages (with `shared`)
        self._futures = {}  # id of a result -> (the result, its future)
        self._n = 0

    def _submit(self, fn, kwargs):
        from .dask_tasks import hold, run_unit

        kwargs = dict(kwargs)
        path = kwargs.pop("model_path")
        if path not in self._fingerprints:
            self._fingerprints[path] = send_model(self.client, self._load(path))
        for k, v in kwargs.items():
            known = self._futures.get(id(v))
            if known is not None and known[0] is v:
                kwargs[k] = known[1]
        if "images" in kwargs:
            if self.shared:  # the workers read them, and check them against the client's digest
                kwargs["data_dir"] = self.data_dir
                kwargs["given"] = self._shared_images(path, tuple(kwargs["classes"]), tuple(kwargs["images"]))
            else:
                key = (path, tuple(kwargs["classes"]), tuple(kwargs["images"]))
                if key not in self._images:
                    from . import data

                    split, first, n = kwargs["images"]
                    xy = data.task_images(self._load(path), key[1], split, n, kwargs.get("data_dir"), first)
                    name = f"velcro-images-{self.token}-{len(self._images)}"
                    self._images[key] = self.client.submit(hold, xy, key=name, pure=False)
                kwargs["given"] = self._images[key]
        self._n += 1
        name = f"velcro-{fn.__name__}-{self.token}-{self._n}"
        return self.client.submit(run_unit, fn, self._fingerprints[path], key=name, pure=False, **kwargs)

    def _shared_images(self, path, classes, images):
        """The SharedImages of images = (split, first, n) of classes: the digest of the client's copy,
        which the worker that reads them compares with its own (made once per set)."""
        from . import data
        from .dask_tasks import SharedImages

        key = (path, classes, images)
        if key not in self._digests:
            split, first, n = images
            x, y = data.task_images(self._load(path), classes, split, n, self.data_dir, first)
            sha, labels_sha = data.digest(x), data.digest(y)
            self._digests[key] = SharedImages(split, classes, first, first + len(x), sha, self.data_dir, labels_sha)
        return self._digests[key]

    def run(self, fn, calls, bar=None) -> list:
        """fn(model, **call) for each call, as tasks; the results in the order of the calls."""
        futures = [self._submit(fn, kwargs) for kwargs in calls]
        out = []
        for f in futures:
            out.append(result(f))
            self._futures[id(out[-1])] = (out[-1], f)
            if bar is not None:
                bar.update(1)
        return out

    def done_with(self, path) -> None:
        """Let go of what the cluster holds for the model at `path` (its images, its results)."""
        for key in [k for k in self._images if k[0] == path]:
            self._images.pop(key).release()
        for key in [k for k in self._digests if k[0] == path]:
            del self._digests[key]
        for _, f in self._futures.values():
            f.release()
        self._futures.clear()


def sweep(client, model, classes, ratios, policy, tolerance, profile_samples, samples, data_dir, shared, progress):
    """api.sweep on the cluster of `client`: the profile is one task and every ratio another."""
    from .data import task_images

    jobs = Jobs(client, data_dir, shared)
    x, y = task_images(model, classes, "test", samples, data_dir)
    jobs.submit_sweep(model, classes, profile_samples, samples, policy, ratios)
    stats = jobs.profile(model, classes, profile_samples, data_dir)
    return jobs.sweep(model, stats, x, y, classes, ratios, policy, tolerance, progress=progress)
