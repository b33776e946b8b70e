"""The `evolkit` command line: thin wrappers over the Python API, one clear line per error.

Each command lives in its own module and registers itself on the shared typer app.
"""

from __future__ import annotations

import logging
import sys
import traceback

from evolkit.cli import analyze as _analyze  # noqa: F401
from evolkit.cli import auto_evol as _auto_evol  # noqa: F401
from evolkit.cli import autoif as _autoif  # noqa: F401
from evolkit.cli import cache as _cache  # noqa: F401
from evolkit.cli import evaluate as _evaluate  # noqa: F401
from evolkit.cli import evolve as _evolve  # noqa: F401  (registers the command)
from evolkit.cli import export as _export  # noqa: F401
from evolkit.cli import score as _score  # noqa: F401
from evolkit.cli import serve as _serve  # noqa: F401
from evolkit.cli import show as _show  # noqa: F401
from evolkit.cli import train as _train  # noqa: F401
from evolkit.cli.common import Interrupted, app
from evolkit.console import console, error_line, stderr_shows
from evolkit.errors import EvolkitError

__all__ = ["app", "main"]

INTERRUPTED_LINE = "interrupted: run the same command again to resume"


def main() -> None:
    """Entry point: every way of stopping ends in one line and a meaningful exit code.

    EvolkitError (a failure the user can act on): `error: <message>`, exit 1.
    Ctrl-C: the interrupted line, exit 130 (the shell's code for SIGINT).
    Anything else is a bug in evolkit or a library: one line naming the exception and exit 1;
    the traceback only with -v, because a user who hits it needs the line, and whoever files
    the bug report needs the traceback.
    """
    try:
        app()
    except (Interrupted, KeyboardInterrupt):
        console.print(INTERRUPTED_LINE, style="yellow", markup=False, highlight=False)
        sys.exit(130)
    except EvolkitError as exc:
        error_line(str(exc))
        sys.exit(1)
    except OSError as exc:
        # A full or read-only disk, a file that vanished: the user's to fix, not a bug.
        where = f" {exc.filename}" if exc.filename else ""
        error_line(f"cannot use{where}: {exc.strerror or exc}")
        sys.exit(1)
    except Exception as exc:
        if stderr_shows(logging.DEBUG):
            traceback.print_exc()
        error_line(
            f"unexpected {type(exc).__name__}: {exc} "
            "(a bug; run again with -v to see the traceback)"
        )
        sys.exit(1)
