"""`evolkit score` and `evolkit select`: IFD / IC-IFD scoring, and selection from stored scores."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from evolkit.cli.common import OnBad, OverwriteOpt, app
from evolkit.console import console
from evolkit.errors import EvolkitError


class Template(str, Enum):
    plain = "plain"
    alpaca = "alpaca"
    chat = "chat"


class By(str, Enum):
    ic_ifd = "ic_ifd"
    ifd = "ifd"
    length = "length"
    loss_q = "loss_q"


@app.command()
def score(
    input: Annotated[Path, typer.Argument(help="Rows with instruction/input/output (any format).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (and resume).")],
    scorer: Annotated[
        str, typer.Option(help="Scoring model: 'embedded' or a folder.")
    ] = "embedded",
    template: Annotated[
        Template, typer.Option(help="Text layout scored: plain (the paper's), alpaca, chat.")
    ] = Template.plain,
    max_length: Annotated[int, typer.Option(help="Tokens per sequence; the tail is cut.")] = 2048,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    limit: Annotated[int | None, typer.Option(help="Score only the first N rows.")] = None,
    on_bad_record: Annotated[
        OnBad, typer.Option(help="error: stop at a bad row; skip: write it to bad_records.jsonl.")
    ] = OnBad.error,
    overwrite: OverwriteOpt = False,
) -> None:
    """Compute L(Q), L(A|Q), L(A), IFD and IC-IFD for every row."""
    from evolkit.scenarios.score import ScoreConfig
    from evolkit.scenarios.score import score as run_score

    cfg = ScoreConfig(
        scorer=scorer,
        template=template.value,
        max_length=max_length,
        batch_size=batch_size,
        limit=limit,
        on_bad_record=on_bad_record.value,
    )
    summary = run_score(input, out, cfg, overwrite=overwrite)
    s = summary["scores"]
    console.print(
        f"scored {summary['scored']} rows ({summary['unscorable']} unscorable, "
        f"{summary['truncated']} truncated) at {summary['rows_per_s']} rows/s; "
        f"mean IFD {s['ifd'].get('mean')}, mean IC-IFD {s['ic_ifd'].get('mean')}"
    )
    console.print(f"[green]scored rows:[/] {summary['outputs']['scored']}")


@app.command("select")
def select_cmd(
    input: Annotated[Path, typer.Argument(help="A scored run folder or a file of scored rows.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write.")],
    by: Annotated[By, typer.Option(help="Score to rank by (descending).")] = By.ic_ifd,
    top: Annotated[str, typer.Option(help="How many to keep: '25%', '0.25' or a count.")] = "25%",
    drop_ifd_at_or_above: Annotated[
        str,
        typer.Option(help="Drop rows with IFD at or above this first (paper: 1.0); 'none': off."),
    ] = "1.0",
) -> None:
    """Keep the top rows by a stored score; no model runs."""
    from evolkit.scenarios.score import select_run
    from evolkit.selection import parse_top

    limit: float | None = None
    if drop_ifd_at_or_above.lower() not in ("none", "off", ""):
        try:
            limit = float(drop_ifd_at_or_above)
        except ValueError as exc:
            raise EvolkitError(
                f"--drop-ifd-at-or-above: expected a number or 'none', not {drop_ifd_at_or_above!r}"
            ) from exc
    summary = select_run(input, out, by=by.value, top=parse_top(top), drop_ifd_at_or_above=limit)
    console.print(f"kept {summary['kept']} of {summary['rows']} rows by {by.value}")
    for rule, n in summary["removed_by_rule"].items():
        console.print(f"  removed by {rule}: {n}")
    console.print(f"[green]selected rows:[/] {summary['outputs']['selected']}")
