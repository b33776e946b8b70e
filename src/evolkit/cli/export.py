"""`evolkit export`: training-ready files from a run, a dataset card, and a push to the Hub."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from evolkit.cli.common import app
from evolkit.console import say
from evolkit.errors import EvolkitError
from evolkit.io.exports import PREFERENCE_FORMATS, RECORD_FORMATS, TRAINING_FORMATS
from evolkit.runs import CONFIG, EVOLVED, KEPT_FILES, REJECTED, SCORED, SELECTED

ExportFormat = Enum(  # type: ignore[misc]
    "ExportFormat", {f: f for f in (*TRAINING_FORMATS, *RECORD_FORMATS)}, type=str
)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder (or a JSONL/Parquet file of records).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="File to write.")],
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="alpaca/sharegpt (LLaMA-Factory), messages (TRL and LLaMA-Factory), "
            "prompt-completion (TRL, loss on the answer only), kto/dpo (AutoIF runs: TRL "
            "preference data from the verifiers' verdicts); jsonl/parquet/hf: full records "
            "(lineage, scores, verdicts).",
        ),
    ] = ExportFormat.alpaca,  # type: ignore[attr-defined]
    name: Annotated[str | None, typer.Option(help="Dataset name in dataset_info.json.")] = None,
    hub_card: Annotated[
        bool,
        typer.Option(
            "--hub-card",
            help="Also write README.md beside the export: a Hugging Face dataset card with the "
            "license, seeds, models, rules, counts and the run's configuration.",
        ),
    ] = False,
    license: Annotated[
        str, typer.Option("--license", help="The card's license id (e.g. apache-2.0).")
    ] = "unknown",
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            metavar="REPO",
            help="Upload the export and its card to this Hub dataset repository (implies "
            "--hub-card; needs a network and a Hugging Face token).",
            show_default=False,
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: create the repo private.")
    ] = False,
) -> None:
    """Write training-ready data (Alpaca, ShareGPT, messages, prompt-completion, KTO, DPO) or the
    full records (JSONL, Parquet, HF dataset), optionally with a dataset card, to the Hub."""
    from evolkit.io.exports import ExportResult, export_dataset, upload, write_card
    from evolkit.io.readers import read_records

    src, folder = _source(run)
    records = list(read_records(src))
    fmt: str = format.value
    if fmt in RECORD_FORMATS:
        from evolkit.io.writers import write_hf_dataset, write_jsonl, write_parquet

        writer: Any = {"jsonl": write_jsonl, "parquet": write_parquet, "hf": write_hf_dataset}
        n = writer[fmt](records, out)
        result = ExportResult(paths=[out], written=n, format=fmt)
        say(f"wrote {out} ({n} records)")
    else:
        rejected = []
        if fmt in PREFERENCE_FORMATS:
            rej = (folder or src.parent) / REJECTED
            rejected = list(read_records(rej)) if rej.exists() else []
        result = export_dataset(records, out, fmt, dataset_name=name, rejected=rejected)  # type: ignore[arg-type]
        for p in result.paths:
            say(f"wrote {p}")
        if fmt in PREFERENCE_FORMATS:
            say(
                f"{result.written} {fmt} rows from {result.desirable} accepted and "
                f"{result.undesirable} failed responses"
                + (
                    f"; {result.skipped_one_sided} prompts had responses on one side only"
                    if fmt == "dpo"
                    else ""
                )
            )
    paths = list(result.paths)
    if hub_card or push_to_hub:
        card = write_card(result, run_folder=folder, license=license, name=name)
        paths.append(card)
        say(f"wrote {card}")
    if push_to_hub:
        say(f"pushed to {upload(push_to_hub, paths, private=private)}")


def _source(run: Path) -> tuple[Path, Path | None]:
    """(the file of rows to export, the run folder it belongs to, if any)."""
    if not run.exists():
        raise EvolkitError(f"{run}: no such run folder or file")
    if run.is_dir() and not (run / "state.json").exists():
        command = _command(run)
        names = [KEPT_FILES[command]] if command in KEPT_FILES else []
        names += [n for n in (EVOLVED, SELECTED, SCORED) if n not in names]
        found = [run / n for n in names if (run / n).exists()]
        if not found:
            raise EvolkitError(
                f"{run}: no evolved.jsonl, selected.jsonl or scored.jsonl in this run"
            )
        return found[0], run
    # A file inside a run folder still belongs to that run (its card, its rejected rows).
    parent = run.parent if (run.parent / CONFIG).exists() else None
    return run, parent


def _command(folder: Path) -> str | None:
    try:
        data = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None
