"""Shared pieces of the command line: the typer app, its global options and Ctrl-C handling."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup


class Interrupted(BaseException):
    """Ctrl-C inside a command, carried past the CLI framework to `evolkit.cli.main`.

    typer's standalone mode turns a KeyboardInterrupt into a silent exit 130 before our entry
    point sees it. A BaseException that is not a KeyboardInterrupt passes through untouched,
    while `--help`, usage errors and their exit codes keep working as typer does them.
    """


class _Group(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context, not public
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted() from exc


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Evolve instruction-tuning data with small language models, and measure what it made.",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from evolkit import __version__

        print(f"evolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[
        bool,
        typer.Option("-v", "--verbose", help="Also show debug lines, and tracebacks of crashes."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("-q", "--quiet", help="Show only warnings, errors and the closing summary."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Evolve instruction-tuning data with small language models, and measure what it made."""
    import logging

    from evolkit.console import setup_logging

    if verbose and quiet:
        raise typer.BadParameter("use -v or -q, not both", param_hint="'-v' / '-q'")
    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
