"""`evolkit train` and `evolkit train-eval`: fine-tune on evolkit data, and the study's
experiment in miniature (train on each run's data, evaluate every model on IFEval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import say
from evolkit.scenarios.train_eval import TrainEvalConfig
from evolkit.train import TrainConfig


def _run_train(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.train import train

    s = train(args["data"], out, cfg)
    say(
        f"trained {s['method']} on {s['rows']} rows: {s['steps']} steps, loss "
        f"{s['first_loss']} -> {s['last_loss']}, {s['seconds']['train']} s"
    )
    say(f"model: {s['outputs']['model']}  (evaluate it: evolkit eval {out} -o EVAL)")


settings_command(
    app,
    "train",
    TrainConfig,
    _run_train,
    args=(Arg("data", "A run folder or a data file (an export, or any format evolkit reads)."),),
    help="Fine-tune a model on a run's rows with TRL (loss on the responses only).",
    out_help="Run folder to write: the model goes to OUT/model (resumes after a kill).",
)


def _run_train_eval(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.report.train_eval import FIGURE_LABELS, verdict
    from evolkit.scenarios.train_eval import train_eval

    result = train_eval([str(r) for r in args["runs"]], out, cfg)
    te = result["train_eval"]
    conf = f"{round(100 * te['confidence'])}%"
    say(f"IFEval, prompt-level strict, {conf} bootstrap intervals over prompts:")
    key = "prompt_level_strict_acc"
    for m in te["models"]:
        iv = m["intervals"][key]
        line = f"  {m['name']:<16} {iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"
        diff = (m.get("vs_base") or {}).get(key)
        if diff:
            line += (
                f"   vs base {diff['value']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
                f" {verdict(diff)}"
            )
        say(line)
    say(f"all four figures ({', '.join(FIGURE_LABELS.values())}) in the report:")
    say(f"report: {result['report']}")


settings_command(
    app,
    "train-eval",
    TrainEvalConfig,
    _run_train_eval,
    args=(
        Arg(
            "runs",
            "Run folders or data files: one model is trained on each (and on each --select).",
            multiple=True,
        ),
    ),
    help="Train a model on each run's rows (same size, settings and base), evaluate each and "
    "the base on IFEval, and report the figures with bootstrap intervals.",
    out_help="Report folder (resumable): report.html, summary.json, one sub-folder per model.",
)
