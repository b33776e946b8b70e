"""`evolkit autoif` (all six AutoIF steps) and `evolkit check-verifiers` (step 3 alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console, say
from evolkit.scenarios.autoif import AutoIFConfig
from evolkit.scenarios.check_verifiers import CheckConfig


def _run_autoif(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.autoif import autoif

    summary = autoif(args["constraints"], args["queries"], out, cfg)
    _print_autoif_summary(summary)


settings_command(
    app,
    "autoif",
    AutoIFConfig,
    _run_autoif,
    args=(
        Arg(
            "constraints",
            "Seed constraints, one per line (e.g. AutoIF's 36 seeds).",
            flags=("--constraints",),
        ),
        Arg(
            "queries",
            "User queries (repeatable): MT-Bench/Vicuna `turns`, Alpaca, ShareGPT, ... "
            "The first user turn is used.",
            flags=("--queries",),
            multiple=True,
        ),
    ),
    help="AutoIF: augment constraints, write and execute verifiers, back-translate, compose "
    "with queries, respond and keep only responses the verifiers accept.",
)


def _run_check(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.check_verifiers import check_verifiers

    summary = check_verifiers(args["file"], out, cfg)
    console.print(
        f"kept {summary['kept_constraints']} of {summary['input_rows']} constraints "
        f"({summary['functions_kept']} functions); rejected {summary['rejected_constraints']} "
        f"constraints and {summary['rejected_functions']} functions"
        + (f"; {summary['bad_records']} bad rows skipped" if summary["bad_records"] else ""),
        markup=False,
        highlight=False,
    )
    console.print(
        f"sandbox: {summary['sandbox'].get('isolation', 'not used')}",
        highlight=False,
        markup=False,
    )
    outs = summary["outputs"]
    say(f"kept: {outs['constraints']}")
    say(f"rejected (with verdicts): {outs['rejected']}")


settings_command(
    app,
    "check-verifiers",
    CheckConfig,
    _run_check,
    args=(
        Arg(
            "file",
            'JSONL rows {"constraint": str, "functions": [source], "cases": '
            '[{"input": str, "output": bool}]}',
        ),
    ),
    help="Cross-validate verifier functions against test cases by running them in the sandbox.",
    out_help="Folder to write.",
)


def _print_autoif_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="AutoIF: rows per step")
    for col in ("step", "in", "kept", "top rejection reasons"):
        table.add_column(col)
    for name, s in summary["steps"].items():
        reasons = []
        for kind, rules in s["rejected"].items():
            top = [(r, n) for r, n in rules.items() if r != "total"][:3]
            reasons.append(f"{kind}: " + ", ".join(f"{r} {n}" for r, n in top))
        n_in = s.get("inputs", s.get("calls", 0))
        table.add_row(name, str(n_in), str(s["kept"]), "; ".join(reasons))
    console.print(table)
    console.print(
        f"sandbox: {summary['sandbox'].get('isolation', 'not used')}",
        highlight=False,
        markup=False,
    )
    outs = summary["outputs"]
    for line in (
        f"verified constraints ({summary['kept_constraints']}): {outs['constraints']}",
        f"verified instructions ({summary['evolved']}): {outs['evolved']}",
        f"rejected rows (with step and reason): {outs['rejected']}",
        f"summary: {outs['summary']}",
    ):
        say(line)
