"""The engine contract, and the batch bookkeeping every engine shares.

An engine runs a step (a chain of stages) over input rows: it batches them, sets the stages up
with live resources where they run, commits each finished batch to the run folder (the one
writer), shows progress, and resumes a step from the run's journal. Stages stay unaware of all
of it.

The chain bookkeeping lives here so that every engine commits exactly the same rows: each
output row is traced back to the input row it came from (same `id`, or `parent_id`), and an
input whose rows include a failed model call is left uncommitted, so the next run redoes it
instead of recording a content verdict for a call that never answered.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.records import Record
from evolkit.resources import ResourceSpec
from evolkit.runs import RunFolder
from evolkit.stages.base import CALL_FAILED, Stage, is_call_failed

#: Engines by name (the `--engine` choices).
ENGINES = ("local", "ray")


class ContractError(EvolkitError):
    """A stage broke the stage contract (a bug in that stage, not in the user's data)."""


@dataclass
class StepResult:
    kept: list[Record]  # every kept row of the step: resumed ones first, then this run's
    processed: int  # inputs committed by this invocation
    skipped: int  # inputs already committed by an earlier invocation
    seconds: float
    failed: int = 0  # inputs left for the next run because a model call failed
    failures: Counter[str] = field(default_factory=Counter)  # failure detail -> count


@dataclass
class ChainState:
    """One batch on its way through a chain of stages (serialisable between workers)."""

    inputs: list[str]
    live: list[Record]
    done: list[Record] = field(default_factory=list)  # rejected (or failed) at some stage
    origin: dict[str, str] = field(default_factory=dict)  # row id -> input id

    @classmethod
    def start(cls, batch: Sequence[Record]) -> ChainState:
        return cls([r.id for r in batch], list(batch), [], {r.id: r.id for r in batch})

    @classmethod
    def merge(cls, states: Sequence[ChainState]) -> ChainState:
        """Batches joined into one, in order (for a whole-step stage)."""
        out = cls([], [], [], {})
        for s in states:
            out.inputs += s.inputs
            out.live += s.live
            out.done += s.done
            out.origin.update(s.origin)
        return out

    def through(self, stages: Sequence[Stage]) -> ChainState:
        """Apply `stages` in order; the state itself, for chaining."""
        for stage in stages:
            self.apply(stage)
        return self

    def apply(self, stage: Stage) -> None:
        if not self.live:
            return
        out = stage.process(list(self.live))
        for row in out:
            source = self.origin.get(row.id) or self.origin.get(row.parent_id or "")
            if source is None:
                raise ContractError(
                    f"stage {stage.name} returned row {row.id} whose id and parent_id name no "
                    "row it was given"
                )
            self.origin[row.id] = source
        self.done.extend(r for r in out if r.rejected)
        self.live = [r for r in out if not r.rejected]

    def outcome(self) -> BatchOutcome:
        failed_rows = [r for r in self.done if is_call_failed(r)]
        failed = {self.origin[r.id] for r in failed_rows}
        reasons: Counter[str] = Counter()
        for r in failed_rows:
            v = next(v for v in r.verdicts if v.rule == CALL_FAILED)
            reasons[f"{v.stage}: {v.detail}"] += 1
        # Rows leave in the order of the inputs they came from (stable within one input), so
        # the files read the same whatever the batch size or the engine.
        order = {i: n for n, i in enumerate(self.inputs)}

        def ordered(rows: list[Record]) -> list[Record]:
            keep = [r for r in rows if self.origin[r.id] not in failed]
            return sorted(keep, key=lambda r: order[self.origin[r.id]])

        return BatchOutcome(
            inputs=[i for i in self.inputs if i not in failed],
            kept=ordered(self.live),
            rejected=ordered(self.done),
            failed_inputs=[i for i in self.inputs if i in failed],
            failures=reasons,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "live": [r.model_dump(mode="json") for r in self.live],
            "done": [r.model_dump(mode="json") for r in self.done],
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChainState:
        return cls(
            list(data["inputs"]),
            [Record.model_validate(r) for r in data["live"]],
            [Record.model_validate(r) for r in data["done"]],
            dict(data["origin"]),
        )


@dataclass
class BatchOutcome:
    inputs: list[str]  # committed inputs
    kept: list[Record]
    rejected: list[Record]
    failed_inputs: list[str]
    failures: Counter[str]


def whole_step_index(stages: Sequence[Stage]) -> int | None:
    """Where the first stage that needs every row of the step at once sits, if any."""
    return next((i for i, s in enumerate(stages) if s.whole_step), None)


def check_whole_step(
    step: str, stages: Sequence[Stage], todo: Sequence[Record], skipped: int
) -> None:
    """A whole-step step is committed all at once, so part of it done means its inputs
    changed since: redoing the rest alone would give them the wrong neighbours."""
    whole = whole_step_index(stages)
    if whole is not None and todo and skipped:
        raise EvolkitError(
            f"step {step}: stage {stages[whole].name} needs all rows of the step at once, but "
            f"{skipped} of them were finished by an earlier run and {len(todo)} are new (did "
            "the input change?); start over with --overwrite"
        )


def whole_outcome(outcome: BatchOutcome) -> BatchOutcome:
    """All or nothing: a failed call anywhere leaves the whole step for the next run."""
    if not outcome.failed_inputs:
        return outcome
    every = [*outcome.inputs, *outcome.failed_inputs]
    return BatchOutcome([], [], [], every, outcome.failures)


def run_chain(stages: Sequence[Stage], batch: Sequence[Record]) -> BatchOutcome:
    return ChainState.start(batch).through(stages).outcome()


def batches(rows: Sequence[Record], size: int) -> list[list[Record]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), max(1, size))]


class Engine(ABC):
    """Runs steps for one run; holds what its workers need (resources, batch size)."""

    name = "engine"

    def __init__(self, resources: ResourceSpec, batch_size: int = 16, progress: bool = True):
        self.spec = resources
        self.batch_size = max(1, batch_size)
        self.progress = progress

    @abstractmethod
    def run(
        self, step: str, stages: Sequence[Stage], inputs: Sequence[Record], run: RunFolder
    ) -> StepResult:
        """Run `stages` over the inputs not yet committed for `step`; return all kept rows."""

    @abstractmethod
    def usage(self) -> dict[str, dict[str, Any]]:
        """Per model: requests, cache hits, tokens, seconds, retries (summed over workers)."""

    def info(self) -> dict[str, Any]:
        return {"engine": self.name, "batch_size": self.batch_size}

    def sandbox_info(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and resources."""

    def retries(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for u in self.usage().values():
            total.update(u.get("retries", {}))
        return dict(total)


def commit_outcome(run: RunFolder, step: str, outcome: BatchOutcome) -> None:
    if outcome.inputs:
        run.commit(step, outcome.inputs, outcome.kept, outcome.rejected)


def step_start(run: RunFolder, step: str, inputs: Sequence[Record]) -> tuple[list[Record], int]:
    """(rows still to do, how many were done before); duplicate input ids are a bug."""
    ids = [r.id for r in inputs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ContractError(f"step {step}: input id {dup} appears twice")
    done = run.done_inputs(step)
    todo = [r for r in inputs if r.id not in done]
    return todo, len(inputs) - len(todo)


def merge_usage(into: dict[str, dict[str, Any]], delta: dict[str, dict[str, Any]]) -> None:
    for model, u in delta.items():
        cur = into.setdefault(model, {})
        for k, v in u.items():
            if isinstance(v, dict):
                c = cur.setdefault(k, {})
                for kk, vv in v.items():
                    c[kk] = c.get(kk, 0) + vv
            else:
                cur[k] = round(cur.get(k, 0) + v, 4)


def now() -> float:
    return time.perf_counter()
