"""CLI: zoo, info, infer."""

from __future__ import annotations

import sys

import numpy as np

from .cli_util import (
    add_file,
    add_ranged,
    command,
    count,
    load_array,
    nonfinite_cause,
    number,
    print_json,
    save_array,
)


def cmd_zoo(args):
    """write a randomly initialised zoo model

    Write a randomly initialised model with torchvision's topology.
    """
    from .model_io import save_model
    from .zoo import build_zoo

    g = build_zoo(args.name, args.input_size, args.in_channels, args.num_classes, args.width, args.seed)
    fp = save_model(g, args.output)
    print(f"wrote {args.output} ({args.name}, input {g.input_shape}, fingerprint {fp[:16]})")
    return 0


def model_info(model) -> dict:
    """Per-layer shapes, attributes (as the file stores them), parameter counts and MACs of the
    stored graph, plus totals; `dead` lists the nodes not on the path to the output (stored,
    never run)."""
    from .graph import node_macs

    g, shapes = model.graph, model.shapes
    layers = []
    for n in g.nodes:
        n_params = sum(int(np.prod(g.params[k].shape)) for k in n.params.values())
        layers.append(
            {
                "name": n.name,
                "op": n.op,
                "attrs": dict(n.attrs),
                "inputs": list(n.inputs),
                "input_shapes": [list(shapes[t]) for t in n.inputs],
                "output_shape": list(shapes[n.name]),
                "params": n_params,
                "macs": node_macs(n, [shapes[t] for t in n.inputs], shapes[n.name]),
            }
        )
    return {
        "model": model.path,
        "fingerprint": model.fingerprint,
        "input_shape": list(model.input_shape),
        "meta": model.meta,
        "layers": layers,
        "activation_sites": list(model.sites),
        # the values the file stores: a parameter array shared by several nodes counts once
        "total_params": sum(int(np.prod(g.params[k].shape)) for k in {k for n in g.nodes for k in n.params.values()}),
        "total_macs": sum(layer["macs"] for layer in layers if layer["name"] not in model.plan.dead),
        "dead": list(model.plan.dead),
    }


def _attr_text(attrs) -> str:
    """A layer's attributes in one short line: key=value, a list's items joined by commas, a
    float that is a float32 in float32's shortest digits (its largest value reads 3.4028235e+38),
    any other in float64's."""

    def text(v):
        if isinstance(v, list | tuple):
            return ",".join(text(u) for u in v)
        if isinstance(v, float) and float(np.float32(v)) == v:
            return str(np.float32(v))
        return str(v)

    return " ".join(f"{k}={text(v)}" for k, v in attrs.items())


def cmd_info(args):
    """layer shapes, parameters and MACs

    Print every layer's shapes, attributes, parameters and MACs.
    """
    from .engine import load_model

    info = model_info(load_model(args.model, allow_nonfinite=args.allow_nonfinite))
    if args.json:
        print_json(info)
        return 0
    print(f"{info['model']}  fingerprint {info['fingerprint'][:16]}  input {tuple(info['input_shape'])}")
    print(f"{'layer':<34} {'op':<16} {'output':<18} {'params':>10} {'MACs':>14}  attributes")
    for layer in info["layers"]:
        shape = "x".join(map(str, layer["output_shape"]))
        row = f"{layer['name']:<34} {layer['op']:<16} {shape:<18} {layer['params']:>10,} {layer['macs']:>14,}"
        print(f"{row}  {_attr_text(layer['attrs'])}".rstrip())
    print(
        f"total: {info['total_params']:,} parameters, {info['total_macs']:,} MACs per image, "
        f"{len(info['activation_sites'])} activation sites"
    )
    if info["dead"]:
        print(f"note: {len(info['dead'])} node(s) not on the path to the output, never run: {', '.join(info['dead'])}")
    return 0


def cmd_infer(args):
    """run a model on a .npy batch

    Run a model on an NCHW float32 .npy batch.
    """
    from .engine import load_model

    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    x = load_array(args.input)
    masks = None
    if args.masks:
        from .masks import load_masks

        masks = load_masks(args.masks)
    y = model.run(x, masks=masks)
    if args.output:
        save_array(args.output, y)
    # the input is checked finite, so NaN or Inf in the output comes from the parameters (where
    # --allow-nonfinite let them in) or from float32 overflowing on the way
    nonfinite = int(np.count_nonzero(~np.isfinite(y)))
    if nonfinite:
        print(
            f"warning: {nonfinite} of {y.size} output values are NaN or Inf: {nonfinite_cause(model)}", file=sys.stderr
        )
    doc = {
        "model": args.model,
        "masks": args.masks,
        "batch": int(x.shape[0]),
        "output_shape": list(y.shape),
        "nonfinite_outputs": nonfinite,
        "macs": model.last_macs,
        "total_macs": sum(model.last_macs.values()),
    }
    if args.json:
        print_json(doc)
    else:
        print(f"output {tuple(y.shape)}; executed {doc['total_macs']:,} MACs for {doc['batch']} image(s)")
        if args.output:
            print(f"wrote {args.output}")
    return 0


def register(sub):
    from .zoo import ZOO

    p = command(sub, "zoo", cmd_zoo)
    p.add_argument("name", choices=ZOO)
    add_file(p, "-o", "--output", role="out", required=True, help="output model file (.h5)")
    add_ranged(p, "--input-size", count(1, 4096), 224, "input height and width")
    add_ranged(p, "--in-channels", count(1, 1024), 3, "input channels")
    add_ranged(p, "--num-classes", count(1, 100_000), 1000, "output classes")
    add_ranged(p, "--width", number(0, 16, open_lo=True), 1.0, "channel width multiplier")
    add_ranged(p, "--seed", count(0, 2**32 - 1), 0, "random seed")

    p = command(sub, "info", cmd_info, model=True)
    p.add_argument("--json", action="store_true", help="print JSON (top-level total_macs)")

    p = command(sub, "infer", cmd_infer, model=True)
    add_file(p, "--input", required=True, help="input .npy, NCHW float32")
    add_file(p, "-o", "--output", role="out", help="write the output array here (.npy)")
    add_file(p, "--masks", help="VELCRO mask file (HDF5) for masked inference")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: executed MACs per layer and in total, nonfinite_outputs (NaN/Inf output values)",
    )
