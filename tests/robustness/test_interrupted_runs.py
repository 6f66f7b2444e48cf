"""Nothing lost: a real signal to a real `velcro` process leaves the previous file or a complete new one under
the final name, never part of one; `profile --resume` continues from its checkpoint to the uninterrupted result."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from robust_util import ROOT, zoo_graph

from velcro_ref import data
from velcro_ref.engine import load_model
from velcro_ref.stats import load_stats, save_stats

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST is not installed")


def start(*args):
    """Start `velcro ARGS`; stderr goes to a temporary file (a pipe nobody reads could fill and block it)."""
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        text=True,
        cwd=ROOT,
    )
    proc.err_file = err
    proc.started = time.monotonic()
    return proc


def stderr_of(proc):
    f = getattr(proc, "err_file", None)
    if f is None:
        return ""
    f.seek(0)
    return f.read()


def wait_for(condition, proc, timeout=60.0, what="condition"):
    """Poll until condition() holds; fail if the process ends first (the run was too short to interrupt)."""
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{stderr_of(proc)}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def stop(proc, sig):
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc.returncode, stderr_of(proc)


def cpu_seconds(proc):
    """CPU time the process has used so far (Linux /proc; elsewhere wall time since the test began)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return time.monotonic() - proc.started


def digest(path) -> str:
    """sha256 of a file: compared instead of the bytes, so a failure reports two short strings."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


@pytest.fixture(scope="module")
def long_images(tmp_path_factory):
    """6400 images: at 8 per batch, long enough to interrupt on a loaded machine (an uninterrupted run
    took about 2 s of CPU after start-up) and quick to finish."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("long") / "long.npz"
    np.savez(path, x=rng.standard_normal((6400, 3, 16, 16)).astype(np.float32), y=np.arange(6400) % 4)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, model_file, long_images):
    from velcro_ref import cli

    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert cli.main(["profile", str(model_file), "--images", str(long_images), "-o", str(out), "--batch", "8"]) == 0
    return load_stats(out)


def assert_same_stats(got, want, rtol):
    """Equal counts and tensor ranges (each sample's activations are the same bits in any batch); the other
    fields equal within rtol of each field's largest magnitude on the site (0: the same bits)."""
    assert (got.n_images, got.classes, got.fingerprint) == (want.n_images, want.classes, want.fingerprint)
    assert got.ranges == want.ranges
    assert set(got.sites) == set(want.sites)
    for name, g in got.sites.items():
        w = want.sites[name]
        np.testing.assert_array_equal(g.count, w.count, err_msg=f"{name}.count")
        for fld in ("mean", "m2", "min", "max"):
            a, b = getattr(g, fld), getattr(w, fld)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=f"{name}.{fld}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_profile_keeps_previous_file_and_resume_equals_uninterrupted_run(
    velcro, tmp_path, model_file, long_images, stats_file, uninterrupted, sig
):
    out = tmp_path / "s.h5"
    partial = tmp_path / "s.h5.partial"
    out.write_bytes(stats_file.read_bytes())
    previous = digest(out)
    proc = start("profile", model_file, "--images", long_images, "-o", out, "--batch", "8", "--checkpoint-every", "5")
    # the signal follows the process's own progress: its first checkpoint (40 of 6400 images)
    wait_for(partial.exists, proc, what="the first checkpoint")
    code, err = stop(proc, sig)
    assert digest(out) == previous  # the final name still holds the previous file
    if sig == signal.SIGTERM:
        assert code == 143 and "Traceback" not in err and "error: terminated" in err, err
        assert leftovers(tmp_path) == []  # cleanup ran: no temporary file left behind
    model = load_model(model_file)
    done = load_stats(partial, model)  # the checkpoint is a whole file
    assert 0 < done.n_images < 6400 and done.n_images % 40 == 0

    res = velcro("profile", model_file, "--images", long_images, "-o", out, "--batch", "8", "--resume")
    assert res.code == 0, res.err
    assert f"resuming from {partial}: {done.n_images} of 6400 images done" in res.out
    assert not partial.exists()
    # same batches as the uninterrupted run, the checkpoint's float64 fields stored exactly: the same bits
    assert_same_stats(load_stats(out, model), uninterrupted, rtol=0)


def test_resume_with_another_batch_size_equals_uninterrupted_run(
    velcro, tmp_path, model_file, long_images, uninterrupted
):
    out = tmp_path / "s.h5"
    proc = start("profile", model_file, "--images", long_images, "-o", out, "--batch", "8", "--checkpoint-every", "3")
    wait_for((tmp_path / "s.h5.partial").exists, proc, what="the first checkpoint")
    stop(proc, signal.SIGKILL)
    assert not out.exists()
    # as a checkpoint written on workers holds it (docs/distributed.md): the finished file must not
    partial = tmp_path / "s.h5.partial"
    done = load_stats(partial)
    done.provenance = {**done.provenance, "checkpoint": {"images": done.n_images, "shards": 1}}
    save_stats(done, partial)
    res = velcro("profile", model_file, "--images", long_images, "-o", out, "--batch", "40", "--resume")
    assert res.code == 0, res.err
    assert not {"checkpoint", "images_digest"} & set(load_stats(out).provenance)
    # other batches: the same activations (test_determinism), their moments merged in other groups (float64)
    assert_same_stats(load_stats(out), uninterrupted, rtol=1e-12)


def test_resume_takes_the_same_images_named_by_another_path_and_class_order(
    velcro, tmp_path, model_file, long_images, uninterrupted
):
    """The checkpoint's digest of its images decides: ./alias.npz (a link to the same file) and the classes
    listed in another order are the same image set, which a comparison of their names refused."""
    out = tmp_path / "s.h5"
    proc = start("profile", model_file, "--images", long_images, "-o", out, "--batch", "8", "--checkpoint-every", "3")
    wait_for((tmp_path / "s.h5.partial").exists, proc, what="the first checkpoint")
    stop(proc, signal.SIGKILL)
    alias = tmp_path / "alias.npz"
    alias.symlink_to(long_images)
    args = ("--images", alias, "--classes", "3,2,1,0", "-o", out, "--batch", "8", "--resume")
    res = velcro("profile", model_file, *args)
    assert res.code == 0, res.err
    assert "resuming from" in res.out
    got = load_stats(out)
    assert got.classes == (3, 2, 1, 0)  # as a fresh run with these options writes them
    got.classes = uninterrupted.classes
    assert_same_stats(got, uninterrupted, rtol=0)


def test_resume_refuses_a_checkpoint_of_another_image_set(velcro, tmp_path, model_file, images_file, stats_file):
    out = tmp_path / "s.h5"
    (tmp_path / "s.h5.partial").write_bytes(stats_file.read_bytes())  # 40 images of images_file
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones((80, 3, 16, 16), np.float32), y=np.zeros(80, np.int64))
    velcro("profile", model_file, "--images", other, "-o", out, "--resume").error_line("s.h5.partial")


def test_resume_refuses_a_checkpoint_whose_images_the_file_no_longer_holds(velcro, tmp_path, model_file, long_images):
    """The same file name and classes, other images in it now: the checkpoint's digest of the images it
    holds tells them apart (the name alone would resume and mix two image sets, exit 0)."""
    images = tmp_path / "x.npz"
    images.write_bytes(long_images.read_bytes())
    out = tmp_path / "s.h5"
    proc = start("profile", model_file, "--images", images, "-o", out, "--batch", "8", "--checkpoint-every", "3")
    wait_for((tmp_path / "s.h5.partial").exists, proc, what="the first checkpoint")
    stop(proc, signal.SIGKILL)
    x = np.load(long_images)["x"]
    x[5, 0, 0, 0] += 1.0  # one pixel of an image the checkpoint holds
    np.savez(images, x=x, y=np.arange(6400) % 4)
    res = velcro("profile", model_file, "--images", images, "-o", out, "--batch", "8", "--resume")
    res.error_line("s.h5.partial: checkpoint of other images than the first", "the file changed")
    assert not out.exists() and (tmp_path / "s.h5.partial").exists()


def test_resume_refuses_a_checkpoint_without_the_digest_of_its_images(velcro, tmp_path, model_file, images_file):
    out = tmp_path / "s.h5"
    assert velcro("profile", model_file, "--images", images_file, "-o", out).code == 0
    partial = tmp_path / "s.h5.partial"
    partial.write_bytes(out.read_bytes())  # a finished file: no images_digest, as an older version's checkpoint
    res = velcro("profile", model_file, "--images", images_file, "-o", out, "--resume")
    res.error_line(f"error: {partial}: checkpoint without the digest of its images")


def test_resume_refuses_a_checkpoint_of_more_images_than_the_set(velcro, tmp_path, model_file, images_file):
    out = tmp_path / "s.h5"
    assert velcro("profile", model_file, "--images", images_file, "-o", out).code == 0
    partial = tmp_path / "s.h5.partial"
    partial.write_bytes(out.read_bytes())  # same image set and classes, all 40 images done
    res = velcro("profile", model_file, "--images", images_file, "--samples", "20", "-o", out, "--resume")
    res.error_line(f"error: {partial}: checkpoint holds 40 images, the image set has only 20")
    assert partial.exists()


def test_kill_during_an_atomic_write_never_leaves_part_of_a_file(tmp_path):
    """A writer saving a 15 MB stats file in a loop, killed at several moments: the final name holds nothing
    or a whole file, whatever the moment."""
    script = (
        "import sys, numpy as np\n"
        "from velcro_ref.stats import SiteStats, Stats, save_stats\n"
        "rng = np.random.default_rng(0)\n"
        "s = Stats('fp', {'a': SiteStats.of_batch(rng.standard_normal((2, 16, 128, 128)))}, (1,), 2, 'x')\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    save_stats(s, sys.argv[1])\n"
    )
    out = tmp_path / "big.h5"
    for delay in (0.0, 0.03, 0.11):
        proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout.readline() == "ready\n"
        wait_for(lambda: leftovers(tmp_path), proc, what="a write in progress")
        time.sleep(delay)
        stop(proc, signal.SIGKILL)
        if out.exists():
            assert load_stats(out).sites["a"].m2.shape == (16, 128, 128)
        for name in leftovers(tmp_path):
            (tmp_path / name).unlink()


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    from velcro_ref.model_io import save_model

    path = tmp_path_factory.mktemp("fashion") / "tiny.h5"
    save_model(zoo_graph("resnet18", input_size=28, in_channels=1, width=0.125, num_classes=10), path)
    return path


@needs_fashion
def test_killed_sweep_keeps_the_previous_result(tmp_path, fashion_model):
    out = tmp_path / "sweep.json"
    plot = tmp_path / "sweep.png"
    out.write_text('{"previous": true}\n')
    plot.write_bytes(b"previous plot")
    proc = start(
        "sweep", fashion_model, "--classes", "5,7,9", "--ratios", "0:0.95:0.01", "--profile-samples", "1000",
        "--samples", "3000", "-o", out, "--plot", plot,
    )  # fmt: skip
    # start-up (imports, data) takes about 1 s of CPU; an uninterrupted run took 22 s of CPU
    wait_for(lambda: cpu_seconds(proc) >= 2.5, proc, what="2.5 s of CPU time")
    stop(proc, signal.SIGKILL)
    assert out.read_text() == '{"previous": true}\n'
    assert digest(plot) == hashlib.sha256(b"previous plot").hexdigest()


def is_whole(path):
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".json":
        json.loads(data)
        return True
    return data.endswith(b"\n")


@needs_fashion
def test_killed_demo_keeps_finished_files_whole_and_the_rest_previous(tmp_path, fashion_model):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tiny.h5").write_bytes(fashion_model.read_bytes())
    (weights / "manifest.json").write_text(
        json.dumps({"format": "velcro-weights/1", "models": [{"name": "tiny", "file": "tiny.h5"}]})
    )
    report = tmp_path / "report"
    report.mkdir()
    names = [
        "report.json", "summary.md", "index.html", "tiny_footwear.json", "tiny_easy_pair.json",
        "locality_tiny_footwear.png", "sweep_tiny_footwear.png", "accelerator_tiny_footwear.png",
        "locality_tiny_easy_pair.png", "sweep_tiny_easy_pair.png", "accelerator_tiny_easy_pair.png",
    ]  # fmt: skip
    for name in names:
        (report / name).write_text("previous\n")
    proc = start(
        "demo", "-o", report, "--weights", weights, "--quick", "--tasks", "footwear,easy_pair",
        "--profile-samples", "300", "--samples", "300", "--policies", "uniform", "--ratios", "0,0.3,0.6",
    )  # fmt: skip
    first = report / "tiny_footwear.json"
    wait_for(lambda: first.read_bytes() != b"previous\n", proc, what="the first task's results")
    stop(proc, signal.SIGKILL)
    assert json.loads(first.read_text())["classes"] == [5, 7, 9]
    assert (report / "report.json").read_text() == "previous\n"  # written last
    assert (report / "index.html").read_text() == "previous\n"
    for name in names:
        path = report / name
        assert path.read_text(errors="replace") == "previous\n" or is_whole(path), name
    assert sorted(p.name for p in report.iterdir() if not p.name.endswith(".part")) == sorted(names)


@pytest.mark.parametrize("lose", ["all", "one", "extra"])
def test_resume_refuses_a_checkpoint_without_every_tensor_range(velcro, tmp_path, model_file, images_file, lose):
    """A checkpoint whose `ranges` lacked a tensor resumed with exit 0, and that tensor's range covered
    only the images after the checkpoint (`quantize` then made another int8 model)."""
    half = tmp_path / "half.h5"
    assert velcro("profile", model_file, "--images", images_file, "--samples", "20", "-o", half).code == 0
    done = load_stats(half)
    x = np.load(images_file)["x"]
    done.provenance = {**done.provenance, "images_digest": data.digest(np.ascontiguousarray(x[:20], np.float32))}
    if lose == "all":
        done.ranges = {}
    elif lose == "one":
        done.ranges.pop(next(iter(done.ranges)))
    else:
        done.ranges["no_such_tensor"] = (0.0, 1.0)
    partial = tmp_path / "s.h5.partial"
    save_stats(done, partial)
    res = velcro("profile", model_file, "--images", images_file, "-o", tmp_path / "s.h5", "--resume")
    if lose == "extra":
        res.error_line(f"error: {partial}: checkpoint with a range of no tensor of the model, 'no_such_tensor'")
    else:
        res.error_line(f"error: {partial}: checkpoint without the range of '")
    assert not (tmp_path / "s.h5").exists()
