"""AutoIF step 3 as a stage: constraint rows in, cross-validated constraint rows out.

The rules live in `stages.crossval` (run every function on every case in the sandbox, keep the
cases some function reproduces, keep functions accurate on them, keep constraints with enough of
both). This stage only maps rows to verifier sets and back, and turns every dropped function
and constraint into a rejected row that says which rule dropped it and shows its verdict counts,
so a user can see *why* a verifier failed (an exception, a timeout, wrong answers).
"""

from __future__ import annotations

from typing import Any, ClassVar

from evolkit.records import Record
from evolkit.sandbox import Sandbox
from evolkit.stages.base import Stage
from evolkit.stages.constraints import advance, function_row, slim
from evolkit.stages.crossval import (
    Case,
    CrossValConfig,
    CrossValResult,
    FunctionScore,
    VerifierSet,
    cross_validate,
)

STEP_NAME = "crossval"


def _score_dict(index: int, s: FunctionScore) -> dict[str, Any]:
    return {
        "index": index,
        "accuracy": round(s.accuracy, 4),
        "correct": s.correct,
        "evaluated": s.evaluated,
        "kept": s.kept,
        "verdicts": {k: v for k, v in s.verdicts.items() if v},
        "duplicates": s.duplicates,
        "errors": s.errors,
    }


def _verdict_text(s: FunctionScore) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s.verdicts.items() if v) or "no calls"
    errors = f"; first error: {s.errors[0][:160]}" if s.errors else ""
    return f"verdicts over all cases: {counts}{errors}"


def _cases(rows: Any) -> list[dict[str, Any]]:
    return [{"input": c.input, "output": c.output} for c in rows]


class ValidateVerifiersStage(Stage):
    """Cross-validate the functions and cases of each constraint row by executing them."""

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "meta.functions", "meta.cases")
    outputs: ClassVar[tuple[str, ...]] = (
        "meta.step",
        "meta.kind",
        "meta.function",
        "meta.function_index",
        "meta.score",
        "meta.functions",
        "meta.accuracy",
        "meta.cases",
        "meta.dropped_cases",
        "meta.function_scores",
    )

    roles: ClassVar[tuple[str, ...]] = ("sandbox",)
    sandbox: Sandbox

    def __init__(
        self, config: CrossValConfig | None = None, require_both_labels: bool = True
    ) -> None:
        self.config = config or CrossValConfig()
        self.require_both_labels = require_both_labels

    def process(self, batch: list[Record]) -> list[Record]:
        sets = [
            VerifierSet(
                constraint=row.instruction,
                functions=list(row.meta.get("functions", [])),
                cases=[Case(str(c["input"]), bool(c["output"])) for c in row.meta.get("cases", [])],
            )
            for row in batch
        ]
        out: list[Record] = []
        for row, vset, result in zip(
            batch, sets, cross_validate(sets, self.sandbox, self.config), strict=True
        ):
            out.extend(self._rows(row, vset, result))
        return out

    def _rows(self, row: Record, vset: VerifierSet, result: CrossValResult) -> list[Record]:
        index: dict[str, int] = {}
        for i, src in enumerate(vset.functions):
            index.setdefault(src.strip(), i)
        scores = [_score_dict(index[s.source.strip()], s) for s in result.scores]
        done = advance(
            slim(row, "candidates"),
            STEP_NAME,
            functions=result.kept_sources,
            accuracy=[round(f.accuracy, 4) for f in result.functions],
            cases=_cases(result.cases),
            dropped_cases=_cases(result.dropped_cases),
            function_scores=scores,
        )
        rows: list[Record] = []
        for s, info in zip(result.scores, scores, strict=True):
            if s.kept:
                continue
            if s.evaluated == 0:
                rule, detail = "no_kept_cases", "no test case was reproduced by any function"
            else:
                rule = "low_accuracy"
                detail = (
                    f"accuracy {s.accuracy:.2f} ({s.correct}/{s.evaluated} kept cases) < "
                    f"{self.config.min_accuracy:g}"
                )
            rows.append(
                function_row(
                    row,
                    STEP_NAME,
                    info["index"],
                    s.source,
                    rule,
                    f"{detail}; {_verdict_text(s)}",
                    score=info,
                )
            )
        labels = {c.output for c in result.cases}
        if result.kept and self.require_both_labels and len(labels) < 2:
            # Cases of one label cannot tell a verifier from `return True` (or False): such a
            # constraint would "verify" any response. The original had no such check.
            if labels:
                only = "True" if labels == {True} else "False"
                detail = (
                    f"all {len(result.cases)} kept cases expect {only}, so a function that "
                    f"always returns {only} passes them too"
                )
            else:
                detail = "no kept case shows what the verifiers accept or reject"
            done = done.reject("one_sided_cases", detail, STEP_NAME)
        if done.rejected or not result.kept:
            # A dropped constraint shows every function it came with, kept or not.
            done = slim(done, "accuracy")
            done.meta["functions"] = list(vset.functions)
            for reason in result.reasons:
                if reason["rule"] != "kept":
                    done = done.reject(reason["rule"], reason["detail"], STEP_NAME)
        return [done, *rows]
