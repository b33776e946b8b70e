"""Apply elimination rules to a batch; failing rows get a verdict and flow to the rejects file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from evolkit.errors import EvolkitError
from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.prompts import few_shot
from evolkit.prompts.evolve import IN_DEPTH
from evolkit.records import Record, Verdict
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.rules import (
    INSTRUCTION_RULES,
    RESPONSE_RULES,
    RuleSettings,
    first_failure,
    normalize,
)

if TYPE_CHECKING:
    from evolkit.resources import Resources

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
    """Run the enabled cheap rules; `phase` picks instruction rules or response rules."""

    name = "eliminate"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input", "output", "operation", "meta")
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)

    def __init__(
        self, rules: Sequence[str], phase: str = "instruction", settings: RuleSettings | None = None
    ) -> None:
        table = INSTRUCTION_RULES if phase == "instruction" else RESPONSE_RULES
        self.phase = phase
        self.label = f"eliminate:{phase}"
        self.rules = [r for r in rules if r in table]
        self.settings = settings or RuleSettings()
        self._table = table

    def process(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        for rec in batch:
            failure = first_failure(rec, self.rules, self.settings, self._table)
            out.append(rec.reject(*failure, self.label) if failure else rec)
        return out


class DedupStage(Stage):
    """The `duplicate` rule: a row whose text another row of this run already has.

    It must see every row of the step in input order (the first occurrence is kept whatever the
    batching), so engines run it in one place and tell it what earlier runs kept.
    """

    name = "dedup"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input")
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)
    partitionable: ClassVar[bool] = False
    label = "eliminate:instruction"

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def resume(self, kept: Sequence[Record]) -> None:
        self._seen.update(normalize(r.query) for r in kept)

    def process(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        for rec in batch:
            key = normalize(rec.query)
            if key in self._seen:
                rec = rec.reject("duplicate", "same text as another row of this run", self.label)
            else:
                self._seen.add(key)
            out.append(rec)
        return out


class JudgeStage(Stage):
    """The `no_information_gain` rule: the judge model compares a rewrite with its parent.

    A judge call that fails leaves the row undone (redone next run) instead of keeping it
    unjudged: a failing judge must not switch the rule off silently.
    """

    name = "judge"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "meta.parent")
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)
    roles: ClassVar[tuple[str, ...]] = ("judge",)
    label = "eliminate:instruction"
    judge: Backend

    def process(self, batch: list[Record]) -> list[Record]:
        params = SamplingParams(temperature=0.0, max_new_tokens=6)
        requests = [
            ChatRequest.of(
                judge_messages(str(r.meta["parent"]["instruction"]), r.instruction), params
            )
            for r in batch
        ]
        out: list[Record] = []
        for rec, gen in zip(batch, self.judge.generate(requests), strict=True):
            if failed_call(gen):
                out.append(call_failed(rec, gen, self.label, "judge call"))
                continue
            verdict = parse_equal(gen.text)
            if verdict is True:
                out.append(
                    rec.reject(
                        "no_information_gain",
                        f"judge {self.judge.model_id} says equal to parent: "
                        f"{gen.text.strip()[:40]!r}",
                        self.label,
                    )
                )
                continue
            detail = "judge says not equal" if verdict is False else "judge answer unparsed"
            out.append(
                rec.model_copy(
                    update={
                        "verdicts": [
                            *rec.verdicts,
                            Verdict(
                                rule="no_information_gain",
                                detail=f"{detail}: {gen.text.strip()[:40]!r}",
                                stage=self.label,
                                kept=True,
                            ),
                        ]
                    }
                )
            )
        return out


class DriftStage(Stage):
    """The `drifted` rule: an in-depth rewrite whose meaning has left its parent's task.

    In-depth operations must keep the task and make it harder; a small evolver often writes
    something else entirely ("Brainstorm New Year's resolutions" became "What's the most
    amazing idea, and how will you make it happen?"). The rewrite's query and its parent's are
    embedded with the sentence embedder, and a cosine similarity below
    `RuleSettings.min_parent_similarity` eliminates the row. In-breadth rewrites are meant to
    be new tasks and are not checked. Every checked row keeps its similarity in a verdict.
    """

    name = "drift"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input", "operation", "meta.parent")
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)
    roles: ClassVar[tuple[str, ...]] = ("embedder",)
    label = "eliminate:instruction"
    embedder: Any  # evolkit.measures.diversity.Embedder, or anything with encode(texts)

    def __init__(self, settings: RuleSettings | None = None) -> None:
        self.settings = settings or RuleSettings()

    def setup(self, resources: Resources) -> None:
        # Said once, before any row, in one line: not a traceback from deep in a worker.
        from evolkit.measures.diversity import Embedder

        try:
            self.embedder = resources.get("embedder")
            if isinstance(self.embedder, Embedder):
                self.embedder.dimension  # noqa: B018 - loads the model now
        except EvolkitError as exc:
            raise EvolkitError(
                f"the drifted rule needs a sentence embedder ({exc}); or switch the rule off "
                "with --disable-rule drifted (and --overwrite, as this run's settings change)"
            ) from None

    def process(self, batch: list[Record]) -> list[Record]:
        from evolkit.measures.diversity import embedding_text, similarity

        checked = [
            (i, parent)
            for i, r in enumerate(batch)
            if r.operation in IN_DEPTH and (parent := _parent_instruction(r)) is not None
        ]
        todo = [i for i, _ in checked]
        children = [batch[i].query for i in todo]
        parents = [embedding_text(parent, _parent_input(batch[i])) for i, parent in checked]
        sims = similarity(children, parents, self.embedder) if todo else []
        limit = self.settings.min_parent_similarity
        out = list(batch)
        for i, sim in zip(todo, sims, strict=True):
            rec = batch[i]
            detail = f"embedding similarity to its parent {sim:.3f}"
            if sim < limit:
                out[i] = rec.reject("drifted", f"{detail} < {limit}", self.label)
            else:
                verdict = Verdict(rule="drifted", detail=detail, stage=self.label, kept=True)
                out[i] = rec.model_copy(update={"verdicts": [*rec.verdicts, verdict]})
        return out


def _parent_instruction(rec: Record) -> str | None:
    parent = rec.meta.get("parent")
    value = parent.get("instruction") if isinstance(parent, dict) else None
    return str(value) if value else None


def _parent_input(rec: Record) -> str:
    parent = rec.meta.get("parent")
    return str(parent.get("input") or "") if isinstance(parent, dict) else ""
