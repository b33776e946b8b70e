"""Auto Evol-Instruct's model stages: evolving with a method, and writing improved methods.

`MethodEvolveStage` sends each instruction through an evolving method (a prompt text that is a
plain setting) and reads the answer with `evolkit.stages.trajectory`. In the optimisation loop
it only *annotates* each evolution with the failure the SPEC names (``meta.auto_evol.failure``),
so every trajectory and dev evolution stays in the run's working store and failure rates are
counted from committed rows; for the final evolution it rejects what it cannot parse, and the
Evol-Instruct elimination stages do the rest.

`OptimizeStage` turns one input row per wanted candidate into one improved method, written by
the optimizer from the current method and the evolver's trajectories.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams
from evolkit.prompts import text as prompt_text
from evolkit.records import Record, make_id
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.evolve import capped
from evolkit.stages.rules import (
    _ASKS_BACK,
    _REPLY_OPENERS,
    ASKS_BACK,
    INSTRUCTION_RULES,
    NOT_AN_INSTRUCTION,
    QUESTION_MARKS,
    RuleSettings,
    _other_language_match,
    is_english,
    maybe_english,
    retry_reason,
    rule_unchanged,
)
from evolkit.stages.trajectory import parse_candidate, parse_trajectory

#: The failures of an evolution that count against a method (SPEC 4), in the order checked.
FAILURE_RULES = ("asks_back", "unparsed", "unchanged")

#: Where the instruction goes in a method; a method without it gets the instruction appended.
PLACEHOLDER = "{instruction}"

#: What a trajectory row keeps of the evolver's answer (the optimizer reads a part of it).
TRAJECTORY_CHARS = 4000
#: What a candidate row keeps of the optimizer's answer (its method is kept whole apart).
OPTIMIZER_CHARS = 6000


def universal_method() -> str:
    """evolkit's own starting method (prompts/auto_evol_method.txt)."""
    return prompt_text("auto_evol_method")


def render_method(method: str, instruction: str) -> str:
    """The user message for one evolution: the method with the instruction in its place."""
    if PLACEHOLDER in method:
        return method.replace(PLACEHOLDER, instruction)
    return f"{method.rstrip()}\n\nInstruction to rewrite:\n{instruction}"


def asks_back(text: str, s: RuleSettings) -> str | None:
    """SPEC 4's "not an instruction": a reply that ends in a question ("Sure! Which one?") or a
    request for the missing input ("please provide ..."). The phrase lists are Evol-Instruct's
    `not_an_instruction` ones (reply openers, ask-back phrases, and their other languages); a
    reply opener alone is not enough here, it must end with a question mark."""
    t = text.strip()
    if not t:
        return None
    english = is_english(t, s)
    ends_in_question = t[-1] in QUESTION_MARKS
    if maybe_english(t, s):
        if ASKS_BACK.search(t):
            return "asks back instead of rewriting"
        if ends_in_question and NOT_AN_INSTRUCTION.match(t):
            return f"replies and asks a question back: {t[:40]!r}"
    if not english:
        found = _other_language_match(_ASKS_BACK, t)
        if found:
            return f"asks back instead of rewriting ({found[0]}: {found[1]!r})"
        opener = _other_language_match(_REPLY_OPENERS, t)
        if opener and ends_in_question:
            return f"replies and asks a question back ({opener[0]}): {t[:40]!r}"
    return None


def evolution_failure(
    child: Record, raw: str, problem: str | None, s: RuleSettings
) -> tuple[str, str] | None:
    """The first failure rule an evolution breaks, with its reason (None: not a failure).

    An answer with no final section is checked for asking back as a whole: a model that asks
    back writes no sections, and "asks back" says more than "unparsed".
    """
    said = child.instruction if problem is None else raw
    reason = asks_back(said, s)
    if reason:
        return "asks_back", reason
    if problem is not None:
        return "unparsed", problem
    reason = rule_unchanged(child, s)
    if reason:
        return "unchanged", reason
    return None


class MethodEvolveStage(Stage):
    """Evolve each input `samples` times with one method (`method_version` names it).

    `tag` names the step (it goes into row ids, which must be unique across a run's steps).
    With `reject_unparsed` (the final evolution) an answer with no readable final instruction
    is rejected by the rule `unparsed`, and a try failing `unparsed` or one of the cheap
    instruction `rules` is re-sampled up to `attempts` times; otherwise (the optimisation
    loop) every row is kept with its failure, if any, in ``meta.auto_evol``.
    """

    name = "method_evolve"
    roles: ClassVar[tuple[str, ...]] = ("evolver",)
    evolver: Backend
    inputs: ClassVar[tuple[str, ...]] = (
        "id",
        "instruction",
        "input",
        "meta.seed_index",
        "meta.seed_id",
    )
    outputs: ClassVar[tuple[str, ...]] = (
        "instruction",
        "parent_id",
        "round",
        "evolver",
        "method_version",
        "meta.seed_index",
        "meta.seed_id",
        "meta.parent",
        "meta.evolution",
        "meta.auto_evol",
    )

    def __init__(
        self,
        method: str,
        version: str,
        tag: str,
        params: SamplingParams,
        samples: int = 1,
        *,
        reject_unparsed: bool = False,
        attempts: int = 1,
        rules: Sequence[str] = (),
        rule_settings: RuleSettings | None = None,
    ) -> None:
        self.method = method
        self.version = version
        self.tag = tag
        self.params = params
        self.samples = max(1, samples)
        self.reject_unparsed = reject_unparsed
        self.attempts = max(1, attempts) if reject_unparsed else 1
        self.rules = [r for r in rules if r in INSTRUCTION_RULES]
        self.rule_settings = rule_settings or RuleSettings()

    def process(self, batch: list[Record]) -> list[Record]:
        jobs = [(p, k) for p in batch for k in range(self.samples)]
        out: list[Record | None] = [None] * len(jobs)
        failed: list[list[dict[str, Any]]] = [[] for _ in jobs]
        pending = list(range(len(jobs)))
        for attempt in range(self.attempts):
            if attempt and self.params.greedy:
                break  # a greedy retry would write the same answer
            requests = []
            for i in pending:
                parent, k = jobs[i]
                seed = self.params.seed + 7919 * k + 100_003 * attempt
                params = SamplingParams(**{**self.params.__dict__, "seed": seed})
                message = render_method(self.method, parent.instruction)
                requests.append(ChatRequest.of([{"role": "user", "content": message}], params))
            still: list[int] = []
            for i, gen in zip(pending, self.evolver.generate(requests), strict=True):
                parent, k = jobs[i]
                child = self._child(parent, k, gen, attempt + 1, failed[i])
                if failed_call(gen):
                    out[i] = call_failed(child, gen, self.name, "evolver call")
                    continue
                out[i] = child
                reason = self._retry_reason(child)
                if reason and attempt + 1 < self.attempts:
                    failed[i].append(
                        {**capped(child.meta["evolution"]["raw"], 300), "reason": reason}
                    )
                    still.append(i)
            pending = still
            if not pending:
                break
        rows = [r for r in out if r is not None]
        if self.reject_unparsed:
            rows = [self._verdict(r) for r in rows]
        return rows

    def _retry_reason(self, child: Record) -> str | None:
        if not self.reject_unparsed:
            return None
        problem = child.meta["auto_evol"]["problem"]
        if problem:
            return f"unparsed: {problem}"
        return retry_reason(child, self.rules, self.rule_settings)

    def _verdict(self, row: Record) -> Record:
        problem = row.meta["auto_evol"]["problem"]
        if problem and not row.rejected:
            return row.reject("unparsed", problem, "evolve")
        return row

    def _child(
        self, parent: Record, k: int, gen: Generation, attempt: int, failed: list[dict[str, Any]]
    ) -> Record:
        parsed = parse_trajectory(gen.text, self.method)
        child = Record(
            id=make_id("auto-evol", self.tag, parent.id, k, self.version),
            instruction=parsed.final or "",
            input=parent.input,
            parent_id=parent.id,
            round=1,
            evolver=self.evolver.model_id,
            method_version=self.version,
            meta={
                "seed_index": parent.meta.get("seed_index", 0),
                "seed_id": parent.meta.get("seed_id", parent.id),
                "parent": {"instruction": parent.instruction, "input": parent.input},
                "evolution": {
                    "raw": capped(gen.text, TRAJECTORY_CHARS)["text"],
                    "raw_chars": len(gen.text),
                    "finish_reason": gen.finish_reason,
                    "tokens": gen.completion_tokens,
                    "error": gen.error,
                    "attempt": attempt,
                    "failed_tries": list(failed),
                },
            },
        )
        failure = None
        if not failed_call(gen):
            failure = evolution_failure(child, gen.text, parsed.problem, self.rule_settings)
        info = {
            "step": self.tag,
            "sample": k,
            "sections": parsed.sections,
            "methods": parsed.methods,
            "problem": parsed.problem,
            "failure": failure[0] if failure else None,
            "failure_detail": failure[1] if failure else None,
        }
        return child.model_copy(update={"meta": {**child.meta, "auto_evol": info}})


# -- the optimizer -------------------------------------------------------------------------------

CASE_CHARS = 700  # of each trajectory shown to the optimizer
MAX_CASES = 20


def describe_cases(rows: Sequence[Record]) -> str:
    """The trajectories as the optimizer reads them: failed cases first, each with its problem."""
    ordered = sorted(rows, key=lambda r: r.meta.get("auto_evol", {}).get("failure") is None)
    blocks = []
    for n, row in enumerate(ordered[:MAX_CASES], 1):
        info = row.meta.get("auto_evol", {})
        raw = str(row.meta.get("evolution", {}).get("raw", "")).strip()
        shown = raw if len(raw) <= CASE_CHARS else raw[:CASE_CHARS].rstrip() + " [...]"
        problem = (
            f"{info['failure']}: {info.get('failure_detail') or ''}".rstrip(": ")
            if info.get("failure")
            else "none found"
        )
        blocks.append(
            f"Case {n}\nOriginal instruction: {row.meta.get('parent', {}).get('instruction', '')}"
            f"\nThe model wrote:\n{shown}\nProblem: {problem}"
        )
    return "\n\n".join(blocks) if blocks else "(no cases)"


def optimizer_messages(method: str, cases: str) -> list[dict[str, str]]:
    values = {"method": method.strip(), "cases": cases}
    body = re.sub(
        r"\{(method|cases)\}", lambda m: values[m.group(1)], prompt_text("auto_evol_optimizer")
    )
    return [{"role": "user", "content": body}]


def candidate_version(step: int, k: int) -> str:
    return f"step{step}-candidate{k}"


def candidate_row(step: int, k: int) -> Record:
    """The input row of candidate `k` of optimisation step `step`."""
    return Record(
        id=make_id("auto-evol", "candidate", step, k),
        instruction=f"candidate method {k} of step {step}",
        meta={"candidate": k, "step": step},
    )


class OptimizeStage(Stage):
    """One improved method per input row (`candidate_row`): the optimizer reads the current
    method and the trajectories (`cases`, from `describe_cases`) and writes a candidate.

    Each candidate samples with its own seed, so M candidates are M different answers to the
    same prompt. A candidate the parser cannot read keeps an empty `instruction` and says why in
    ``meta.optimizer.problem``; it is recorded, never evaluated.
    """

    name = "optimize"
    roles: ClassVar[tuple[str, ...]] = ("optimizer",)
    optimizer: Backend
    inputs: ClassVar[tuple[str, ...]] = ("id", "meta.candidate", "meta.step")
    outputs: ClassVar[tuple[str, ...]] = ("instruction", "method_version", "meta.optimizer")

    def __init__(self, method: str, parent: str, cases: str, params: SamplingParams) -> None:
        self.method = method
        self.parent = parent
        self.cases = cases
        self.params = params

    def process(self, batch: list[Record]) -> list[Record]:
        messages = optimizer_messages(self.method, self.cases)
        requests = [
            ChatRequest.of(
                messages,
                SamplingParams(
                    **{**self.params.__dict__, "seed": self.params.seed + int(r.meta["candidate"])}
                ),
            )
            for r in batch
        ]
        out: list[Record] = []
        for row, gen in zip(batch, self.optimizer.generate(requests), strict=True):
            version = candidate_version(int(row.meta["step"]), int(row.meta["candidate"]))
            cand = parse_candidate(gen.text)
            info = {
                "parent": self.parent,
                "model": self.optimizer.model_id,
                "raw": capped(gen.text, OPTIMIZER_CHARS)["text"],
                "raw_chars": len(gen.text),
                "parsed": cand.method is not None,
                "problem": cand.problem,
                "finish_reason": gen.finish_reason,
                "tokens": gen.completion_tokens,
                "error": gen.error,
            }
            done = row.model_copy(
                update={
                    "instruction": cand.method or "",
                    "method_version": version,
                    "meta": {**row.meta, "optimizer": info},
                }
            )
            out.append(
                call_failed(done, gen, self.name, "optimizer call") if failed_call(gen) else done
            )
        return out
