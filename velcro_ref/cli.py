"""The `velcro` command: one subcommand per job, errors as one line, exit 2 for usage, 1 for bad data."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import traceback

from .errors import VelcroError

# Modules that add subcommands: each has register(subparsers) setting func=handler(args) -> int.
COMMAND_MODULES = [
    "velcro_ref.commands_engine",
    "velcro_ref.commands_velcro",
    "velcro_ref.commands_experiments",
    "velcro_ref.commands_onnx",
    "simulator.cli",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        one_line = " ".join(line.strip() for line in str(message).splitlines())
        print(f"error: {one_line}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="velcro", description="VELCRO reference: engine, compression, evaluation, simulation.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return p


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so cleanup (`finally`, context managers) runs on the way out
    and `except Exception` blocks cannot swallow it; atomic writes then delete their temporary file."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    """Run one subcommand. Exit codes: 0 success, 1 bad data (VelcroError, an unreadable or unwritable
    file, out of memory), 2 usage (argparse or UsageError), 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM). User errors print one line `error: ...` and no traceback; --debug or VELCRO_DEBUG=1
    adds the traceback. Anything else is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("VELCRO_DEBUG") == "1"
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None

    def fail(message, code):
        if debug:
            traceback.print_exc()
        one_line = " ".join(line.strip() for line in str(message).splitlines())
        print(f"error: {one_line}", file=sys.stderr)
        return code

    try:
        return int(args.func(args) or 0)
    except VelcroError as e:
        return fail(e, e.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Terminated:
        return fail("terminated", 143)
    except BrokenPipeError:
        # the reader went away (e.g. `velcro info ... | head`): silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MemoryError:
        return fail("out of memory (try a smaller --batch)", 1)
    except OSError as e:
        # a file the user named cannot be read or written: permissions, a full disk, a directory
        return fail(e, 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
