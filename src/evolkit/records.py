"""The one row type that flows through every stage: an instruction record.

Lineage fields make every evolved row traceable to its seed; `verdicts` carry the reason a
row was eliminated (or kept) so rejected rows can be written out instead of silently lost.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """Why a rule eliminated (kept=False) or explicitly passed (kept=True) a row."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    detail: str = ""
    stage: str = ""
    kept: bool = False


class Record(BaseModel):
    """An instruction record with lineage, scores and verdicts (SPEC section 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    id: str
    instruction: str
    input: str = ""
    output: str = ""
    parent_id: str | None = None
    round: int = 0
    operation: str | None = None
    evolver: str | None = None
    method_version: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return any(not v.kept for v in self.verdicts)

    @property
    def query(self) -> str:
        """Q as the SPEC defines it: instruction, plus a newline and the input when present."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    def reject(self, rule: str, detail: str = "", stage: str = "") -> Record:
        return self.model_copy(
            update={"verdicts": [*self.verdicts, Verdict(rule=rule, detail=detail, stage=stage)]}
        )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_defaults=False), ensure_ascii=False)


def make_id(*parts: Any) -> str:
    """A stable id from content and lineage, so the same row gets the same id in every run."""
    payload = json.dumps([p if p is not None else "" for p in parts], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def seed_record(instruction: str, input: str = "", output: str = "", **fields: Any) -> Record:
    """Build a round-0 record; its id is derived from its content when none is given."""
    rid = fields.pop("id", None) or make_id("seed", instruction, input)
    return Record(id=str(rid), instruction=instruction, input=input, output=output, **fields)
