"""Bootstrap confidence intervals over prompts for the IFEval figures.

Prompts are the unit that is sampled (a benchmark is a sample of prompts), so each resample
draws prompts with replacement and recomputes a figure from them. The instruction-level figures
pool instructions, so a resample takes every instruction of each drawn prompt: the statistic is
a ratio of sums, as in the point estimate, and prompts with more instructions weigh more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evolkit.errors import EvolkitError

if TYPE_CHECKING:
    from evolkit.evaluate.ifeval import PromptResult


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, interpolating linearly between neighbours."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float] | None = None,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval for sum(numerators) / sum(denominators) over units.

    Without denominators it is the mean of `numerators`. The draws come from a private
    `random.Random(seed)`, so the same inputs and seed give the same interval.
    """
    n = len(numerators)
    if n == 0:
        raise EvolkitError("cannot bootstrap over zero prompts")
    den = [1.0] * n if denominators is None else [float(d) for d in denominators]
    if len(den) != n:
        raise ValueError("numerators and denominators differ in length")
    if not 0 < confidence < 1:
        raise EvolkitError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 1:
        raise EvolkitError(f"resamples must be at least 1, not {resamples}")
    num = [float(x) for x in numerators]
    rng = random.Random(seed)
    stats: list[float] = []
    for _ in range(resamples):
        idx = rng.choices(range(n), k=n)
        d = sum(den[i] for i in idx)
        stats.append(sum(num[i] for i in idx) / d if d else 0.0)
    stats.sort()
    tail = (1 - confidence) / 2
    total = sum(den)
    return Interval(
        value=sum(num) / total if total else 0.0,
        low=percentile(stats, tail),
        high=percentile(stats, 1 - tail),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def ifeval_intervals(
    results: Sequence[PromptResult],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Intervals for the four standard IFEval figures, keyed like `ifeval.metrics`."""
    counts = [len(r.strict) for r in results]
    kw: dict[str, Any] = {"resamples": resamples, "confidence": confidence, "seed": seed}
    return {
        "prompt_level_strict_acc": bootstrap_ratio([r.all_strict for r in results], **kw),
        "inst_level_strict_acc": bootstrap_ratio([sum(r.strict) for r in results], counts, **kw),
        "prompt_level_loose_acc": bootstrap_ratio([r.all_loose for r in results], **kw),
        "inst_level_loose_acc": bootstrap_ratio([sum(r.loose) for r in results], counts, **kw),
    }
