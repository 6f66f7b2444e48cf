"""CLI: `velcro simulate` prices a model dense and VELCRO-compressed on an accelerator."""

from __future__ import annotations

import sys
from functools import partial

from velcro_ref.cli_util import add_file, add_model_arg
from velcro_ref.errors import UsageError


def _check_args(args) -> None:
    """Usage errors found in the arguments alone, before any file is read."""
    from .simulate import MAX_BATCH

    if not args.accel.strip():
        raise UsageError(f"--accel expects a preset or file name, got {args.accel!r}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise UsageError(f"--batch must be an integer from 1 to {MAX_BATCH}, got {args.batch}")


def _print_json(doc) -> None:
    from .report import json_text

    text, bad = json_text(doc)
    sys.stdout.write(text)
    if bad:
        print(f"warning: {len(bad)} figure(s) not finite, written as null: {', '.join(bad[:5])}", file=sys.stderr)


def cmd_simulate(args) -> int:
    _check_args(args)
    from velcro_ref.engine import load_model

    from . import report
    from .arch import load_arch
    from .simulate import parse_sweep, simulate, sweep

    co = args.compute_only
    grid = parse_sweep(args.sweep) if args.sweep else None
    arch = load_arch(args.accel)
    model = load_model(args.model, allow_nonfinite=args.allow_nonfinite)
    masks = None
    if args.masks is not None:
        from velcro_ref.masks import load_masks

        masks = load_masks(args.masks)
    if grid is None:
        subject = simulate(model, arch, masks, args.batch)
        to_json, to_text = subject.to_json, report.format_result
        write_csv, plot = report.write_csv, report.plot_result
    else:
        subject = sweep(model, arch, grid, masks, args.batch)
        to_json, to_text = partial(report.sweep_json, subject), report.format_sweep
        write_csv, plot = report.write_sweep_csv, report.plot_sweep
    if args.json:
        _print_json(to_json(co))
    else:
        print(to_text(subject, co))
    if args.csv:
        write_csv(subject, args.csv, co)
    if args.plot:
        plot(subject, args.plot)
    return 0


def register(sub) -> None:
    from .arch import presets
    from .simulate import MAX_BATCH

    p = sub.add_parser(
        "simulate",
        help="price a model dense and VELCRO-compressed on an edge accelerator",
        description=(
            "Per-layer cycles, MACs, traffic and energy of a model on a systolic-array accelerator, "
            "dense and (with --masks) VELCRO-compressed side by side. Counts are per image. "
            "Accelerator fields and their ranges: docs/simulator.md."
        ),
    )
    add_model_arg(p)
    add_file(p, "--masks", help="VELCRO mask file (.h5) of this model")
    accel_help = f"preset ({', '.join(presets())}) or a velcro-arch/1 TOML file (./NAME for a file named as a preset)"
    add_file(p, "--accel", type=str, required=True, help=accel_help)
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="B",
        help=f"images run together, 1 to {MAX_BATCH} (default 1): weights and mask bitmaps are fetched once "
        "per batch; figures stay per image",
    )
    p.add_argument(
        "--compute-only",
        action="store_true",
        help="table energies without DRAM and leakage (array, register files, on-chip buffers, vector unit, "
        "mask table); JSON and CSV add compute_energy_pj and compute_energy_saving",
    )
    p.add_argument("--json", action="store_true", help='print JSON {"layers": [...], "total": {...}}')
    add_file(p, "--csv", role="out", metavar="FILE", help="also write a per-layer (or per-point) CSV")
    add_file(p, "--plot", role="out", metavar="FILE.png", help="also write a PNG plot")
    p.add_argument(
        "--sweep",
        nargs="+",
        metavar="KEY=V1,V2",
        help="explore the Cartesian product of values, e.g. rows=8,16,32 cols=8,16,32 dataflow=weight_stationary",
    )
    p.set_defaults(func=cmd_simulate)


if __name__ == "__main__":  # python -m simulator.cli ARGS: velcro simulate ARGS
    from velcro_ref.launch import run

    sys.argv[1:1] = ["simulate"]
    run()
