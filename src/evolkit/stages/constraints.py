"""A constraint as a Record: the shared vocabulary of the AutoIF stages.

AutoIF moves constraints (and later query + constraint pairs) through six steps. Each is an
ordinary `Record` so the run folder, engine and rejects file work unchanged: the constraint text
is the instruction and `meta` carries what the steps add (candidate functions, test cases,
accuracy, back-translations). A stage gives its output rows fresh ids derived from the id of the
row they came from and the stage's own name (lineage, not the scenario's step names), because
one run folder stores the rows of all steps and an id must name exactly one row in it.
"""

from __future__ import annotations

from typing import Any

from evolkit.records import Record, make_id
from evolkit.stages.rules import normalize

# meta keys every AutoIF row carries
KIND = "kind"  # "constraint" | "function" | "call" | "instruction" | "response"
STEP = "step"  # the engine step that produced (or rejected) the row
CONSTRAINT_ID = "constraint_id"  # identity of the constraint text, stable across steps
ORIGIN = "origin"  # "seed" | "augment" | "user"


def constraint_key(text: str) -> str:
    """The duplicate key of a constraint: case, punctuation and spacing do not matter."""
    return normalize(text)


def constraint_id(text: str) -> str:
    return make_id("constraint", constraint_key(text))


def step_id(step: str, *parts: Any) -> str:
    """The id of a row that starts a chain (a seed constraint, an augmentation call)."""
    return make_id("autoif", step, *parts)


def child_id(parent: Record, stage: str, *parts: Any) -> str:
    """The id of a row `stage` makes from `parent`: unique per parent, stage and part."""
    return make_id(parent.id, stage, *parts)


def constraint_row(
    text: str, step: str, origin: str, *, evolver: str | None = None, **meta: Any
) -> Record:
    cid = constraint_id(text)
    return Record(
        id=step_id(step, cid),
        instruction=text,
        operation=origin,
        evolver=evolver,
        meta={KIND: "constraint", STEP: step, CONSTRAINT_ID: cid, ORIGIN: origin, **meta},
    )


def advance(row: Record, step: str, **meta: Any) -> Record:
    """The same constraint, as the output row of `step`, with `meta` added or replaced."""
    return row.model_copy(
        update={
            "id": child_id(row, step),
            "parent_id": row.id,
            "meta": {**row.meta, STEP: step, **meta},
        }
    )


def function_row(
    parent: Record, step: str, index: int, source: str, rule: str, detail: str, **meta: Any
) -> Record:
    """A rejected candidate function, written to the rejects file with why it was dropped.

    It carries only the constraint's identity, not the parent's bulky meta (all candidates,
    all cases), so the rejects file stays readable.
    """
    cid = parent.meta[CONSTRAINT_ID]
    row = Record(
        id=child_id(parent, step, "function", index),
        instruction=parent.instruction,
        parent_id=parent.id,
        operation=parent.operation,
        evolver=parent.evolver,
        meta={
            KIND: "function",
            STEP: step,
            CONSTRAINT_ID: cid,
            "function_index": index,
            "function": source,
            **meta,
        },
    )
    return row.reject(rule, detail, step)


def slim(row: Record, *drop: str) -> Record:
    """A copy without the named meta entries (used for rejected rows that repeat big meta)."""
    return row.model_copy(update={"meta": {k: v for k, v in row.meta.items() if k not in drop}})
