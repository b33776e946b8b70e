"""The in-process engine: runs a chain of stages over records, batch by batch.

Each batch goes through every stage, then is committed to the run folder in one step, so a
kill at any moment loses at most the batches in flight (and the call cache makes redoing them
cheap). Stages are set up once per step with resources built once per run, in this process.

With `concurrent_batches` > 1 several batches are in flight at once, each on its own thread and
at its own stage; their model calls are merged into one call per model
(`evolkit.models.coalesce`), so a local model gets a full batch even when one batch has only a
few re-samples or survivors left. What the run writes does not change: an order-dependent stage
lets batches through one at a time in input order, and batches are committed in input order.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from evolkit.models.base import Backend
from evolkit.models.coalesce import CoalescingBackend, Serialized
from evolkit.progress import StepProgress
from evolkit.records import Record
from evolkit.resources import Resources, ResourceSpec
from evolkit.runs import RunFolder
from evolkit.stages.base import Stage


class Turnstile:
    """Lets batch i through only after batch i - 1 (order-dependent stages, commits).

    When batch j fails, batches after j stop; batches before it still go through, so what they
    did is committed as it would have been one batch at a time.
    """

    def __init__(self) -> None:
        self._next = 0
        self._cond = threading.Condition()
        self.failed_at: int | None = None

    def stopped(self, index: int) -> bool:
        return self.failed_at is not None and index > self.failed_at

    def enter(self, index: int) -> None:
        with self._cond:
            while self._next != index and not self.stopped(index):
                self._cond.wait(timeout=1.0)
            if self.stopped(index):
                raise _Aborted()

    def leave(self) -> None:
        with self._cond:
            self._next += 1
            self._cond.notify_all()

    def abort(self, index: int) -> None:
        with self._cond:
            if self.failed_at is None or index < self.failed_at:
                self.failed_at = index
            self._cond.notify_all()


class _Aborted(Exception):
    """Another batch failed; this one stops without committing."""


class _SharedRoles:
    """The run's resources as threads share them: models merge their calls, other roles
    (sandbox, scorer, embedder) take turns."""

    def __init__(self, resources: Resources, window_s: float) -> None:
        self.resources = resources
        self.window_s = window_s
        self._wrapped: dict[int, Any] = {}

    def get(self, role: str) -> Any:
        obj = self.resources.get(role)
        key = id(obj)
        if key not in self._wrapped:
            if isinstance(obj, Backend):
                self._wrapped[key] = CoalescingBackend(obj, self.window_s)
            else:
                self._wrapped[key] = Serialized(obj)
        return self._wrapped[key]

    def close(self) -> None:
        for w in self._wrapped.values():
            if isinstance(w, CoalescingBackend):
                w.close()


class LocalEngine(Engine):
    name = "local"

    def __init__(
        self,
        resources: ResourceSpec,
        batch_size: int = 16,
        progress: bool = True,
        concurrent_batches: int = 1,
        coalesce_window_s: float = 0.05,
    ):
        super().__init__(resources, batch_size, progress)
        self.resources = Resources(resources)
        self.concurrent_batches = max(1, concurrent_batches)
        self.coalesce_window_s = coalesce_window_s

    def info(self) -> dict[str, Any]:
        return {**super().info(), "concurrent_batches": self.concurrent_batches}

    def run(
        self, step: str, stages: Sequence[Stage], inputs: Sequence[Record], run: RunFolder
    ) -> StepResult:
        todo, skipped = step_start(run, step, inputs)
        check_whole_step(step, stages, todo, skipped)
        previous = run.kept_records(step)
        parts = split(todo, self.batch_size)
        whole = whole_step_index(stages)
        # A whole-step stage gets every row at once: nothing to overlap there.
        pipelined = self.concurrent_batches > 1 and len(parts) > 1 and whole is None
        roles: Any = _SharedRoles(self.resources, self.coalesce_window_s) if pipelined else None
        live = [copy.deepcopy(s) for s in stages]  # the caller's specs stay unbound
        for stage in live:
            stage.setup(roles or self.resources)
            stage.resume(previous)
        kept_new: list[Record] = []
        failures: Counter[str] = Counter()
        counts = {"processed": 0, "failed": 0}
        t0 = now()

        with StepProgress(
            step, len(inputs), skipped, stream_is_tty=None if self.progress else False
        ) as bar:

            def commit(outcome: BatchOutcome, size: int) -> None:
                commit_outcome(run, step, outcome)
                kept_new.extend(outcome.kept)
                counts["processed"] += len(outcome.inputs)
                counts["failed"] += len(outcome.failed_inputs)
                failures.update(outcome.failures)
                bar.advance(size, self.retries())

            try:
                if whole is not None:
                    self._whole_step(live, parts, whole, commit, bar)
                elif pipelined:
                    self._pipelined(live, parts, commit)
                else:
                    for batch in parts:
                        commit(run_chain(live, batch), len(batch))
            finally:
                if roles is not None:
                    roles.close()
        return StepResult(
            kept=previous + kept_new,
            processed=counts["processed"],
            skipped=skipped,
            seconds=now() - t0,
            failed=counts["failed"],
            failures=failures,
        )

    def _whole_step(
        self,
        stages: list[Stage],
        parts: list[list[Record]],
        whole: int,
        commit: Callable[[BatchOutcome, int], None],
        bar: StepProgress,
    ) -> None:
        """The stages before the whole-step one run batch by batch (progress moves); the rest
        runs once over every row, committed all or nothing."""
        if not parts:
            return
        states = [ChainState.start(batch).through(stages[:whole]) for batch in parts]
        merged = ChainState.merge(states).through(stages[whole:])
        commit(whole_outcome(merged.outcome()), sum(len(b) for b in parts))

    def _pipelined(
        self,
        stages: list[Stage],
        parts: list[list[Record]],
        commit: Callable[[BatchOutcome, int], None],
    ) -> None:
        gates = {i: Turnstile() for i, s in enumerate(stages) if not s.partitionable}
        committer = Turnstile()
        everything = [*gates.values(), committer]

        def one(index: int, batch: list[Record]) -> None:
            try:
                state = ChainState.start(batch)
                for i, stage in enumerate(stages):
                    if committer.stopped(index):  # an earlier batch failed: no more work
                        return
                    gate = gates.get(i)
                    if gate is None:
                        state.apply(stage)
                        continue
                    gate.enter(index)
                    try:
                        state.apply(stage)
                    finally:
                        gate.leave()
                committer.enter(index)
                try:
                    commit(state.outcome(), len(batch))
                finally:
                    committer.leave()
            except _Aborted:
                return
            except BaseException:
                for t in everything:
                    t.abort(index)
                raise

        with ThreadPoolExecutor(self.concurrent_batches, thread_name_prefix="evolkit") as pool:
            futures = [pool.submit(one, i, b) for i, b in enumerate(parts)]
            errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def usage(self) -> dict[str, dict[str, Any]]:
        return self.resources.usage()

    def sandbox_info(self) -> dict[str, Any] | None:
        return self.resources.sandbox_info()

    def close(self) -> None:
        self.resources.close()
