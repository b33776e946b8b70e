"""`evolkit evolve`: Evol-Instruct from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    Policy,
    RepetitionPenaltyOpt,
    _cache,
    app,
    role_specs,
)
from evolkit.console import console


@app.command()
def evolve(
    input: Annotated[
        Path, typer.Argument(help="Seed instructions: JSONL/JSON/Parquet/CSV/HF dir.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (and resume).")],
    rounds: Annotated[int, typer.Option(help="Evolution rounds (the paper: 1 to 3).")] = 2,
    operations: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated operations (default all): add_constraint, deepen, concretize, "
            "add_reasoning, complicate_input, breadth."
        ),
    ] = None,
    policy: Annotated[
        Policy, typer.Option(help="How each row's operation is chosen.")
    ] = Policy.rotate,
    seed: Annotated[int, typer.Option(help="Sampling and choice seed.")] = 0,
    evolver: Annotated[
        str, typer.Option(help="Evolver model: 'embedded', a folder or an id.")
    ] = "embedded",
    responder: Annotated[
        str | None, typer.Option(help="Responder model (default: evolver).")
    ] = None,
    judge: Annotated[str | None, typer.Option(help="Judge model (default: evolver).")] = None,
    backend: BackendOpt = Backend.local,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Max response tokens (paper: 2048).")] = 512,
    repetition_penalty: RepetitionPenaltyOpt = 1.15,
    attempts: Annotated[
        int, typer.Option(help="Tries per evolution when a rewrite fails a cheap rule (1 = once).")
    ] = 3,
    temperature: Annotated[float, typer.Option(help="Evolution sampling temperature.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Evolution nucleus sampling.")] = 0.95,
    rules: Annotated[
        str | None, typer.Option(help="Comma-separated elimination rules to apply (default all).")
    ] = None,
    disable_rule: Annotated[
        list[str] | None, typer.Option("--disable-rule", help="Switch one rule off (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N seeds.")] = None,
    on_bad_record: Annotated[
        OnBad, typer.Option(help="error: stop at a bad row; skip: write it to bad_records.jsonl.")
    ] = OnBad.error,
    batch_size: BatchOpt = 16,
    overwrite: OverwriteOpt = False,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Evolve seed instructions (Evol-Instruct): rewrite, eliminate failures, respond."""
    from evolkit.scenarios.evol_instruct import EvolConfig
    from evolkit.scenarios.evol_instruct import evolve as run_evolve
    from evolkit.stages.rules import ALL_RULES

    chosen_rules = [r.strip() for r in rules.split(",")] if rules else list(ALL_RULES)
    chosen_rules = [r for r in chosen_rules if r not in set(disable_rule or [])]
    roles = role_specs(evolver, responder, judge, backend, base_url, api_key, batch_size)
    cfg = EvolConfig(
        rounds=rounds,
        policy=policy.value,
        seed=seed,
        evolver=roles[0],
        responder=roles[1],
        judge=roles[2],
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        attempts=attempts,
        rules=chosen_rules,
        limit=limit,
        on_bad_record=on_bad_record.value,
    )
    if operations:
        cfg.operations = [o.strip() for o in operations.split(",") if o.strip()]
    summary = run_evolve(
        input, out, cfg, overwrite=overwrite, batch_size=batch_size, cache=_cache(cache, no_cache)
    )
    _print_evol_summary(summary)


def _print_evol_summary(summary: dict) -> None:
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
    console.print(f"[green]kept rows:[/] {outs['evolved']}")
    console.print(f"[yellow]rejected rows (with reasons):[/] {outs['rejected']}")
    console.print(f"summary: {outs['summary']}")
