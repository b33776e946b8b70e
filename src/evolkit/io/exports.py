"""Training-ready exports: Alpaca and ShareGPT for LLaMA-Factory, OpenAI messages for TRL.

The point of evolkit is data someone trains on, so an export writes exactly what the trainer
reads, plus (for LLaMA-Factory) the ``dataset_info.json`` entry that registers the file. Rows a
trainer cannot learn from are left out and counted: rows without a response, and rows a rule
rejected. A system prompt is always carried over; turns that surrounded the first exchange in a
source conversation are restored only while the record still holds that exchange (see
`evolkit.io.readers.turns_anchor`), since after an evolution or a new response they no longer fit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evolkit.errors import EvolkitError
from evolkit.io.readers import (
    META_CONVERSATION,
    META_HISTORY,
    META_SYSTEM,
    META_TURNS_ANCHOR,
    turns_anchor,
)
from evolkit.io.writers import atomic_text
from evolkit.records import Record

log = logging.getLogger(__name__)

ExportFormat = Literal["alpaca", "sharegpt", "messages"]
EXPORT_FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "messages")
#: `evolkit export --format` choices: training formats, then full records (lineage, scores,
#: verdicts) as JSONL, Parquet or a saved HF dataset folder.
TRAINING_FORMATS = EXPORT_FORMATS
RECORD_FORMATS: tuple[str, ...] = ("jsonl", "parquet", "hf")

_SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}

Turn = dict[str, Any]


@dataclass
class ExportResult:
    """What an export wrote: the files, the rows written and the rows left out (and why)."""

    paths: list[Path] = field(default_factory=list)
    written: int = 0
    skipped_empty_output: int = 0
    skipped_rejected: int = 0


def export_records(
    records: Iterable[Record],
    out_path: str | Path,
    format: ExportFormat,
    dataset_name: str | None = None,
) -> list[Path]:
    """Export records for training; returns the files written (see `export_dataset`)."""
    return export_dataset(records, out_path, format, dataset_name).paths


def export_dataset(
    records: Iterable[Record],
    out_path: str | Path,
    format: ExportFormat,
    dataset_name: str | None = None,
) -> ExportResult:
    """Export records and report what was written and what was skipped.

    - ``alpaca``: a JSON list of instruction/input/output (+ system, + history), and an entry in
      ``dataset_info.json`` next to it (merged into an existing file).
    - ``sharegpt``: a JSON list of ``{"conversations": [...], "system"?}``, and its entry.
    - ``messages``: JSONL of ``{"messages": [...]}``, the conversational format TRL's
      ``SFTTrainer`` takes.

    ``dataset_name`` names the LLaMA-Factory entry (default: the file's stem).
    """
    if format not in EXPORT_FORMATS:
        raise EvolkitError(
            f"unknown export format '{format}' (expected {', '.join(EXPORT_FORMATS)})"
        )
    out = Path(out_path)
    result = ExportResult()
    trainable = _trainable(records, result)

    if format == "messages":
        # JSONL streams: nothing needs to see all rows before the first one is written.
        with atomic_text(out) as f:
            for record in trainable:
                f.write(json.dumps({"messages": _messages(record)}, ensure_ascii=False) + "\n")
                result.written += 1
        result.paths = [out]
    else:
        to_row = _alpaca_row if format == "alpaca" else _sharegpt_row
        rows = [to_row(r) for r in trainable]
        result.written = len(rows)
        # Every row carries the same keys, so the loader sees one schema; the optional columns
        # exist only when some row uses them (LLaMA-Factory looks up every mapped column).
        has_system = any("system" in r for r in rows)
        has_history = any("history" in r for r in rows)
        for r in rows:
            if has_system:
                r.setdefault("system", "")
            if has_history:
                r.setdefault("history", [])
        with atomic_text(out) as f:
            f.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        entry = _dataset_info_entry(out.name, format, has_system, has_history)
        info_path = out.parent / "dataset_info.json"
        _merge_dataset_info(info_path, dataset_name or out.stem, entry)
        result.paths = [out, info_path]

    skipped = result.skipped_empty_output + result.skipped_rejected
    if skipped:
        log.warning(
            "%s: exported %d rows; skipped %d without a response and %d rejected",
            out,
            result.written,
            result.skipped_empty_output,
            result.skipped_rejected,
        )
    return result


def _trainable(records: Iterable[Record], result: ExportResult) -> Iterator[Record]:
    """Rows a trainer can learn from; the others are counted in ``result``."""
    for record in records:
        if record.rejected:
            result.skipped_rejected += 1
        elif not record.output.strip():
            result.skipped_empty_output += 1
        else:
            yield record


# --------------------------------------------------------------------------- turns


def _system(record: Record) -> str:
    value = record.meta.get(META_SYSTEM)
    return value if isinstance(value, str) else ""


def _clean_turns(value: Any) -> list[Turn]:
    if not isinstance(value, list):
        return []
    return [
        dict(t)
        for t in value
        if isinstance(t, Mapping)
        and isinstance(t.get("role"), str)
        and isinstance(t.get("content"), str)
    ]


def _chain(record: Record) -> tuple[list[Turn], list[Turn]]:
    """(turns before the query, turns after the response) when they still belong to it.

    Trailing turns after the last assistant reply are dropped: a training row must end with a
    response.
    """
    meta = record.meta
    if meta.get(META_TURNS_ANCHOR) != turns_anchor(record.instruction, record.input, record.output):
        return [], []
    before = _clean_turns(meta.get(META_HISTORY))
    after = _clean_turns(meta.get(META_CONVERSATION))
    while after and after[-1]["role"] != "assistant":
        after.pop()
    return before, after


def _messages(record: Record) -> list[Turn]:
    before, after = _chain(record)
    system = _system(record)
    head: list[Turn] = [{"role": "system", "content": system}] if system else []
    exchange: list[Turn] = [
        {"role": "user", "content": record.query},
        {"role": "assistant", "content": record.output},
    ]
    return [*head, *before, *exchange, *after]


def prompt_completion_row(record: Record) -> dict[str, list[Turn]]:
    """TRL's conversational prompt-completion row: the loss falls on the completion only.

    The prompt is the system line, the turns before the query and the query; the completion is
    the response. Turns after the response (a longer conversation) are not part of the row.
    """
    before, _ = _chain(record)
    system = _system(record)
    head: list[Turn] = [{"role": "system", "content": system}] if system else []
    return {
        "prompt": [*head, *before, {"role": "user", "content": record.query}],
        "completion": [{"role": "assistant", "content": record.output}],
    }


def prompt_completion_rows(records: Iterable[Record]) -> list[dict[str, list[Turn]]]:
    """The trainable rows (kept, with a response) as prompt-completion rows."""
    return [prompt_completion_row(r) for r in _trainable(records, ExportResult())]


def _alternates(turns: list[Turn], odd: tuple[str, ...], even: tuple[str, ...]) -> bool:
    """LLaMA-Factory's rule: prompt roles at even positions, reply roles at odd, even length."""
    return len(turns) % 2 == 0 and all(
        t["role"] in (odd if i % 2 == 0 else even) for i, t in enumerate(turns)
    )


def _sharegpt_row(record: Record) -> dict[str, Any]:
    before, after = _chain(record)
    exchange: list[Turn] = [
        {"role": "user", "content": record.query},
        {"role": "assistant", "content": record.output},
    ]
    turns = [*before, *exchange, *after]
    allowed = (("user", "observation"), ("assistant", "function_call"))
    if not _alternates(turns, *allowed):
        turns = exchange  # the restored turns would make LLaMA-Factory drop the row
    row: dict[str, Any] = {
        "conversations": [
            {"from": _SHAREGPT_ROLE.get(t["role"], t["role"]), "value": t["content"]} for t in turns
        ]
    }
    system = _system(record)
    if system:
        row["system"] = system
    return row


def _alpaca_row(record: Record) -> dict[str, Any]:
    before, after = _chain(record)
    row: dict[str, Any] = {
        "instruction": record.instruction,
        "input": record.input,
        "output": record.output,
    }
    pairs: list[list[str]] = []
    if before or after:
        turns = [
            *before,
            {"role": "user", "content": record.query},
            {"role": "assistant", "content": record.output},
            *after,
        ]
        if _alternates(turns, ("user",), ("assistant",)):
            pairs = [
                [turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)
            ]
    if after and pairs:
        # The last exchange is what the model is trained to answer; the rest is history.
        last_q, last_a = pairs.pop()
        row = {"instruction": last_q, "input": "", "output": last_a}
    elif pairs:
        pairs.pop()  # the record's own exchange, kept apart as instruction/input/output
    system = _system(record)
    if system:
        row["system"] = system
    if pairs:
        row["history"] = pairs
    return row


# --------------------------------------------------------------------------- files


def _dataset_info_entry(
    file_name: str, format: str, has_system: bool, has_history: bool
) -> dict[str, Any]:
    if format == "alpaca":
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        if has_system:
            columns["system"] = "system"
        if has_history:
            columns["history"] = "history"
        return {"file_name": file_name, "columns": columns}
    columns = {"messages": "conversations"}
    if has_system:
        columns["system"] = "system"
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": dict(SHAREGPT_TAGS),
    }


def _merge_dataset_info(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Add or replace one entry, keeping every other dataset already registered there."""
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise EvolkitError(
                f"{path}: existing dataset_info.json is not valid JSON ({e})"
            ) from None
        if not isinstance(info, dict):
            raise EvolkitError(f"{path}: existing dataset_info.json is not a JSON object")
    info[name] = entry
    with atomic_text(path) as f:
        f.write(json.dumps(info, ensure_ascii=False, indent=2) + "\n")
