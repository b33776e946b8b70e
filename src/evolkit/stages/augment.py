"""AutoIF step 1: the model writes new constraints from the seed constraints; duplicates go.

Each input row is one augmentation *call* (so a killed run resumes at the next call, and the
original's "100 calls of 50" is just 100 input rows). A call shows the seeds in a shuffled order
(seeded per call, so calls differ even with a near-greedy small model), asks for `per_call` new
constraints one per line, and turns every usable line into a constraint row. The filter stage
that follows drops lines that are too short or too long and exact duplicates of a seed or of
anything kept before, remembering what a resumed run already kept.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.prompts import few_shot
from evolkit.records import Record, make_id
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.constraints import (
    KIND,
    STEP,
    constraint_key,
    constraint_row,
    step_id,
)
from evolkit.stages.few_shot import few_shot_messages

STEP_NAME = "augment"

_MARKER = re.compile(r"^\s*(?:[-*•+]|\d{1,3}\s*[.):]|\(\d{1,3}\)|#+)\s*")
_CHATTER = re.compile(
    r"(?i)^(here (are|is)|sure\b|certainly\b|of course\b|i hope|these constraints|note\b|"
    r"examples?\b|constraints?:|new constraints)"
)


def call_row(index: int) -> Record:
    """The input row of augmentation call `index`."""
    return Record(
        id=step_id("call", index),
        instruction=f"augmentation call {index}",
        meta={KIND: "call", STEP: STEP_NAME, "call_index": index},
    )


def parse_constraint_list(text: str, truncated: bool = False) -> list[str]:
    """The constraints in a model's list answer: one per line, markers and chatter removed.

    A line cut off by the token limit (`truncated`) is dropped: half a constraint is a
    different constraint.
    """
    lines = text.splitlines()
    if truncated and lines:
        lines = lines[:-1]
    out: list[str] = []
    for line in lines:
        item = _MARKER.sub("", line.strip(), count=1).strip()
        item = item.replace("**", "").strip()
        if len(item) >= 2 and item[0] in "\"'“" and item[-1] in "\"'”":
            item = item[1:-1].strip()
        if not item or item.endswith(":") or _CHATTER.match(item) or item.startswith("```"):
            continue
        out.append(item)
    return out


class AugmentStage(Stage):
    """One call row in, the constraints the model wrote out (or the call, rejected, if none)."""

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("meta.call_index",)
    outputs: ClassVar[tuple[str, ...]] = (
        "instruction",
        "operation",
        "evolver",
        "meta.kind",
        "meta.step",
        "meta.constraint_id",
        "meta.origin",
        "meta.raw",
    )
    roles: ClassVar[tuple[str, ...]] = ("evolver",)
    evolver: Backend

    def __init__(
        self,
        seeds: Sequence[str],
        per_call: int = 50,
        params: SamplingParams | None = None,
        seed: int = 0,
    ) -> None:
        if not seeds:
            raise ValueError("augmentation needs at least one seed constraint")
        self.seeds = list(seeds)
        self.per_call = per_call
        self.params = params or SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=1024)
        self.seed = seed

    def messages(self, call_index: int) -> list[dict[str, str]]:
        shown = list(self.seeds)
        random.Random(f"{self.seed}:{call_index}").shuffle(shown)
        listing = "\n".join(f"- {s}" for s in shown)
        return few_shot_messages("autoif_augment", listing, n=self.per_call)

    def process(self, batch: list[Record]) -> list[Record]:
        requests = []
        for row in batch:
            i = int(row.meta["call_index"])
            params = SamplingParams(**{**self.params.__dict__, "seed": self.seed + i})
            requests.append(ChatRequest.of(self.messages(i), params))
        out: list[Record] = []
        for row, gen in zip(batch, self.evolver.generate(requests), strict=True):
            i = int(row.meta["call_index"])
            if failed_call(gen):
                out.append(call_failed(row, gen, STEP_NAME, "augmentation call"))
                continue
            items = parse_constraint_list(gen.text, truncated=gen.finish_reason == "length")
            if not items:
                out.append(
                    row.model_copy(update={"meta": {**row.meta, "raw": gen.text}}).reject(
                        "no_constraints_parsed",
                        f"no list line in the answer: {gen.text.strip()[:120]!r}",
                        STEP_NAME,
                    )
                )
                continue
            for j, text in enumerate(items[: self.per_call]):
                c = constraint_row(
                    text, STEP_NAME, "augment", evolver=self.evolver.model_id, call_index=i
                )
                out.append(c.model_copy(update={"id": make_id(row.id, j), "parent_id": row.id}))
        return out


def prompt_examples() -> list[str]:
    """The constraints our augmentation prompt shows as its worked example."""
    shots = few_shot("autoif_augment")
    return [
        c for shown, answer in shots.examples for c in parse_constraint_list(f"{shown}\n{answer}")
    ]


class ConstraintFilterStage(Stage):
    """Drop constraints that are too short, too long, or already known.

    Known means a seed, an earlier augmentation, or a line of the prompt's own worked example:
    small models copy the example answer, and our text is not the model's new constraint.
    """

    name = "augment-filter"
    inputs: ClassVar[tuple[str, ...]] = ("instruction",)
    outputs: ClassVar[tuple[str, ...]] = ("verdicts",)
    # What counts as a duplicate depends on every row kept before, in order.
    partitionable: ClassVar[bool] = False

    def __init__(self, known: Sequence[str] = (), min_chars: int = 10, max_chars: int = 200):
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._copied = {constraint_key(t) for t in prompt_examples()}
        self._seen: dict[str, str] = {constraint_key(t): "a seed constraint" for t in known}

    def resume(self, kept: Sequence[Record]) -> None:
        for r in kept:
            self._seen.setdefault(constraint_key(r.instruction), "an earlier augmentation")

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for row in batch:
            if row.meta.get(KIND) != "constraint" or row.rejected:
                out.append(row)
                continue
            n = len(row.instruction)
            if n < self.min_chars:
                row = row.reject("too_short", f"{n} characters < {self.min_chars}", STEP_NAME)
            elif n > self.max_chars:
                row = row.reject("too_long", f"{n} characters > {self.max_chars}", STEP_NAME)
            else:
                key = constraint_key(row.instruction)
                if key in self._copied and key not in self._seen:
                    row = row.reject(
                        "copies_example", "a line of the prompt's worked example", STEP_NAME
                    )
                elif key in self._seen:
                    row = row.reject("duplicate", f"same as {self._seen[key]}", STEP_NAME)
                else:
                    self._seen[key] = "an earlier augmentation"
            out.append(row)
        return out


def unique_seeds(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """Seed constraints without duplicates (first wins), and the duplicates found."""
    seen: set[str] = set()
    kept: list[str] = []
    dups: list[str] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        key = constraint_key(text)
        if key in seen:
            dups.append(text)
        else:
            seen.add(key)
            kept.append(text)
    return kept, dups


__all__ = [
    "AugmentStage",
    "ConstraintFilterStage",
    "call_row",
    "parse_constraint_list",
    "prompt_examples",
    "unique_seeds",
]
