"""The `velcro` console entry point: an interrupt that comes while the command is still starting (its
imports take a moment) ends in one line and exit 130, like an interrupt later on (cli.main)."""

import os
import signal
import sys


def _starting(signum, frame):
    os.write(2, b"error: interrupted\n")
    os._exit(130)


def run():
    signal.signal(signal.SIGINT, _starting)  # cli.main installs its own handler once it runs
    from .cli import main

    sys.exit(main())
