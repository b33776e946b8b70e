"""`evolkit auto-evol`: Auto Evol-Instruct from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console, say
from evolkit.scenarios.auto_evol import AutoEvolConfig


def _run(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.auto_evol import auto_evol

    summary = auto_evol(args["input"], out, cfg, method=args.get("method"))
    print_auto_evol_summary(summary)


settings_command(
    app,
    "auto-evol",
    AutoEvolConfig,
    _run,
    args=(
        Arg("input", "Seed instructions: JSONL/JSON/Parquet/CSV or a saved HF dataset."),
        Arg(
            "method",
            "Starting evolving method (UTF-8 text; {instruction} marks where the instruction "
            "goes). Default: evolkit's universal method.",
            flags=("--method",),
            required=False,
        ),
    ),
    help="Auto Evol-Instruct: optimise the evolving method on a dev set, then evolve, answer "
    "and eliminate every seed with the best method.",
)


def print_auto_evol_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Auto Evol-Instruct: the method per optimisation step")
    for col in ("step", "method", "dev failure rate", "candidates (unparsed)", "changed"):
        table.add_column(col)
    opt = summary["optimisation"]
    rate = opt["initial_dev_failure_rate"]
    table.add_row("0", "step0-initial", _pct(rate), "-", "-")
    for s in opt["steps"]:
        table.add_row(
            str(s["step"]),
            s["chosen"],
            _pct(s["dev_failure_rate"]),
            f"{s['candidates']} ({s['candidates_unparsed']})",
            "yes" if s["changed"] else "no",
        )
    console.print(table)
    final = summary["final"]
    reasons = ", ".join(f"{k} {v}" for k, v in list(final["rejected_by_rule"].items())[:3])
    lines = [
        f"final evolution with {summary['best_method']['version']}: kept {final['kept']} of "
        f"{final['evolved']}" + (f" (rejected: {reasons})" if reasons else ""),
        f"distinct methods listed in trajectories: "
        f"{summary['trajectory_methods']['distinct_methods']}",
    ]
    outs = summary["outputs"]
    lines += [
        f"kept rows: {outs['evolved']}",
        f"rejected rows (with reasons): {outs['rejected']}",
        f"methods: {outs['methods']} (texts in {outs['methods_dir']})",
        f"summary: {outs['summary']}",
    ]
    for line in lines:
        say(line)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"
