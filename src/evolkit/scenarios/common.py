"""What every scenario does around its stages: read input safely, open the run, summarise."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from evolkit.io.readers import BadRow, read_records
from evolkit.records import Record
from evolkit.runs import RunFolder


def load_input(
    path: str | Path, on_bad: str, limit: int | None
) -> tuple[list[Record], list[BadRow]]:
    """Read every record first so a bad row fails before any model loads."""
    bad: list[BadRow] = []
    sink: Callable[[BadRow], None] = bad.append
    records = list(read_records(path, on_bad=on_bad, bad_sink=sink, limit=limit))  # type: ignore[arg-type]
    return records, bad


def write_bad_rows(run: RunFolder, bad: list[BadRow]) -> None:
    if not bad:
        return
    with open(run.bad_path, "w", encoding="utf-8") as f:
        for row in bad:
            f.write(
                json.dumps({**row.to_dict(), "message": row.message}, ensure_ascii=False) + "\n"
            )
