"""`evolkit analyze` (measures of one run) and `evolkit compare` (runs side by side, as HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import say
from evolkit.scenarios.analyze import AnalyzeConfig, CompareConfig


def _headline(name: str, h: dict[str, Any]) -> str:
    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3g}"

    return (
        f"{name}: {h.get('rows')} evolved rows; mean difficulty {f(h.get('mean_difficulty'))}, "
        f"hard+ {f(h.get('hard_share'), True)}; top-1 (first 5) {f(h.get('mean_top1_first5'))}"
        f", > 0.9 {f(h.get('share_top1_first5_above_0.9'), True)}; mean min-NN "
        f"{f(h.get('mean_min_nn_distance'))}, near-duplicates {f(h.get('near_duplicates'))}"
    )


def _run_analyze(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.analyze import analyze

    summary = analyze(args["run"], out, cfg)
    say(_headline(Path(summary["run"]).name, summary["figures"]["headline"]))
    say(f"measured rows: {summary['outputs']['measures']}")


settings_command(
    app,
    "analyze",
    AnalyzeConfig,
    _run_analyze,
    args=(Arg("run", "A run folder (evolve, autoif, score) or a rows file."),),
    help="Measure a run's rows: output space, difficulty and diversity (scores per row).",
    out_help="Analysis folder to write (and resume); the run folder is only read.",
)


def _run_compare(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.scenarios.analyze import compare

    summary = compare(args["runs"], out, cfg)
    for run in summary["runs"]:
        say(_headline(run["name"], run["headline"]))
    say(f"report: {summary['report']}")


settings_command(
    app,
    "compare",
    CompareConfig,
    _run_compare,
    args=(
        Arg(
            "runs",
            "Run folders (or analysis folders) to compare; runs not analysed yet are "
            "analysed into REPORT/<name>/.",
            multiple=True,
        ),
    ),
    help="Compare runs in one self-contained HTML report (report.html + summary.json).",
    out_help="Report folder: report.html, summary.json and the analyses made on the way.",
)
