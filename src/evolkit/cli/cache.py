"""`evolkit cache info` and `evolkit cache clear`: look into and empty the call cache.

Both work on a broken cache file too, since that is when a user needs them: `info` says what
is wrong, `clear` removes the file (and only it and its SQLite side files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evolkit.cli.common import app
from evolkit.errors import EvolkitError

cache_app = typer.Typer(
    no_args_is_help=True,
    help="Look into or empty the call cache that makes reruns cheap.",
)
app.add_typer(cache_app, name="cache")

PathOpt = Annotated[
    Path | None,
    typer.Option("--cache", help="Call cache file (default: the per-user evolkit cache)."),
]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _resolve(cache: Path | None) -> Path:
    from evolkit.cache import default_cache_path

    return cache if cache is not None else default_cache_path()


@cache_app.command()
def info(cache: PathOpt = None) -> None:
    """Show the cache file, its size, and how many entries each model has."""
    from evolkit.cache import inspect_cache

    path = _resolve(cache)
    found = inspect_cache(path)
    typer.echo(f"cache file: {path}")
    if not found.exists:
        typer.echo("no cache file yet (nothing cached)")
        return
    typer.echo(f"size: {_human(found.size)}")
    if found.problem:
        state = "in use by another process" if found.locked else "unusable"
        typer.echo(f"status: {state}: {found.problem}")
        return
    typer.echo(f"entries: {found.entries}")
    for model, n in found.per_model.items():
        typer.echo(f"  {model}: {n}")
    if found.legacy_entries:
        typer.echo(
            f"older entries: {found.legacy_entries} from a previous evolkit, keyed without a "
            "model fingerprint; never read, dropped by the next run or `evolkit cache clear`"
        )


@cache_app.command()
def clear(
    cache: PathOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Remove only entries whose model id starts with this (as `cache info` "
            "lists them, e.g. 'final' or 'final@3f2a').",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove all cached calls, or one model's. A corrupt cache file is removed whole."""
    from evolkit.cache import CallCache, inspect_cache, remove_cache_file

    path = _resolve(cache)
    found = inspect_cache(path)
    if not found.exists:
        typer.echo(f"no cache file at {path}: nothing to clear")
        return
    if found.foreign:
        raise EvolkitError(f"{path} is an SQLite database that evolkit did not write; not touched")
    if found.problem:
        if model is not None:
            raise EvolkitError(
                f"{path} is unusable ({found.problem}), so one model's entries cannot be picked "
                "out; `evolkit cache clear` without --model removes the whole file"
            )
        why = "in use by another process (a run still going?)" if found.locked else "unusable"
        if not yes:
            typer.confirm(f"{path} is {why}. Remove it?", abort=True)
        removed = remove_cache_file(path)
        typer.echo(f"removed {', '.join(str(p) for p in removed)}")
        return
    if model is None:
        n = found.entries
        what = f"all {n} entries"
    else:
        matching = {m: c for m, c in found.per_model.items() if m.startswith(model)}
        n = sum(matching.values())
        if not matching:
            known = ", ".join(found.per_model) or "none"
            typer.echo(f"no entries for a model id starting with '{model}' (models: {known})")
            return
        what = f"{n} entries of {', '.join(matching)}"
    if not yes:
        typer.confirm(f"Remove {what} from {path}?", abort=True)
    store = CallCache(path)
    try:
        removed_n = store.clear(model)
    finally:
        store.close()
    typer.echo(f"removed {removed_n} entries from {path}")
    if found.legacy_entries:
        typer.echo(f"also dropped {found.legacy_entries} entries from a previous evolkit")
