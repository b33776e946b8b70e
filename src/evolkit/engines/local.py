"""The in-process engine: runs a chain of stages over records, one batch at a time.

Each batch goes through every stage, then is committed to the run folder in one step, so a
kill at any moment loses at most the batch in flight (and the call cache makes redoing it cheap).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from evolkit.console import console
from evolkit.records import Record
from evolkit.runs import RunFolder
from evolkit.stages.base import Stage


@dataclass
class StepResult:
    kept: list[Record]
    processed: int  # inputs processed by this invocation (not counting resumed ones)
    skipped: int  # inputs already committed by an earlier invocation
    seconds: float


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class LocalEngine:
    def __init__(self, batch_size: int = 16, progress: bool = True) -> None:
        self.batch_size = max(1, batch_size)
        self.progress = progress

    def run(
        self, step: str, stages: Sequence[Stage], inputs: Sequence[Record], run: RunFolder
    ) -> StepResult:
        """Run `stages` over the inputs not yet committed for `step`; return all kept rows."""
        done = run.done_inputs(step)
        previous = run.kept_records(step)
        for stage in stages:
            stage.resume(previous)
        todo = [r for r in inputs if r.id not in done]
        kept_new: list[Record] = []
        t0 = time.perf_counter()
        with make_progress() as bar:
            task = bar.add_task(
                step,
                total=len(inputs),
                completed=len(inputs) - len(todo),
                rate="",
                visible=self.progress,
            )
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                rows, rejected = list(batch), list[Record]()
                for stage in stages:
                    out = stage.process(rows)
                    rows = [r for r in out if not r.rejected]
                    rejected.extend(r for r in out if r.rejected)
                    if not rows:
                        break
                run.commit(step, [r.id for r in batch], rows, rejected)
                kept_new.extend(rows)
                elapsed = time.perf_counter() - t0
                n = start + len(batch)
                bar.update(task, advance=len(batch), rate=f"{n / elapsed:.2f} rows/s")
        return StepResult(
            kept=previous + kept_new,
            processed=len(todo),
            skipped=len(inputs) - len(todo),
            seconds=time.perf_counter() - t0,
        )
