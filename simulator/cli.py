"""CLI: `velcro simulate` prices a model dense and VELCRO-compressed on an accelerator."""

from __future__ import annotations

from velcro_ref.jsonout import print_json


def cmd_simulate(args) -> int:
    from velcro_ref.engine import load_model

    from . import report
    from .arch import load_arch
    from .simulate import parse_sweep, simulate, sweep

    arch = load_arch(args.accel)
    grid = parse_sweep(args.sweep) if args.sweep else None
    model = load_model(args.model)
    masks = None
    if args.masks:
        from velcro_ref.masks import load_masks

        masks = load_masks(args.masks)
    if grid is not None:
        points = sweep(model, arch, grid, masks)
        if args.json:
            doc = {"points": [{"point": p, **r.to_json()["total"]} for p, r in points]}
            print_json(doc)
        else:
            print(report.format_sweep(points))
        if args.csv:
            report.write_sweep_csv(points, args.csv)
        if args.plot:
            report.plot_sweep(points, args.plot)
        return 0
    result = simulate(model, arch, masks)
    if args.json:
        print_json(result.to_json())
    else:
        print(report.format_result(result))
    if args.csv:
        report.write_csv(result, args.csv)
    if args.plot:
        report.plot_result(result, args.plot)
    return 0


def register(sub) -> None:
    from .arch import presets

    p = sub.add_parser(
        "simulate",
        help="price a model dense and VELCRO-compressed on an edge accelerator",
        description=(
            "Per-layer cycles, MACs, traffic and energy of a model on a systolic-array accelerator, "
            "dense and (with --masks) VELCRO-compressed side by side. Counts are per image."
        ),
    )
    p.add_argument("model", help="model file (.h5)")
    p.add_argument("--masks", help="VELCRO mask file (.h5) of this model")
    p.add_argument("--accel", required=True, help=f"preset ({', '.join(presets())}) or a velcro-arch/1 .toml file")
    p.add_argument("--json", action="store_true", help='print JSON {"layers": [...], "total": {...}}')
    p.add_argument("--csv", metavar="FILE", help="also write a per-layer (or per-point) CSV")
    p.add_argument("--plot", metavar="FILE.png", help="also write a PNG plot")
    p.add_argument(
        "--sweep",
        nargs="+",
        metavar="KEY=V1,V2",
        help="explore the Cartesian product of values, e.g. rows=8,16,32 cols=8,16,32 dataflow=weight_stationary",
    )
    p.set_defaults(func=cmd_simulate)
