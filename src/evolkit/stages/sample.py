"""Several responses to one instruction: copies that each sample with their own seed.

AutoIF's preference data (``export --format dpo``) needs, for the same composed instruction, a
response the verifiers accept and one they fail; the original sampled several responses per
query for it. `FanOutStage` makes K copies of each instruction, each with its own id (so the run
folder keeps every one and its lineage) and its index in ``meta.response_index``; then
`SampledRespondStage` answers copy k with the run's sampling seed plus k. The sampling seed of a
request comes from its content and parameters (`ChatRequest.sampling_seed`), so identical copies
with identical parameters would get identical answers (and one cache entry): the per-copy seed is
what makes them differ, and it depends on the copy alone, never on its batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from evolkit.models.base import SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage
from evolkit.stages.constraints import STEP, child_id
from evolkit.stages.respond import RespondStage

RESPONSE_INDEX = "response_index"
STEP_NAME = "sample"


class FanOutStage(Stage):
    """One instruction in, `k` copies out (k = 0 .. k-1 in ``meta.response_index``)."""

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("id",)
    outputs: ClassVar[tuple[str, ...]] = (f"meta.{RESPONSE_INDEX}", f"meta.{STEP}")

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k

    def process(self, batch: list[Record]) -> list[Record]:
        return [
            row.model_copy(
                update={
                    "id": child_id(row, STEP_NAME, i),
                    "parent_id": row.id,
                    "meta": {**row.meta, RESPONSE_INDEX: i, STEP: STEP_NAME},
                }
            )
            for row in batch
            for i in range(self.k)
        ]


class SampledRespondStage(RespondStage):
    """`RespondStage` whose row k samples with seed ``params.seed + k`` (k from the row), all
    rows of a batch in one generate call."""

    inputs: ClassVar[tuple[str, ...]] = (*RespondStage.inputs, f"meta.{RESPONSE_INDEX}")

    def __init__(self, params: SamplingParams) -> None:
        super().__init__(params)

    def sampling(self, rec: Record) -> SamplingParams:
        return replace(self.params, seed=self.params.seed + int(rec.meta.get(RESPONSE_INDEX, 0)))
