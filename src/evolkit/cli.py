"""The `evolkit` command line: thin wrappers over the Python API, one clear line per error."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from evolkit.console import console
from evolkit.errors import EvolkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolve instruction-tuning data with small language models, and measure what it made.",
    pretty_exceptions_enable=False,
)


class Backend(str, Enum):
    local = "local"
    openai = "openai"


class OnBad(str, Enum):
    error = "error"
    skip = "skip"


class Policy(str, Enum):
    rotate = "rotate"
    random = "random"
    fixed = "fixed"


class ExportFormat(str, Enum):
    alpaca = "alpaca"
    sharegpt = "sharegpt"
    messages = "messages"


BackendOpt = Annotated[
    Backend, typer.Option(help="Where models run: in-process transformers, or an HTTP server.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option(help="API key for --backend openai (default: $OPENAI_API_KEY).")
]
BatchOpt = Annotated[int, typer.Option(help="Rows per batch (and per generate call).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a run with another configuration in OUT.")]
CacheOpt = Annotated[
    Path | None, typer.Option(help="Call cache file (default: the per-user evolkit cache).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the call cache.")]


def _spec(model: str, backend: Backend, base_url: str | None, api_key: str | None, batch: int):
    from evolkit.models import ModelSpec

    return ModelSpec(
        model=model, backend=backend.value, base_url=base_url, api_key=api_key, batch_size=batch
    )


def _cache(cache: Path | None, no_cache: bool) -> str | Path | None:
    if no_cache:
        return None
    return cache if cache is not None else "default"


@app.command()
def evolve(
    input: Annotated[Path, typer.Argument(help="Seed instructions: JSONL/JSON/Parquet/CSV/HF dir.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (and resume).")],
    rounds: Annotated[int, typer.Option(help="Evolution rounds (the paper: 1 to 3).")] = 2,
    operations: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated operations (default all): add_constraint, deepen, concretize, "
            "add_reasoning, complicate_input, breadth."
        ),
    ] = None,
    policy: Annotated[Policy, typer.Option(help="How each row's operation is chosen.")] = Policy.rotate,
    seed: Annotated[int, typer.Option(help="Sampling and choice seed.")] = 0,
    evolver: Annotated[str, typer.Option(help="Evolver model: 'embedded', a folder or an id.")] = "embedded",
    responder: Annotated[str | None, typer.Option(help="Responder model (default: evolver).")] = None,
    judge: Annotated[str | None, typer.Option(help="Judge model (default: evolver).")] = None,
    backend: BackendOpt = Backend.local,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Max response tokens (paper: 2048).")] = 512,
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
    batch_size: BatchOpt = 8,
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
    cfg = EvolConfig(
        rounds=rounds,
        policy=policy.value,
        seed=seed,
        evolver=_spec(evolver, backend, base_url, api_key, batch_size),
        responder=_spec(responder or evolver, backend, base_url, api_key, batch_size),
        judge=_spec(judge or evolver, backend, base_url, api_key, batch_size),
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
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


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder (or a JSONL/Parquet file of records).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="File to write.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Training format.")] = ExportFormat.alpaca,
    name: Annotated[str | None, typer.Option(help="Dataset name in dataset_info.json.")] = None,
) -> None:
    """Write training-ready data (Alpaca + LLaMA-Factory entry, ShareGPT, or OpenAI messages)."""
    from evolkit.io.exports import export_records
    from evolkit.io.readers import read_records

    src = run
    if run.is_dir() and not (run / "state.json").exists():
        candidates = [run / n for n in ("evolved.jsonl", "selected.jsonl", "scored.jsonl")]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise EvolkitError(f"{run}: no evolved.jsonl, selected.jsonl or scored.jsonl in this run")
        src = found[0]
    records = list(read_records(src))
    written = export_records(records, out, format.value, dataset_name=name)
    for p in written:
        console.print(f"wrote {p}")


def main() -> None:
    """Entry point: user errors become one red line and exit code 1, never a traceback."""
    try:
        app()
    except EvolkitError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: run the same command again to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
