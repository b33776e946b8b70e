"""AutoIF step 3 on its own: cross-validate verifier sets a user already has, no model needed.

Input rows (JSONL) are ``{"constraint": str, "functions": [python source, ...],
"cases": [{"input": str, "output": bool}, ...]}`` - the same shape `evolkit autoif` writes to
constraints.jsonl, so its output can be checked again (say, with stricter thresholds). A
malformed row stops the run with one line naming file:line:field, or with ``on_bad="skip"`` is
written to bad_records.jsonl while the rest goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolkit.config import opt
from evolkit.errors import BadRecordError, EvolkitError
from evolkit.io.readers import BadRow
from evolkit.records import Record, make_id
from evolkit.runs import CONSTRAINTS, STEPS
from evolkit.scenarios.autoif import CrossValSettings, step_counts, write_constraints
from evolkit.scenarios.runner import Runner, RunSettings, describe_input
from evolkit.stages.constraints import constraint_key, constraint_row
from evolkit.stages.validate_verifiers import STEP_NAME, ValidateVerifiersStage


def _check_row(row: Any) -> tuple[str, list[str], list[dict[str, Any]]]:
    """The row's constraint, functions and cases, or (field, reason) as a ValueError's args."""
    if not isinstance(row, dict):
        raise ValueError("(row)", f"expected an object, got {type(row).__name__}")
    constraint = row.get("constraint")
    if not isinstance(constraint, str) or not constraint.strip():
        raise ValueError("constraint", "missing or not a non-empty string")
    functions = row.get("functions")
    if not isinstance(functions, list) or not functions:
        raise ValueError("functions", "missing or not a non-empty list of Python sources")
    for i, src in enumerate(functions):
        if not isinstance(src, str) or not src.strip():
            raise ValueError(f"functions[{i}]", "not a non-empty string of Python source")
    cases = row.get("cases")
    if not isinstance(cases, list):
        raise ValueError("cases", "missing or not a list of {input, output} objects")
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ValueError(f"cases[{i}]", "not an object with input and output")
        if not isinstance(case.get("input"), str):
            raise ValueError(f"cases[{i}].input", "missing or not a string")
        if not isinstance(case.get("output"), bool):
            raise ValueError(f"cases[{i}].output", "missing or not true/false")
    return (
        constraint.strip(),
        functions,
        [{"input": c["input"], "output": c["output"]} for c in cases],
    )


def read_verifier_rows(
    path: str | Path, on_bad: str = "error", bad_sink: Callable[[BadRow], None] | None = None
) -> Iterator[Record]:
    """Constraint rows from a JSONL file of verifier sets, validated field by field."""
    p = Path(path)
    if not p.is_file():
        raise EvolkitError(f"{p}: no such file")
    repeats: dict[str, int] = {}
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ValueError("(json)", f"malformed JSON ({exc})") from None
                constraint, functions, cases = _check_row(row)
            except ValueError as exc:
                field, reason = exc.args
                if on_bad == "error":
                    raise BadRecordError(str(p), lineno, field, reason) from None
                if bad_sink is not None:
                    bad_sink(BadRow(str(p), lineno, field, reason, text))
                continue
            rec = constraint_row(
                constraint, "input", "user", functions=functions, cases=cases, line=lineno
            )
            # The same constraint twice in one file stays two checks, with two identities.
            key = constraint_key(constraint)
            n = repeats.get(key, 0)
            repeats[key] = n + 1
            if n:
                cid = make_id("constraint", key, n)
                rec = rec.model_copy(
                    update={
                        "id": make_id("autoif", "input", cid),
                        "meta": {**rec.meta, "constraint_id": cid},
                    }
                )
            yield rec


@dataclass
class CheckConfig(RunSettings, CrossValSettings):
    batch_size: int = opt(32, "Constraints per sandbox batch.", fingerprint=False)
    # No model here, so `--timeout` (an HTTP setting elsewhere) can keep its old meaning.
    sandbox_timeout: float = opt(
        2.0,
        "Wall-clock seconds per verifier call in the sandbox.",
        flags=("--sandbox-timeout", "--timeout"),
    )


def check_verifiers(
    path: str | Path,
    out: str | Path,
    config: CheckConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Cross-validate every verifier set in `path`; write the run folder `out`; return counts."""
    cfg = CheckConfig.make(config, **settings)
    with Runner(
        "check-verifiers",
        cfg,
        out,
        inputs={"input": describe_input(path)},
        sandbox=cfg.sandbox(),
        kept_name=STEPS,
    ) as run:
        bad: list[BadRow] = []
        rows = list(read_verifier_rows(path, cfg.on_bad_record, bad.append))
        if cfg.limit is not None:
            rows = rows[: cfg.limit]
        run.folder.write_bad_rows(bad)
        run.bad_records = len(bad)
        if not rows:
            raise EvolkitError(f"{path}: no verifier rows to check")
        result = run.step(
            STEP_NAME, [ValidateVerifiersStage(cfg.crossval(), cfg.require_both_labels)], rows
        )
        kept = write_constraints(result.kept, run.folder.dir)
        counts = step_counts(run.folder, (STEP_NAME,))[STEP_NAME]
        rejected = counts["rejected"]
        summary = {
            "input_rows": len(rows),
            "kept_constraints": kept,
            "rejected_constraints": rejected.get("constraint", {}).get("total", 0),
            "rejected_functions": rejected.get("function", {}).get("total", 0),
            "functions_kept": sum(len(r.meta.get("functions", [])) for r in result.kept),
            "rejected": rejected,
            "sandbox": {"workers": cfg.sandbox_workers, "limits": cfg.limits().to_dict()},
            "thresholds": {
                "min_accuracy": cfg.min_accuracy,
                "min_functions": cfg.min_functions,
                "min_cases": cfg.min_cases,
                "require_both_labels": cfg.require_both_labels,
            },
        }
        out_summary = run.finish(
            summary,
            {"constraints": run.folder.path(CONSTRAINTS), "rejected": run.folder.rejected_path},
        )
        info = out_summary.get("sandbox_in_force")
        if info:
            out_summary["sandbox"].update(info)
            run.folder.write_summary(out_summary)
        return out_summary
