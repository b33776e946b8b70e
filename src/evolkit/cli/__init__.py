"""The `evolkit` command line: thin wrappers over the Python API, one clear line per error.

Each command lives in its own module and registers itself on the shared typer app.
"""

from __future__ import annotations

import sys

from evolkit.cli import autoif as _autoif  # noqa: F401
from evolkit.cli import evaluate as _evaluate  # noqa: F401
from evolkit.cli import evolve as _evolve  # noqa: F401  (registers the command)
from evolkit.cli import export as _export  # noqa: F401
from evolkit.cli import score as _score  # noqa: F401
from evolkit.cli.common import app
from evolkit.console import console
from evolkit.errors import EvolkitError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user errors become one red line and exit code 1, never a traceback."""
    try:
        app()
    except EvolkitError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: run the same command again to resume[/]")
        sys.exit(130)
