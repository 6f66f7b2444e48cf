"""The `velcro` command: one subcommand per job, errors as one line, exit 2 for usage, 1 for bad data."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import threading
import traceback

from .errors import UsageError, VelcroError
from .fpenv import default_env

# Modules that add subcommands: each has register(subparsers) setting func=handler(args) -> int.
COMMAND_MODULES = [
    "velcro_ref.commands_engine",
    "velcro_ref.commands_velcro",
    "velcro_ref.commands_experiments",
    "velcro_ref.commands_onnx",
    "simulator.cli",
]


class _StoreOnce(argparse._StoreAction):
    """argparse's store, for an option that must not be given twice (the second value would silently
    replace the first); an option of several values (nargs "+" or "*") takes those of every
    occurrence: `--exclude a --exclude b` is `--exclude a b`."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = parser.given_options
        if self.dest in given and option_string is not None:
            if self.nargs not in ("+", "*"):
                parser.error(f"{option_string} is given more than once ({given[self.dest]}, then {values})")
            values = [*getattr(namespace, self.dest), *values]
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self.given_options = {}  # dest -> value, of the options this parse has met

    def parse_known_args(self, args=None, namespace=None):
        self.given_options = {}
        return super().parse_known_args(args, namespace)

    def add_subparsers(self, **kwargs):
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_args(self, args=None, namespace=None):
        """argparse's, but an argument that no parser took is an error of the command given (its
        usage lines above the error line, as for its other errors), not of `velcro`."""
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = self
            while (
                getattr(parser, "commands", None)
                and getattr(namespace, parser.commands.dest) in parser.commands.choices
            ):
                parser = parser.commands.choices[getattr(namespace, parser.commands.dest)]
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace

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


class _Signals:
    """SIGINT and SIGTERM as exceptions (KeyboardInterrupt, Terminated) while a command runs.

    Python cannot raise an exception inside a weak-reference callback, a finalizer or a fork handler: it
    hands it to sys.unraisablehook and goes on, and the command would finish and write its outputs as if
    no signal had come. The hook here takes such an interrupt, remembers it and sends the signal to the
    main thread again RESEND_S later from a short-lived thread, so the command stops at the next point
    where an exception can be raised. A signal sent again that lands while the hook itself still runs
    (starting that thread waits for it, longer on a busy machine) would be lost the same way: the handler
    sees the hook's frame on the stack and sends it again instead of raising. After close() the handler
    raises nothing: a signal still on its way then only decides the exit code (`outcome`), if it comes
    before main reads the outcome; one that comes later, once the handlers are put back (the work and its
    message done), is taken by the handler that was there before: under the `velcro` command, the entry
    point's, its line and 130 or 143."""

    RESEND_S = 0.001

    def __init__(self):
        self.seen = None  # the first of the two signals that came, or None
        self.closed = False
        self.previous_excepthook = sys.excepthook
        self._resend = None

    def __call__(self, signum, frame):
        self.seen = self.seen or signal.Signals(signum)
        if self.closed:
            return
        if _inside(frame, _Signals.unraisable.__code__):  # raised here, it would be lost: send it again
            self._send_again(signal.Signals(signum))
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    def unraisable(self, info):
        """sys.unraisablehook: an interrupt Python could not raise is not printed but sent again. After an
        interrupt, the errors of objects the cut-short work left half made (llvmlite's, collected as the
        command unwinds) are not printed either: the command's one line says what happened."""
        if not isinstance(info.exc_value, (KeyboardInterrupt, Terminated)):
            if not self.seen:
                sys.__unraisablehook__(info)
            return
        sig = signal.SIGINT if isinstance(info.exc_value, KeyboardInterrupt) else signal.SIGTERM
        self.seen = self.seen or sig
        if not self.closed and (self._resend is None or self._resend.finished.is_set()):
            self._send_again(sig)

    def excepthook(self, kind, value, tb):
        """sys.excepthook while a command runs. C code that prints an exception itself and raises
        another (NumPy's `import_array` in an extension's import: PyErr_Print, then ImportError)
        would print an interrupt that lands there as a traceback: it is taken as the interrupt,
        not printed. Anything else goes to the hook that was there."""
        if issubclass(kind, (KeyboardInterrupt, Terminated)):
            self.seen = self.seen or (signal.SIGINT if issubclass(kind, KeyboardInterrupt) else signal.SIGTERM)
            return
        self.previous_excepthook(kind, value, tb)

    def quiet_after(self, record) -> bool:
        """A logging filter for asyncio's logger: nothing once a signal came. Work the signal cut short
        (a Dask cluster starting, its workers gone) leaves futures whose failure asyncio logs as they are
        collected while the command unwinds: a traceback before the one line."""
        return self.seen is None

    def _send_again(self, sig):
        """Send `sig` to the main thread RESEND_S from now, from a short-lived thread."""
        main = threading.main_thread().ident
        self._resend = threading.Timer(self.RESEND_S, signal.pthread_kill, (main, sig))
        self._resend.daemon = True
        self._resend.start()

    def close(self):
        self.closed = True
        if self._resend is not None:
            self._resend.cancel()
            self._resend.join()

    def outcome(self):
        """(message, exit code) of the signal that came, or None."""
        return {None: None, signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}[self.seen]


def _takes_a_line(stream) -> bool:
    """`launch.takes_a_line` of the file behind `stream`; true where there is none (captured)."""
    from .launch import takes_a_line

    try:
        return takes_a_line(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return True


def _inside(frame, code) -> bool:
    """Whether `frame` or a frame that called it runs `code`."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _check_environment() -> None:
    from .h5io import MAX_TIMEOUT_S, TIMEOUT_ENV, timeout_from_env
    from .kernels.jit import check_compiled

    if timeout_from_env() is None:
        raise UsageError(f"${TIMEOUT_ENV} expects seconds in (0, {MAX_TIMEOUT_S:g}], got {os.environ[TIMEOUT_ENV]!r}")
    if sys.stdout is None:  # print() would drop the command's report without a word
        raise UsageError("standard output is closed (>&-); to discard the report, send it to /dev/null")
    check_compiled()


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
    signals = _Signals()
    # The handlers in force until ours are (the `velcro` command's: velcro_ref.launch), restored at the end
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    previous_hook = sys.unraisablehook
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    debug = "--debug" in argv[:1] or os.environ.get("VELCRO_DEBUG") == "1"

    def fail(message, code):
        if signals.seen:  # whatever the error, it followed an interrupt
            message, code = signals.outcome()
        if debug:
            traceback.print_exc()
        one_line = " ".join(line.strip() for line in str(message).splitlines())
        # a signal's line never holds the end up; with stderr closed (2>&-) print would go to stdout
        if sys.stderr is not None and (code not in (130, 143) or _takes_a_line(sys.stderr)):
            print(f"error: {one_line}", file=sys.stderr)
        return code

    args = None
    try:
        try:
            if in_main_thread:  # inside the try: an interrupt as soon as ours is in force is taken below
                for sig in previous:
                    if previous[sig] is not signal.SIG_IGN:  # ignored (a script's background job): stays so
                        signal.signal(sig, signals)
                sys.unraisablehook, sys.excepthook = signals.unraisable, signals.excepthook
                logging.getLogger("asyncio").addFilter(signals.quiet_after)
            # C's default floating-point environment, whatever a library set: numbers read too
            with default_env():
                try:
                    args = build_parser().parse_args(argv)
                except SystemExit as e:  # argparse: the help printed (0), or the usage and an error line (2)
                    code = e.code
                else:
                    from .cli_util import check_files

                    _check_environment()
                    check_files(args)
                    code = int(args.func(args) or 0)
        finally:
            signals.close()
        return fail(*signals.outcome()) if signals.seen else code
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
        return fail("out of memory" + (" (try a smaller --batch)" if hasattr(args, "batch") else ""), 1)
    except OSError as e:
        # a file the user named cannot be read or written: permissions, a full disk, a directory
        return fail(e, 1)
    except Exception:
        # an interrupt that a library turned into another error (NumPy's import of its C extension
        # reports a KeyboardInterrupt as an ImportError) is still an interrupt
        if signals.seen:
            return fail(*signals.outcome())
        raise
    finally:
        if in_main_thread:  # the hooks first (assignments: Python takes no signal there), then the handlers
            sys.unraisablehook, sys.excepthook = previous_hook, signals.previous_excepthook
            logging.getLogger("asyncio").removeFilter(signals.quiet_after)
        _restore(previous)


def _restore(previous: dict) -> None:
    """Put back the signal handlers. One put back may take a signal at any call that follows, the next
    install's included, and raise (a caller's SIGTERM handler that exits): the install is tried again
    (RESTORE_TRIES times at most), the others are put back too, and then the first such exception is
    raised. A handler Python did not install (None) cannot be put back from Python."""
    raised = None
    for sig, handler in previous.items():
        for _ in range(RESTORE_TRIES if handler is not None else 0):
            try:
                signal.signal(sig, handler)
                break
            except BaseException as e:  # raised again below, once every handler is back
                raised = raised or e
    if raised is not None:
        raise raised


RESTORE_TRIES = 10


if __name__ == "__main__":
    from velcro_ref.launch import run

    run()
