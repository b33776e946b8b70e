"""Attach L(Q), L(A|Q), L(A), IFD and IC-IFD to each record.

Scores are computed here and stored; deciding what to keep is `selection.py`'s job, so a
threshold can change without running the model again.
"""

from __future__ import annotations

from typing import ClassVar

from evolkit.models import Scorer
from evolkit.models.scoring import ScoreItem
from evolkit.records import Record
from evolkit.stages.base import Stage


class ScoreStage(Stage):
    name = "score"
    roles: ClassVar[tuple[str, ...]] = ("scorer",)
    scorer: Scorer
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")
    outputs: ClassVar[tuple[str, ...]] = (
        "scores.loss_q",
        "scores.loss_a_given_q",
        "scores.loss_a",
        "scores.ifd",
        "scores.ic_ifd",
        "meta.scoring",
    )

    def process(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        todo = [r for r in batch if r.output.strip()]
        losses = self.scorer.score([ScoreItem(r.instruction, r.input, r.output) for r in todo])
        by_id = {r.id: loss for r, loss in zip(todo, losses, strict=True)}
        for rec in batch:
            loss = by_id.get(rec.id)
            if loss is None:
                out.append(rec.reject("unscorable", "the row has no output to score", self.name))
                continue
            info = {
                "scorer": self.scorer.model_id,
                "template": self.scorer.template,
                "head": self.scorer.head,
                "max_length": self.scorer.max_length,
                "truncated": loss.truncated,
                "n_q": loss.n_q,
                "n_a": loss.n_a,
                "n_tokens": loss.n_tokens,
            }
            scored = rec.model_copy(
                update={
                    "scores": {**rec.scores, **loss.scores()},
                    "meta": {**rec.meta, "scoring": info},
                }
            )
            if loss.error:
                scored = scored.reject("unscorable", loss.error, self.name)
            out.append(scored)
        return out
