"""`evolkit autoif` (all six AutoIF steps) and `evolkit check-verifiers` (step 3 alone)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from evolkit.cli.common import (
    ApiKeyOpt,
    Backend,
    BackendOpt,
    BaseUrlOpt,
    BatchOpt,
    CacheOpt,
    NoCacheOpt,
    OnBad,
    OverwriteOpt,
    RepetitionPenaltyOpt,
    _cache,
    app,
    role_specs,
)
from evolkit.console import console


class Isolation(str, Enum):
    auto = "auto"
    bwrap = "bwrap"
    unshare = "unshare"
    rlimits = "rlimits"


IsolationOpt = Annotated[
    Isolation,
    typer.Option(help="Sandbox isolation: auto picks the strongest that works here."),
]
WorkersOpt = Annotated[int, typer.Option(help="Sandbox worker processes.")]
TimeoutOpt = Annotated[float, typer.Option(help="Wall-clock seconds per verifier call.")]
MinAccOpt = Annotated[
    float,
    typer.Option(help="Keep functions with at least this accuracy on kept cases (orig. 0.8)."),
]
MinFuncOpt = Annotated[
    int, typer.Option(help="Keep constraints with at least this many functions (orig. 3).")
]
MinCasesOpt = Annotated[
    int, typer.Option(help="Keep constraints with at least this many cases (orig. 10).")
]
BothLabelsOpt = Annotated[
    bool,
    typer.Option(
        "--require-both-labels/--allow-one-sided-cases",
        help="Drop constraints whose kept cases are all True (or all False): a constant "
        "function would pass them (not in the original).",
    ),
]


@app.command()
def autoif(
    constraints: Annotated[
        Path, typer.Option(help="Seed constraints, one per line (e.g. AutoIF's 36 seeds).")
    ],
    queries: Annotated[
        list[Path],
        typer.Option(
            help="User queries (repeatable): MT-Bench/Vicuna `turns`, Alpaca, ShareGPT, ... "
            "The first user turn is used."
        ),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (and resume).")],
    evolver: Annotated[
        str, typer.Option(help="Model writing constraints, verifiers, back-translations.")
    ] = "embedded",
    responder: Annotated[
        str | None,
        typer.Option(help="Model answering the composed instructions (default: evolver)."),
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="Model judging back-translations/quality (default: evolver).")
    ] = None,
    backend: BackendOpt = Backend.local,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    augment_calls: Annotated[
        int,
        typer.Option(
            help="Augmentation calls (original: 100; try 1-5 on a laptop; 0 = seeds only)."
        ),
    ] = 100,
    per_call: Annotated[
        int, typer.Option(help="New constraints asked per call (original: 50).")
    ] = 50,
    limit_seeds: Annotated[
        int | None, typer.Option(help="Use only the first N seed constraints.")
    ] = None,
    include_seeds: Annotated[
        bool, typer.Option(help="Verify the seed constraints too, not only the new ones.")
    ] = True,
    functions: Annotated[
        int,
        typer.Option(
            "--functions", "-k", help="Candidate verifiers per constraint (original K: 8)."
        ),
    ] = 8,
    min_accuracy: MinAccOpt = 0.8,
    min_functions: MinFuncOpt = 3,
    min_cases: MinCasesOpt = 10,
    require_both_labels: BothLabelsOpt = True,
    backtranslate_functions: Annotated[
        int, typer.Option(help="Kept functions back-translated per constraint (original: 3).")
    ] = 3,
    queries_per_constraint: Annotated[
        int, typer.Option(help="Queries paired with each kept constraint (original: 16).")
    ] = 16,
    min_pass_rate: Annotated[
        float,
        typer.Option(
            help="Keep responses passing at least this share of the verifiers; one pass is "
            "always needed (original: any pass, i.e. 0.0)."
        ),
    ] = 0.0,
    quality_judge: Annotated[
        bool, typer.Option(help="Also score each verified pair with the judge (original: on).")
    ] = False,
    quality_threshold: Annotated[
        float, typer.Option(help="With --quality-judge keep scores above this (original: 8 of 10).")
    ] = 8.0,
    max_new_tokens: Annotated[int, typer.Option(help="Max response tokens.")] = 512,
    repetition_penalty: RepetitionPenaltyOpt = 1.15,
    verifier_max_new_tokens: Annotated[
        int, typer.Option(help="Max tokens of one verifier answer (function + cases).")
    ] = 384,
    augment_max_new_tokens: Annotated[
        int, typer.Option(help="Max tokens of one augmentation answer.")
    ] = 1024,
    temperature: Annotated[float, typer.Option(help="Sampling temperature for writing.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling for writing.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Sampling and query-draw seed.")] = 0,
    timeout: TimeoutOpt = 2.0,
    sandbox_workers: WorkersOpt = 2,
    isolation: IsolationOpt = Isolation.auto,
    on_bad_record: Annotated[
        OnBad, typer.Option(help="Bad query rows: error stops; skip writes bad_records.jsonl.")
    ] = OnBad.error,
    batch_size: BatchOpt = 16,
    overwrite: OverwriteOpt = False,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """AutoIF: augment constraints, write and execute verifiers, back-translate, compose with
    queries, respond and keep only responses the verifiers accept."""
    from evolkit.scenarios.autoif import AutoIFConfig
    from evolkit.scenarios.autoif import autoif as run_autoif

    roles = role_specs(evolver, responder, judge, backend, base_url, api_key, batch_size)
    cfg = AutoIFConfig(
        augment_calls=augment_calls,
        per_call=per_call,
        include_seeds=include_seeds,
        limit_seeds=limit_seeds,
        augment_max_new_tokens=augment_max_new_tokens,
        functions_per_constraint=functions,
        verifier_max_new_tokens=verifier_max_new_tokens,
        min_accuracy=min_accuracy,
        min_functions=min_functions,
        min_cases=min_cases,
        require_both_labels=require_both_labels,
        sandbox_timeout=timeout,
        backtranslate_functions=backtranslate_functions,
        queries_per_constraint=queries_per_constraint,
        min_pass_rate=min_pass_rate,
        quality_judge=quality_judge,
        quality_threshold=quality_threshold,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        evolver=roles[0],
        responder=roles[1],
        judge=roles[2],
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        on_bad_record=on_bad_record.value,
    )
    summary = run_autoif(
        constraints,
        queries,
        out,
        cfg,
        overwrite=overwrite,
        batch_size=batch_size,
        cache=_cache(cache, no_cache),
        sandbox_workers=sandbox_workers,
        isolation=isolation.value,
    )
    _print_autoif_summary(summary)


@app.command("check-verifiers")
def check_verifiers(
    file: Annotated[
        Path,
        typer.Argument(
            help='JSONL rows {"constraint": str, "functions": [source], "cases": '
            '[{"input": str, "output": bool}]}'
        ),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write.")],
    min_accuracy: MinAccOpt = 0.8,
    min_functions: MinFuncOpt = 3,
    min_cases: MinCasesOpt = 10,
    require_both_labels: BothLabelsOpt = True,
    timeout: TimeoutOpt = 2.0,
    sandbox_workers: WorkersOpt = 2,
    isolation: IsolationOpt = Isolation.auto,
    on_bad_record: Annotated[
        OnBad, typer.Option(help="error: stop at a bad row; skip: write it to bad_records.jsonl.")
    ] = OnBad.error,
    batch_size: Annotated[int, typer.Option(help="Constraints per sandbox batch.")] = 32,
    overwrite: OverwriteOpt = False,
) -> None:
    """Cross-validate verifier functions against test cases by running them in the sandbox."""
    from evolkit.sandbox import SandboxLimits
    from evolkit.scenarios.check_verifiers import check_verifiers as run_check
    from evolkit.stages.crossval import CrossValConfig

    summary = run_check(
        file,
        out,
        CrossValConfig(min_accuracy=min_accuracy, min_functions=min_functions, min_cases=min_cases),
        on_bad_record=on_bad_record.value,
        require_both_labels=require_both_labels,
        limits=SandboxLimits(wall_seconds=timeout),
        overwrite=overwrite,
        batch_size=batch_size,
        sandbox_workers=sandbox_workers,
        isolation=isolation.value,
    )
    console.print(
        f"kept {summary['kept_constraints']} of {summary['input_rows']} constraints "
        f"({summary['functions_kept']} functions); rejected {summary['rejected_constraints']} "
        f"constraints and {summary['rejected_functions']} functions"
        + (f"; {summary['bad_records']} bad rows skipped" if summary["bad_records"] else "")
    )
    console.print(f"sandbox: {summary['sandbox']['isolation']}", highlight=False)
    outs = summary["outputs"]
    console.print(f"[green]kept:[/] {outs['constraints']}")
    console.print(f"[yellow]rejected (with verdicts):[/] {outs['rejected']}")


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
    console.print(f"sandbox: {summary['sandbox']['isolation']}", highlight=False)
    outs = summary["outputs"]
    console.print(
        f"[green]verified constraints ({summary['kept_constraints']}):[/] {outs['constraints']}"
    )
    console.print(f"[green]verified instructions ({summary['evolved']}):[/] {outs['evolved']}")
    console.print(f"[yellow]rejected rows (with step and reason):[/] {outs['rejected']}")
    console.print(f"summary: {outs['summary']}")
