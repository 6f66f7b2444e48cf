"""The `velcro` command: one subcommand per job, errors as one line, exit 2 for usage, 1 for bad data."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
import traceback

from .errors import UsageError, VelcroError

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
        one_line = re.sub(
            r"^argument ([^:]+): ", r"\1 ", one_line
        )  # "--batch expects ...", not "argument --batch: ..."
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


class _Interrupt:
    """SIGINT as KeyboardInterrupt, remembered: an interrupt that lands in code that swallows
    exceptions (a weak-reference callback prints "Exception ignored" and goes on) still ends the
    run with exit 130."""

    def __init__(self):
        self.seen = False

    def __call__(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def unraisable(self, info):
        """sys.unraisablehook: an interrupt that Python could not raise (inside a weak-reference
        callback, a fork handler, a finalizer) is not printed; the run ends as interrupted."""
        if isinstance(info.exc_value, KeyboardInterrupt):
            self.seen = True
            return
        sys.__unraisablehook__(info)


def _check_environment() -> None:
    from .h5io import MAX_TIMEOUT_S, TIMEOUT_ENV, timeout_from_env

    if timeout_from_env() is None:
        raise UsageError(f"${TIMEOUT_ENV} expects seconds in (0, {MAX_TIMEOUT_S:g}], got {os.environ[TIMEOUT_ENV]!r}")


def main(argv=None) -> int:
    """Run one subcommand. Exit codes: 0 success, 1 bad data (VelcroError, an unreadable or unwritable
    file, out of memory), 2 usage (argparse or UsageError), 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM). User errors print one line `error: ...` and no traceback; --debug or VELCRO_DEBUG=1
    adds the traceback. Anything else is a bug and keeps its traceback.

    Options are checked before any work: values (argparse types), the environment, and the files
    (outputs never name an input: cli_util.check_files).
    """
    argv = sys.argv[1:] if argv is None else argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    interrupt = _Interrupt()
    previous = {}
    previous_hook = sys.unraisablehook
    if in_main_thread:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)}
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
        sys.unraisablehook = interrupt.unraisable
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    debug = "--debug" in argv[:1] or os.environ.get("VELCRO_DEBUG") == "1"

    def fail(message, code):
        if interrupt.seen:  # whatever the error, it followed an interrupt
            message, code = "interrupted", 130
        if debug:
            traceback.print_exc()
        one_line = " ".join(line.strip() for line in str(message).splitlines())
        print(f"error: {one_line}", file=sys.stderr)
        return code

    try:
        args = build_parser().parse_args(argv)
        from .cli_util import check_files

        _check_environment()
        check_files(args)
        code = int(args.func(args) or 0)
        return fail("interrupted", 130) if interrupt.seen else code
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
    except Exception:
        # an interrupt that a library turned into another error (NumPy's import of its C extension
        # reports a KeyboardInterrupt as an ImportError) is still an interrupt
        if interrupt.seen:
            return fail("interrupted", 130)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook


if __name__ == "__main__":
    from velcro_ref.launch import run

    run()
