"""Output space: how peaked an evolver's next-token distribution is while it writes evolutions.

The study's claim is that a small evolver writes from a flatter distribution than a large one,
so its rewrites wander further. It re-decoded each evolution greedily with log-probabilities
and plotted the top-1 probability of the first (up to) five generated tokens (SPEC sections 5, 9).
Greedy decoding picks the most likely token, so the chosen token's log-probability is the top-1
log-probability; where a backend also returns alternatives, their best is preferred, since a
backend may score ties or penalties differently from how it chose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.records import Record

#: How many leading tokens the study plotted.
FIRST_K = 5
#: The "confident token" line the report quotes the share above.
HIGH = 0.9
#: Where a row keeps its per-token values (the scores dict holds only floats).
META_KEY = "output_space"
#: What the evolve scenario used for evolutions (EvolConfig.evolve_max_new_tokens).
DEFAULT_MAX_NEW_TOKENS = 160
HIST_BINS = 20
DENSITY_POINTS = 101


def regeneration_request(
    rec: Record, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> ChatRequest | None:
    """The greedy evolve request that re-creates `rec`'s evolution, asking for log-probs.

    The prompt is the one the evolver saw: the row's operation applied to its parent's
    instruction. Seeds (no operation or no parent) have nothing to re-generate: None.
    """
    from evolkit.prompts.evolve import build_messages

    parent = rec.meta.get("parent") or {}
    parent_instruction = parent.get("instruction") if isinstance(parent, dict) else None
    if not rec.operation or not parent_instruction:
        return None
    params = SamplingParams(
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        logprobs=True,
        top_logprobs=1,
    )
    return ChatRequest.of(build_messages(rec.operation, str(parent_instruction)), params)


def top1_logprobs(gen: Generation) -> list[float] | None:
    """Per generated token, the top-1 log-probability; None when the backend returned none."""
    chosen = gen.token_logprobs
    if chosen is None:
        return None
    alts = gen.top_logprobs or []
    out = []
    for i, lp in enumerate(chosen):
        best = max((a[1] for a in alts[i]), default=lp) if i < len(alts) and alts[i] else lp
        out.append(max(lp, best))
    return out


def top1_probs(logprobs: Iterable[float]) -> list[float]:
    """Probabilities from log-probabilities; non-finite values (a backend's -inf or NaN for a
    token it could not score) are dropped rather than counted as zero-probability tokens."""
    out = []
    for lp in logprobs:
        lp = float(lp)
        if math.isfinite(lp):
            out.append(min(1.0, math.exp(min(lp, 0.0))))
    return out


@dataclass(frozen=True)
class RowOutputSpace:
    """One row's top-1 probabilities: the first FIRST_K tokens and all of them."""

    first: list[float]
    all: list[float]

    @classmethod
    def from_logprobs(cls, logprobs: Sequence[float]) -> RowOutputSpace:
        probs = top1_probs(logprobs)
        return cls(first=probs[:FIRST_K], all=probs)

    def scores(self) -> dict[str, float]:
        """The floats a row keeps in `scores` (none when the re-generation had no tokens)."""
        if not self.all:
            return {}
        return {
            "top1_first5_mean": _mean(self.first),
            "top1_mean": _mean(self.all),
            "top1_above_0.9": _share_above(self.all, HIGH),
            "top1_tokens": float(len(self.all)),
        }

    def meta(self) -> dict[str, Any]:
        """What a row keeps in `meta[META_KEY]`: the values themselves, for run-level plots."""
        return {"top1": [round(p, 6) for p in self.all]}


@dataclass(frozen=True)
class Distribution:
    """A run's values summarised for a table and a plot."""

    n: int
    mean: float | None
    median: float | None
    share_above_0_9: float | None
    hist_edges: list[float]
    hist_counts: list[int]
    # A Gaussian kernel density on [0, 1] (reflected at both ends, since probabilities pile
    # against 1); None when fewer than two distinct values make a bandwidth meaningless.
    density_x: list[float] | None
    density_y: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distribution(
    values: Iterable[float], bins: int = HIST_BINS, points: int = DENSITY_POINTS
) -> Distribution:
    """Histogram over [0, 1] in `bins` equal bins, a density estimate, mean and share > 0.9."""
    import numpy as np

    xs = np.asarray([float(v) for v in values if math.isfinite(float(v))], dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(xs, 0.0, 1.0), bins=edges)
    dx = dy = None
    if xs.size >= 2 and float(np.ptp(xs)) > 0.0:
        dx, dy = _reflected_kde(xs, points)
    return Distribution(
        n=int(xs.size),
        mean=round(float(xs.mean()), 6) if xs.size else None,
        median=round(float(np.median(xs)), 6) if xs.size else None,
        share_above_0_9=round(float((xs > HIGH).mean()), 6) if xs.size else None,
        hist_edges=[round(float(e), 6) for e in edges],
        hist_counts=[int(c) for c in counts],
        density_x=dx,
        density_y=dy,
    )


def run_distributions(rows: Iterable[Sequence[float] | None]) -> dict[str, Distribution]:
    """For a run's rows of per-token top-1 probabilities: the first-5 and the all-token
    distributions (rows without values are skipped)."""
    first: list[float] = []
    every: list[float] = []
    for probs in rows:
        if not probs:
            continue
        first.extend(probs[:FIRST_K])
        every.extend(probs)
    return {"first5": distribution(first), "all": distribution(every)}


def _reflected_kde(xs: Any, points: int) -> tuple[list[float], list[float]]:
    import numpy as np
    from scipy.stats import gaussian_kde

    kde = gaussian_kde(xs)  # Scott's rule, as the common density plots use
    grid = np.linspace(0.0, 1.0, points)
    y = kde(grid) + kde(-grid) + kde(2.0 - grid)
    return [round(float(g), 6) for g in grid], [round(float(v), 6) for v in y]


def _mean(xs: Sequence[float]) -> float:
    return round(sum(xs) / len(xs), 6) if xs else float("nan")


def _share_above(xs: Sequence[float], t: float) -> float:
    return round(sum(1 for x in xs if x > t) / len(xs), 6) if xs else float("nan")
