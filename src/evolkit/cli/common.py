"""Shared pieces of the command line: the typer app and small helpers."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolve instruction-tuning data with small language models, and measure what it made.",
    pretty_exceptions_enable=False,
)
