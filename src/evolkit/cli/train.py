"""`evolkit train` and `evolkit train-eval`: fine-tune on evolkit data, and the study's
experiment in miniature (train on each run's data, evaluate every model on IFEval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console
from evolkit.train import TrainConfig


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _run_train(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.train import train

    s = train(args["data"], out, cfg)
    _say(
        f"trained {s['method']} on {s['rows']} rows: {s['steps']} steps, loss "
        f"{s['first_loss']} -> {s['last_loss']}, {s['seconds']['train']} s"
    )
    _say(f"model: {s['outputs']['model']}  (evaluate it: evolkit eval {out} -o EVAL)")


settings_command(
    app,
    "train",
    TrainConfig,
    _run_train,
    args=(Arg("data", "A run folder or a data file (an export, or any format evolkit reads)."),),
    help="Fine-tune a model on a run's rows with TRL (loss on the responses only).",
    out_help="Run folder to write: the model goes to OUT/model (resumes after a kill).",
)
