"""The in-process engine: runs a chain of stages over records, one batch at a time.

Each batch goes through every stage, then is committed to the run folder in one step, so a
kill at any moment loses at most the batch in flight (and the call cache makes redoing it cheap).
Stages are set up once per step with resources built once per run, in this process.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from evolkit.engines.base import (
    BatchOutcome,
    ChainState,
    Engine,
    StepResult,
    check_whole_step,
    commit_outcome,
    now,
    run_chain,
    step_start,
    whole_outcome,
    whole_step_index,
)
from evolkit.engines.base import batches as split
from evolkit.progress import StepProgress
from evolkit.records import Record
from evolkit.resources import Resources, ResourceSpec
from evolkit.runs import RunFolder
from evolkit.stages.base import Stage


class LocalEngine(Engine):
    name = "local"

    def __init__(self, resources: ResourceSpec, batch_size: int = 16, progress: bool = True):
        super().__init__(resources, batch_size, progress)
        self.resources = Resources(resources)

    def run(
        self, step: str, stages: Sequence[Stage], inputs: Sequence[Record], run: RunFolder
    ) -> StepResult:
        todo, skipped = step_start(run, step, inputs)
        check_whole_step(step, stages, todo, skipped)
        previous = run.kept_records(step)
        live = [copy.deepcopy(s) for s in stages]  # the caller's specs stay unbound
        for stage in live:
            stage.setup(self.resources)
            stage.resume(previous)
        kept_new: list[Record] = []
        failures: Counter[str] = Counter()
        processed = failed = 0
        t0 = now()
        with StepProgress(
            step, len(inputs), skipped, stream_is_tty=None if self.progress else False
        ) as bar:
            for outcome in self._outcomes(live, todo, bar):
                commit_outcome(run, step, outcome)
                kept_new.extend(outcome.kept)
                processed += len(outcome.inputs)
                failed += len(outcome.failed_inputs)
                failures.update(outcome.failures)
        return StepResult(
            kept=previous + kept_new,
            processed=processed,
            skipped=skipped,
            seconds=now() - t0,
            failed=failed,
            failures=failures,
        )

    def _outcomes(
        self, stages: Sequence[Stage], todo: Sequence[Record], bar: StepProgress
    ) -> Iterator[BatchOutcome]:
        """One outcome per batch; with a whole-step stage, the stages before it still run batch
        by batch (progress moves), then the rest runs once over every row (one outcome)."""
        whole = whole_step_index(stages)
        if whole is None:
            for batch in split(todo, self.batch_size):
                yield run_chain(stages, batch)
                bar.advance(len(batch), self.retries())
            return
        if not todo:
            return
        states = []
        for batch in split(todo, self.batch_size):
            state = ChainState.start(batch)
            for stage in stages[:whole]:
                state.apply(stage)
            states.append(state)
            if whole:
                bar.advance(len(batch), self.retries())
        merged = ChainState.merge(states)
        for stage in stages[whole:]:
            merged.apply(stage)
        yield whole_outcome(merged.outcome())
        if not whole:
            bar.advance(len(todo), self.retries())

    def usage(self) -> dict[str, dict[str, Any]]:
        return self.resources.usage()

    def sandbox_info(self) -> dict[str, Any] | None:
        return self.resources.sandbox_info()

    def close(self) -> None:
        self.resources.close()
