"""The `velcro` command: one subcommand per job, errors as one line, exit 2 for usage, 1 for bad data."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .errors import VelcroError

# Modules that add subcommands: each has register(subparsers) setting func=handler(args) -> int.
COMMAND_MODULES = [
    "velcro_ref.commands_engine",
    "velcro_ref.commands_velcro",
    "velcro_ref.commands_experiments",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="velcro", description="VELCRO reference: engine, compression, evaluation, simulation.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("VELCRO_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except VelcroError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
