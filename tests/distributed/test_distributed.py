"""Distributed runs equal one-process runs: profiles (counts exact, moments within 1e-9 relative, for
any number of workers and order of finishing, a worker killed mid-run, a client lost and resumed),
sweeps and the demo (the same JSON); an unreachable scheduler, or a worker that dies before any task,
is one error line."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from dist_util import (
    ROOT,
    WEIGHTS,
    WORKER_ENV,
    RealCluster,
    assert_identical_stats,
    assert_same_stats,
    inprocess_cluster,
    one_process,
)
from threadpoolctl import threadpool_limits

import velcro_ref
from velcro_ref import dask_tasks
from velcro_ref.distributed import _causes
from velcro_ref.distributed import collect_stats as collect_on_cluster
from velcro_ref.stats import collect_stats, load_stats

FOOTWEAR = "5,7,9"


def test_shards_merged_in_any_order_equal_the_one_process_profile(small_model, images):
    """What makes the fold order free: shard statistics merged in shuffled orders equal the
    statistics of one pass over all images (counts exact, moments within 1e-9)."""
    model, x = one_process(small_model), images[0]
    with threadpool_limits(limits=1):
        whole = collect_stats(model, x, batch=16, classes=(0, 1, 2, 3))
        shards = [collect_stats(model, x[a : a + 32], batch=16, classes=(0, 1, 2, 3)) for a in range(0, 200, 32)]
    rnd = random.Random(3)
    for _ in range(4):
        order = list(range(len(shards)))
        rnd.shuffle(order)
        merged = shards[order[0]]
        for i in order[1:]:
            merged = merged.merge(shards[i])
        assert_same_stats(merged, whole)


def test_inprocess_cluster_profile_equals_one_process_for_any_worker_count(inprocess_client, small_model, images):
    x = images[0]
    with threadpool_limits(limits=1):
        want = collect_stats(one_process(small_model), x, batch=16, classes=(0, 1, 2, 3), source="s")
    got = velcro_ref.profile(small_model, x, batch=16, classes=(0, 1, 2, 3), source="s", client=inprocess_client)
    assert_same_stats(got, want)
    assert got.source == "s" and got.provenance == {}
    # the same shards folded in the same order: with one worker, bit for bit the same numbers
    with inprocess_cluster(1) as one:
        assert len(one.scheduler_info()["workers"]) == 1
        again = velcro_ref.profile(small_model, x, batch=16, classes=(0, 1, 2, 3), source="s", client=one)
    assert_identical_stats(again, got)


_STARTED, _FINISHED = [], []


def _slow_early_shards(fingerprint, images, batch, classes):
    """dask_tasks.profile_images, the earlier a shard starts the longer it takes."""
    i = len(_STARTED)
    _STARTED.append(i)
    time.sleep(0.4 / (1 + i))
    stats = _REAL_PROFILE(fingerprint, images, batch, classes)
    _FINISHED.append(i)
    return stats


_REAL_PROFILE = dask_tasks.profile_images


def test_shards_finishing_in_another_order_give_the_same_bits(inprocess_client, small_model, images, monkeypatch):
    """Shards made to finish out of order (the in-process workers run the slowed task) fold to
    the numbers of an undisturbed run, bit for bit."""
    x = images[0]
    plain = collect_on_cluster(inprocess_client, small_model, x, 16, (0, 1, 2, 3), shard_batches=2)
    monkeypatch.setattr(dask_tasks, "profile_images", _slow_early_shards)
    _STARTED.clear(), _FINISHED.clear()
    late = collect_on_cluster(inprocess_client, small_model, x, 16, (0, 1, 2, 3), shard_batches=2)
    assert sorted(_FINISHED) == list(range(7))  # 200 images in shards of 32
    assert _FINISHED != sorted(_FINISHED)
    assert_identical_stats(late, plain)


def test_cli_profile_on_a_real_cluster_equals_one_process(
    velcro, tmp_path, real_cluster, small_model_file, images_file
):
    one, dist = tmp_path / "one.h5", tmp_path / "dist.h5"
    common = ["profile", small_model_file, "--images", images_file, "--batch", "16"]
    assert velcro(*common, "-o", one).code == 0
    res = velcro(*common, "-o", dist, "--scheduler", real_cluster.address, "--shard-batches", "3")
    assert res.code == 0, res.err
    assert f"wrote {dist}: " in res.out and "200 images" in res.out
    a, b = load_stats(dist), load_stats(one)
    assert_same_stats(a, b)
    assert a.source == b.source


def test_sweep_on_a_real_cluster_equals_the_serial_sweep(velcro, tmp_path, real_cluster, shipped_model):
    args = ["sweep", WEIGHTS, "--task", "footwear", "--ratios", "0,0.3,0.6", "--policy", "budget"]
    args += ["--profile-samples", "120", "--samples", "60", "--json"]
    serial = velcro(*args)
    assert serial.code == 0, serial.err
    dist = velcro(*args, "--scheduler", real_cluster.address)
    assert dist.code == 0, dist.err
    assert json.loads(dist.out) == json.loads(serial.out)
    shared = velcro(*args, "--scheduler", real_cluster.address, "--shared-data")
    assert shared.code == 0, shared.err
    assert json.loads(shared.out) == json.loads(serial.out)


def test_killing_a_worker_mid_profile_loses_nothing_and_counts_nothing_twice(real_client, shipped_model):
    x, _ = velcro_ref.task_images(shipped_model, (5, 7, 9), "train", 1200)
    with threadpool_limits(limits=1):
        want = collect_stats(one_process(shipped_model), x, batch=40, classes=(5, 7, 9))
    pids = real_client.run(os.getpid)
    killed = {}

    class KillOnFirstShard:
        """A progress bar that kills the worker busy with a shard when the first shard is folded."""

        def update(self, n):
            if killed:
                return
            busy = [w for w, keys in real_client.processing().items() if keys]
            assert busy, "no worker was running a shard"
            killed[busy[0]] = pids[busy[0]]
            os.kill(pids[busy[0]], signal.SIGKILL)

    got = velcro_ref.profile(
        shipped_model, x, batch=40, classes=(5, 7, 9), client=real_client, shard_batches=2, progress=KillOnFirstShard()
    )
    assert killed
    assert_same_stats(got, want)
    ((address, pid),) = killed.items()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    real_client.wait_for_workers(2, timeout=30)  # the nanny started a new worker process
    assert pid not in real_client.run(os.getpid).values()


def _start_client_process(*args):
    env = {**os.environ, **WORKER_ENV}
    cmd = [sys.executable, "-m", "velcro_ref.cli", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_the_client_is_killed_equals_the_uninterrupted_run(velcro, tmp_path, real_cluster):
    out, partial, whole = tmp_path / "s.h5", tmp_path / "s.h5.partial", tmp_path / "whole.h5"
    args = ["profile", WEIGHTS, "--data", "fashion-mnist", "--classes", FOOTWEAR, "--samples", "960"]
    args += ["--batch", "40", "--scheduler", real_cluster.address, "--shard-batches", "2", "--checkpoint-every", "4"]
    proc = _start_client_process(*args, "-o", out)
    deadline = time.monotonic() + 60
    while not partial.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    done = load_stats(partial)
    record = done.provenance["checkpoint"]
    assert record["images"] == done.n_images and record["shard_images"] == 80 and record["batch"] == 40
    assert done.n_images == 80 * record["shards"] and 0 < done.n_images < 960

    res = velcro(*args, "-o", out, "--resume")
    assert res.code == 0, res.err
    assert f"resuming from {partial}: {done.n_images} of 960 images done" in res.out
    assert not partial.exists()
    assert velcro(*args, "-o", whole).code == 0
    # the same shards folded in the same order as one uninterrupted run: the same bits
    resumed = load_stats(out)
    assert_identical_stats(resumed, load_stats(whole))
    assert resumed.provenance.keys() == load_stats(whole).provenance.keys() == {"written", "image_sets"}
    assert resumed.provenance["image_sets"] == load_stats(whole).provenance["image_sets"]  # one image set
    one = tmp_path / "one.h5"
    assert velcro(*args[:-6], "--checkpoint-every", "0", "-o", one).code == 0
    assert_same_stats(resumed, load_stats(one))


def test_cli_profile_on_local_worker_processes_equals_one_process(velcro, tmp_path, no_leaked_processes):
    one, dist = tmp_path / "one.h5", tmp_path / "dist.h5"
    args = ["profile", WEIGHTS, "--data", "fashion-mnist", "--classes", FOOTWEAR, "--samples", "400", "--batch", "50"]
    assert velcro(*args, "-o", one).code == 0
    res = velcro(*args, "-o", dist, "--workers", "2", "--shared-data")
    assert res.code == 0, res.err
    assert_same_stats(load_stats(dist), load_stats(one))


def test_demo_on_a_cluster_writes_the_serial_report(velcro, tmp_path, real_cluster):
    args = ["demo", "--models", "resnet18", "--tasks", "footwear", "--ratios", "0,0.4", "--policies", "uniform,channel"]
    args += ["--profile-samples", "100", "--val-samples", "60", "--samples", "50"]
    assert velcro(*args, "-o", tmp_path / "serial").code == 0
    res = velcro(*args, "-o", tmp_path / "dist", "--scheduler", real_cluster.address)
    assert res.code == 0, res.err
    for name in ("resnet18_footwear.json", "report.json"):
        a, b = (_untimed(json.loads((tmp_path / d / name).read_text())) for d in ("serial", "dist"))
        assert a == b, name
    a, b = ((tmp_path / d / "summary.md").read_text().splitlines() for d in ("serial", "dist"))
    assert [x for x in a if " s" not in x] == [x for x in b if " s" not in x]  # lines with times differ
    assert len(a) == len(b)


def test_demo_with_shared_data_refuses_workers_that_read_other_images(velcro, tmp_path, real_cluster, monkeypatch):
    """With --shared-data each worker reads Fashion-MNIST itself; the demo once took whatever it read
    (here: the client's test images inverted, the workers' the Debian ones) and reported its numbers."""
    import gzip

    from velcro_ref import data

    alt = tmp_path / "alt"
    alt.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (alt / name).symlink_to(os.path.join(data.DEBIAN_DIR, name))
    raw = gzip.open(os.path.join(data.DEBIAN_DIR, "t10k-images-idx3-ubyte.gz")).read()
    inverted = bytes(255 - b for b in raw[16:])
    (alt / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:16] + inverted))
    monkeypatch.setenv(data.ENV_VAR, str(alt))  # the client's folder; the workers read the Debian one
    args = ["demo", "--models", "resnet18", "--tasks", "footwear", "--ratios", "0,0.4", "--policies", "uniform"]
    args += ["--profile-samples", "100", "--val-samples", "60", "--samples", "50"]
    res = velcro(*args, "-o", tmp_path / "dist", "--scheduler", real_cluster.address, "--shared-data")
    res.error_line("holds other images or labels than the client's")


def test_sweep_with_shared_data_refuses_workers_that_read_other_labels(velcro, tmp_path, real_cluster, monkeypatch):
    """The same images under other labels (20 of the task's first test labels moved between its
    classes) gave the workers' accuracies, exit 0: only the images were compared."""
    import gzip

    from velcro_ref import data

    alt = tmp_path / "alt"
    alt.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (alt / name).symlink_to(os.path.join(data.DEBIAN_DIR, name))
    raw = bytearray(gzip.open(os.path.join(data.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")).read())
    labels = np.frombuffer(bytes(raw[8:]), np.uint8)
    for i in np.flatnonzero(np.isin(labels, [5, 7, 9]))[:20]:
        raw[8 + i] = {5: 7, 7: 9, 9: 5}[int(labels[i])]
    (alt / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv(data.ENV_VAR, str(alt))  # the client's folder; the workers read the Debian one
    args = ["sweep", WEIGHTS, "--task", "footwear", "--ratios", "0,0.3", "--samples", "50", "--profile-samples", "100"]
    res = velcro(*args, "--json", "--scheduler", real_cluster.address, "--shared-data")
    res.error_line("holds other images or labels than the client's")


def _untimed(doc):
    """The report without the times it took (elapsed_s at any depth)."""
    if isinstance(doc, dict):
        return {k: _untimed(v) for k, v in doc.items() if k != "elapsed_s"}
    if isinstance(doc, list):
        return [_untimed(v) for v in doc]
    return doc


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "nonsense"])
def test_an_unreachable_scheduler_is_one_error_line_naming_it(velcro, tmp_path, small_model_file, images_file, address):
    address = address.format(port=_free_port())
    t0 = time.monotonic()
    args = ["profile", small_model_file, "--images", images_file, "-o", tmp_path / "never.h5"]
    res = velcro(*args, "--scheduler", address, "--connect-timeout", "1")
    res.error_line(address, code=1)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "never.h5").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shared-data"], "--shared-data needs --scheduler ADDRESS or --workers N"),
        (["--shard-batches", "2"], "--shard-batches needs --scheduler ADDRESS or --workers N"),  # else ignored
        (["--connect-timeout", "5"], "--connect-timeout needs --scheduler ADDRESS or --workers N"),
        (["--workers", "2", "--shared-data"], "--shared-data reads Fashion-MNIST on the workers"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler not allowed with argument --workers"),
        (["--workers", "0"], "--workers expects an integer in [1, 1024], got 0"),
        (
            ["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "0"],
            "--connect-timeout expects a number in (0, 3600]",
        ),
    ],
)
def test_cluster_flags_are_checked_before_any_work(velcro, small_model_file, images_file, tmp_path, extra, message):
    res = velcro("profile", small_model_file, "--images", images_file, "-o", tmp_path / "s.h5", *extra)
    res.error_line(message, code=2)
    assert not (tmp_path / "s.h5").exists()


# Worker preload scripts (dask's distributed.worker.preload, which the nanny hands to its worker):
# the worker process dies while it starts, or when the model's plugin reaches it.
DIE_AT_START = "import os\nos._exit(3)\n"
DIE_AT_PLUGIN = """import os


def dask_setup(worker):
    def die(*args, **kwargs):
        os._exit(3)

    worker.handlers["plugin-add"] = die
"""


@pytest.mark.parametrize(
    "preload, message",
    [
        (DIE_AT_START, "the local Dask cluster of 2 worker(s) did not start (Nanny failed to start"),
        (DIE_AT_PLUGIN, "the cluster was lost while the model was sent to its workers"),
    ],
    ids=["at-start", "at-model"],
)
def test_a_worker_dying_before_any_task_is_one_error_line(
    velcro, tmp_path, small_model_file, images_file, no_leaked_processes, preload, message
):
    import dask

    script = tmp_path / "die.py"
    script.write_text(preload)
    args = ["profile", small_model_file, "--images", images_file, "-o", tmp_path / "never.h5", "--workers", "2"]
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        res = velcro(*args)
    res.error_line(message, "rerun", code=1)
    assert not (tmp_path / "never.h5").exists()


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_the_local_cluster_starts_is_one_line(tmp_path, small_model_file, images_file, sig, code, line):
    """The signal comes while the workers start (a preload that waits): one line, and no worker left. Dask
    closing the half-started cluster at exit used to print a traceback after the line."""
    started = tmp_path / "started"
    script = tmp_path / "slow.py"
    script.write_text(f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)\n")
    args = ["profile", small_model_file, "--images", images_file, "-o", tmp_path / "never.h5", "--workers", "2"]
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(script)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the workers did not reach their preload"
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert (proc.returncode, err) == (code, f"error: {line}\n")
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"processes left: {alive}"
    assert not (tmp_path / "never.h5").exists()


def test_a_terminals_ctrl_c_mid_run_is_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, the workers of --workers too: each printed a
    KeyboardInterrupt traceback (63 lines) before the client's one line. They ignore it; the client closes them."""
    out = tmp_path / "s.h5"
    args = ["profile", WEIGHTS, "--data", "fashion-mnist", "--classes", "5,7,9", "--batch", "16", "-o", out]
    args += ["--workers", "2", "--checkpoint-every", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 180
        partial = tmp_path / "s.h5.partial"
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partial.exists(), "no checkpoint before the run ended"
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, "error: interrupted\n")
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"processes left: {alive}"
    assert not out.exists()


def test_closing_a_half_started_cluster_leaves_the_callers_own_running(inprocess_client):
    """A notebook's own cluster, there before the interrupted start, stays open; only the new one closes."""
    import distributed

    from velcro_ref.distributed import _close_half_started

    own = inprocess_client.cluster
    _close_half_started(distributed, before={own})
    assert own.status.name == "running"
    assert inprocess_client.submit(sum, [1, 2]).result(timeout=30) == 3


def test_a_worker_of_other_velcro_ref_sources_refuses_the_model(inprocess_client, small_model):
    """A worker on another commit (the same version number) computed with other code, and its shards mixed
    into the results with exit 0: the plugin carries the client's digest of the package's sources."""
    from velcro_ref.dask_tasks import ModelPlugin
    from velcro_ref.errors import ClusterError

    plugin = ModelPlugin(small_model.graph, small_model.path, small_model.fingerprint, "0" * 64)
    with pytest.raises(ClusterError, match="runs velcro_ref of other sources than the client's"):
        inprocess_client.register_plugin(plugin)


def test_a_task_of_a_client_of_other_sources_is_refused_where_the_model_is_loaded(inprocess_client, small_model):
    """A worker of other sources that joined after the start (a stale plugin of its own sources loading
    the model) ran the client's tasks and its shards were folded in, exit 0: each task names the
    client's sources, and a worker of others refuses it."""
    from velcro_ref.dask_tasks import model_key, profile_images
    from velcro_ref.distributed import result, send_model
    from velcro_ref.errors import ClusterError

    key = send_model(inprocess_client, small_model)
    assert key == model_key(small_model.fingerprint, dask_tasks.package_sources())
    x = np.zeros((2, *small_model.input_shape), np.float32)
    assert result(inprocess_client.submit(profile_images, key, (x, None), 2, (), pure=False)).n_images == 2
    other = model_key(small_model.fingerprint, "0" * 64)
    with pytest.raises(ClusterError, match="runs velcro_ref of other sources than the client's"):
        result(inprocess_client.submit(profile_images, other, (x, None), 2, (), pure=False))


def test_the_sources_checked_are_those_of_both_packages_and_their_data_files():
    """A worker whose simulator presets (or simulator code) differ priced the demo's accelerators its
    own way, exit 0: only velcro_ref/**/*.py was hashed."""
    from velcro_ref.dask_tasks import package_files

    root = Path(velcro_ref.__file__).resolve().parent.parent
    names = {f.relative_to(root).as_posix() for f in package_files()}
    assert {"simulator/archs/edge16.toml", "simulator/simulate.py", "velcro_ref/tasks.toml"} <= names
    assert "velcro_ref/dask_tasks.py" in names


def test_a_model_a_worker_let_go_of_is_sent_again(inprocess_client, small_model):
    """More than MAX_MODELS models on one cluster: the first one's graph is let go of by the workers, its
    plugin still registered; sending it again must load it (it failed as "not loaded" for good)."""
    from velcro_ref.dask_tasks import MAX_MODELS, has_model
    from velcro_ref.distributed import send_model
    from velcro_ref.engine import Model
    from velcro_ref.graph import Graph

    g = small_model.graph
    others = []
    for k in range(MAX_MODELS + 1):
        params = {key: a + np.float32(k + 1) if a.dtype == np.float32 else a for key, a in g.params.items()}
        others.append(Model(Graph(g.nodes, g.input_shape, g.output, params, g.meta)))
    send_model(inprocess_client, small_model)
    for m in others:
        send_model(inprocess_client, m)
    assert not any(inprocess_client.run(has_model, small_model.fingerprint).values())
    send_model(inprocess_client, small_model)
    assert all(inprocess_client.run(has_model, small_model.fingerprint).values())


@pytest.mark.parametrize(
    "config, preload, argv",
    [
        ({}, ["velcro_ref.dask_tasks"], None),
        ({"distributed.worker.preload": "mypre"}, ["mypre", "velcro_ref.dask_tasks"], None),  # as an env var gives
        (
            {"distributed.worker.preload": ["a", "b"], "distributed.worker.preload-argv": [["--x"], []]},
            ["a", "b", "velcro_ref.dask_tasks"],
            [["--x"], [], []],
        ),
    ],
)
def test_the_local_workers_preload_adds_to_the_users_own(config, preload, argv):
    """A preload given as one string was split into letters, and per-preload arguments lost their match."""
    import dask

    from velcro_ref.distributed import _with_preload

    with dask.config.set(config):
        kw = _with_preload(dask, "velcro_ref.dask_tasks")
    assert kw["preload"] == preload
    assert kw.get("preload_argv") == argv


class _Workers:
    """A client's `run` as a cluster answers it: per worker, or failing as a worker without the function."""

    def __init__(self, answer):
        self.answer = answer

    def run(self, function, *args):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_workers_of_other_or_older_sources_are_one_cluster_error():
    """An older worker has no package_sources at all: its AttributeError was a 43-line traceback."""
    from velcro_ref.distributed import _check_sources
    from velcro_ref.errors import ClusterError

    _check_sources(_Workers({"tcp://w1": "a" * 64, "tcp://w2": "a" * 64}), "a" * 64)
    with pytest.raises(ClusterError, match="tcp://w2 run velcro_ref of other sources"):
        _check_sources(_Workers({"tcp://w1": "a" * 64, "tcp://w2": "b" * 64}), "a" * 64)
    missing = AttributeError("Can't get attribute 'package_sources' on <module 'velcro_ref.dask_tasks'>")
    with pytest.raises(ClusterError, match="a worker runs velcro_ref of other sources.*package_sources"):
        _check_sources(_Workers(missing), "a" * 64)
    with pytest.raises(ClusterError, match="the workers cannot import velcro_ref"):
        _check_sources(_Workers(Exception("ModuleNotFoundError(\"No module named 'velcro_ref'\")")), "a" * 64)


def test_the_causes_of_an_error_are_one_line_even_when_they_loop():
    a, b = RuntimeError("Nanny failed to start."), OSError("the worker process died")
    a.__cause__, b.__cause__ = b, a
    assert _causes(a) == "Nanny failed to start: the worker process died"
    c = OSError("in <TCP ConnectionPool.register_worker_plugin>: Stream is closed")
    c.__cause__ = OSError("Stream is closed")
    assert _causes(c) == "in <TCP ConnectionPool.register_worker_plugin>: Stream is closed"


def test_a_scheduler_without_workers_is_one_error_line(velcro, tmp_path, small_model_file, images_file):
    cluster = RealCluster(tmp_path, n_workers=0)
    try:
        args = ["profile", small_model_file, "--images", images_file, "-o", tmp_path / "never.h5"]
        res = velcro(*args, "--scheduler", cluster.address, "--connect-timeout", "2")
        res.error_line(f"the Dask scheduler at {cluster.address} has no workers", code=1)
    finally:
        cluster.close()
    assert not (tmp_path / "never.h5").exists()


def test_a_shared_data_dir_given_with_a_tilde_is_the_home_folder(monkeypatch, tmp_path):
    """An unexpanded `~/fm` (quoted on the command line) was read as a folder named "~" in the working
    directory by the workers, while a one-process run expanded it."""
    import argparse

    from velcro_ref.distributed import Jobs, Units, shared_data_of

    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(shared_data=True, data_dir="~/fm")
    assert shared_data_of(args, (5, 7, 9), "train").data_dir == str(tmp_path / "fm")
    assert Units(None, "~/fm", shared=True).data_dir == str(tmp_path / "fm")
    assert Jobs(None, "~/fm", shared=True).data_dir == str(tmp_path / "fm")  # sweep's


def test_shared_data_named_by_a_relative_path_is_profiled_by_the_tasks(inprocess_client, tmp_path, monkeypatch):
    """--shared-data --data-dir fm (relative): the profile and the sweep ran in the client, the cluster's
    tasks computed and thrown away (the relative path was compared with the absolute one kept)."""
    from velcro_ref import data, experiments
    from velcro_ref.distributed import Jobs
    from velcro_ref.engine import load_model

    (tmp_path / "fm").symlink_to(data.DEBIAN_DIR)
    monkeypatch.chdir(tmp_path)

    def in_the_client(*args, **kwargs):
        raise AssertionError("profiled in the client")

    monkeypatch.setattr(experiments, "profile_task", in_the_client)
    jobs = Jobs(inprocess_client, data_dir="fm", shared=True, batch=32)
    stats = jobs.profile(load_model(WEIGHTS), (5, 7, 9), 40, data_dir="fm", batch=32)
    assert stats.n_images == 40


def test_sending_a_model_for_the_first_time_logs_no_error_on_the_scheduler(inprocess_client, small_model, capfd):
    """A model never sent to the cluster has no plugin there to unregister: the scheduler logged a
    traceback ("The worker plugin ... does not exist") for the unregistration of one."""
    import logging

    from velcro_ref.dask_tasks import has_model
    from velcro_ref.distributed import send_model

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("distributed.core")
    logger.addHandler(handler)
    try:
        send_model(inprocess_client, small_model)
    finally:
        logger.removeHandler(handler)
    assert all(inprocess_client.run(has_model, small_model.fingerprint).values())
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    assert "does not exist" not in capfd.readouterr().err
