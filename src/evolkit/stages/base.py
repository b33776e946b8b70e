"""The stage contract: a batch of records in, a batch out.

A stage marks a row it eliminates with a verdict instead of dropping it, so the engine can write
it to the rejects file; the engine, not the stage, decides batching, caching and checkpoints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from evolkit.records import Record


class Stage(ABC):
    #: Short name used in verdicts, progress bars and summaries.
    name: ClassVar[str] = "stage"
    #: Record fields the stage reads (documentation and a check for users composing stages).
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Record fields (or `scores.x` / `meta.x` entries) the stage writes.
    outputs: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def process(self, batch: list[Record]) -> list[Record]:
        """Return the batch transformed; eliminated rows carry a verdict with kept=False."""

    def resume(self, kept: Sequence[Record]) -> None:  # noqa: B027 - optional hook
        """Learn what an interrupted run already kept (for stages with memory, e.g. dedup)."""
