"""Hostile use of the real `velcro` command, one row per case: its set-up, the exit code, a fragment of the
one error line, and the input files that must be byte-for-byte what they were (compared by digest).

Outputs never destroy inputs; every argument is checked before any work; special files, empty names and
values out of range are one-line errors (exit 2 for usage, 1 for bad data), never a traceback.
"""

import hashlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from robust_util import ROOT, velcro_process, zoo_graph

import simulator
import velcro_ref
from velcro_ref.masks import build_masks, save_masks, uniform_ratios
from velcro_ref.model_io import save_model
from velcro_ref.onnx_export import export_onnx
from velcro_ref.stats import SiteStats, Stats, collect_stats, save_stats


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_graph, model, images):
    """A folder of inputs: model, ONNX, images, one batch, stats, masks, a ratios file, an accelerator file."""
    d = tmp_path_factory.mktemp("hostile")
    save_model(small_graph, d / "m.h5")
    export_onnx(small_graph, d / "m.onnx")
    np.savez(d / "x.npz", x=images[0], y=images[1])
    np.save(d / "x.npy", images[0][:2])
    stats = collect_stats(model, images[0], batch=16)
    save_stats(stats, d / "s.h5")
    save_stats(stats, d / "s2.h5")
    save_masks(build_masks(stats, uniform_ratios(stats, 0.3), {"name": "uniform"}), d / "k.h5")
    (d / "r.toml").write_text("[ratios]\ndefault = 0.2\n")
    (d / "a.toml").write_text((ROOT / "simulator" / "archs" / "edge16.toml").read_text())
    return d


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


INPUTS = ("m.h5", "m.onnx", "x.npz", "x.npy", "s.h5", "s2.h5", "k.h5", "r.toml", "a.toml")

# (id, argv with {d} for the work folder, exit code, fragment of the error line; None: exit 0 expected)
CASES = [
    # -- outputs never destroy inputs ---------------------------------------------------------------------
    ("infer-o-model", "infer {d}/m.h5 --input {d}/x.npy -o {d}/m.h5", 2, "names the input"),
    ("infer-o-dot-slash-model", "infer {d}/m.h5 --input {d}/x.npy -o {d}/./m.h5", 2, "names the input"),
    ("infer-o-input", "infer {d}/m.h5 --input {d}/x.npy -o {d}/x.npy", 2, "names the input"),
    ("infer-o-masks", "infer {d}/m.h5 --input {d}/x.npy --masks {d}/k.h5 -o {d}/k.h5", 2, "names the input"),
    ("import-onnx-o-onnx", "import-onnx {d}/m.onnx -o {d}/m.onnx", 2, "names the input"),
    ("export-onnx-o-model", "export-onnx {d}/m.h5 -o {d}/m.h5", 2, "names the input"),
    ("profile-o-model", "profile {d}/m.h5 --images {d}/x.npz -o {d}/m.h5", 2, "names the input"),
    ("profile-o-images", "profile {d}/m.h5 --images {d}/x.npz -o {d}/x.npz", 2, "names the input"),
    ("merge-o-first", "stats merge {d}/s.h5 {d}/s2.h5 -o {d}/s.h5", 2, "names the input"),
    ("compress-o-stats", "compress {d}/s.h5 --ratio 0.3 -o {d}/s.h5", 2, "names the input"),
    ("compress-o-ratios", "compress {d}/s.h5 --ratios {d}/r.toml -o {d}/r.toml", 2, "names the input"),
    ("golden-o-input", "golden {d}/m.h5 --input {d}/x.npy -o {d}/x.npy", 2, "names the input"),
    ("simulate-csv-model", "simulate {d}/m.h5 --accel edge16 --csv {d}/m.h5", 2, "names the input"),
    ("simulate-plot-masks", "simulate {d}/m.h5 --masks {d}/k.h5 --accel edge16 --plot {d}/k.h5", 2, "names the input"),
    ("simulate-csv-equals-plot", "simulate {d}/m.h5 --accel edge16 --csv {d}/o.csv --plot {d}/o.csv", 2, "another"),
    ("sweep-o-model", "sweep {d}/m.h5 --classes 1,3 -o {d}/m.h5", 2, "names the input"),
    ("sweep-plot-model", "sweep {d}/m.h5 --classes 1,3 --plot {d}/m.h5", 2, "names the input"),
    ("locality-plot-model", "locality {d}/m.h5 --classes 1,3 --plot {d}/m.h5", 2, "names the input"),
    ("o-directory", "infer {d}/m.h5 --input {d}/x.npy -o {d}", 2, "is a directory"),
    ("o-dev-null", "infer {d}/m.h5 --input {d}/x.npy -o /dev/null", 2, "is a special file"),
    ("o-empty", "infer {d}/m.h5 --input {d}/x.npy -o ''", 2, "expects a file name"),
    ("o-dot", "infer {d}/m.h5 --input {d}/x.npy -o .", 2, "expects a file name"),
    ("o-root", "infer {d}/m.h5 --input {d}/x.npy -o /", 2, "expects a file name"),
    # -- every argument checked before work starts ---------------------------------------------------------
    ("ratios-infinite", "sweep {d}/m.h5 --classes 1,3 --ratios 0:inf:0.1", 2, "--ratios"),
    ("ratios-too-many", "sweep {d}/m.h5 --classes 1,3 --ratios 0:1:1e-9", 2, "at most 1000"),
    ("ratios-zero-step", "sweep {d}/m.h5 --classes 1,3 --ratios 0:1:0", 2, "--ratios"),
    ("threshold-nan", "locality {d}/m.h5 --classes 1,3 --threshold nan", 2, "--threshold"),
    ("threshold-negative", "locality {d}/m.h5 --classes 1,3 --threshold -1", 2, "--threshold"),
    ("tolerance-inf", "sweep {d}/m.h5 --classes 1,3 --tolerance inf", 2, "--tolerance"),
    ("ratio-nan", "compress {d}/s.h5 --ratio nan -o {d}/o.h5", 2, "--ratio"),
    ("samples-zero", "profile {d}/m.h5 --images {d}/x.npz --samples 0 -o {d}/o.h5", 2, "--samples"),
    ("batch-huge", "profile {d}/m.h5 --images {d}/x.npz --batch 99999999 -o {d}/o.h5", 2, "--batch"),
    ("checkpoint-negative", "profile {d}/m.h5 --images {d}/x.npz --checkpoint-every -1 -o {d}/o.h5", 2, "--checkpoint"),
    ("width-zero", "zoo resnet18 --width 0 -o {d}/z.h5", 2, "--width"),
    ("width-inf", "zoo resnet18 --width inf -o {d}/z.h5", 2, "--width"),
    ("seed-negative", "zoo resnet18 --seed -1 -o {d}/z.h5", 2, "--seed"),
    ("width-too-many-parameters", "zoo resnet18 --width 16 -o {d}/z.h5", 2, "choose a smaller width"),
    ("seed-2-64", "zoo resnet18 --seed 18446744073709551616 -o {d}/z.h5", 2, "--seed"),
    ("exclude-unknown", "compress {d}/s.h5 --ratio 0.3 --exclude nosuch -o {d}/o.h5", 2, "nosuch"),
    ("exclude-nothing", "compress {d}/s.h5 --ratio 0.3 --exclude -o {d}/o.h5", 2, "--exclude"),
    ("ratios-and-ratio", "compress {d}/s.h5 --ratios {d}/r.toml --ratio 0.3 -o {d}/o.h5", 2, "--ratios"),
    ("ratios-and-policy", "compress {d}/s.h5 --ratios {d}/r.toml --policy budget -o {d}/o.h5", 2, "--ratios"),
    ("demo-unknown-model", "demo -o {d}/rep --models nosuch", 2, "nosuch"),
    ("demo-unknown-task", "demo -o {d}/rep --tasks nosuch", 2, "nosuch"),
    ("demo-weights-empty", "demo -o {d}/rep --weights ''", 2, "--weights"),
    ("demo-policy-twice", "demo -o {d}/rep --policies uniform,channel,uniform", 2, "policy uniform given twice"),
    ("demo-readme-without-block", "demo -o {d}/rep --readme {d}/r.toml", 2, "no <!-- demo-results:start -->"),
    (
        "images-and-data",
        "profile {d}/m.h5 --images {d}/x.npz --data fashion-mnist --classes 1 -o {d}/o.h5",
        2,
        "not both",
    ),
    ("masks-empty", "infer {d}/m.h5 --input {d}/x.npy --masks ''", 2, "--masks"),
    ("plot-empty", "locality {d}/m.h5 --classes 1,3 --plot ''", 2, "--plot"),
    ("csv-empty", "simulate {d}/m.h5 --accel edge16 --csv ''", 2, "--csv"),
    ("classes-empty", "sweep {d}/m.h5 --classes ''", 2, "--classes"),
    ("zoo-input-too-small", "zoo googlenet --input-size 1 -o {d}/z.h5", 2, "input size 1 is too small for googlenet"),
    ("classes-out-of-range", "eval {d}/m.h5 --data fashion-mnist --classes 5,7,11", 2, "--classes: class 11 out of"),
    ("classes-duplicate", "sweep {d}/m.h5 --classes 5,5", 2, "--classes: duplicate classes: 5"),
    ("classes-unknown-name", "profile {d}/m.h5 --images {d}/x.npz --classes boot -o {d}/o.h5", 2, "unknown class"),
    ("not-a-zip-npz", "profile {d}/m.h5 --images {d}/m.onnx -o {d}/o.h5", 1, "not an .npz"),
    ("fifo-input", "infer {d}/m.h5 --input {d}/fifo", 1, "not a regular file"),
    ("dev-zero-input", "infer {d}/m.h5 --input {d}/zero.npy", 1, "not a regular file"),
    ("huge-npy", "infer {d}/m.h5 --input {d}/huge.npy", 1, "bytes"),
    ("nested-ratios", "compress {d}/s.h5 --ratios {d}/deep.toml -o {d}/o.h5", 2, "nested too deeply"),
    ("nested-arch", "simulate {d}/m.h5 --accel {d}/deep.toml", 1, "deep.toml"),
    ("stats-mean-1e300", "compress {d}/big.h5 --ratio 0.5 -o {d}/o.h5", 1, "beyond the float32 range"),
    ("merge-other-model", "stats merge {d}/s.h5 {d}/other.h5 -o {d}/o.h5", 1, "other.h5"),
    ("merge-count-overflow", "stats merge {d}/many.h5 {d}/many2.h5 -o {d}/o.h5", 1, "more than"),
    ("merge-same-file", "stats merge {d}/s.h5 {d}/./s.h5 -o {d}/o.h5", 2, "the same file as"),
    ("merge-hard-link", "stats merge {d}/s.h5 {d}/s_link.h5 -o {d}/o.h5", 2, "the same file as"),
    # -- an option given twice: its first value would be dropped without a word --------------------------
    ("ratio-twice", "compress {d}/s.h5 --ratio 0.3 --ratio 0.5 -o {d}/o.h5", 2, "--ratio is given more than once"),
    ("accel-twice", "simulate {d}/m.h5 --accel edge16 --accel {d}/a.toml", 2, "--accel is given more than once"),
    # -- numbers that would be wrong -----------------------------------------------------------------------
    ("labels-beyond-int32", "eval {d}/m.h5 --images {d}/big_labels.npz", 1, "holds label 92233720368547758"),
    # -1 as "unlabelled" taken as a class: the stats file written could not be read back
    ("negative-label", "profile {d}/m.h5 --images {d}/neg_labels.npz -o {d}/o.h5", 1, "holds label -1"),
    ("negative-label-chosen-out", "profile {d}/m.h5 --images {d}/neg_labels.npz --classes 1,2 -o {d}/o.h5", 0, None),
    # a big-endian array of the images: the same values (it was refused as dtype >f4)
    ("big-endian-images", "eval {d}/m.h5 --images {d}/big_endian.npz", 0, None),
    ("eval-nan-scores", "eval {d}/nan.h5 --allow-nonfinite --images {d}/x.npz", 1, "NaN scores"),
    # onnxruntime rounds such a pool before adding the zero point (its global average pool); the
    # qavg_pool kernel adds it before: one step apart at exact halves (its ONNX round trip differed)
    ("qavg-pool-whole-input", "infer {d}/qavg.h5 --input {d}/x.npy", 1, "write it as qglobal_avg_pool"),
    ("qglobal-pool-mixed-types", "infer {d}/qgap.h5 --input {d}/x.npy", 1, "one type for every input and the output"),
    # ONNX attributes that change the result here: refused at import, not ignored
    ("onnx-max-pool-storage-order-2", "import-onnx {d}/order2.onnx -o {d}/o.h5", 1, "storage_order=2"),
    ("onnx-dropout-training-ratio-half", "import-onnx {d}/dropout.onnx -o {d}/o.h5", 1, "training_mode is true"),
    # --allow-nonfinite: where a command has it, and where it has nothing to apply to
    ("simulate-nan-model", "simulate {d}/nan.h5 --accel {d}/a.toml", 1, "(use --allow-nonfinite to accept)"),
    ("simulate-nan-model-allowed", "simulate {d}/nan.h5 --accel {d}/a.toml --allow-nonfinite", 0, None),
    (
        "compress-allow-without-model",
        "compress {d}/s.h5 --ratio 0.3 --allow-nonfinite -o {d}/o.h5",
        2,
        "applies to --model",
    ),
    ("no-activation-site", "compress {d}/nosite_stats.h5 --ratio 0.3 -o {d}/o.h5", 1, "no activation site"),
    # -- names the file system takes --------------------------------------------------------------------
    ("long-name", "infer {d}/m.h5 --input {d}/x.npy -o {d}/" + "n" * 250, 0, None),
    ("dot-node-golden", "golden {d}/dots.h5 --input {d}/x.npy -o {d}/g.h5", 0, None),
]


def prepare(d: Path, case: str) -> None:
    """Files a case needs beyond the common inputs."""
    if case == "fifo-input" and not (d / "fifo").exists():
        os.mkfifo(d / "fifo")
    if case == "dev-zero-input" and not (d / "zero.npy").exists():
        os.symlink("/dev/zero", d / "zero.npy")
    if case == "merge-hard-link" and not (d / "s_link.h5").exists():
        os.link(d / "s.h5", d / "s_link.h5")
    if case == "huge-npy":
        with open(d / "huge.npy", "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 224, 224)}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    if case in ("nested-ratios", "nested-arch"):
        (d / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    if case == "stats-mean-1e300":
        stats = _one_site_stats(mean=1e300)
        save_stats(stats, d / "big.h5")
    if case == "merge-other-model":
        other = zoo_graph("resnet18", input_size=16, width=0.125, num_classes=4, seed=9)
        from velcro_ref.engine import Model

        x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
        save_stats(collect_stats(Model(other), x), d / "other.h5")
    if case == "merge-count-overflow":
        save_stats(_one_site_stats(count=2.0**52 + 2), d / "many.h5")
        save_stats(_one_site_stats(mean=1.0, count=2.0**52 + 2), d / "many2.h5")  # other images
    if case.startswith("negative-label"):
        with np.load(d / "x.npz") as f:
            np.savez(d / "neg_labels.npz", x=f["x"], y=np.where(f["y"] == 0, -1, f["y"]).astype(np.int8))
    if case == "big-endian-images":
        with np.load(d / "x.npz") as f:
            np.savez(d / "big_endian.npz", x=f["x"].astype(">f4"), y=f["y"].astype(">i8"))
    if case == "labels-beyond-int32":
        with np.load(d / "x.npz") as f:
            np.savez(d / "big_labels.npz", x=f["x"], y=f["y"].astype(np.uint64) + np.uint64(2**63))
    if case == "eval-nan-scores" or case.startswith("simulate-nan-model"):
        from velcro_ref.graph import Graph
        from velcro_ref.model_io import load_graph

        g = load_graph(d / "m.h5")
        bias = g.params["fc.bias"].copy()
        bias[1] = np.nan
        save_model(Graph(g.nodes, g.input_shape, g.output, {**g.params, "fc.bias": bias}, g.meta), d / "nan.h5")
    if case == "qavg-pool-whole-input":  # written from the format's docs: save_model refuses the graph
        from oracle64 import write_model

        q = {"y_scale": 2.0**-6, "y_zero_point": 5, "dtype": "int8"}
        pool = {"kernel": [16, 16], "stride": [1, 1], "pads": [0, 0, 0, 0], "count_include_pad": False}
        nodes = [
            {"name": "q", "op": "quantize", "inputs": ["input"], "attrs": {**q, "y_scale": 2.0**-7}, "params": {}},
            {"name": "p", "op": "qavg_pool", "inputs": ["q"], "attrs": {**pool, **q}, "params": {}},
            {"name": "out", "op": "dequantize", "inputs": ["p"], "attrs": {}, "params": {}},
        ]
        write_model(d / "qavg.h5", (3, 16, 16), "out", nodes, {})
        with h5py.File(d / "qavg.h5", "r+") as f:
            f.attrs["format_version"] = 2  # a graph of quantized ops
    if case == "qglobal-pool-mixed-types":  # int8 in, uint8 out: save_model refuses the graph
        from oracle64 import write_model

        q = {"y_scale": 2.0**-6, "y_zero_point": 5}
        nodes = [
            {"name": "q", "op": "quantize", "inputs": ["input"], "attrs": {**q, "dtype": "int8"}, "params": {}},
            {"name": "p", "op": "qglobal_avg_pool", "inputs": ["q"], "attrs": {**q, "dtype": "uint8"}, "params": {}},
            {"name": "out", "op": "dequantize", "inputs": ["p"], "attrs": {}, "params": {}},
        ]
        write_model(d / "qgap.h5", (3, 16, 16), "out", nodes, {})
        with h5py.File(d / "qgap.h5", "r+") as f:
            f.attrs["format_version"] = 2  # a graph of quantized ops
    if case.startswith("onnx-"):  # one node on the input, written with onnx's helpers
        from onnx import TensorProto, helper, numpy_helper

        name, node, inits = {
            "onnx-max-pool-storage-order-2": (
                "order2",
                helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], storage_order=2),
                [],
            ),
            "onnx-dropout-training-ratio-half": (
                "dropout",
                helper.make_node("Dropout", ["x", "ratio", "train"], ["y"]),
                [numpy_helper.from_array(np.float32(0.5), "ratio"), numpy_helper.from_array(np.array(True), "train")],
            ),
        }[case]
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        (d / f"{name}.onnx").write_bytes(model.SerializeToString())
    if case == "no-activation-site":
        save_stats(Stats("f" * 64, {}, (), 1, "none"), d / "nosite_stats.h5")
    if case == "dot-node-golden":
        from velcro_ref.graph import Graph, Node

        g = Graph(
            (Node(".", "flatten", ("input",)), Node("a/b", "relu", (".",)), Node("a%2Fb", "relu", ("a/b",))),
            (3, 16, 16),
            "a%2Fb",
        )
        save_model(g, d / "dots.h5")


def _one_site_stats(mean=0.0, count=4.0):
    """Statistics values in [min, max] can have (a reader refuses others): a range wide enough for
    the variances m2 / count <= 7 / 4 at any mean."""
    shape = (2, 2, 2)
    half = max(2.0, abs(mean) * 1e-10)
    site = SiteStats(
        np.full(shape, count),
        np.full(shape, mean),
        np.zeros(shape),
        np.arange(8.0).reshape(shape),
        np.full(shape, mean - half),
        np.full(shape, mean + half),
    )
    return Stats("e" * 64, {"site": site}, (0,), int(count), "test")


@pytest.mark.parametrize("case, argv, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_invocation(work, case, argv, code, fragment):
    prepare(work, case)
    before = {name: digest(work / name) for name in INPUTS}
    args = [a.replace("{d}", str(work)) for a in _split(argv)]
    res = velcro_process(*args, timeout=120)
    assert "Traceback" not in res.err, res.err
    if fragment is None:
        assert res.code == code, res.err
    else:
        res.error_line(fragment, code=code)
    assert {name: digest(work / name) for name in INPUTS} == before  # inputs untouched
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # never replaced, even as root


def test_merging_a_copy_of_a_shard_warns_that_its_images_count_twice(work):
    """A byte-for-byte copy of a shard merged with it counted its images twice without a word (two
    shards of the same images, a data set holding an image twice, give the same figures too: a
    warning, not a refusal)."""
    from velcro_ref.stats import load_stats

    shutil.copyfile(work / "s.h5", work / "s_copy.h5")
    res = velcro_process("stats", "merge", work / "s.h5", work / "s_copy.h5", "-o", work / "o2.h5")
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert f"warning: {work / 's_copy.h5'} holds the same statistics as {work / 's.h5'}" in res.err
    assert load_stats(work / "o2.h5").n_images == 2 * load_stats(work / "s.h5").n_images
    save_stats(_one_site_stats(), work / "other.h5")
    res = velcro_process("stats", "merge", work / "s.h5", work / "other.h5", "-o", work / "o3.h5")
    assert "warning" not in res.err and "stats of model" in res.err  # refused for its model, no warning


def test_merging_a_shard_with_an_earlier_merge_that_holds_it_warns_that_its_images_count_twice(work, images):
    """A merge of a shard with an earlier merge that already holds it counted the shard's images
    twice without a word (the figures differ, so the copy check above does not see it): each
    profile records the digest of its image set, a merge keeps every part's."""
    from velcro_ref.data import digest as images_digest
    from velcro_ref.stats import load_stats

    x, y = images
    np.savez(work / "xa.npz", x=x[:8], y=y[:8])
    np.savez(work / "xb.npz", x=x[8:16], y=y[8:16])
    for part in ("a", "b"):
        res = velcro_process("profile", work / "m.h5", "--images", work / f"x{part}.npz", "-o", work / f"p{part}.h5")
        assert res.code == 0, res.err
    res = velcro_process("stats", "merge", work / "pa.h5", work / "pb.h5", "-o", work / "pab.h5")
    assert res.code == 0 and "warning" not in res.err, res.err  # two image sets: nothing counted twice
    ab = load_stats(work / "pab.h5")
    assert ab.provenance["image_sets"] == [images_digest(x[:8]), images_digest(x[8:16])]
    res = velcro_process("stats", "merge", work / "pab.h5", work / "pa.h5", "-o", work / "twice.h5")
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert f"warning: {work / 'pa.h5'} holds statistics of images that {work / 'pab.h5'} holds too" in res.err
    assert "counts those images twice" in res.err and load_stats(work / "twice.h5").n_images == 24
    other = load_stats(work / "pa.h5")
    other.fingerprint = "f" * 64  # the same images profiled by another model: refused, not warned of
    save_stats(other, work / "pa_other.h5")
    res = velcro_process("stats", "merge", work / "pa.h5", work / "pa_other.h5", "-o", work / "o4.h5")
    assert res.code == 1 and "warning" not in res.err and "stats of model" in res.err, res.err


def _split(argv):
    import shlex

    return shlex.split(argv)


def test_a_node_name_of_dots_and_names_that_differ_only_by_slash_do_not_collide_in_golden(work):
    prepare(work, "dot-node-golden")
    out = work / "g2.h5"
    res = velcro_process("golden", work / "dots.h5", "--input", work / "x.npy", "-o", out)
    assert res.code == 0, res.err
    import h5py

    with h5py.File(out, "r") as f:
        names = sorted(f["nodes"][k].attrs["name"] for k in f["nodes"])
    assert names == sorted([".", "a/b", "a%2Fb"])


def test_a_file_name_that_is_not_utf8_is_written_and_printed(work):
    name = os.fsencode(str(work)) + b"/n\xffx.npy"
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", "infer", str(work / "m.h5"), "--input", str(work / "x.npy"), "-o"]
        + [os.fsdecode(name)],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert b"n\xffx.npy" in res.stdout and b"Traceback" not in res.stderr
    assert np.load(os.fsdecode(name)).shape == (2, 4)


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "1e9", "soon"])
def test_a_load_timeout_out_of_range_is_a_usage_error(work, value):
    res = velcro_process("info", work / "m.h5", env={"VELCRO_LOAD_TIMEOUT_S": value})
    res.error_line("VELCRO_LOAD_TIMEOUT_S", code=2)


@pytest.mark.parametrize("argv", [["info", "m.h5"], ["simulate", "m.h5", "--accel", "edge16"]])
def test_numba_disable_jit_is_a_one_line_usage_error(work, argv):
    """NUMBA_DISABLE_JIT=1 ended every command, `--help` too, in an AttributeError traceback (the
    kernels' cache set-up at import), and the API in one from an LLVM intrinsic run as Python."""
    res = velcro_process(*[work / a if a.endswith(".h5") else a for a in argv], env={"NUMBA_DISABLE_JIT": "1"})
    res.error_line("NUMBA_DISABLE_JIT", code=2)
    assert velcro_process("--help", env={"NUMBA_DISABLE_JIT": "1"}).code == 0
    code = f"from velcro_ref.engine import load_model\nload_model({str(work / 'm.h5')!r})"
    api = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "NUMBA_DISABLE_JIT": "1"}
    )
    assert api.returncode == 1 and api.stderr.strip().splitlines()[-1].startswith(
        "velcro_ref.errors.UsageError: NUMBA_DISABLE_JIT"
    )


@pytest.mark.parametrize(
    "argv", [["info", "m.h5"], ["info", "m.h5", "--json"], ["infer", "m.h5", "--input", "x.npy", "--json"]]
)
def test_a_closed_standard_output_is_a_one_line_usage_error(work, argv):
    """With stdout closed (>&-) `velcro info` exited 0 with its report dropped (print to None writes
    nothing) and `--json` ended in an AttributeError traceback."""
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", *argv],
        cwd=work,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "error: standard output is closed (>&-); to discard the report, send it to /dev/null"


def test_help_under_python_OO_is_the_help_of_a_plain_run():
    """`python -OO` drops docstrings, of which the commands' help is made: every command's summary and
    description were missing."""
    for argv in (["--help"], ["compress", "--help"], ["golden", "--help"], ["simulate", "--help"]):
        runs = [
            subprocess.run([sys.executable, *opt, "-m", "velcro_ref.cli", *argv], capture_output=True, text=True)
            for opt in ([], ["-OO"])
        ]
        assert runs[0].returncode == runs[1].returncode == 0
        assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout) > 500


# A frame of the project's code in a traceback (a path in a message, such as the import cache's KeyError,
# is no frame), except one at line 0 of the package's __init__ or the entry point: their first instruction,
# where Python takes a signal that came while it read the module, before any statement of it runs.
_PKG, _SIM = (re.escape(str(Path(m.__file__).parent)) for m in (velcro_ref, simulator))
_PROJECT_FRAME = re.compile(
    rf'File "(?:{_PKG}|{_SIM})[^"]*", line (?!0, in <module>)'  # past a module's first instruction
    rf'|File "{_PKG}/(?!__init__\.py"|launch\.py")[^"]*", line 0,'  # at that of another module
)


@pytest.mark.parametrize(
    "sig, code, message",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["INT", "TERM"],
)
@pytest.mark.parametrize("entry", ["velcro", "simulator.cli"])  # `velcro info`, `python -m simulator.cli`
def test_a_signal_while_the_command_starts_is_one_line_and_its_exit_code(work, sig, code, message, entry):
    """SIGINT or SIGTERM at moments from interpreter start-up to the run itself. Once the `velcro` entry
    point runs (velcro_ref.launch, before the package's heavy imports), the signal is `error: interrupted`
    and exit 130 (`error: terminated`, 143), never a traceback. Before that only the interpreter's own
    start-up runs (site, .pth files, the import of the package), and a signal there ends as the interpreter
    ends it, with no frame of the project's code in it (`_PROJECT_FRAME`): killed by the signal, or exit 1
    after its "Fatal Python error: init_..." report (init_import_site, init_sys_streams: the last line is the
    KeyboardInterrupt or, seen once, a TypeError the interrupt left in the streams' set-up) or a report whose
    last line is the KeyboardInterrupt ("Failed checking if argv[0] is an import path entry", or the bare
    line alone where C code took the interrupt with no Python frame running). A command that finished
    (exit 0: the signal came after its end, or Python printed an interrupt it could not raise in its
    start-up as "Exception ignored") shows no frame of the project's code either."""
    seen = set()
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5):
        if entry == "velcro":
            argv = [str(Path(sys.executable).with_name("velcro")), "info", str(work / "m.h5")]
        else:  # it ran nothing at first, then took a signal only once the simulator's modules were loaded
            argv = [sys.executable, "-m", "simulator.cli", str(work / "m.h5"), "--accel", "edge16"]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        err = err.decode()
        if proc.returncode == code:
            assert err.strip().splitlines() == [f"error: {message}"], err
        elif proc.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            interpreter = proc.returncode == -sig or (
                proc.returncode == 1
                and (err.startswith("Fatal Python error: init_") or last.startswith("KeyboardInterrupt"))
            )
            assert interpreter and not _PROJECT_FRAME.search(err), (delay, proc.returncode, err)
        else:
            assert not _PROJECT_FRAME.search(err), (delay, err)
        seen.add(proc.returncode)
    assert code in seen  # signals landed while the command ran


def test_the_start_up_classifier_takes_line_0_of_the_entry_modules_only():
    """`_PROJECT_FRAME` itself: the frames it must find and the ones it must let pass."""
    pkg, sim = Path(velcro_ref.__file__).parent, Path(simulator.__file__).parent
    found = [
        f'File "{pkg}/cli.py", line 176, in main',
        f'File "{pkg}/__init__.py", line 33, in <module>',
        f'File "{pkg}/engine.py", line 0, in <module>',
        f'File "{sim}/simulate.py", line 12, in <module>',
    ]
    passed = [
        f'File "{pkg}/__init__.py", line 0, in <module>',
        f'File "{pkg}/launch.py", line 0, in <module>',
        f"KeyError: '{pkg}'",
        'File "/usr/lib/python3.11/signal.py", line 57, in signal',
    ]
    assert [bool(_PROJECT_FRAME.search(t)) for t in found + passed] == [True] * 4 + [False] * 4


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_ignored_when_the_command_starts_stays_ignored(work, sig):
    """A script's background job starts with SIGINT ignored (so the terminal's Ctrl-C leaves it alone): the
    entry point and the command keep it ignored while the command runs, and so for SIGTERM."""
    code = (
        "import json, signal\n"
        f"signal.signal(signal.{sig}, signal.SIG_IGN)\n"
        "import velcro_ref.launch\n"
        f"ignored = [signal.getsignal(signal.{sig}) is signal.SIG_IGN]\n"
        "from velcro_ref import cli, commands_engine\n"
        f"commands_engine.cmd_info = lambda args: ignored.append(signal.getsignal(signal.{sig}) is signal.SIG_IGN)\n"
        f"code = cli.main(['info', {str(work / 'm.h5')!r}])\n"
        f"print(json.dumps([code, *ignored, signal.getsignal(signal.{sig}) is signal.SIG_IGN]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "[0, true, true, true]", proc.stdout + proc.stderr


def test_a_sigterm_once_the_entry_point_is_imported_is_one_line_and_exit_143():
    """The entry point's start-up handler takes SIGTERM as well as SIGINT (before it, SIGTERM's default
    killed the command without its line)."""
    code = "import os, signal\nimport velcro_ref.launch\nos.kill(os.getpid(), signal.SIGTERM)\nprint('not ended')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (143, "error: terminated", "")


def test_an_interrupted_command_ends_without_the_noise_of_objects_finalized_at_exit():
    """Work cut short may leave a library's objects half made (Numba's LLVM modules), whose finalizers
    failed (or whose native teardown aborted) as Python exits; after `error: interrupted` the command
    ends at once and prints nothing more."""
    code = (
        "import sys\n"
        "from velcro_ref import cli, launch\n"
        "cli.main = lambda: 130\n"
        "class HalfMade:\n"
        "    def __del__(self):\n"
        "        raise AttributeError('finalized at exit')\n"
        "kept = HalfMade()\n"
        "launch.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "")


def test_an_interrupt_pending_when_the_entry_point_installs_its_handler_is_one_line_and_exit_130():
    """A SIGINT that came while Python imported velcro_ref.launch is still pending when the module
    installs its handler: `signal.signal` raises it (CPython handles pending signals under the old
    handler first), here made to by a stand-in that raises KeyboardInterrupt as that call would."""
    code = (
        "import _signal\n"
        "def pending(*args):\n"
        "    raise KeyboardInterrupt\n"
        "_signal.signal = pending\n"
        "import velcro_ref.launch\n"
        "print('not interrupted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (130, "error: interrupted", "")


def test_an_interrupt_as_the_command_installs_its_own_handler_is_one_line_and_exit_130(work):
    """cli.main replaces the entry point's handler with its own; an interrupt that Python takes right
    after the new handler is in force (here sent from a stand-in for `signal.signal`, taken where its
    `os.kill` returns, inside the install) is the command's interrupt, not a traceback."""
    code = (
        "import os, signal, sys\n"
        "install = signal.signal\n"
        "def installing(sig, handler):\n"
        "    old = install(sig, handler)\n"
        "    if sig == signal.SIGINT and type(handler).__name__ == '_Signals':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return old\n"
        "signal.signal = installing\n"
        "from velcro_ref.cli import main\n"
        f"sys.exit(main(['info', {str(work / 'm.h5')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (130, "error: interrupted", "")


# Instructions that run no Python code (no call, no method of an object: the maps built of str keys), of
# CPython 3.11 to 3.13
_INERT = {
    "RESUME", "NOP", "CACHE", "LOAD_CONST", "RETURN_CONST", "RETURN_VALUE", "LOAD_NAME", "STORE_NAME", "POP_TOP",
    "PUSH_NULL", "MAKE_FUNCTION", "SET_FUNCTION_ATTRIBUTE", "BUILD_MAP", "BUILD_CONST_KEY_MAP", "BUILD_LIST",
    "BUILD_TUPLE", "LIST_EXTEND", "MAP_ADD", "DICT_UPDATE", "IMPORT_NAME",
}  # fmt: skip


def test_the_entry_point_runs_nothing_before_the_handler_is_in_force():
    """Python takes a pending signal where a call returns: before the handler's install, launch.py runs
    only instructions that call nothing (`_INERT`), and imports only modules already loaded, or a
    signal there would end in a traceback from the project's code."""
    import dis

    source = (ROOT / "velcro_ref" / "launch.py").read_text()
    body = list(dis.get_instructions(compile(source, "launch", "exec")))
    install = next(
        (i for i, ins in enumerate(body) if ins.argval in ("signal", "getsignal") and ins.opname == "LOAD_ATTR"),
        len(body),
    )
    assert install < len(body)  # `_signal.signal` is reached through the module object: LOAD_NAME _signal
    others = [(ins.opname, ins.argval) for ins in body[:install] if ins.opname not in _INERT]
    imports = [ins.argval for ins in body[:install] if ins.opname == "IMPORT_NAME"]
    assert others == [] and set(imports) <= {"_signal", "os", "sys"}, (others, imports)


# Besides `_INERT`, what the package's __init__ runs to read argv[0]: an attribute of the sys module,
# a list sliced and indexed, strings compared, jumps forward (Python takes no signal at any of them)
_READS_ARGV = {
    "LOAD_ATTR", "BUILD_SLICE", "BINARY_SLICE", "BINARY_SUBSCR", "COMPARE_OP", "JUMP_FORWARD",
    "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE",
    "JUMP_IF_TRUE_OR_POP", "JUMP_IF_FALSE_OR_POP", "COPY", "TO_BOOL",
}  # fmt: skip


@pytest.mark.parametrize("argv0", [str(Path(sys.executable).with_name("velcro")), "-m"])
def test_the_package_runs_nothing_in_the_velcro_command_before_the_handler_is_in_force(argv0):
    """The package's __init__, which the `velcro` command (argv[0] its script, or "-m" while `python -m
    velcro_ref.cli` finds the package) runs before launch.py installs the handler: the instructions it
    executes there (traced one by one) call nothing and import only modules already loaded. Elsewhere
    it loads velcro_ref.fpenv (test_determinism's upward-rounding imports)."""
    import dis

    code = compile((ROOT / "velcro_ref" / "__init__.py").read_text(), "__init__", "exec")
    at = {ins.offset: ins for ins in dis.get_instructions(code)}
    ran = []

    def trace(frame, event, arg):
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            ran.append(at[frame.f_lasti])
        return trace

    argv = sys.argv[:]
    sys.argv[:] = [argv0, "info", "m.h5"]
    sys.settrace(trace)
    try:
        exec(code, {"__name__": "traced", "__package__": "velcro_ref"})
    finally:
        sys.settrace(None)
        sys.argv[:] = argv
    others = [(i.opname, i.argval) for i in ran if i.opname not in _INERT | _READS_ARGV]
    attrs = {i.argval for i in ran if i.opname == "LOAD_ATTR"}
    imports = {i.argval for i in ran if i.opname == "IMPORT_NAME"}
    assert len(ran) > 20 and others == [] and attrs == {"argv"} and imports == {"sys"}, (others, attrs, imports)


def test_the_package_lists_its_exports_in_order():
    assert velcro_ref.__all__ == sorted(velcro_ref.__all__) and set(velcro_ref.__all__) <= set(dir(velcro_ref))


@pytest.mark.parametrize("where", ["kill", "before SIGINT"])
def test_cli_main_puts_back_every_handler_and_hook_when_a_handler_put_back_raises(where):
    """cli.main in a caller's process whose SIGTERM handler exits (raises SystemExit), a SIGTERM taken once
    that handler is back: sent where its install returns ("kill": Python may take it there or at a later
    call, in another thread's delivery), or taken as the SIGINT handler's install begins ("before SIGINT",
    that install then not done). The SIGINT handler the process started with and the exception hooks are
    put back too, so the caller's later Ctrl-C still does what it did."""
    code = (
        "import json, os, signal, sys\n"
        "from velcro_ref import cli, commands_engine\n"
        "commands_engine.cmd_info = lambda args: 0\n"
        "def caller_term(signum, frame):\n"
        "    raise SystemExit('caller')\n"
        "signal.signal(signal.SIGTERM, caller_term)\n"
        "started = signal.getsignal(signal.SIGINT)\n"
        "install, taken = signal.signal, []\n"
        "def installing(sig, handler):\n"
        f"    if {where!r} == 'before SIGINT' and sig == signal.SIGINT and not taken and\\\n"
        "            signal.getsignal(signal.SIGTERM) is caller_term:\n"
        "        taken.append(1)\n"
        "        caller_term(signal.SIGTERM, None)\n"
        "    old = install(sig, handler)\n"
        f"    if {where!r} == 'kill' and sig == signal.SIGTERM and handler is caller_term:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return old\n"
        "signal.signal = installing\n"
        "try:\n"
        "    cli.main(['info', 'weights/resnet18.h5'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps([signal.getsignal(signal.SIGINT) is started,\n"
        "                  sys.excepthook is sys.__excepthook__, sys.unraisablehook is sys.__unraisablehook__]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "[true, true, true]", proc.stderr


@pytest.mark.parametrize("second", [True, False], ids=["second-signal", "none"])
def test_a_second_signal_while_an_interrupted_command_s_output_drains_adds_no_line(second):
    """The command was interrupted (its line printed, exit 130 decided) with output left in stdout's
    buffer and a reader that does not read: the flush waits. A SIGTERM then ended it with a second line,
    `error: terminated`, and 143; it ends as the first signal decided, with nothing more. Without a
    second signal it ends so within the quick end's deadline (launch._deadline, 5 s)."""
    code = (
        "import os, sys\n"
        "from velcro_ref import cli, launch\n"
        "def interrupted():\n"
        "    os.write(1, b'x' * (1 << 16))  # the pipe full\n"
        "    sys.stdout.write('more')  # in the buffer\n"
        "    return 130\n"
        "cli.main = interrupted\n"
        "launch.run()\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # 'more' waits in the buffer
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=buffered, **pipes)
    time.sleep(2)  # the flush waits for the reader
    assert proc.poll() is None  # else the pipe took it all (a larger pipe) and the test would test nothing
    if second:
        proc.send_signal(signal.SIGTERM)
    else:
        proc.wait(timeout=30)  # stdout not read
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err, len(out) >= 1 << 16) == (130, b"", True)


def test_an_interrupted_command_removes_the_temporary_file_of_a_write_cut_short_at_its_start(tmp_path):
    """An interrupt taken where atomic_path's __enter__ returns (its temporary file made, the `with` block
    not begun) leaves the file to the generator's finalizer, which the garbage collector or an exit runs:
    the command's quick end must run it too."""
    code = (
        "import sys\n"
        "from velcro_ref import cli, fileio, launch\n"
        "def interrupted():\n"
        f"    cut = fileio.atomic_path({str(tmp_path / 'out.h5')!r})\n"
        "    cut.__enter__()  # the interrupt came here\n"
        "    cut.cycle = cut  # freed by the collector only, as frames and tracebacks keep such objects\n"
        "    print(len(list(__import__('pathlib').Path(sys.argv[1]).iterdir())), flush=True)\n"
        "    return 130\n"
        "cli.main = interrupted\n"
        "launch.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (130, "1", "")  # made, then removed
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_command_with_its_stdout_closed_ends_in_one_line():
    """`velcro ... >&-`: Python's sys.stdout is None; the quick end's flush raised AttributeError, exit 1."""
    code = "import sys\nfrom velcro_ref import cli, launch\ncli.main = lambda: 143\nsys.stdout = None\nlaunch.run()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stderr) == (143, "")


def test_a_signal_after_the_command_finished_keeps_its_output_in_a_file(tmp_path):
    """Once cli.main has put the entry point's handler back, a signal (Python exiting, say) is taken by it:
    one line and 143, and the output the command printed, still in stdout's buffer, reaches the file."""
    code = (
        "import os, signal\nimport velcro_ref.launch\nprint('accuracy 0.9123')\nos.kill(os.getpid(), signal.SIGTERM)\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.run(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=buffered
        )
    assert (proc.returncode, proc.stderr, (tmp_path / "out.txt").read_text()) == (
        143,
        "error: terminated\n",
        "accuracy 0.9123\n",
    )


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_last_stage_of_python_exiting_leaves_the_command_code(sig):
    """After its exit functions Python puts the default action back and frees its modules (a quarter of a
    second with Numba loaded): a signal then killed the finished command without its line. A signal sent
    while the modules are freed (by an object of __main__'s freed with them) now leaves code 0 and no line."""
    code = (
        "import os, signal\n"
        "from velcro_ref import cli, launch\n"
        "class Late:\n"
        "    def __del__(self):\n"
        f"        os.kill(os.getpid(), signal.{sig})\n"
        "        print('after', flush=True)\n"
        "late = Late()\n"
        "cli.main = lambda: 0\n"
        "launch.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "after\n", "")


@pytest.mark.parametrize("merged", [False, True], ids=["own-pipes", "2>&1"])
@pytest.mark.parametrize("where", ["in the command", "at exit", "velcro info --json"])
def test_a_command_held_up_by_a_reader_that_does_not_read_still_ends_on_sigterm(where, merged):
    """stdout a pipe nobody reads: a write inside the command blocks, or the last flush as Python exits.
    A SIGTERM there gave a traceback ("reentrant call" from the handler's own flush) and exit 120, or,
    once the signals were ignored for the teardown, went unheard: the process hung until killed. Under
    2>&1 the signal's line itself blocked on the same pipe, and every later signal went unheard."""
    if where == "velcro info --json":  # 73 KB of JSON, held up in its write
        code = "import sys\nfrom velcro_ref import launch\n"
        code += f"sys.argv = ['velcro', 'info', {str(ROOT / 'weights' / 'googlenet.h5')!r}, '--json']\nlaunch.run()\n"
    else:  # at exit: the pipe filled exactly (64 KiB), 100 bytes left in stdout's buffer for the last flush
        out = "w('x' * 70000)" if where == "in the command" else "w('x' * 65536), sys.stdout.flush(), w('y' * 100)"
        code = "import sys\nfrom velcro_ref import cli, launch\nw = sys.stdout.write\n"
        code += f"cli.main = lambda: ({out}, 0)[-1]\nlaunch.run()\n"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    err_to = subprocess.STDOUT if merged else subprocess.PIPE
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err_to, cwd=ROOT, env=buffered)
    try:
        time.sleep(6 if where == "velcro info --json" else 3)  # imported, written, blocked
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)  # stdout still not read
        err = "" if merged else proc.stderr.read().decode()
    finally:
        proc.kill()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert (proc.returncode, err) == (143, "" if merged else "error: terminated\n")


@pytest.mark.parametrize("reader", ["gone", "/dev/full"])
def test_a_finished_command_whose_last_flush_fails_ends_as_an_error_in_the_command_does(tmp_path, reader):
    """`velcro ... | true` or `> /dev/full`, with the output still in stdout's buffer when Python exits: its
    own flush failed there, with "Exception ignored ... BrokenPipeError" and exit 120. A reader gone is
    exit 1 and no line, a full disk exit 1 and its error's line, as during the command."""
    code = "from velcro_ref import cli, launch\ncli.main = lambda: (print('accuracy 0.9123'), 0)[1]\nlaunch.run()\n"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if reader == "gone":
        r, w = os.pipe()
        os.close(r)
        with os.fdopen(w, "w") as out:
            proc = subprocess.run(
                [sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=buffered
            )
        want = ""
    else:
        with open("/dev/full", "w") as out:
            proc = subprocess.run(
                [sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=buffered
            )
        want = "error: [Errno 28] No space left on device\n"
    assert (proc.returncode, proc.stderr) == (1, want)


def test_after_an_interrupt_the_errors_of_objects_it_left_half_made_are_not_printed(capsys, monkeypatch):
    """An llvmlite object whose __init__ an interrupt cut short fails in its __del__ as the command unwinds
    (AttributeError: no '_as_parameter_'); after the interrupt's line that is noise. Before any interrupt
    such an error is printed as Python prints it."""
    from velcro_ref.cli import _Signals

    class HalfMade:
        def __del__(self):
            raise AttributeError("'ModuleRef' object has no attribute '_as_parameter_'")

    signals = _Signals()
    for seen, printed in ((None, True), (signal.SIGINT, False)):
        signals.seen = seen
        monkeypatch.setattr(sys, "unraisablehook", signals.unraisable)
        HalfMade()  # collected at once: its __del__'s error goes to the hook
        monkeypatch.undo()
        assert ("_as_parameter_" in capsys.readouterr().err) is printed


def test_asyncio_errors_logged_as_an_interrupted_command_unwinds_are_not_printed(monkeypatch, caplog):
    """A Dask cluster cut short by a signal leaves futures whose failure asyncio logs as the command unwinds
    ("Future exception was never retrieved ... CommClosedError"): a traceback before the one line. Once a
    signal came, asyncio's log is dropped; before it, and after the command, it is logged as usual."""
    from velcro_ref import cli, commands_engine

    log = logging.getLogger("asyncio")

    def info(args):
        log.error("before the signal")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            log.error("Future exception was never retrieved")

    monkeypatch.setattr(commands_engine, "cmd_info", info)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["info", str(ROOT / "weights" / "resnet18.h5")]) == 143
        log.error("after the command")
    assert [r.getMessage() for r in caplog.records] == ["before the signal", "after the command"]
    assert log.filters == []


def test_cli_main_in_another_thread_leaves_the_exception_hooks_alone(monkeypatch):
    """Only a run in the main thread sets the hooks, so only it puts them back: a run in another thread that
    put back the hook it found would undo what the main thread set meanwhile."""
    from velcro_ref import cli, commands_engine

    def hook(info):
        pass

    def command(args):
        sys.unraisablehook = hook  # the main thread's run setting its own, meanwhile
        return 0

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(commands_engine, "cmd_info", command)
    worker = threading.Thread(target=cli.main, args=(["info", str(ROOT / "weights" / "resnet18.h5")],))
    worker.start()
    worker.join()
    assert sys.unraisablehook is hook


@pytest.mark.parametrize(
    "sig, code, message",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_swallowed_by_a_weakref_callback_still_stops_the_command(monkeypatch, capsys, sig, code, message):
    """An exception raised inside a weak-reference callback is printed as "Exception ignored" and lost by
    Python (a real `velcro profile` then ran to its end and replaced its output after a SIGTERM). The
    command must stop before the work that follows, end as interrupted or terminated, and leave no signal
    behind for the caller."""
    _signal_in_a_finalizer(monkeypatch, capsys, sig, code, message)


def _signal_in_a_finalizer(monkeypatch, capsys, sig, code, message):
    """`velcro info` whose work first runs a weak-reference callback that sends `sig` to the process:
    the command must end with `code` and the one line `error: message`, well before its 2 s of work."""
    import weakref

    from velcro_ref import cli, commands_engine

    steps = []

    def info(args):
        class Obj:
            pass

        obj = Obj()
        weakref.finalize(obj, lambda: (os.kill(os.getpid(), sig), time.sleep(0.5)))
        del obj  # the callback runs now; the signal lands inside it
        for _ in range(200):  # 2 s of work that the signal must cut short
            time.sleep(0.01)
            steps.append(1)
        return 0

    monkeypatch.setattr(commands_engine, "cmd_info", info)
    got = cli.main(["info", "anything.h5"])
    err = capsys.readouterr().err
    assert got == code and err.strip().splitlines() == [f"error: {message}"], err  # nothing "ignored" printed
    assert len(steps) < 50, len(steps)
    time.sleep(0.1)  # a signal sent again after the command returned would be raised here


def test_an_interrupt_turned_into_another_error_by_a_library_still_ends_in_130(monkeypatch, capsys):
    """NumPy's import of its C extension reports a KeyboardInterrupt that lands inside it as an ImportError
    (seen when SIGINT came while the command was importing its modules); the command must still end as
    interrupted, one line and 130, not with the ImportError's traceback."""
    from velcro_ref import cli, commands_engine

    def info(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except KeyboardInterrupt as e:
            raise ImportError("Importing the numpy C-extensions failed.") from e
        return 0

    monkeypatch.setattr(commands_engine, "cmd_info", info)
    code = cli.main(["info", "anything.h5"])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines() == ["error: interrupted"], err


def test_an_interrupt_that_c_code_prints_itself_is_one_line_and_130(monkeypatch, capfd):
    """NumPy's `import_array`, in the import of an extension built against NumPy (h5py's, Numba's),
    prints the error of NumPy's import itself (PyErr_Print) and raises ImportError: an interrupt
    landing in that import came out as a KeyboardInterrupt traceback before `error: interrupted`
    (seen once, in a clean-clone CI run on a loaded machine). Here the signal lands in code
    that C runs and whose error it prints itself (PyRun_SimpleString, through ctypes)."""
    import ctypes
    import threading

    from velcro_ref import cli, commands_engine

    def info(args):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            if ctypes.pythonapi.PyRun_SimpleString(b"import time\ntime.sleep(3)") != 0:  # printed, cleared
                raise ImportError("numpy._core.multiarray failed to import")
        finally:  # PyRun leaves a flag for an interrupt it printed: the process would end by SIGINT
            ctypes.pythonapi.PyRun_SimpleString(b"pass")  # a run that succeeds clears it
        return 0

    monkeypatch.setattr(commands_engine, "cmd_info", info)
    hook = sys.excepthook
    code = cli.main(["info", "anything.h5"])
    err = capfd.readouterr().err
    assert code == 130 and err.strip().splitlines() == ["error: interrupted"], err
    assert sys.excepthook is hook


def test_a_signal_sent_again_that_lands_inside_the_hook_still_stops_the_command(monkeypatch, capsys):
    """The hook starts a thread to send the signal again; on a busy machine starting it takes longer
    than the 1 ms after which the thread sends, so the signal lands while the hook still runs (made
    certain here by a first start that waits 50 ms). Raised there it would be printed as "Exception ignored
    in sys.unraisablehook" and lost; it must still stop the command, with one error line."""
    import threading

    from velcro_ref import cli

    slow = [True]

    class SlowStart(threading.Timer):
        def start(self):
            super().start()
            if slow:  # the first start only
                slow.pop()
                time.sleep(0.05)

    monkeypatch.setattr(cli.threading, "Timer", SlowStart)
    _signal_in_a_finalizer(monkeypatch, capsys, signal.SIGTERM, 143, "terminated")


def test_a_list_option_given_twice_takes_the_values_of_both(work, model):
    """`--exclude a --exclude b` is `--exclude a b`, and two `--sweep` options sweep both keys (the
    first values were once dropped without a word)."""
    a, b = list(model.sites)[:2]
    for name, argv in (("two.h5", ["--exclude", a, "--exclude", b]), ("one.h5", ["--exclude", a, b])):
        res = velcro_process("compress", work / "s.h5", "--ratio", "0.5", *argv, "-o", work / name)
        assert res.code == 0, res.err
    from velcro_ref.masks import load_masks

    two, one = load_masks(work / "two.h5"), load_masks(work / "one.h5")
    assert two.policy["exclude"] == one.policy["exclude"] == [a, b]
    for s in model.sites:
        np.testing.assert_array_equal(two.sites[s][0], one.sites[s][0])
    assert not two.sites[a][0].any() and not two.sites[b][0].any()
    res = velcro_process(
        "simulate", work / "m.h5", "--accel", "edge16", "--sweep", "rows=8,16", "--sweep", "cols=4,8", "--json"
    )
    assert res.code == 0, res.err
    import json

    points = json.loads(res.out)["points"]
    assert sorted((p["point"]["rows"], p["point"]["cols"]) for p in points) == [(8, 4), (8, 8), (16, 4), (16, 8)]


def test_an_error_with_stderr_closed_prints_nothing_on_stdout(tmp_path):
    """`velcro ... 2>&-`: Python's sys.stderr is None, and print(file=None) writes to stdout, so the error
    line went into the command's output (a file or pipe a script reads as results)."""
    code = "import sys\nfrom velcro_ref import launch\n"
    code += f"sys.argv = ['velcro', 'info', {str(tmp_path / 'none.h5')!r}]\nlaunch.run()\n"
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "$0" 2>&-', code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert (proc.returncode, proc.stdout) == (1, "")
