"""AutoIF step 6: run the constraint's kept verifiers on each response, keep those that pass.

The pass rate of a response is the share of its constraint's kept functions that return True on
it (an error or timeout counts as not passing). A response is kept when its pass rate is at
least `min_pass_rate` and at least one function passed: the original kept any response with a
pass rate above zero, which is what the default 0.0 reproduces; 1.0 demands that every function
agrees. Responses that are empty, failed, or cut off by the token limit are rejected first,
because a verifier can pass them vacuously ("no letter E" holds for an empty string).
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from evolkit.records import Record
from evolkit.sandbox import Sandbox
from evolkit.stages.base import Stage
from evolkit.stages.constraints import KIND, STEP, child_id

STEP_NAME = "respond"


class VerifyResponsesStage(Stage):
    name = "verify"
    inputs: ClassVar[tuple[str, ...]] = ("output", "meta.functions", "meta.response")
    outputs: ClassVar[tuple[str, ...]] = (
        "scores.pass_rate",
        "meta.kind",
        "meta.step",
        "meta.verification",
    )

    roles: ClassVar[tuple[str, ...]] = ("sandbox",)
    sandbox: Sandbox

    def __init__(self, min_pass_rate: float = 0.0, drop_truncated: bool = True) -> None:
        if not 0.0 <= min_pass_rate <= 1.0:
            raise ValueError("min_pass_rate must be within [0, 1]")
        self.min_pass_rate = min_pass_rate
        self.drop_truncated = drop_truncated

    def process(self, batch: list[Record]) -> list[Record]:
        rows = [self._renamed(r) for r in batch]
        todo = [i for i, r in enumerate(rows) if not self._precheck(r)]
        jobs = [(src, rows[i].output) for i in todo for src in rows[i].meta["functions"]]
        results = iter(self.sandbox.run_many(jobs))
        out = []
        for row in rows:
            reason = self._precheck(row)
            meta = {k: v for k, v in row.meta.items() if k != "functions"}
            if reason:
                out.append(row.model_copy(update={"meta": meta}).reject(*reason, self.name))
                continue
            verdicts = [next(results) for _ in row.meta["functions"]]
            passed = sum(1 for v in verdicts if v.verdict == "pass")
            total = len(verdicts)
            rate = passed / total if total else 0.0
            meta["verification"] = {
                "passed": passed,
                "functions": total,
                "verdicts": [v.verdict for v in verdicts],
                "counts": dict(Counter(v.verdict for v in verdicts)),
            }
            rec = row.model_copy(
                update={"meta": meta, "scores": {**row.scores, "pass_rate": round(rate, 4)}}
            )
            if passed == 0:
                rec = rec.reject(
                    "no_function_passed",
                    f"0 of {total} verifiers returned True ({meta['verification']['counts']})",
                    self.name,
                )
            elif rate < self.min_pass_rate:
                rec = rec.reject(
                    "low_pass_rate",
                    f"pass rate {rate:.2f} ({passed}/{total}) < {self.min_pass_rate:g}",
                    self.name,
                )
            out.append(rec)
        return out

    @staticmethod
    def _renamed(row: Record) -> Record:
        """The response row gets its own id: the composed instruction row keeps its own."""
        return row.model_copy(
            update={
                "id": child_id(row, STEP_NAME),
                "parent_id": row.id,
                "meta": {**row.meta, KIND: "response", STEP: STEP_NAME},
            }
        )

    def _precheck(self, row: Record) -> tuple[str, str] | None:
        info = row.meta.get("response", {})
        if info.get("error") or info.get("finish_reason") == "error":
            return "response_error", str(info.get("error") or "the responder call failed")[:200]
        if not row.output.strip():
            return "empty_response", "the responder wrote nothing"
        if self.drop_truncated and info.get("finish_reason") == "length":
            return "truncated", f"the response hit the token limit ({info.get('tokens')} tokens)"
        if not row.meta.get("functions"):
            return "no_functions", "the constraint has no kept verifier"
        return None
