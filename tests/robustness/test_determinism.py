"""Determinism: the same model, input and masks give bit-identical outputs across runs and processes, and
per-sample outputs do not depend on the batch size (within 1e-6 relative)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from robust_util import NodeOutputs, velcro_process, zoo_graph

from velcro_ref.engine import Model, load_model
from velcro_ref.errors import UsageError
from velcro_ref.masks import MaskSet, build_masks, load_masks, uniform_ratios
from velcro_ref.stats import FIELDS, collect_stats, load_stats


@pytest.fixture(scope="module")
def x_file(tmp_path_factory, images):
    path = tmp_path_factory.mktemp("det") / "x.npy"
    np.save(path, images[0][:12])
    return path


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_outputs_are_bit_identical_across_processes_and_thread_counts(tmp_path, model_file, mask_file, x_file, masked):
    extra = ["--masks", mask_file] if masked else []
    outs = []
    for i, threads in enumerate(("1", "2")):
        y = tmp_path / f"y{i}.npy"
        env = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
        res = velcro_process("infer", model_file, "--input", x_file, "-o", y, *extra, env=env)
        assert res.code == 0, res.err
        outs.append(np.load(y))
    in_process = load_model(model_file).run(np.load(x_file), masks=load_masks(mask_file) if masked else None)
    assert outs[0].tobytes() == outs[1].tobytes() == in_process.tobytes()


def test_repeated_runs_in_one_process_are_bit_identical(model_file, mask_file, images):
    model = load_model(model_file)
    masks = load_masks(mask_file, model)
    x = images[0]
    first_dense, first_masked, first_small = model.run(x), model.run(x, masks=masks), model.run(x[:5])
    for _ in range(2):
        assert model.run(x, masks=masks).tobytes() == first_masked.tobytes()
        assert model.run(x[:5]).tobytes() == first_small.tobytes()  # other buffer shapes in between
        assert model.run(x).tobytes() == first_dense.tobytes()


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_per_sample_outputs_do_not_depend_on_batch_size(model_file, mask_file, images, masked):
    model = load_model(model_file)
    masks = load_masks(mask_file, model) if masked else None
    x = images[0]
    whole = model.run(x, masks=masks)
    for batch in (1, 3, 16):
        parts = np.concatenate([model.run(x[i : i + batch], masks=masks) for i in range(0, len(x), batch)])
        assert np.array_equal(parts, whole), f"batch {batch}: {np.max(np.abs(parts - whole)):.3g}"  # the same bits


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_a_run_in_sub_batches_gives_the_bits_and_macs_of_one_run(name, small_graph, monkeypatch):
    """A run on more images than `Model.sub_batch` runs them in sub-batches (of sizes one apart,
    the buffers made for the first): every output bit and the MACs executed are those of one run,
    dense and masked, and runs of other sizes in between (other buffer shapes, masks and constants
    written again) change nothing. GoogLeNet: on sub-batches of one image its concats' inputs
    are written into the concat's channels."""
    graph = small_graph if name == "resnet18" else zoo_graph("googlenet", input_size=32, width=0.25, num_classes=10)
    model = Model(graph)
    x = np.random.default_rng(3).standard_normal((23, *model.input_shape)).astype(np.float32)
    stats = collect_stats(model, x, batch=8)
    masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
    sizes, run = [], model._run
    monkeypatch.setattr(model, "_run", lambda xs, *a: (sizes.append(len(xs)), run(xs, *a))[1])
    for m in (None, masks, None):
        model.sub_batch = len(x)
        whole, macs = model.run(x, masks=m), dict(model.last_macs)
        assert whole.shape[0] == len(x) and set(macs) == set(model.layer_macs())
        for sub, want in ((1, [1] * 23), (4, [4] * 5 + [3]), (6, [6] * 3 + [5]), (22, [12, 11])):
            model.sub_batch = sub
            sizes.clear()
            assert model.run(x, masks=m).tobytes() == whole.tobytes(), sub
            assert sizes == want
            assert model.last_macs == macs, sub
            assert model.run(x[:5], masks=None if m is not None else masks).shape[0] == 5  # other buffers
            assert model.run(x[2:7], masks=m).tobytes() == whole[2:7].tobytes(), sub


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, None, "4"])
def test_a_sub_batch_other_than_a_positive_int_is_refused(small_graph, bad):
    model = Model(small_graph)
    with pytest.raises(UsageError, match="sub_batch: expects a positive number of images"):
        model.sub_batch = bad
    assert model.sub_batch >= 1


def test_a_model_without_nodes_returns_its_input_in_sub_batches_or_not():
    from velcro_ref import graph as G

    model = Model(G.Graph(nodes=(), input_shape=(1, 4, 4), output=G.INPUT))
    x = np.arange(7 * 16, dtype=np.float32).reshape(7, 1, 4, 4)
    for sub in (64, 2):
        model.sub_batch = sub
        assert model.run(x).tobytes() == x.tobytes()


def test_profile_and_compress_are_reproducible(velcro, tmp_path, model_file, images_file):
    for run in ("a", "b"):
        res = velcro("profile", model_file, "--images", images_file, "-o", tmp_path / f"s_{run}.h5", "--batch", "7")
        assert res.code == 0, res.err
        res = velcro("compress", tmp_path / f"s_{run}.h5", "--ratio", "0.4", "-o", tmp_path / f"m_{run}.h5")
        assert res.code == 0, res.err
    sa, sb = load_stats(tmp_path / "s_a.h5"), load_stats(tmp_path / "s_b.h5")
    for site in sa.sites:
        for fld in FIELDS:
            assert getattr(sa.sites[site], fld).tobytes() == getattr(sb.sites[site], fld).tobytes()
    ma, mb = load_masks(tmp_path / "m_a.h5"), load_masks(tmp_path / "m_b.h5")
    for site, (mask, const) in ma.sites.items():
        assert mask.tobytes() == mb.sites[site][0].tobytes() and const.tobytes() == mb.sites[site][1].tobytes()


def test_alternating_mask_sets_match_a_fresh_model(small_graph, images):
    """A model keeps what it derived from the last MaskSet, and which skipped conv outputs its
    buffers hold as 0; after switching masks, batch sizes or to dense, every node's output
    (skipped elements included, as golden vectors show them) must be what a fresh model gives."""
    model = Model(small_graph)
    x = images[0][:9]
    stats = collect_stats(model, images[0], batch=16)
    sets = [build_masks(stats, uniform_ratios(stats, r), {"name": "uniform", "ratio": r}) for r in (0.3, 0.6)]
    order = [sets[0], sets[1], None, sets[1], sets[0], sets[0], None, sets[0]]
    for i, masks in enumerate(order):
        xb = x[:4] if i == 5 else x
        got, want = NodeOutputs(), NodeOutputs()
        model.run(xb, masks=masks, observer=got)
        Model(small_graph).run(xb, masks=masks, observer=want)
        assert got.digests() == want.digests(), f"run {i}"


def test_mask_arrays_are_read_only_once_run(small_graph, images):
    model = Model(small_graph)
    stats = collect_stats(model, images[0], batch=16)
    masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
    model.run(images[0][:2], masks=masks)
    mask, const = next(iter(masks.sites.values()))
    with pytest.raises(ValueError, match="read-only"):
        mask[...] = False
    with pytest.raises(ValueError, match="read-only"):
        const[...] = 0.0


def test_a_site_added_or_removed_after_a_run_is_seen(small_graph, images):
    """The same MaskSet object with a site more or a site less must not reuse the plan of its
    earlier run."""
    model = Model(small_graph)
    x = images[0][:2]
    names = list(model.sites)
    first, last = names[0], names[-1]
    shapes = model.sites
    masks = MaskSet(model.fingerprint, {first: (np.zeros(shapes[first], bool), np.zeros(shapes[first], np.float32))})
    model.run(x, masks=masks)
    masks.sites[last] = (np.ones(shapes[last], bool), np.full(shapes[last], 3.0, np.float32))
    assert model.run(x, masks=masks).tobytes() == Model(small_graph).run(x, masks=masks).tobytes()
    del masks.sites[last]
    assert model.run(x, masks=masks).tobytes() == Model(small_graph).run(x, masks=masks).tobytes()


def test_runs_on_one_model_from_two_python_threads_give_the_bits_of_lone_runs():
    """Runs on one Model share its buffers; from two threads (Jupyter, a thread pool) they take
    turns, so each output is the lone run's (two threads once wrote into each other's buffers)."""
    from concurrent.futures import ThreadPoolExecutor

    from robust_util import ROOT

    model = load_model(ROOT / "weights" / "resnet18.h5")
    xs = [np.random.default_rng(i).standard_normal((4, *model.input_shape), dtype=np.float32) for i in range(16)]
    alone = [model.run(x) for x in xs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(model.run, xs))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


FP_ENV = r"""
import ctypes, hashlib, json, platform, sys, threading
import numpy as np
import velcro_ref
from velcro_ref import cli
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import import_onnx
from velcro_ref.zoo import build_zoo

libm = ctypes.CDLL("libm.so.6")
mode, when, weights, folder = sys.argv[1:5]


def environment():
    env = ctypes.create_string_buffer(64)
    assert libm.fegetenv(env) == 0
    return env


def set_mode():
    if mode == "upward":
        assert libm.fesetround(0x800) == 0  # FE_UPWARD on x86-64
    elif mode == "ftz_daz":  # as a library built with -Ofast does at load: MXCSR's FTZ and DAZ bits
        env = environment()
        mxcsr = ctypes.c_uint32.from_buffer(env, 28)  # glibc's x86-64 fenv_t: __mxcsr at byte 28
        mxcsr.value |= (1 << 15) | (1 << 6)
        assert libm.fesetenv(env) == 0


rng = np.random.default_rng(0)
x_tiny = (rng.random((8, 2, 6, 6)) * 1e-19).astype(np.float32)  # made here: NumPy rounds in the mode too
params = {
    "c1.w": (rng.standard_normal((4, 2, 3, 3)) * 1e-20).astype(np.float32),
    "c2.w": (rng.standard_normal((3, 4, 3, 3)) * 1e29).astype(np.float32),
}
zoo = build_zoo("mobilenet_v2", input_size=32, in_channels=3, num_classes=10, width=0.25, seed=1)
x_zoo = rng.random((4, 3, 32, 32)).astype(np.float32)
export_onnx(zoo, folder + "/zoo.onnx")
googlenet = velcro_ref.load_model(weights + "/googlenet.h5")  # sites of 1960 elements: 10% is 196
x_g, _ = velcro_ref.task_images(googlenet, (5, 7, 9), "train", 8)
velcro_ref.save_stats(velcro_ref.profile(googlenet, x_g), folder + "/g.stats.h5")
int8_stats = velcro_ref.profile(velcro_ref.load_model(weights + "/resnet18_int8.h5"), x_g)
if when in ("before", "pool"):
    set_mode()
import numba


@numba.njit(parallel=True)
def total(n):
    s = 0
    for i in numba.prange(n):
        s += i
    return s


if when == "pool":  # another library's parallel Numba code starts the pool: its threads inherit the mode
    total(1000)
# subnormal intermediates: 1e-19 inputs times 1e-20 weights, then scaled up by 1e29
tiny = Model(
    Graph(
        (
            Node("c1", "conv2d", (INPUT,), {"out_channels": 4, "kernel": 3, "pads": 1}, {"weight": "c1.w"}),
            Node("r", "relu", ("c1",)),
            Node("c2", "conv2d", ("r",), {"out_channels": 3, "kernel": 3}, {"weight": "c2.w"}),
        ),
        (2, 6, 6),
        "c2",
        params,
    )
)
float_model = velcro_ref.load_model(weights + "/resnet18.h5")
int8_model = velcro_ref.load_model(weights + "/resnet18_int8.h5")
x, _ = velcro_ref.task_images(float_model, (5, 7, 9), "test", 16)
int8_masks = velcro_ref.compress(int8_stats, 0.5)
if when in ("after", "thread"):
    tiny.run(np.ones((1, 2, 6, 6), np.float32))  # the thread pool starts in the caller's environment
    set_mode()


def outputs():
    before = environment().raw
    cli.main(["compress", folder + "/g.stats.h5", "--ratio", "0.1", "-o", folder + f"/{when}.masks.h5"])
    masks = velcro_ref.load_masks(folder + f"/{when}.masks.h5")
    out = {
    "tiny": tiny.run(x_tiny),
    "images": velcro_ref.task_images(float_model, (5, 7, 9), "test", 16)[0],
    "float": float_model.run(x),
    "int8": int8_model.run(x),
    "int8_masked": int8_model.run(x, masks=int8_masks),  # the masks' constants quantized for the run
    "zoo": Model(zoo).run(x_zoo),  # batch norms folded into the convs as the model is made
    "onnx": Model(import_onnx(folder + "/zoo.onnx")).run(x_zoo),
    "ratio": np.concatenate([masks.sites[s][0].ravel() for s in sorted(masks.sites)]),  # "0.1" read as 0.1
    }
    return out, environment().raw == before


if when == "thread":  # a thread with a pool of its own, started by other code in the caller's environment
    done = []
    worker = threading.Thread(target=lambda: done.append((total(1000), outputs())[1]))
    worker.start()
    worker.join()
    out, kept = done[0]
else:
    out, kept = outputs()
print(json.dumps({
    "digests": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in out.items()},
    "tiny_nonzero": int(np.count_nonzero(out["tiny"])),
    "kept": kept,
}))
"""


def _fp_env_run(mode, when, folder):
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    weights = str(Path(__file__).resolve().parents[2] / "weights")
    folder.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", FP_ENV, mode, when, weights, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"),
    reason="sets MXCSR through glibc's x86-64 fenv_t",
)
@pytest.mark.parametrize("when", ["before", "after", "pool", "thread"])
@pytest.mark.parametrize("mode", ["ftz_daz", "upward"])
def test_results_do_not_depend_on_the_callers_floating_point_environment(mode, when, tmp_path):
    """Flush-to-zero and denormals-are-zero (set by any library built with -Ofast when it loads) made
    a model with subnormal intermediates output zeros, and in the threads that inherited them only
    (half a batch with the flags set after the pool started); rounding upward moved 631 of 1,568
    quantized input codes of the int8 ResNet-18 by one. The engine, the loaders, the importer and the
    public functions compute in C's default environment, and put the caller's back: the same bits as
    a clean process."""
    clean, got = _fp_env_run("none", "before", tmp_path / "clean"), _fp_env_run(mode, when, tmp_path / mode)
    assert clean["tiny_nonzero"] == 8 * 3 * 4 * 4  # the case has teeth: flushed, the subnormal sums give 0
    assert got["digests"] == clean["digests"]
    assert got["kept"] and clean["kept"]


UPWARD_IMPORTS = r"""
import ctypes, importlib, pkgutil, sys
ctypes.CDLL("libm.so.6").fesetround(0x800)  # FE_UPWARD
importlib.import_module(sys.argv[1])  # the caller's first import of the project
for package in ("velcro_ref", "simulator"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if info.name not in ("velcro_ref.launch", "simulator.__main__", "velcro_ref.__main__"):
            importlib.import_module(info.name)
"""


def _float_constants(code):
    for k in code.co_consts:
        if isinstance(k, float):
            yield k
        elif hasattr(k, "co_consts"):
            yield from _float_constants(k)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="FE_UPWARD's value is x86-64's")
@pytest.mark.parametrize("first", ["velcro_ref", "velcro_ref.zoo", "velcro_ref.engine", "simulator"])
def test_modules_imported_under_upward_rounding_keep_their_decimal_constants(tmp_path, first):
    """Python reads a decimal literal in the rounding mode of the moment and keeps the compiled module
    for later processes: imported under upward rounding, the float constants of 8 modules (zoo's
    1/255, quant's 1.0001, intervals' 0.95, ...; literals, and expressions Python folds as it
    compiles) went one ulp up into __pycache__. Modules imported once velcro_ref.fpenv is loaded are
    compiled in the default environment, and both packages load it first: a caller's direct import
    of `velcro_ref.zoo` (or of `engine`, which imports `graph`, `quant` and the kernels) compiled
    them in its own mode."""
    import marshal

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path), "PYTHONPATH": str(root)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", UPWARD_IMPORTS, first], env=env, check=True, timeout=600)
    compiled, differ = 0, []
    for pyc in tmp_path.rglob("*.pyc"):
        source = Path("/", *pyc.relative_to(tmp_path).parent.parts, pyc.name.split(".")[0] + ".py")
        if not any(source.is_relative_to(root / package) for package in ("velcro_ref", "simulator")):
            continue  # the libraries' modules (the venv may lie under root)
        got = list(_float_constants(marshal.loads(pyc.read_bytes()[16:])))
        want = list(_float_constants(compile(source.read_text(), str(source), "exec")))
        compiled += 1
        if got != want:
            differ.append(source.name)
    assert compiled > 50
    assert differ == [], sorted(differ)
