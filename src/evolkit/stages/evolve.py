"""Evol-Instruct's rewriting step: one operation per parent per round, written by the evolver.

Small models follow a pattern far better than a description, so every operation is sent as a
short task line plus worked examples replayed as earlier chat turns (prompts/evolve_*.txt).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams
from evolkit.prompts.evolve import IN_BREADTH, IN_DEPTH, OPERATIONS, build_messages
from evolkit.records import Record, make_id
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.rules import INSTRUCTION_RULES, RuleSettings, retry_reason

POLICIES = ("rotate", "random", "fixed")
__all__ = ["IN_BREADTH", "IN_DEPTH", "OPERATIONS", "POLICIES", "EvolveStage", "build_messages"]


def choose_operation(
    policy: str, operations: Sequence[str], seed_index: int, round_: int, seed: int, parent_id: str
) -> str:
    """Pick the operation for one parent in one round.

    rotate: index (i + r) mod K, deterministic; random: seeded per parent and round;
    fixed: the list is applied in order, round r uses operations[(r - 1) mod K].
    """
    k = len(operations)
    if policy == "rotate":
        return operations[(seed_index + round_) % k]
    if policy == "fixed":
        return operations[(round_ - 1) % k]
    digest = hashlib.sha256(f"{seed}:{parent_id}:{round_}".encode()).digest()
    return random.Random(digest).choice(list(operations))


_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:the\s+)?(?:new|rewritten|revised|harder|final|evolved|created)?"
    r"\s*(?:prompt|instruction|rewrite|version)\s*#?\s*(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "“", "”", "`")


def clean_evolution(raw: str) -> str:
    """Strip echoed labels ("Rewritten Prompt:"), wrapping quotes and trailing chatter."""
    out = raw.strip()
    for _ in range(3):
        stripped = _LABEL.sub("", out, count=1).strip()
        if stripped == out:
            break
        out = stripped
    if len(out) >= 2 and out[0] in _QUOTES and out[-1] in _QUOTES:
        out = out[1:-1].strip()
    # A blank line followed by commentary ("This version adds...") is not part of the prompt.
    paragraphs = re.split(r"\n\s*\n", out)
    if len(paragraphs) > 1 and re.match(
        r"(?i)\s*(this|the above|note|explanation|i |i've|here)", paragraphs[-1]
    ):
        out = "\n\n".join(paragraphs[:-1]).strip()
    return out


#: What a row keeps of a failed try or of the raw model text: a 5 MB rewrite must not become a
#: 26 MB rejects line. The length is kept beside the prefix.
KEEP_CHARS = 1000


def capped(text: str, limit: int = KEEP_CHARS) -> dict[str, Any]:
    """A long text as its prefix and its full length (short texts stay whole)."""
    if len(text) <= limit:
        return {"text": text}
    return {"text": text[:limit], "chars": len(text), "capped": True}


class EvolveStage(Stage):
    """Turn each parent into one evolved child for round `round_`."""

    name = "evolve"
    roles: ClassVar[tuple[str, ...]] = ("evolver",)
    evolver: Backend
    inputs: ClassVar[tuple[str, ...]] = ("id", "instruction", "input", "meta.seed_index")
    outputs: ClassVar[tuple[str, ...]] = (
        "instruction",
        "parent_id",
        "round",
        "operation",
        "evolver",
        "meta.parent",
        "meta.evolution",
    )

    def __init__(
        self,
        round_: int,
        operations: Sequence[str] = OPERATIONS,
        policy: str = "rotate",
        seed: int = 0,
        params: SamplingParams | None = None,
        attempts: int = 1,
        rules: Sequence[str] = (),
        rule_settings: RuleSettings | None = None,
    ) -> None:
        """A rewrite failing one of the cheap instruction `rules` is re-sampled (with another
        seed) up to `attempts` times in all. The last try is kept either way, so the eliminate
        stage still sees, and records, a row that never succeeded."""
        unknown = [op for op in operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; known: {', '.join(OPERATIONS)}")
        self.round = round_
        self.operations = tuple(operations)
        self.policy = policy
        self.seed = seed
        self.params = params or SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=256)
        self.attempts = max(1, attempts)
        self.rules = [r for r in rules if r in INSTRUCTION_RULES]
        self.rule_settings = rule_settings or RuleSettings()

    def check(self, child: Record) -> str | None:
        return retry_reason(child, self.rules, self.rule_settings)

    def process(self, batch: list[Record]) -> list[Record]:
        ops = [
            choose_operation(
                self.policy,
                self.operations,
                int(p.meta.get("seed_index", 0)),
                self.round,
                self.seed,
                p.id,
            )
            for p in batch
        ]
        children: list[Record | None] = [None] * len(batch)
        failed: list[list[dict[str, str]]] = [[] for _ in batch]
        pending = list(range(len(batch)))
        for attempt in range(self.attempts):
            # Greedy tries would repeat themselves: only sampled evolutions are retried.
            if attempt and self.params.greedy:
                break
            seed = self.seed + self.round + 100_003 * attempt
            params = SamplingParams(**{**self.params.__dict__, "seed": seed})
            requests = [
                ChatRequest.of(build_messages(ops[i], batch[i].instruction), params)
                for i in pending
            ]
            gens = self.evolver.generate(requests)
            still: list[int] = []
            for i, gen in zip(pending, gens, strict=True):
                child = self._child(batch[i], ops[i], gen, attempt + 1, failed[i])
                if failed_call(gen):
                    children[i] = call_failed(child, gen, self.name, "evolver call")
                    continue
                reason = self.check(child)
                children[i] = child
                if reason and attempt + 1 < self.attempts:
                    failed[i].append({**capped(child.instruction, 300), "reason": reason})
                    still.append(i)
            pending = still
            if not pending:
                break
        return [c for c in children if c is not None]

    def _child(
        self, parent: Record, op: str, gen: Generation, attempt: int, failed: list[dict[str, str]]
    ) -> Record:
        return Record(
            id=make_id("evol", parent.id, self.round),
            instruction=clean_evolution(gen.text),
            input=parent.input,
            parent_id=parent.id,
            round=self.round,
            operation=op,
            evolver=self.evolver.model_id,
            meta={
                "seed_index": parent.meta.get("seed_index", 0),
                "seed_id": parent.meta.get("seed_id", parent.id),
                "parent": {"instruction": parent.instruction, "input": parent.input},
                "evolution": {
                    "raw": capped(gen.text)["text"],
                    "raw_chars": len(gen.text),
                    "finish_reason": gen.finish_reason,
                    "tokens": gen.completion_tokens,
                    "error": gen.error,
                    "attempt": attempt,
                    "failed_tries": list(failed),
                },
            },
        )
