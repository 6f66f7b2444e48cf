"""The `velcro` console entry point: an interrupt that comes while the command is still starting (its
imports take a moment) ends in one line and exit 130, like an interrupt later on (cli.main).

The handler is installed when this module is imported, through `_signal` (the C module, already
loaded): `import signal` imports `enum` first, and an interrupt during that import used to end in a
traceback. An interrupt that came earlier, while Python was importing the package and this module,
is still pending then: `signal.signal` raises it under the old handler before it installs the new
one (CPython checks pending signals first), and that KeyboardInterrupt is taken as the interrupt.

Python takes a pending interrupt where a call returns and where a module's code begins; the package's
__init__ and this module call nothing before the handler is in force, so the interrupt a traceback may
still show is one taken at the first instruction of either (line 0: no statement of theirs had run), as
the interpreter's own start-up shows one."""

import _signal
import os
import sys


def _starting(signum, frame):
    os.write(2, b"error: interrupted\n")
    os._exit(130)


try:  # cli.main installs its own handler once it runs
    _signal.signal(_signal.SIGINT, _starting)
except KeyboardInterrupt:  # a SIGINT that came while Python was importing this module
    _starting(_signal.SIGINT, None)


def run():
    from .cli import main

    sys.exit(main())
