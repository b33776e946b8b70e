"""AutoIF step 4: say in words what each kept function checks, and compare with the constraint.

A function can agree with its siblings on the test cases and still check the wrong thing (all of
them may share the model's misreading). Back-translation catches that: the describer model reads
the code and writes the rule it enforces, and the judge decides whether that rule is consistent
with the constraint. The original AutoIF back-translated the first three functions and dropped a
constraint if an NLI model labelled any description a contradiction; here the judge model plays
the NLI model's part (`method: "judge"` and its model id are recorded on every row). A judge
answer that is neither label is not guessed: it drops the constraint with its own reason.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.constraints import advance
from evolkit.stages.few_shot import few_shot_messages

STEP_NAME = "backtranslate"

_LABEL = re.compile(
    r"(?i)^\W*(consistent|entail\w*|neutral|same|yes\b|"
    r"contradict\w*|inconsistent|not\s+consistent|different|no\b)"
)


def parse_consistency(answer: str) -> str | None:
    """'consistent', 'contradiction', or None when the answer is neither."""
    m = _LABEL.match(answer)
    if not m:
        return None
    word = m.group(1).lower()
    if word.startswith(("contradict", "inconsistent", "not", "different", "no")):
        return "contradiction"
    return "consistent"


def clean_description(text: str) -> str:
    """The first sentence-like line of the describer's answer, without echoed labels."""
    for line in text.strip().splitlines():
        line = re.sub(r"(?i)^\s*(description|rule|answer)\s*:\s*", "", line).strip()
        if line and not line.startswith("```"):
            return line[:300]
    return ""


class BackTranslateStage(Stage):
    """Keep a constraint only if every back-translated function is judged consistent with it."""

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "meta.functions")
    outputs: ClassVar[tuple[str, ...]] = ("meta.step", "meta.backtranslation")
    roles: ClassVar[tuple[str, ...]] = ("evolver", "judge")
    evolver: Backend
    judge: Backend

    def __init__(
        self,
        n_functions: int = 3,
        describe_params: SamplingParams | None = None,
        judge_params: SamplingParams | None = None,
    ) -> None:
        self.n_functions = n_functions
        self.describe_params = describe_params or SamplingParams(max_new_tokens=64)
        self.judge_params = judge_params or SamplingParams(max_new_tokens=6)

    def process(self, batch: list[Record]) -> list[Record]:
        picked = [list(row.meta.get("functions", []))[: self.n_functions] for row in batch]
        flat = [(row, src) for row, funcs in zip(batch, picked, strict=True) for src in funcs]
        describe = [
            ChatRequest.of(few_shot_messages("autoif_backtranslate", src), self.describe_params)
            for _, src in flat
        ]
        described = self.evolver.generate(describe)
        descriptions = [clean_description(g.text) for g in described]
        judge_requests = [
            ChatRequest.of(
                few_shot_messages(
                    "autoif_consistency", f"Constraint: {row.instruction}\nDescription: {d}"
                ),
                self.judge_params,
            )
            for (row, _), d in zip(flat, descriptions, strict=True)
            if d
        ]
        judged = iter(self.judge.generate(judge_requests))
        out: list[Record] = []
        k = 0
        for row, funcs in zip(batch, picked, strict=True):
            items: list[dict[str, Any]] = []
            broken = None
            for i in range(len(funcs)):
                desc = descriptions[k]
                gen = described[k]
                k += 1
                if failed_call(gen):
                    broken = broken or gen
                if not desc:
                    items.append({"function_index": i, "description": "", "label": None})
                    continue
                judgement = next(judged)
                if failed_call(judgement):
                    broken = broken or judgement
                answer = judgement.text.strip()
                items.append(
                    {
                        "function_index": i,
                        "description": desc,
                        "label": parse_consistency(answer),
                        "judge_answer": answer[:80],
                    }
                )
            if broken is not None:
                out.append(call_failed(row, broken, STEP_NAME, "back-translation call"))
                continue
            info = {
                "method": "judge",
                "judge": self.judge.model_id,
                "describer": self.evolver.model_id,
                "functions_checked": len(funcs),
                "items": items,
            }
            done = advance(row, STEP_NAME, backtranslation=info)
            out.append(self._verdict(done, items))
        return out

    def _verdict(self, row: Record, items: list[dict[str, Any]]) -> Record:
        if not items:
            return row.reject("no_functions", "no kept function to back-translate", STEP_NAME)
        for item in items:
            i = item["function_index"]
            if not item["description"]:
                return row.reject(
                    "no_description", f"the describer wrote nothing for function {i}", STEP_NAME
                )
            if item["label"] == "contradiction":
                return row.reject(
                    "contradiction",
                    f"judge {self.judge.model_id}: function {i} checks "
                    f"{item['description']!r}, which contradicts the constraint",
                    STEP_NAME,
                )
            if item["label"] is None:
                return row.reject(
                    "judge_unparsed",
                    f"judge answer {item['judge_answer']!r} for function {i} is neither "
                    "'consistent' nor 'contradiction'",
                    STEP_NAME,
                )
        return row
