"""CLI: profile, stats merge, compress, eval, golden (the VELCRO core)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from .cli_util import (
    add_data_dir_arg,
    add_file,
    add_image_args,
    add_policy_arg,
    add_ranged,
    command,
    count,
    load_array,
    load_image_set,
    nonfinite_cause,
    option_classes,
    print_json,
    progress,
    share_text,
    text,
)
from .data import PrefixDigest, digest, resolve_data_dir
from .distributed import add_cluster_args, on_cluster
from .errors import InputError, StatsError, UsageError
from .fileio import parse_toml


def cmd_profile(args):
    """preprocessing stage: per-element activation statistics

    Stream per-element activation statistics (count, mean, M2, min, max) of every site.
    """
    from .engine import load_model
    from .stats import StatsCollector, load_stats, save_stats

    cluster = on_cluster(args)
    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    x, _, classes, source = load_image_set(args, model)
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")
    col = StatsCollector(model, classes, source)
    start = 0
    if args.resume and partial.exists():
        col.stats = load_stats(partial, model)
        done = col.stats
        # The images are matched by their digest below, whatever path or class order names them.
        if sorted(done.classes) != sorted(classes):
            raise StatsError(
                f"{partial}: checkpoint of another image set ({done.source!r}, classes {list(done.classes)}), "
                f"this run uses {source!r}, classes {list(classes)}; delete it or run without --resume"
            )
        done.classes = tuple(classes)
        if done.n_images > len(x):
            raise StatsError(
                f"{partial}: checkpoint holds {done.n_images} images, the image set has only {len(x)}; "
                "delete it or run without --resume"
            )
        if "images_digest" not in done.provenance:
            raise StatsError(
                f"{partial}: checkpoint without the digest of its images (written by an older version), so it "
                "cannot be matched to the image set; delete it or run without --resume"
            )
        if done.provenance["images_digest"] != digest(x[: done.n_images]):
            raise StatsError(
                f"{partial}: checkpoint of other images than the first {done.n_images} of {source!r} as they are "
                f"now (another image set than its {done.source!r}, or the file changed); "
                "delete it or run without --resume"
            )
        recorded = col.range_tensors()
        missing, extra = recorded - set(done.ranges), set(done.ranges) - recorded
        if missing or extra:  # a missing range would cover the later images only
            what = [f"without the range of {_names(missing)}"] if missing else []
            what += [f"with a range of no tensor of the model, {_names(extra)}"] if extra else []
            raise StatsError(
                f"{partial}: checkpoint {'; '.join(what)} (damaged, or of another version); "
                "delete it or run without --resume"
            )
        start = done.n_images
        print(f"resuming from {partial}: {start} of {len(x)} images done")
    if cluster:
        from .distributed import client_for, collect_stats, shared_data_of

        kw = {"shared": shared_data_of(args, classes, args.split), "start": start, "done": col.stats if start else None}
        images = PrefixDigest(x)
        kw.update(checkpoint=lambda stats: _checkpoint(stats, images, partial), checkpoint_every=args.checkpoint_every)
        with client_for(args) as client, progress(len(x), "profile") as bar:
            bar.update(start)
            col.stats = collect_stats(client, model, x, args.batch, classes, source, bar, args.shard_batches, **kw)
    else:
        _profile_here(args, x, col, start, partial)
    col.stats.source = source
    drop = ("images_digest", "checkpoint")  # a checkpoint's, whichever path wrote it
    col.stats.provenance = {k: v for k, v in col.stats.provenance.items() if k not in drop}
    col.stats.provenance["image_sets"] = [digest(x)]  # `stats merge` names a shard merged twice by it
    save_stats(col.stats, out)
    if partial.exists():
        partial.unlink()
    print(f"wrote {out}: {len(model.sites)} sites, {col.stats.n_images} images of classes {list(classes)}")
    return 0


def _names(names, most=5) -> str:
    """The first `most` of a set of names, sorted, quoted."""
    names = sorted(names)
    return ", ".join(f"'{n}'" for n in names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _checkpoint(stats, images, partial):
    """Write the statistics so far to `partial`, with the digest of the images they hold (the first
    n_images of the image set, `images` its PrefixDigest), which --resume checks."""
    from .stats import save_stats

    stats.provenance = {**stats.provenance, "images_digest": images.of(stats.n_images)}
    save_stats(stats, partial)


def _profile_here(args, x, col, start, partial):
    images = PrefixDigest(x)
    with progress(len(x), "profile") as bar:
        bar.update(start)
        for i, j in enumerate(range(start, len(x), args.batch)):
            col.add_batch(x[j : j + args.batch])
            bar.update(min(args.batch, len(x) - j))
            if args.checkpoint_every and (i + 1) % args.checkpoint_every == 0:
                _checkpoint(col.stats, images, partial)


def cmd_quantize(args):
    """post-training int8 quantization from statistics

    Quantize a float model to int8 with onnxruntime's static quantization formulas (MinMax calibration): the
    ranges come from a stats file of `velcro profile` on calibration images (format version 3 or later). Weights
    are symmetric int8 (per tensor or per output channel), biases int32, activations int8 or uint8. docs/int8.md
    gives every rule.
    """
    from .api import quantize
    from .engine import load_model
    from .model_io import save_model
    from .stats import load_stats

    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    stats = load_stats(args.calib, model)  # checks that the stats are of this model, naming the file
    try:
        qmodel = quantize(model, stats, args.per_channel, args.activations, args.requant)
    except StatsError as e:
        raise StatsError(f"{args.calib}: {e}") from None
    qmodel.graph.meta["quantization"]["calibration"]["stats_file"] = str(args.calib)
    fp = save_model(qmodel.graph, args.output)
    n_layers = sum(1 for n in qmodel.graph.nodes if n.op in ("qconv2d", "qlinear"))
    print(
        f"wrote {args.output}: {n_layers} int8 conv/linear layers, {args.activations} activations, "
        f"{'per-channel' if args.per_channel else 'per-tensor'} weights, {args.requant} requantization, "
        f"calibrated on {stats.n_images} images; fingerprint {fp[:16]}"
    )
    return 0


# Counts are float64 per element: exact up to 2^53 images.
MAX_COUNT = 2**53


def cmd_stats_merge(args):
    """merge shards (Chan's formula)

    Merge statistics shards of one model into one file.
    """
    from .stats import load_stats, save_stats

    seen = {}
    for p in args.inputs:  # one shard twice (by any path: a symlink, a hard link) would count its images twice
        try:
            st = os.stat(p)
            key = (st.st_dev, st.st_ino)
        except OSError:  # load_stats names the problem
            key = Path(p).resolve()
        if key in seen:
            raise UsageError(f"{p}: the same file as {seen[key]}; each shard is merged once")
        seen[key] = p
    parts = [load_stats(p) for p in args.inputs]
    total = parts[0]
    for path, p in zip(args.inputs[1:], parts[1:], strict=True):
        if p.fingerprint != total.fingerprint:
            raise StatsError(
                f"{path}: stats of model {p.fingerprint}, but {args.inputs[0]} holds stats of model {total.fingerprint}"
            )
        if total.n_images + p.n_images > MAX_COUNT:
            raise StatsError(f"{path}: merging it makes {total.n_images + p.n_images} images, more than {MAX_COUNT}")
        total = total.merge(p)
    for warning in _counted_twice(args.inputs, parts):  # of a merge that is written
        print(f"warning: {warning}", file=sys.stderr)
    save_stats(total, args.output)
    print(f"wrote {args.output}: {total.n_images} images from {len(parts)} shards")
    return 0


def _counted_twice(paths, parts) -> list:
    """What a merge of the stats `parts` (read from `paths`) counts twice: a file of the same figures
    as an earlier one (a copy of one shard, or two shards of the same images: a data set may hold
    an image twice), or one that records an image set an earlier file records (an earlier merge
    that holds it: the figures differ, the images do not)."""
    from .stats import image_sets

    found, contents, runs = [], {}, {}
    for path, p in zip(paths, parts, strict=True):
        key = _stats_digest(p)
        if key in contents:
            found.append(
                f"{path} holds the same statistics as {contents[key]} (a copy of one shard?); the merge counts both "
                "files' images"
            )
        else:
            again = sorted({runs[d] for d in image_sets(p) if d in runs})
            if again:
                found.append(
                    f"{path} holds statistics of images that {' and '.join(again)} "
                    f"{'holds' if len(again) == 1 else 'hold'} too (the digest of a profiled image set, recorded "
                    "in both files); the merge counts those images twice"
                )
        contents.setdefault(key, path)
        for d in image_sets(p):
            runs.setdefault(d, path)
    return found


def _stats_digest(stats) -> str:
    """A digest of a stats file's figures (model, image count, every site's arrays, every tensor's
    range): shards of different images hardly ever agree on all of them."""
    import numpy as np

    h = hashlib.sha256(f"{stats.fingerprint} {stats.n_images}".encode())
    for name in sorted(stats.sites):
        for a in dataclasses.astuple(stats.sites[name]):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
    h.update(json.dumps(sorted((k, [float(v) for v in r]) for k, r in stats.ranges.items())).encode())
    return h.hexdigest()


def read_ratios_toml(path, sites) -> dict:
    """Per-site ratios from TOML: `[ratios]` table (or top-level) of site = ratio; `default` applies to the rest.
    With a `[ratios]` table, any other top-level key is refused (it would be ignored)."""
    from .masks import check_ratio

    try:
        doc = parse_toml(Path(path).read_text(encoding="utf-8"))
    except OSError as e:  # an unreadable file: bad data, as a missing stats file
        raise InputError(f"{path}: cannot read ratios TOML ({e})") from None
    except ValueError as e:  # bad UTF-8 or TOML: a bad argument
        raise UsageError(f"{path}: cannot read ratios TOML ({e})") from None
    table = doc.get("ratios", doc)
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [ratios] must be a table of site = ratio, got {table!r}")
    outside = sorted(k for k in doc if k != "ratios") if "ratios" in doc else []
    if outside:  # with a [ratios] table, the top level would be ignored
        names = ", ".join(repr(k) for k in outside)
        raise UsageError(f"{path}: key(s) {names} outside the [ratios] table; put every ratio, default too, in it")
    default = check_ratio(table.get("default", 0.0), f"{path}: default ratio")
    unknown = sorted(k for k in table if k != "default" and k not in sites)
    if unknown:
        # TOML reads an unquoted dotted key (layers.0.0.relu = 0.3) as nested tables
        dotted = any(isinstance(table[k], dict) for k in unknown)
        hint = '; a site name with dots is quoted: "layers.0.0.relu" = 0.3' if dotted else ""
        raise UsageError(f"{path}: unknown site(s) {', '.join(repr(k) for k in unknown)}{hint}")
    return {s: check_ratio(table.get(s, default), f"{path}: ratio of site '{s}'") for s in sites}


def cmd_compress(args):
    """compression stage: masks from statistics

    Choose masked elements per site from statistics; constants are the means.
    """
    from .api import compress
    from .masks import check_ratio, save_masks
    from .stats import load_stats

    if args.allow_nonfinite and not args.model:
        raise UsageError("--allow-nonfinite applies to --model: give the model too")
    ratio = None if args.ratio is None else check_ratio(args.ratio, "--ratio")
    stats = load_stats(args.stats)
    model = None
    if args.model:
        from .engine import load_model

        model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
        from .stats import check_stats

        check_stats(stats, model, args.stats)
    if args.ratios and (args.ratio is not None or args.policy is not None):
        raise UsageError("--ratios gives every site its ratio: drop --ratio and --policy")
    if args.ratios:
        ratios = read_ratios_toml(args.ratios, stats.sites)
        masks = compress(stats, model=model, exclude=args.exclude or (), ratios=ratios)
        masks.policy["ratios_file"] = str(args.ratios)
    elif args.ratio is None:
        raise UsageError("give --ratio R (with --policy) or --ratios FILE.toml")
    else:
        masks = compress(stats, ratio, args.policy or "uniform", model, args.exclude or ())
    masks.policy["stats_file"] = str(args.stats)
    save_masks(masks, args.output)
    n = sum(m.size for m, _ in masks.sites.values())
    k = sum(masks.n_masked().values())
    print(
        f"wrote {args.output}: {k:,} of {n:,} activation elements masked ({share_text(k / n)}), "
        f"policy {masks.policy['name']}"
    )
    return 0


def cmd_eval(args):
    """specialized-task accuracy, executed MACs and CSR

    Evaluate a model dense and (with --masks) masked on a task's images.
    """
    from .api import evaluate
    from .engine import load_model
    from .masks import load_masks

    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    masks = load_masks(args.masks, model) if args.masks else None  # a bad mask file fails before the dense pass
    x, y, classes, source = load_image_set(args, model)
    with progress(len(x) * (1 if masks is None else 2), "eval") as bar:
        doc = {"model": args.model, "data": source, **evaluate(model, x, y, classes, masks, args.batch, bar)}
    for mode in ("dense", "masked"):
        if doc.get(mode, {}).get("inf_images"):
            print(
                f"warning: {mode}: {doc[mode]['inf_images']} of {len(x)} images have an infinite score "
                f"({nonfinite_cause(model)}); their top-1 class takes +inf as the largest score",
                file=sys.stderr,
            )
    if args.json:
        print_json(doc)
        return 0
    print(f"{source}: {len(x)} images")
    for mode in ("dense", "masked"):
        if mode in doc:
            d = doc[mode]
            print(
                f"  {mode:<7} accuracy {share_text(d['accuracy'], 4, False)}  "
                f"task-restricted {share_text(d['accuracy_task'], 4, False)}  "
                f"MACs/image {d['macs']:,.0f}"
            )
    if "csr" in doc:
        print(f"  CSR {share_text(doc['csr'], 4, False)}")
    return 0


def cmd_golden(args):
    """golden vectors for hardware verification

    Write every node's inputs and outputs (and masks, skipped MACs) to HDF5; for an int8 model also the scales,
    zero points, multipliers and shifts each layer used. docs/formats.md gives the layout.
    """
    import h5py

    from .api import golden
    from .engine import load_model
    from .masks import load_masks

    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    if (args.input is None) == (args.data is None):
        raise UsageError("give --input X.npy or --data fashion-mnist (with --classes), one of them")
    if args.data is None and (args.classes or args.samples is not None or args.split or args.data_dir):
        raise UsageError(
            "--classes, --samples, --split and --data-dir choose images of --data; with --input they would be ignored"
        )
    args.split = args.split or "test"
    labels = None
    if args.input is not None:
        x = load_array(args.input)
        source = {"file": str(args.input)}
    else:
        from .data import task_images

        if not args.classes:
            raise UsageError("--classes is required with --data (e.g. --classes 5,7,9)")
        classes = option_classes(args.classes)
        n = args.samples or 1
        x, labels, indices = task_images(model, classes, args.split, n, args.data_dir, with_indices=True)
        if len(x) < n:
            raise UsageError(f"--samples {n}: classes {args.classes} of the {args.split} split hold {len(x)} images")
        directory = str(resolve_data_dir(args.data_dir, args.split).resolve())  # the files the indices point into
        source = {"data": args.data, "directory": directory, "split": args.split, "classes": list(classes)}
        source["indices"] = indices.tolist()
    masks = load_masks(args.masks) if args.masks else None
    macs = golden(model, x, args.output, masks, args.accumulators, source, labels)
    print(f"wrote {args.output}: {len(x)} image(s), {len(model.steps)} nodes, {sum(macs.values()):,} executed MACs")
    with h5py.File(args.output, "r") as f:
        nonfinite = json.loads(f.attrs["nonfinite_nodes"])
    if nonfinite:
        print(
            f"warning: {len(nonfinite)} node output(s) hold NaN or Inf, first '{nonfinite[0]}' (the golden file's "
            f"attribute nonfinite_nodes lists them): {nonfinite_cause(model)}",
            file=sys.stderr,
        )
    return 0


def cmd_rtl_vectors(args):
    """RTL test vectors of one int8 conv layer from golden vectors

    Write $readmemh hex files and a manifest.json for one int8 conv layer of a `velcro golden` file (an int8
    model quantized with --requant fixed_point, written with --accumulators): the layer's tensors in natural
    order and its tiles on a ROWSxCOLS output-stationary array. docs/rtl.md explains how a testbench uses them,
    docs/formats.md the files.
    """
    from .rtl_vectors import RtlVectorError, layer_from_golden, parse_array, write_rtl_vectors

    rows, cols = parse_array(args.array)
    layer = layer_from_golden(args.golden, args.layer, args.image)
    try:
        manifest = write_rtl_vectors(layer, args.output, rows, cols)
    except RtlVectorError as e:  # the layer's values refused (the writer names the layer, not its file)
        raise RtlVectorError(f"{args.golden}: {e}") from None
    c = manifest["counts"]
    print(
        f"wrote {args.output}: layer {args.layer}, {c['tiles']} tiles on a {rows}x{cols} array, "
        f"{c['output_elements']:,} outputs ({c['masked_elements']:,} masked), {c['macs_executed']:,} MACs"
    )
    return 0


def register(sub):
    p = command(sub, "profile", cmd_profile, model=True)
    add_image_args(p, "train")
    add_file(p, "-o", "--output", role="out", required=True, help="stats file to write (HDF5)")
    add_ranged(p, "--checkpoint-every", count(0, 1_000_000), 20, "write partial stats every N batches (0 = never)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.partial if present")
    add_cluster_args(p, shards=True)

    p = command(sub, "quantize", cmd_quantize, model=True)
    add_file(p, "--calib", required=True, help="stats file of this model (velcro profile) giving the ranges")
    add_file(p, "-o", "--output", role="out", required=True, help="quantized model file to write (.h5)")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--activations", choices=("int8", "uint8"), default="int8", help="activation type (default int8)")
    p.add_argument(
        "--requant",
        choices=("ort", "fixed_point"),
        default="ort",
        help="requantization of conv/linear accumulators: ort (float32, as onnxruntime) or fixed_point "
        "(int32 multiplier and shift, as an RTL datapath; needed by rtl-vectors); default ort",
    )

    p = sub.add_parser("stats", help="statistics files", description="Operations on statistics files.")
    ssub = p.add_subparsers(dest="stats_command", metavar="ACTION")
    ssub.required = True
    m = command(ssub, "merge", cmd_stats_merge)
    add_file(m, "inputs", nargs="+", help="stats files of the same model")
    add_file(m, "-o", "--output", role="out", required=True, help="merged stats file")

    p = command(sub, "compress", cmd_compress)
    add_file(p, "stats", help="stats file (from velcro profile)")
    p.add_argument("--ratio", type=float, help="compression ratio R in [0, 1]")
    add_policy_arg(
        p,
        "uniform: the paper's, R of every site; budget: one global MAC budget (needs --model); "
        "channel: whole channels (S-VELCRO style); default uniform",
        default=None,
    )
    add_file(p, "--model", help="the model the stats belong to (needed by --policy budget)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf parameters in --model")
    add_file(p, "--ratios", help="TOML file of per-site ratios ([ratios] site = r, default = r)")
    p.add_argument("--exclude", nargs="+", type=text, metavar="SITE", help="sites never masked")
    add_file(p, "-o", "--output", role="out", required=True, help="mask file to write (HDF5)")

    p = command(sub, "eval", cmd_eval, model=True)
    add_image_args(p, "test")
    add_file(p, "--masks", help="mask file")
    p.add_argument("--json", action="store_true", help="print JSON {dense, masked, csr}")

    p = command(sub, "golden", cmd_golden, model=True)
    add_file(p, "--input", help="input .npy (NCHW float32, as the model takes it)")
    p.add_argument("--data", choices=["fashion-mnist"], help="or images of this data set, preprocessed for the model")
    p.add_argument("--classes", type=text, help="with --data: the images' classes, e.g. 5,7,9")
    p.add_argument("--split", choices=["train", "test"], help="with --data: split (default test)")
    p.add_argument("--samples", type=count(1, 65536), help="with --data: the first N images of the classes (default 1)")
    add_data_dir_arg(p)
    add_file(p, "--masks", help="mask file")
    p.add_argument(
        "--accumulators",
        action="store_true",
        help="int8 models: also write every conv and linear layer's int32 accumulators (needed by rtl-vectors)",
    )
    add_file(p, "-o", "--output", role="out", required=True, help="vectors file to write (HDF5)")

    p = command(sub, "rtl-vectors", cmd_rtl_vectors)
    add_file(p, "golden", help="golden vectors file (velcro golden --accumulators)")
    p.add_argument("--layer", required=True, type=text, help="the conv layer's node name")
    p.add_argument("--array", default="8x8", type=text, help="array size ROWSxCOLS, each in [2, 256] (default 8x8)")
    p.add_argument("--image", type=count(0, 2**31 - 1), default=0, help="image of the batch (default 0)")
    add_file(p, "-o", "--output", role="dir_out", required=True, help="folder to write the vectors into")
