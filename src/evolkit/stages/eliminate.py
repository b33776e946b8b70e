"""Apply elimination rules to a batch; failing rows get a verdict and flow to the rejects file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.prompts import few_shot
from evolkit.records import Record, Verdict
from evolkit.stages.base import Stage
from evolkit.stages.rules import (
    INSTRUCTION_RULES,
    RESPONSE_RULES,
    RuleSettings,
    first_failure,
    normalize,
)

_EQUAL = re.compile(r"(?i)^\W*(not\s+equal|different|no\b|equal|same|yes\b)")


def judge_messages(parent: str, child: str) -> list[dict[str, str]]:
    shots = few_shot("judge_equal")
    messages = []
    for before, after in shots.examples:
        messages.append({"role": "user", "content": f"{shots.task}\n{before}"})
        messages.append({"role": "assistant", "content": after})
    messages.append({"role": "user", "content": f"{shots.task}\nFirst: {parent}\nSecond: {child}"})
    return messages


def parse_equal(answer: str) -> bool | None:
    """True when the judge says the two instructions are equal; None when unparseable."""
    m = _EQUAL.match(answer)
    if not m:
        return None
    word = m.group(1).lower()
    return not (word.startswith("not") or word in ("different", "no"))


class EliminateStage(Stage):
    """Run the enabled rules; `phase` picks instruction rules or response rules."""

    name = "eliminate"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "output", "meta.parent")
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)

    def __init__(
        self,
        rules: Sequence[str],
        phase: str = "instruction",
        judge: Backend | None = None,
        settings: RuleSettings | None = None,
    ) -> None:
        table = INSTRUCTION_RULES if phase == "instruction" else RESPONSE_RULES
        self.phase = phase
        self.name = f"eliminate:{phase}"  # type: ignore[misc]
        self.rules = [r for r in rules if r in table]
        self.dedup = phase == "instruction" and "duplicate" in rules
        self.judge = judge if (phase == "instruction" and "no_information_gain" in rules) else None
        self.settings = settings or RuleSettings()
        self._table = table
        self._seen: set[str] = set()

    def resume(self, kept: Sequence[Record]) -> None:
        if self.dedup:
            self._seen.update(normalize(r.query) for r in kept)

    def process(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        for rec in batch:
            failure = first_failure(rec, self.rules, self.settings, self._table)
            if failure:
                rec = rec.reject(*failure, self.name)
            if not rec.rejected and self.dedup:
                key = normalize(rec.query)
                if key in self._seen:
                    rec = rec.reject("duplicate", "same text as another row of this run", self.name)
                else:
                    self._seen.add(key)
            out.append(rec)
        if self.judge is not None:
            out = self._judge(out)
        return out

    def _judge(self, batch: list[Record]) -> list[Record]:
        assert self.judge is not None
        todo = [i for i, r in enumerate(batch) if not r.rejected]
        params = SamplingParams(temperature=0.0, max_new_tokens=6)
        requests = [
            ChatRequest.of(
                judge_messages(str(batch[i].meta["parent"]["instruction"]), batch[i].instruction),
                params,
            )
            for i in todo
        ]
        for i, gen in zip(todo, self.judge.generate(requests), strict=True):
            rec = batch[i]
            verdict = parse_equal(gen.text)
            if verdict is True:
                batch[i] = rec.reject(
                    "no_information_gain",
                    f"judge {self.judge.model_id} says equal to parent: {gen.text.strip()[:40]!r}",
                    self.name,
                )
            else:
                detail = "judge says not equal" if verdict is False else "judge answer unparsed"
                batch[i] = rec.model_copy(
                    update={
                        "verdicts": [
                            *rec.verdicts,
                            Verdict(
                                rule="no_information_gain",
                                detail=f"{detail}: {gen.text.strip()[:40]!r}",
                                stage=self.name,
                                kept=True,
                            ),
                        ]
                    }
                )
        return batch
