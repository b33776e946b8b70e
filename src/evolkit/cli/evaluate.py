"""`evolkit eval`: a thin wrapper over `evolkit.evaluate.evaluate`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from evolkit.cli.common import app
from evolkit.console import console


class Bench(str, Enum):
    ifeval = "ifeval"


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="'embedded' or a Hugging Face model folder.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Eval folder to write (and resume).")],
    bench: Annotated[Bench, typer.Option(help="Benchmark.")] = Bench.ifeval,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N prompts.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 16,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens per answer (lm-eval's IFEval uses 1280).")
    ] = 1280,
    seed: Annotated[int, typer.Option(help="Seed of the checkers' random draws.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Start the evaluation over in OUT.")] = False,
) -> None:
    """Answer a benchmark's prompts greedily and score them with its own checkers."""
    from evolkit.evaluate import evaluate

    s = evaluate(
        model,
        out,
        bench.value,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        overwrite=overwrite,
    )
    console.print(
        f"{s['bench']} on {s['prompts']} prompts ({s['instructions']} instructions), "
        f"model {s['model']}, {s['seconds']['total']} s"
    )
    console.print(
        f"  prompt-level strict {s['prompt_level_strict_acc']:.4f}   "
        f"instruction-level strict {s['inst_level_strict_acc']:.4f}"
    )
    console.print(
        f"  prompt-level loose  {s['prompt_level_loose_acc']:.4f}   "
        f"instruction-level loose  {s['inst_level_loose_acc']:.4f}"
    )
    console.print(f"summary: {s['outputs']['summary']}", markup=False, highlight=False)
