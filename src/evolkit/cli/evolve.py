"""`evolkit evolve`: Evol-Instruct from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console, say
from evolkit.scenarios.evol_instruct import EvolConfig


def _run(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.evol_instruct import evolve

    summary = evolve(args["input"], out, cfg)
    print_evol_summary(summary)


settings_command(
    app,
    "evolve",
    EvolConfig,
    _run,
    args=(Arg("input", "Seed instructions: JSONL/JSON/Parquet/CSV or a saved HF dataset."),),
    help="Evolve seed instructions (Evol-Instruct): rewrite, eliminate failures, respond.",
)


def print_evol_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Evol-Instruct: kept rows per round")
    for col in ("round", "evolved", "kept", "kept rate", "top rejection reasons"):
        table.add_column(col)
    for r, s in summary["rounds"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(s["rejected_by_rule"].items())[:3])
        rate = f"{s['kept_rate']:.0%}" if s["kept_rate"] is not None else "-"
        table.add_row(str(r), str(s["evolved"]), str(s["kept"]), rate, reasons)
    console.print(table)
    outs = summary["outputs"]
    say(f"kept rows: {outs['evolved']}")
    say(f"rejected rows (with reasons): {outs['rejected']}")
    say(f"summary: {outs['summary']}")
