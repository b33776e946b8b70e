"""Reading, writing and exporting instruction records.

`read_records` turns any supported file or saved Hugging Face dataset into records; the writers
produce run outputs (crash-safe JSONL appends) and whole files (JSONL, Parquet, HF dataset);
`export_records` writes training-ready Alpaca, ShareGPT or OpenAI-messages data.
"""

from __future__ import annotations

from evolkit.io.exports import (
    EXPORT_FORMATS,
    ExportFormat,
    ExportResult,
    export_dataset,
    export_records,
)
from evolkit.io.readers import BadRow, RowError, read_records, record_from_row, turns_anchor
from evolkit.io.writers import (
    JsonlAppender,
    arrow_schema,
    read_jsonl_tolerant,
    write_hf_dataset,
    write_jsonl,
    write_parquet,
)

__all__ = [
    "EXPORT_FORMATS",
    "BadRow",
    "ExportFormat",
    "ExportResult",
    "JsonlAppender",
    "RowError",
    "arrow_schema",
    "export_dataset",
    "export_records",
    "read_jsonl_tolerant",
    "read_records",
    "record_from_row",
    "turns_anchor",
    "write_hf_dataset",
    "write_jsonl",
    "write_parquet",
]
