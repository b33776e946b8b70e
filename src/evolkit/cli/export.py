"""`evolkit export`: training-ready files from a run."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import typer

from evolkit.cli.common import app
from evolkit.console import console
from evolkit.errors import EvolkitError
from evolkit.io.exports import RECORD_FORMATS, TRAINING_FORMATS
from evolkit.runs import EVOLVED, SCORED, SELECTED

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
            help="alpaca/sharegpt/messages: training formats; jsonl/parquet/hf: full records "
            "(lineage, scores, verdicts) as JSONL, Parquet or a saved HF dataset folder.",
        ),
    ] = ExportFormat.alpaca,  # type: ignore[attr-defined]
    name: Annotated[str | None, typer.Option(help="Dataset name in dataset_info.json.")] = None,
) -> None:
    """Write training-ready data (Alpaca + LLaMA-Factory entry, ShareGPT, OpenAI messages) or
    the full records (JSONL, Parquet, HF dataset)."""
    from evolkit.io.exports import export_records
    from evolkit.io.readers import read_records

    src = run
    if run.is_dir() and not (run / "state.json").exists():
        candidates = [run / n for n in (EVOLVED, SELECTED, SCORED)]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise EvolkitError(
                f"{run}: no evolved.jsonl, selected.jsonl or scored.jsonl in this run"
            )
        src = found[0]
    records = list(read_records(src))
    if format.value in RECORD_FORMATS:
        from evolkit.io.writers import write_hf_dataset, write_jsonl, write_parquet

        writer = {"jsonl": write_jsonl, "parquet": write_parquet, "hf": write_hf_dataset}
        writer[format.value](records, out)
        console.print(f"wrote {out} ({len(records)} records)", markup=False, highlight=False)
        return
    training_format: Literal["alpaca", "sharegpt", "messages"] = format.value  # type: ignore[assignment]
    written = export_records(records, out, training_format, dataset_name=name)
    for p in written:
        console.print(f"wrote {p}", markup=False, highlight=False)
