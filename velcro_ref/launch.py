"""The `velcro` console entry point: an interrupt (SIGINT) or SIGTERM that comes while the command is
still starting (its imports take a moment) ends in one line and exit 130 or 143, like one later on
(cli.main).

The handler is installed when this module is imported, through `_signal` (the C module, already
loaded): `import signal` imports `enum` first, and an interrupt during that import used to end in a
traceback. An interrupt that came earlier, while Python was importing the package and this module,
is still pending then: `signal.signal` raises it under the old handler before it installs the new
one (CPython checks pending signals first), and that KeyboardInterrupt is taken as the interrupt.

Python takes a pending interrupt where a call returns and where a module's code begins; the package's
__init__ and this module call nothing before the handler is in force, so the interrupt a traceback may
still show is one taken at the first instruction of either (line 0: no statement of theirs had run), or
in the import machinery between them, as the interpreter's own start-up shows one."""

import _signal
import os
import sys


def _starting(signum, frame):
    code = 143 if signum == _signal.SIGTERM else 130
    _deadline(code)
    _flush()  # a signal after the command finished (its handlers put back): its output kept
    say(b"error: terminated\n" if signum == _signal.SIGTERM else b"error: interrupted\n")
    os._exit(code)


def _deadline(code, seconds=5.0):
    """End the process with `code` in `seconds` whatever holds it up: a flush into a pipe that its
    reader does not read (stdout's, or stderr's too under 2>&1) waits for ever. Not armed where a
    further signal interrupts arming it: the first one decided the outcome."""
    try:
        _signal.signal(_signal.SIGALRM, lambda signum, frame: os._exit(code))
        _signal.setitimer(_signal.ITIMER_REAL, seconds)
    except BaseException:
        pass


def say(line: bytes) -> None:
    """Write `line` to fd 2, unless it takes nothing for a second (`takes_a_line`)."""
    if takes_a_line(2, none=False):
        os.write(2, line)


def takes_a_line(fd, wait_s=1.0, none=True) -> bool:
    """Whether the file `fd` takes a line within wait_s: false where it is a pipe that its reader does
    not read (under 2>&1, the stdout the command was held up writing); `none` where there is no fd."""
    import select

    try:
        return bool(select.select([], [fd], [], wait_s)[1])
    except (OSError, ValueError):  # no such fd
        return none


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        # no stream (fd closed), a reader gone, a stream closed, or a signal taken inside a write to it
        # that a reader not reading holds up (its buffer is in use: a reentrant call)
        except (AttributeError, OSError, ValueError, RuntimeError):
            pass


try:  # cli.main installs its own handlers once it runs; a signal ignored (a script's background job) stays so
    if _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN:
        _signal.signal(_signal.SIGINT, _starting)
    if _signal.getsignal(_signal.SIGTERM) is not _signal.SIG_IGN:
        _signal.signal(_signal.SIGTERM, _starting)
except KeyboardInterrupt:  # a SIGINT that came while Python was importing this module
    _starting(_signal.SIGINT, None)


def run():
    import atexit

    atexit.register(_exiting)  # the first registered (from the `velcro` entry point): run after the others
    from .fpenv import set_default

    set_default()  # the command's process computes in C's default environment, its imports (HDF5's) too
    from .cli import main

    code = main()
    if code in (130, 143):
        # Work cut short leaves libraries' native state half made (Numba's threads, LLVM objects); its
        # teardown as Python exits printed tracebacks after the line, or aborted (a double free, a thread
        # state freed twice), and a second signal then ended the process by its default action. The
        # outputs are settled (written whole, or their temporary files removed): end at once. A signal
        # while the output drains (a reader that does not read) ends it the same way, without a second line.
        for sig in (_signal.SIGINT, _signal.SIGTERM):
            if _signal.getsignal(sig) is not _signal.SIG_IGN:
                _signal.signal(sig, lambda signum, frame: os._exit(code))
        _deadline(code)
        # A context manager the interrupt cut short between its __enter__ and its block (fileio.atomic_path's
        # temporary file made) is left to its generator's finalizer: run those, quietly, as an exit would
        # (asyncio logs the failure of the tasks a Dask cluster's cut-short start left as they are collected).
        import gc
        import logging

        sys.unraisablehook = _quiet
        logging.getLogger("asyncio").disabled = True
        gc.collect()
        _flush()
        os._exit(code)
    sys.exit(code)


def _quiet(info):
    pass


def _exiting():
    """The last exit function of a command that finished: after it Python puts the signals' default
    actions back and frees its modules (a quarter of a second with Numba loaded), where a signal killed
    the process without a line. The output is flushed first, while a signal still ends the process with
    its line (a reader that does not read would hold the flush up for ever); from then on a signal is
    ignored and the command's own exit code stands. A reader gone, or a full disk, at that flush ends the
    command as during it (cli.main): exit 1, and the error's line but for a reader gone."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as e:
        import errno

        if e.errno != errno.EPIPE:
            say(f"error: {e}\n".encode(errors="replace"))
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what stdout still holds goes nowhere, quietly
        _flush()
        os._exit(1)
    except (AttributeError, ValueError, RuntimeError):  # no stdout, or a closed one
        pass
    _flush()
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_IGN)
