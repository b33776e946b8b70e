"""`evolkit score` and `evolkit select`: IFD / IC-IFD scoring, and selection from stored scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console, say
from evolkit.scenarios.score import ScoreConfig, SelectConfig


def _run_score(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.score import score

    summary = score(args["input"], out, cfg)
    s = summary["scores"]
    console.print(
        f"scored {summary['scored']} rows ({summary['unscorable']} unscorable, "
        f"{summary['truncated']} truncated) at {summary['rows_per_s']} rows/s; "
        f"mean IFD {s['ifd'].get('mean')}, mean IC-IFD {s['ic_ifd'].get('mean')}",
        markup=False,
        highlight=False,
    )
    say(f"scored rows: {summary['outputs']['scored']}")


settings_command(
    app,
    "score",
    ScoreConfig,
    _run_score,
    args=(Arg("input", "Rows with instruction/input/output (any format)."),),
    help="Compute L(Q), L(A|Q), L(A), IFD and IC-IFD for every row.",
)


def _run_select(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.score import select_run

    summary = select_run(args["input"], out, cfg)
    console.print(
        f"kept {summary['kept']} of {summary['rows']} rows by {summary['by']}",
        markup=False,
        highlight=False,
    )
    for rule, n in summary["removed_by_rule"].items():
        say(f"  removed by {rule}: {n}")
    say(f"selected rows: {summary['outputs']['selected']}")


settings_command(
    app,
    "select",
    SelectConfig,
    _run_select,
    args=(Arg("input", "A scored run folder or a file of scored rows."),),
    help="Keep the top rows by a stored score; no model runs.",
    out_help="Folder to write.",
)
