"""Measure stages: numbers about each row in its `scores` (detail in `meta`), never a verdict.

They wrap the pure measures in `evolkit.measures` (the requests, parsers and statistics live
there) so `evolkit analyze` runs them through the engines like any other step: batched,
cached, with progress, on the local engine or Ray. A measure keeps and drops nothing: a row
leaves every stage as it came in, plus its numbers, unless its model call failed
(`call_failed`: the row is redone on the next run, never given a made-up value).
"""

from __future__ import annotations

from typing import Any, ClassVar

from evolkit.errors import EvolkitError
from evolkit.measures import difficulty as dif
from evolkit.measures import output_space as osp
from evolkit.measures.diversity import MIN_NN_SCORE, NEAR_DUPLICATE, nearest_neighbours
from evolkit.models.base import Backend, ChatRequest
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call

OUTPUT_SPACE_SCORES = ("top1_first5_mean", "top1_mean", "top1_above_0.9", "top1_tokens")
DIFFICULTY_SCORES = (dif.LEVEL_SCORE, dif.SCORE_SCORE, dif.LEVEL_UNPARSED, dif.SCORE_UNPARSED)
NEAR_DUPLICATE_SCORE = "near_duplicate"
DIVERSITY_SCORES = (MIN_NN_SCORE, NEAR_DUPLICATE_SCORE)


def _replace(
    rec: Record, names: tuple[str, ...], scores: dict[str, float], meta: Any, key: str
) -> Record:
    """The row with this measure's scores and meta entry replaced (a row measured before, e.g.
    an analysed file analysed again, keeps no stale value of the same measure)."""
    kept = {k: v for k, v in rec.scores.items() if k not in names}
    return rec.model_copy(update={"scores": {**kept, **scores}, "meta": {**rec.meta, key: meta}})


class OutputSpaceStage(Stage):
    """Greedy re-generation of each row's evolution, with per-token top-1 probabilities.

    The request replays the evolve prompt (the row's operation on its parent's instruction,
    `output_space.regeneration_request`); seeds have none and pass through unmeasured. The
    result depends on the evolver and the parent only, not on the run's sampling temperature.
    """

    name = "output_space"
    inputs: ClassVar[tuple[str, ...]] = ("operation", "meta.parent")
    outputs: ClassVar[tuple[str, ...]] = (
        *(f"scores.{s}" for s in OUTPUT_SPACE_SCORES),
        f"meta.{osp.META_KEY}",
    )
    roles: ClassVar[tuple[str, ...]] = ("evolver",)
    evolver: Backend

    def __init__(self, max_new_tokens: int = osp.DEFAULT_MAX_NEW_TOKENS) -> None:
        self.max_new_tokens = max_new_tokens

    def process(self, batch: list[Record]) -> list[Record]:
        asks = [osp.regeneration_request(r, self.max_new_tokens) for r in batch]
        todo = [(i, req) for i, req in enumerate(asks) if req is not None]
        gens = self.evolver.generate([req for _, req in todo]) if todo else []
        out = list(batch)
        for (i, _), gen in zip(todo, gens, strict=True):
            rec = batch[i]
            if failed_call(gen):
                out[i] = call_failed(rec, gen, self.name, "re-generation call")
                continue
            logprobs = osp.top1_logprobs(gen)
            if logprobs is None:
                # Not a row's failure: the backend cannot do it, so every row would be empty.
                raise EvolkitError(
                    f"the evolver {self.evolver.model_id} returned no log-probabilities, so "
                    "its output space cannot be measured (does its server support `logprobs`?);"
                    " leave output_space out of --measures"
                )
            row = osp.RowOutputSpace.from_logprobs(logprobs)
            meta = {
                **row.meta(),
                "model": self.evolver.model_id,
                "finish_reason": gen.finish_reason,
            }
            out[i] = _replace(rec, OUTPUT_SPACE_SCORES, row.scores(), meta, osp.META_KEY)
        return out


class DifficultyStage(Stage):
    """A judge's five-level label and 0-100 score of each row's query (greedy, two calls).

    An answer outside the format is stored as unparsed (`difficulty_*_unparsed` = 1), never
    mapped to the nearest value; a failed call leaves the row for the next run.
    """

    name = "difficulty"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input")
    outputs: ClassVar[tuple[str, ...]] = (
        *(f"scores.{s}" for s in DIFFICULTY_SCORES),
        "meta.difficulty",
    )
    roles: ClassVar[tuple[str, ...]] = ("judge",)
    judge: Backend

    def __init__(self, label: bool = True, score: bool = True) -> None:
        if not (label or score):
            raise ValueError("DifficultyStage: ask for the label, the score or both")
        self.label = label
        self.score = score

    def process(self, batch: list[Record]) -> list[Record]:
        kinds = [k for k, on in (("label", self.label), ("score", self.score)) if on]
        make = {"label": dif.label_request, "score": dif.score_request}
        requests: list[ChatRequest] = [make[k](r.query) for r in batch for k in kinds]
        gens = self.judge.generate(requests) if requests else []
        out = []
        for n, rec in enumerate(batch):
            answers = dict(zip(kinds, gens[n * len(kinds) : (n + 1) * len(kinds)], strict=True))
            bad = next((g for g in answers.values() if failed_call(g)), None)
            if bad is not None:
                out.append(call_failed(rec, bad, self.name, "judge call"))
                continue
            label = answers["label"].text if "label" in answers else None
            score = answers["score"].text if "score" in answers else None
            meta: dict[str, Any] = {"judge": self.judge.model_id}
            if label is not None:
                meta["label_answer"] = label.strip()[:80]
            if score is not None:
                meta["score_answer"] = score.strip()[:80]
            scores = dif.row_scores(label, score)
            out.append(_replace(rec, DIFFICULTY_SCORES, scores, meta, "difficulty"))
        return out


class DiversityStage(Stage):
    """Each row's cosine distance to its nearest other row of the same round.

    Nearest neighbours are a property of the whole set, so the stage needs every row of the
    step at once (`whole_step`): engines hand it all rows in one call and commit the step all or
    nothing. A row alone in its round has no neighbour and gets no distance.
    """

    name = "diversity"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input", "round")
    outputs: ClassVar[tuple[str, ...]] = (
        *(f"scores.{s}" for s in DIVERSITY_SCORES),
        "meta.diversity",
    )
    roles: ClassVar[tuple[str, ...]] = ("embedder",)
    partitionable: ClassVar[bool] = False
    whole_step: ClassVar[bool] = True
    embedder: Any  # evolkit.measures.diversity.Embedder, or anything with encode(texts)

    def __init__(self, threshold: float = NEAR_DUPLICATE, method: str = "auto") -> None:
        self.threshold = threshold
        self.method = method

    def process(self, batch: list[Record]) -> list[Record]:
        if not batch:
            return []
        # Searched in id order, so a row's neighbour among equally close ones (a text repeated)
        # and the float rounding of its distance do not depend on how the rows were ordered.
        order = sorted(range(len(batch)), key=lambda i: batch[i].id)
        rows = [batch[i] for i in order]
        emb = self.embedder.encode([r.query for r in rows])
        dist, index = nearest_neighbours(emb, [r.round for r in rows], method=self.method)
        model = getattr(self.embedder, "model_id", "embedder")
        found: dict[str, Record] = {}
        for rec, d, j in zip(rows, dist.tolist(), index.tolist(), strict=True):
            if j < 0:
                meta = {"embedder": model, "neighbour": None}
                found[rec.id] = _replace(rec, DIVERSITY_SCORES, {}, meta, "diversity")
                continue
            scores = {
                MIN_NN_SCORE: round(float(d), 6),
                NEAR_DUPLICATE_SCORE: 1.0 if d < self.threshold else 0.0,
            }
            meta = {"embedder": model, "neighbour": rows[j].id}
            found[rec.id] = _replace(rec, DIVERSITY_SCORES, scores, meta, "diversity")
        return [found[r.id] for r in batch]
