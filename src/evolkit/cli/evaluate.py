"""`evolkit eval`: a thin wrapper over `evolkit.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkit.cli.common import app
from evolkit.cli.options import Arg, settings_command
from evolkit.console import console, say
from evolkit.evaluate import EvalConfig


def print_figures(s: dict[str, Any]) -> None:
    """The four standard figures in two lines (also used by `train-eval`)."""
    console.print(
        f"  prompt-level strict {s['prompt_level_strict_acc']:.4f}   "
        f"instruction-level strict {s['inst_level_strict_acc']:.4f}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"  prompt-level loose  {s['prompt_level_loose_acc']:.4f}   "
        f"instruction-level loose  {s['inst_level_loose_acc']:.4f}",
        markup=False,
        highlight=False,
    )


def _run(cfg: Any, args: dict[str, Any], out: Path) -> None:
    from evolkit.evaluate import evaluate

    s = evaluate(str(args["model"]), out, cfg)
    console.print(
        f"{s['bench']} on {s['prompts']} prompts ({s['instructions']} instructions), "
        f"model {s['model']}, {s['seconds']['total']} s",
        markup=False,
        highlight=False,
    )
    print_figures(s)
    say(f"summary: {s['outputs']['summary']}")


settings_command(
    app,
    "eval",
    EvalConfig,
    _run,
    args=(
        Arg(
            "model",
            "'embedded', a Hugging Face model folder, a `train` run folder, or a model name "
            "on the --backend openai server.",
        ),
    ),
    help="Answer a benchmark's prompts greedily and score them with its own checkers.",
    out_help="Eval run folder to write (and resume).",
)
