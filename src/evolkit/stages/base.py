"""The stage contract: a batch of records in, a batch out.

A stage is built from plain settings only (numbers, strings, lists): that object is its
picklable spec, which an engine can ship to another process or machine. It names the roles it
needs (`roles`); the engine hands them over in `setup(resources)` where the stage runs, so a
stage never loads a model, opens a sandbox or imports an engine itself.

Rules every stage keeps (tests/test_stage_contract.py checks them for every stage):

* it reads only the fields in `inputs` and writes only those in `outputs`;
* every output row names its input row: the same `id`, or `parent_id` = the input's id;
* it marks a row it eliminates with a verdict instead of dropping it, so the engine can write it
  to the rejects file; a row whose *model call* failed is marked with :func:`call_failed`, and
  the engine neither keeps nor rejects it, so the next run redoes it;
* a `partitionable` stage gives the same rows for any split of its input:
  ``process(a + b) == process(a) + process(b)``, and keeps no state between calls (the local
  engine may call it from several threads at once, each with its own batch). A stage that must
  see every row of a step in order (deduplication across the run) says
  ``partitionable = False``; engines then run it in one place, in input order, and call
  `resume` with what an earlier run already kept.
* a stage whose every row depends on every other row of the step (nearest neighbours across a
  run) says ``whole_step = True``: engines hand it all of the step's rows in one call (the
  stages before it still run batch by batch) and commit the step all or nothing, since a row
  redone alone would meet no neighbours. Its step is redone whole after a kill (the call cache
  replays the finished model calls).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from evolkit.records import Record, Verdict

if TYPE_CHECKING:
    from evolkit.models.base import Generation
    from evolkit.resources import Resources

#: The verdict rule of a row whose model call failed (server error, timeout, ...).
CALL_FAILED = "call_failed"

#: Roles a stage may ask for; the runner knows how to provide each.
ROLES = ("evolver", "responder", "judge", "optimizer", "scorer", "sandbox", "embedder")


class Stage(ABC):
    #: Short name used in verdicts, progress lines and summaries.
    name: ClassVar[str] = "stage"
    #: Record fields the stage reads ("instruction", "meta.parent", "scores.ifd", ...).
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Record fields (or `scores.x` / `meta.x` entries) the stage writes.
    outputs: ClassVar[tuple[str, ...]] = ()
    #: Roles from ROLES this stage uses; they are set as attributes of the same name by setup.
    roles: ClassVar[tuple[str, ...]] = ()
    #: False when the stage must see every row of its step, in order (see the module doc).
    partitionable: ClassVar[bool] = True
    #: True when the stage needs every row of its step in one call (see the module doc);
    #: such a stage also says partitionable = False.
    whole_step: ClassVar[bool] = False

    def setup(self, resources: Resources) -> None:
        """Bind the live objects of this stage's roles (models, sandbox) where it runs."""
        for role in self.roles:
            setattr(self, role, resources.get(role))

    @abstractmethod
    def process(self, batch: list[Record]) -> list[Record]:
        """Return the batch transformed; eliminated rows carry a verdict with kept=False."""

    def resume(self, kept: Sequence[Record]) -> None:  # noqa: B027 - optional hook
        """Learn what an interrupted run already kept (for stages with memory, e.g. dedup)."""

    def __getstate__(self) -> dict[str, Any]:
        # Only the settings travel: live role objects stay where they were set up.
        return {k: v for k, v in self.__dict__.items() if k not in self.roles}


def call_failed(
    row: Record, gen: Generation | None, stage: str, what: str = "model call"
) -> Record:
    """Mark `row` as not done: its model call failed, so it is redone on the next run."""
    detail = (gen.error if gen is not None else "") or "the call failed"
    return row.model_copy(
        update={
            "verdicts": [
                *row.verdicts,
                Verdict(rule=CALL_FAILED, detail=f"{what}: {detail[:300]}", stage=stage),
            ]
        }
    )


def is_call_failed(row: Record) -> bool:
    return any(v.rule == CALL_FAILED for v in row.verdicts)


def failed_call(gen: Generation) -> bool:
    return gen.finish_reason == "error"
