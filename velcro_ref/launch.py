"""The `velcro` console entry point: an interrupt that comes while the command is still starting (its
imports take a moment) ends in one line and exit 130, like an interrupt later on (cli.main).

The handler is installed when this module is imported, through `_signal` (the C module, already
loaded): `import signal` imports `enum` first, and an interrupt during that import used to end in a
traceback."""

import _signal
import os
import sys


def _starting(signum, frame):
    os.write(2, b"error: interrupted\n")
    os._exit(130)


_signal.signal(_signal.SIGINT, _starting)  # cli.main installs its own handler once it runs


def run():
    from .cli import main

    sys.exit(main())
