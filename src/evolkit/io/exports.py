"""Training-ready exports: what TRL and LLaMA-Factory read, exactly.

- ``alpaca``, ``sharegpt``: LLaMA-Factory's two formats, each with its ``dataset_info.json`` entry;
- ``messages``: OpenAI messages (TRL's conversational format; LLaMA-Factory reads it as its
  "OpenAI format", registered in ``dataset_info.json`` too);
- ``prompt-completion``: TRL's conversational prompt-completion rows, so ``SFTTrainer`` puts the
  loss on the response only (with ``messages`` it learns the user turns too unless the chat
  template marks the assistant's part);
- ``kto`` and ``dpo`` (AutoIF runs): preference data from the verifiers' verdicts, as TRL's
  ``KTOTrainer`` (prompt, completion, label) and ``DPOTrainer`` (prompt, chosen, rejected) read it.

The point of evolkit is data someone trains on, so rows a trainer cannot learn from are left out
and counted: rows without a response, and rows a rule rejected. A system prompt is always carried
over; turns that surrounded the first exchange in a source conversation are restored only while
the record still holds that exchange (see `evolkit.io.readers.turns_anchor`), since after an
evolution or a new response they no longer fit.
"""

from __future__ import annotations

import json
import logging
import os
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
from evolkit.io.writers import atomic_text, write_jsonl
from evolkit.records import Record

log = logging.getLogger(__name__)

ExportFormat = Literal["alpaca", "sharegpt", "messages", "prompt-completion", "kto", "dpo"]
EXPORT_FORMATS: tuple[str, ...] = (
    "alpaca",
    "sharegpt",
    "messages",
    "prompt-completion",
    "kto",
    "dpo",
)
#: `evolkit export --format` choices: training formats, then full records (lineage, scores,
#: verdicts) as JSONL, Parquet or a saved HF dataset folder.
TRAINING_FORMATS = EXPORT_FORMATS
RECORD_FORMATS: tuple[str, ...] = ("jsonl", "parquet", "hf")
#: Formats built from the verifiers' verdicts: they need the run's rejected responses too.
PREFERENCE_FORMATS: tuple[str, ...] = ("kto", "dpo")
#: The verifier stage's rules for a response that failed its constraint's checks
#: (`evolkit.stages.verify_responses`); other rejections (empty, truncated, judged low quality)
#: say nothing about the constraint, so those responses are in neither side of the preference.
VERIFIER_FAILED = frozenset({"no_function_passed", "low_pass_rate"})

_SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}

OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}

Turn = dict[str, Any]


@dataclass
class ExportResult:
    """What an export wrote: the files, the rows written and the rows left out (and why)."""

    paths: list[Path] = field(default_factory=list)
    written: int = 0
    skipped_empty_output: int = 0
    skipped_rejected: int = 0
    #: kto: rows labelled desirable / undesirable; dpo: prompts with responses on one side only.
    desirable: int = 0
    undesirable: int = 0
    skipped_one_sided: int = 0
    format: str = ""


def export_records(
    records: Iterable[Record],
    out_path: str | Path,
    format: ExportFormat,
    dataset_name: str | None = None,
    *,
    rejected: Iterable[Record] = (),
) -> list[Path]:
    """Export records for training; returns the files written (see `export_dataset`)."""
    return export_dataset(records, out_path, format, dataset_name, rejected=rejected).paths


def training_rows(
    records: Iterable[Record], format: str, *, rejected: Iterable[Record] = ()
) -> tuple[list[dict[str, Any]], ExportResult]:
    """The rows of a training format, in memory (the Python API's ``to_dataset(format)``).

    `rejected` is the run's rejected rows; only ``kto`` and ``dpo`` read them (the responses
    the verifiers failed).
    """
    if format not in EXPORT_FORMATS:
        raise EvolkitError(
            f"unknown export format '{format}' (expected {', '.join(EXPORT_FORMATS)})"
        )
    result = ExportResult(format=format)
    if format in PREFERENCE_FORMATS:
        good, bad = _verified(records, rejected, result)
        rows = _kto_rows(good, bad, result) if format == "kto" else _dpo_rows(good, bad, result)
    else:
        to_row: Any = {
            "alpaca": _alpaca_row,
            "sharegpt": _sharegpt_row,
            "messages": lambda r: {"messages": _messages(r)},
            "prompt-completion": prompt_completion_row,
        }[format]
        rows = [to_row(r) for r in _trainable(records, result)]
    if format in ("alpaca", "sharegpt"):
        # Every row carries the same keys, so the loader sees one schema; the optional columns
        # exist only when some row uses them (LLaMA-Factory looks up every mapped column).
        for key, empty in (("system", ""), ("history", [])):
            if any(key in r for r in rows):
                for r in rows:
                    r.setdefault(key, empty)
    result.written = len(rows)
    return rows, result


def export_dataset(
    records: Iterable[Record],
    out_path: str | Path,
    format: ExportFormat,
    dataset_name: str | None = None,
    *,
    rejected: Iterable[Record] = (),
) -> ExportResult:
    """Export records and report what was written and what was skipped.

    - ``alpaca``: a JSON list of instruction/input/output (+ system, + history), and an entry in
      ``dataset_info.json`` next to it (merged into an existing file).
    - ``sharegpt``: a JSON list of ``{"conversations": [...], "system"?}``, and its entry.
    - ``messages``: JSONL of ``{"messages": [...]}``, the conversational format TRL's
      ``SFTTrainer`` takes and LLaMA-Factory's "OpenAI format" (with its entry).
    - ``prompt-completion``: JSONL of ``{"prompt": [...], "completion": [...]}`` (TRL: the loss
      falls on the completion only).
    - ``kto``: JSONL of ``{"prompt", "completion", "label"}``; ``label`` is whether the
      constraint's verifiers accepted the response (kept rows, and `rejected` rows the verifier
      rules rejected).
    - ``dpo``: JSONL of ``{"prompt", "chosen", "rejected"}`` for each prompt that has both an
      accepted and a failed response (``autoif --responses-per-query K`` makes them).

    ``dataset_name`` names the LLaMA-Factory entry (default: the file's stem).
    """
    out = Path(out_path)
    rows, result = training_rows(records, format, rejected=rejected)
    if format in ("alpaca", "sharegpt"):
        with atomic_text(out) as f:
            f.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        write_jsonl(rows, out)  # one row a line, what `datasets.load_dataset("json")` streams
    result.paths = [out]
    if format in ("alpaca", "sharegpt", "messages"):
        from evolkit.runs import DATASET_INFO  # not at the top: evolkit.runs imports evolkit.io

        has_system = any("system" in r for r in rows)
        has_history = any("history" in r for r in rows)
        entry = _dataset_info_entry(out.name, format, has_system, has_history)
        info_path = out.parent / DATASET_INFO
        _merge_dataset_info(info_path, dataset_name or out.stem, entry)
        result.paths.append(info_path)
    if format == "messages":
        odd = sum(1 for r in rows if not _llamafactory_alternates(r["messages"]))
        if odd:
            log.warning(
                "%s: %d row(s) have turns other than user/assistant in alternation (tool "
                "calls, say); LLaMA-Factory skips such rows, TRL reads them",
                out,
                odd,
            )

    skipped = result.skipped_empty_output + result.skipped_rejected
    if skipped:
        log.warning(
            "%s: exported %d rows; skipped %d without a response and %d rejected",
            out,
            result.written,
            result.skipped_empty_output,
            result.skipped_rejected,
        )
    if result.skipped_one_sided:
        log.warning(
            "%s: %d prompt(s) have responses on one side only (all accepted or all failed) and "
            "make no pair; autoif --responses-per-query K > 1 gives each prompt several",
            out,
            result.skipped_one_sided,
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


# --------------------------------------------------------------------------- preferences


def _verified(
    kept: Iterable[Record], rejected: Iterable[Record], result: ExportResult
) -> tuple[list[Record], list[Record]]:
    """(responses the verifiers accepted, responses they failed), each with a response text."""
    good = [r for r in kept if _verification(r) is not None and r.output.strip()]
    bad = [
        r
        for r in rejected
        if _verification(r) is not None
        and r.output.strip()
        and any(not v.kept and v.rule in VERIFIER_FAILED for v in r.verdicts)
    ]
    if not good and not bad:
        raise EvolkitError(
            f"--format {result.format} needs the responses of an AutoIF run: rows whose "
            "verifiers ran (meta.verification); these rows have none"
        )
    return good, bad


def _verification(record: Record) -> dict[str, Any] | None:
    value = record.meta.get("verification")
    return value if isinstance(value, dict) else None


def _prompt(record: Record) -> list[Turn]:
    return prompt_completion_row(record)["prompt"]


def _kto_rows(good: list[Record], bad: list[Record], result: ExportResult) -> list[dict[str, Any]]:
    """TRL's unpaired preference rows: each response with whether its verifiers accepted it."""
    rows = []
    for record, label in [*((r, True) for r in good), *((r, False) for r in bad)]:
        rows.append(
            {
                "prompt": _prompt(record),
                "completion": [{"role": "assistant", "content": record.output}],
                "label": label,
            }
        )
    result.desirable, result.undesirable = len(good), len(bad)
    return rows


def _dpo_rows(good: list[Record], bad: list[Record], result: ExportResult) -> list[dict[str, Any]]:
    """TRL's paired preference rows: per prompt, each accepted response is the chosen one of a
    pair whose rejected side is one of the failed responses, taken in turn.

    A prompt is the composed instruction (query + constraint); with ``--responses-per-query K``
    it has K responses. A prompt whose responses all passed, or all failed, makes no pair.
    """
    groups: dict[str, tuple[list[Turn], list[Record], list[Record]]] = {}
    for records, accepted in ((good, True), (bad, False)):
        for r in records:
            prompt = _prompt(r)
            key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
            entry = groups.setdefault(key, (prompt, [], []))
            (entry[1] if accepted else entry[2]).append(r)
    rows = []
    for prompt, chosen, failed in groups.values():
        if not chosen or not failed:
            result.skipped_one_sided += 1
            continue
        for i, c in enumerate(chosen):
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": c.output}],
                    "rejected": [{"role": "assistant", "content": failed[i % len(failed)].output}],
                }
            )
    result.desirable, result.undesirable = len(good), len(bad)
    return rows


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


def _llamafactory_alternates(messages: list[Turn]) -> bool:
    """Whether LLaMA-Factory keeps an OpenAI-format row: an optional system message first,
    then user and assistant in turn, ending with the assistant."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return _alternates(turns, ("user",), ("assistant",))


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
    if format == "messages":
        # LLaMA-Factory's "OpenAI format": the sharegpt formatting with OpenAI's key names and
        # role values, the system prompt as the first message. Field names as documented in
        # https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md ("OpenAI Format").
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": dict(OPENAI_TAGS),
        }
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


# --------------------------------------------------------------------------- dataset card

#: The first body line of a card evolkit wrote: a card without it is the user's, never replaced.
CARD_MARK = "<!-- dataset card written by `evolkit export`; exporting again replaces it -->"
#: What each format is for, in the card's file list.
FORMAT_USE = {
    "alpaca": "Alpaca rows (LLaMA-Factory; registered in dataset_info.json)",
    "sharegpt": "ShareGPT conversations (LLaMA-Factory; registered in dataset_info.json)",
    "messages": "OpenAI messages (TRL SFTTrainer; LLaMA-Factory's OpenAI format)",
    "prompt-completion": "prompt/completion messages (TRL SFTTrainer, loss on the completion)",
    "kto": "prompt/completion/label rows (TRL KTOTrainer), label = the verifiers' verdict",
    "dpo": "prompt/chosen/rejected rows (TRL DPOTrainer) from verifier-passed and failed answers",
    "jsonl": "full evolkit records (lineage, scores, verdicts) as JSON Lines",
    "parquet": "full evolkit records (lineage, scores, verdicts) as Parquet",
    "hf": "full evolkit records as a saved Hugging Face dataset folder",
}
_ROLES = ("evolver", "responder", "judge", "optimizer", "scorer", "embedder")
_COUNT_KEYS = (
    "seeds",
    "rows",
    "kept",
    "rejected",
    "kept_rate",
    "scored",
    "evolved",
    "kept_constraints",
    "funnel",
)


def run_description(folder: Path | None) -> dict[str, Any]:
    """What a card says about the run an export came from: its config.json and summary."""
    from evolkit.runs import CONFIG, SUMMARY

    info: dict[str, Any] = {"config": {}, "summary": {}}
    if folder is None:
        return info
    for key, name in (("config", CONFIG), ("summary", SUMMARY)):
        path = folder / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EvolkitError(f"{path}: unreadable ({exc}); the card needs it") from None
            info[key] = value if isinstance(value, dict) else {}
    return info


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
    bounds += [(1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    return next((label for top, label in bounds if n < top), "10M<n<100M")


def _models(settings: Mapping[str, Any]) -> dict[str, str]:
    """The model of each role the run named (a role left unset uses the evolver)."""
    out = {r: str(settings[r]) for r in _ROLES if settings.get(r)}
    if "evolver" in out:
        for role in ("responder", "judge"):
            if role in settings and not settings[role]:
                out[role] = out["evolver"]
    return out


def _inputs(config: Mapping[str, Any]) -> dict[str, Any]:
    settings = config.get("settings") or {}
    inputs = settings.get("inputs") if isinstance(settings, dict) else None
    return dict(inputs) if isinstance(inputs, dict) else {}


def _hub_sources(inputs: Mapping[str, Any]) -> list[str]:
    from evolkit.io.readers import hub_ref

    found: list[str] = []
    for value in inputs.values():
        for item in value if isinstance(value, list) else [value]:
            ref = hub_ref(item) if isinstance(item, str) else None
            if ref is not None and ref.repo not in found:
                found.append(ref.repo)
    return found


def write_card(
    export: ExportResult,
    *,
    run_folder: Path | None,
    license: str = "unknown",
    name: str | None = None,
) -> Path:
    """Write README.md, a Hugging Face dataset card, beside the exported file.

    Its YAML metadata carries the license, the seed inputs, each role's model, the rules, the
    counts and the run's whole configuration (what `evolkit COMMAND --config` reruns); the body
    says the same in prose. A README.md that evolkit did not write is never replaced.
    """
    try:
        from huggingface_hub import DatasetCard, DatasetCardData
    except ImportError:
        raise EvolkitError(
            "--hub-card needs the huggingface_hub package (pip install 'evolkit[hf]')"
        ) from None
    from evolkit import __version__
    from evolkit.runs import HUB_CARD

    data_path = export.paths[0]
    path = data_path.parent / HUB_CARD
    if path.exists() and CARD_MARK not in path.read_text(encoding="utf-8", errors="replace"):
        raise EvolkitError(
            f"{path}: a README.md evolkit did not write is there; refusing to replace it: "
            "export into another folder for --hub-card"
        )
    run = run_description(run_folder)
    config, summary = run["config"], run["summary"]
    settings = {k: v for k, v in (config.get("settings") or {}).items() if k != "inputs"}
    command = str(config.get("command") or "unknown")
    inputs = _inputs(config)
    models = _models(settings)
    counts: dict[str, Any] = {
        "exported_rows": export.written,
        "skipped_without_response": export.skipped_empty_output,
        "skipped_rejected": export.skipped_rejected,
    }
    if export.format in PREFERENCE_FORMATS:
        counts.update(
            verifier_accepted=export.desirable,
            verifier_failed=export.undesirable,
            prompts_one_sided=export.skipped_one_sided,
        )
    run_counts = {k: summary[k] for k in _COUNT_KEYS if k in summary}
    title = name or (run_folder.name if run_folder else data_path.stem)
    meta: dict[str, Any] = {
        "license": license,
        "pretty_name": title,
        "tags": ["evolkit", "synthetic", command],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(export.written)],
    }
    sources = _hub_sources(inputs)
    if sources:
        meta["source_datasets"] = sources
    if data_path.is_file():
        meta["configs"] = [
            {"config_name": "default", "data_files": [{"split": "train", "path": data_path.name}]}
        ]
    # The models the configuration names, and the ids of the models that actually answered
    # (they differ when a notebook handed in its own backend objects).
    used = sorted(summary.get("models") or {}) if isinstance(summary.get("models"), dict) else []
    meta["evolkit"] = {
        "version": __version__,
        "command": command,
        "fingerprint": config.get("fingerprint"),
        "export_format": export.format,
        "seeds": inputs,
        "models": models,
        "models_used": used,
        **({"rules": settings["rules"]} if settings.get("rules") else {}),
        "counts": {"export": counts, "run": run_counts},
        "config": settings,
    }
    body = _card_body(title, command, export, inputs, models, settings, counts, run_counts, used)
    card = DatasetCard("---\n" + DatasetCardData(**meta).to_yaml() + "\n---\n\n" + body)
    with atomic_text(path) as f:
        f.write(str(card))
    return path


def _card_body(
    title: str,
    command: str,
    export: ExportResult,
    inputs: Mapping[str, Any],
    models: Mapping[str, str],
    settings: Mapping[str, Any],
    counts: Mapping[str, Any],
    run_counts: Mapping[str, Any],
    used: list[str],
) -> str:
    def line(label: str, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return f"| {label} | {text.replace('|', '/')} |"

    def described(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(described(v) for v in value)
        if isinstance(value, dict):  # rows given in memory: only their digest is known
            return f"rows in memory (digest {value.get('digest', '?')})"
        return Path(str(value)).name if not str(value).startswith("hf:") else str(value)

    lines = [
        CARD_MARK,
        f"# {title}",
        "",
        f"Synthetic instruction data made with evolkit (`evolkit {command}`), exported as "
        f"`{export.format}`.",
        "",
        "| | |",
        "| --- | --- |",
        line("seeds", "; ".join(f"{k}: {described(v)}" for k, v in inputs.items()) or "?"),
        line("models", ", ".join(f"{r}: {m}" for r, m in models.items()) or "not recorded"),
    ]
    if used:
        lines.append(line("model ids that answered", ", ".join(used)))
    if settings.get("rules"):
        lines.append(line("elimination rules", ", ".join(map(str, settings["rules"]))))
    lines.append(line("rows", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())))
    if run_counts:
        lines.append(line("run counts", run_counts))
    lines += ["", "## Files", ""]
    for p in export.paths:
        use = (
            FORMAT_USE.get(export.format, export.format)
            if p == export.paths[0]
            else ("LLaMA-Factory's dataset registry" if p.name == "dataset_info.json" else "")
        )
        lines.append(f"- `{p.name}`: {use}".rstrip(": "))
    lines += [
        "",
        "## Reproduce",
        "",
        "The run's whole configuration is in this card's metadata (`evolkit.config`) and in the "
        "run folder's `config.json`; `evolkit "
        f"{command} --config RUN/config.json -o NEW` reruns it (the call cache makes answers "
        "already computed free).",
        "",
        "```json",
        json.dumps(settings, indent=2, ensure_ascii=False),
        "```",
        "",
    ]
    return "\n".join(lines)


def upload(repo: str, paths: Iterable[Path], *, private: bool = False) -> str:
    """Upload the exported files and their card to the dataset repository `repo` in one commit;
    returns the commit's URL."""
    try:
        from huggingface_hub import CommitOperationAdd, HfApi, constants
    except ImportError:
        raise EvolkitError(
            "--push-to-hub needs the huggingface_hub package (pip install 'evolkit[hf]')"
        ) from None
    files = list(paths)
    where = files[0].parent if files else Path(".")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or getattr(constants, "HF_HUB_OFFLINE", False):
        raise EvolkitError(
            f"--push-to-hub {repo}: not pushed: HF_HUB_OFFLINE is set; the export and its card "
            f"are in {where}, push them where there is a network"
        )
    ops = []
    for p in files:
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                rel = f"{p.name}/{f.relative_to(p).as_posix()}"
                ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(f)))
        else:
            ops.append(CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)))
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private)
        info = api.create_commit(
            repo, ops, commit_message="Upload an evolkit export", repo_type="dataset"
        )
    except Exception as exc:  # network, auth and Hub errors alike: one line each
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise EvolkitError(
            f"--push-to-hub {repo}: not pushed ({type(exc).__name__}: {text}); the export and "
            f"its card are in {where}"
        ) from None
    return str(getattr(info, "commit_url", "") or f"dataset {repo}")
