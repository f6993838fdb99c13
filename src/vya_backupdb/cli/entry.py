"""Console-script entry point: a backup's head start, then the command line application.

Kept free of Typer: what :mod:`vya_backupdb.cli.early` starts runs while Typer and the
command's modules import (see there).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``vya-backupdb`` (and its alias ``vya``)."""
    from vya_backupdb.cli import early

    early.start(sys.argv[1:])
    from vya_backupdb.cli.app import main as run

    run()
