"""AutoIF step 5: pair each verified constraint with real user queries.

Every kept constraint is joined to `per_constraint` queries (the original: 16) drawn without
replacement from the query pool. The draw is seeded by the run seed and the constraint's
identity, not by a global random state, so a resumed run draws exactly the same pairs.
The composed instruction is `template` filled with the query and the constraint.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from evolkit.records import Record
from evolkit.stages.base import Stage
from evolkit.stages.constraints import CONSTRAINT_ID, KIND, ORIGIN, STEP, child_id

STEP_NAME = "compose"
DEFAULT_TEMPLATE = "{query}\n\n{constraint}"


class ComposeStage(Stage):
    """One constraint in, `per_constraint` query + constraint instructions out."""

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "meta.functions")
    outputs: ClassVar[tuple[str, ...]] = (
        "instruction",
        "operation",
        "meta.kind",
        "meta.step",
        "meta.query",
        "meta.query_id",
        "meta.constraint",
    )

    def __init__(
        self,
        queries: Sequence[tuple[str, str]],
        per_constraint: int = 16,
        seed: int = 0,
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if "{query}" not in template or "{constraint}" not in template:
            raise ValueError("the compose template needs both {query} and {constraint}")
        try:
            template.format(query="", constraint="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"the compose template has a stray field or brace: {exc}") from None
        self.queries = list(queries)
        self.per_constraint = per_constraint
        self.seed = seed
        self.template = template

    def process(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        for row in batch:
            cid = row.meta[CONSTRAINT_ID]
            rng = random.Random(f"{self.seed}:{cid}")
            n = min(self.per_constraint, len(self.queries))
            for qid, query in rng.sample(self.queries, n):
                out.append(
                    Record(
                        id=child_id(row, STEP_NAME, qid),
                        instruction=self.template.format(query=query, constraint=row.instruction),
                        parent_id=row.id,
                        operation="autoif",
                        evolver=row.evolver,
                        meta={
                            KIND: "instruction",
                            STEP: STEP_NAME,
                            CONSTRAINT_ID: cid,
                            ORIGIN: row.meta.get(ORIGIN),
                            "constraint": row.instruction,
                            "query": query,
                            "query_id": qid,
                            "functions": list(row.meta.get("functions", [])),
                        },
                    )
                )
        return out
