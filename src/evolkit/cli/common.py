"""Shared pieces of the command line: the typer app, option types and small helpers."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from evolkit.models import ModelSpec


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
) -> None:
    """Evolve instruction-tuning data with small language models, and measure what it made."""
    import logging

    from evolkit.console import setup_logging

    if verbose and quiet:
        raise typer.BadParameter("use -v or -q, not both", param_hint="'-v' / '-q'")
    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


class Backend(str, Enum):
    local = "local"
    openai = "openai"


class OnBad(str, Enum):
    error = "error"
    skip = "skip"


class Policy(str, Enum):
    rotate = "rotate"
    random = "random"
    fixed = "fixed"


class ExportFormat(str, Enum):
    alpaca = "alpaca"
    sharegpt = "sharegpt"
    messages = "messages"
    jsonl = "jsonl"
    parquet = "parquet"
    hf = "hf"


BackendOpt = Annotated[
    Backend, typer.Option(help="Where models run: in-process transformers, or an HTTP server.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option(help="API key for --backend openai (default: $OPENAI_API_KEY).")
]
BatchOpt = Annotated[int, typer.Option(help="Rows per batch (and per generate call).")]
OverwriteOpt = Annotated[
    bool, typer.Option(help="Replace a run with another configuration in OUT.")
]
CacheOpt = Annotated[
    Path | None, typer.Option(help="Call cache file (default: the per-user evolkit cache).")
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Do not read or write the call cache.")
]


def role_specs(
    evolver: str,
    responder: str | None,
    judge: str | None,
    backend: Backend,
    base_url: str | None,
    api_key: str | None,
    batch: int,
) -> tuple[ModelSpec, ModelSpec, ModelSpec]:
    """Model specs for the evolver, responder and judge roles; unset roles use the evolver."""
    from evolkit.models import ModelSpec

    def spec(model: str) -> ModelSpec:
        return ModelSpec(
            model=model, backend=backend.value, base_url=base_url, api_key=api_key, batch_size=batch
        )

    return spec(evolver), spec(responder or evolver), spec(judge or evolver)


RepetitionPenaltyOpt = Annotated[
    float, typer.Option(help="Responder repetition penalty; 1.0 = plain greedy (the paper).")
]


def _cache(cache: Path | None, no_cache: bool) -> str | Path | None:
    if no_cache:
        return None
    return cache if cache is not None else "default"
