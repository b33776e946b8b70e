"""AutoIF's optional last filter: a judge scores each verified pair from 0 to 10.

Verification proves the response obeys the constraint, not that it answers the query ("no
letter E" is satisfied by "Ok."). The original scored query + response with a strong model and
kept the pairs scoring above 8. The score goes to `scores.quality`; an answer without a number
counts as unscored and the row is dropped with that reason rather than guessed.
"""

from __future__ import annotations

import re
from typing import ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.few_shot import few_shot_messages

_SCORE = re.compile(r"(?i)score\s*[:=]?\s*(\d{1,2}(?:\.\d+)?)")
_NUMBER = re.compile(r"^\W*(\d{1,2}(?:\.\d+)?)\b")


def parse_score(answer: str) -> float | None:
    """The 0-10 score in a judge answer ("Score: 9", or a bare leading number), else None."""
    m = _SCORE.search(answer) or _NUMBER.match(answer)
    if not m:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value <= 10.0 else None


class QualityJudgeStage(Stage):
    name = "quality"
    inputs: ClassVar[tuple[str, ...]] = ("output", "meta.query", "meta.constraint")
    outputs: ClassVar[tuple[str, ...]] = ("scores.quality",)

    roles: ClassVar[tuple[str, ...]] = ("judge",)
    judge: Backend

    def __init__(self, threshold: float = 8.0, params: SamplingParams | None = None) -> None:
        self.threshold = threshold
        self.params = params or SamplingParams(max_new_tokens=8)

    def process(self, batch: list[Record]) -> list[Record]:
        requests = [
            ChatRequest.of(
                few_shot_messages(
                    "autoif_quality",
                    f"Query: {r.meta.get('query', r.instruction)}\n"
                    f"Constraint: {r.meta.get('constraint', '')}\nResponse: {r.output}",
                ),
                self.params,
            )
            for r in batch
        ]
        out = []
        for row, gen in zip(batch, self.judge.generate(requests), strict=True):
            if failed_call(gen):
                out.append(call_failed(row, gen, self.name, "quality judge call"))
                continue
            score = parse_score(gen.text)
            if score is None:
                out.append(
                    row.reject(
                        "quality_unparsed",
                        f"judge {self.judge.model_id} gave no 0-10 score: "
                        f"{gen.text.strip()[:60]!r}",
                        self.name,
                    )
                )
                continue
            rec = row.model_copy(update={"scores": {**row.scores, "quality": score}})
            if score <= self.threshold:
                rec = rec.reject(
                    "low_quality",
                    f"judge {self.judge.model_id} scored {score:g} (need > {self.threshold:g})",
                    self.name,
                )
            out.append(rec)
        return out
