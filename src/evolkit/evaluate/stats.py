"""Bootstrap confidence intervals over prompts for the IFEval figures.

Prompts are the unit that is sampled (a benchmark is a sample of prompts), so each resample
draws prompts with replacement and recomputes a figure from them. The instruction-level figures
pool instructions, so a resample takes every instruction of each drawn prompt: the statistic is
a ratio of sums, as in the point estimate, and prompts with more instructions weigh more.

Two models answered the same prompts, so their difference is estimated with a paired
bootstrap (`paired_intervals`): one resample of prompts serves both models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evolkit.errors import EvolkitError
from evolkit.evaluate.ifeval import METRICS

if TYPE_CHECKING:
    from evolkit.evaluate.ifeval import PromptResult


#: The four standard figures, in lm-eval's order and names.
FIGURES = METRICS


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


def units(results: Sequence[PromptResult], metric: str) -> tuple[list[float], list[float]]:
    """Per prompt, what one of the four figures adds up: (numerator, denominator).

    Prompt level: 1 if every instruction passed, over 1. Instruction level: the instructions
    that passed, over the prompt's instruction count, so the ratio of sums pools instructions.
    """
    loose = "loose" in metric
    if metric.startswith("prompt_level"):
        return [float(r.all_loose if loose else r.all_strict) for r in results], [1.0] * len(
            results
        )
    if metric.startswith("inst_level"):
        return (
            [float(sum(r.loose if loose else r.strict)) for r in results],
            [float(len(r.strict)) for r in results],
        )
    raise ValueError(f"unknown IFEval figure {metric!r}")


def ifeval_intervals(
    results: Sequence[PromptResult],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Intervals for the four standard IFEval figures, keyed like `ifeval.metrics`."""
    kw: dict[str, Any] = {"resamples": resamples, "confidence": confidence, "seed": seed}
    out = {}
    for name in FIGURES:
        num, den = units(results, name)
        out[name] = bootstrap_ratio(num, den, **kw)
    return out


def paired_intervals(
    a: Sequence[PromptResult],
    b: Sequence[PromptResult],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Intervals for figure(a) - figure(b), two models scored on the same prompts.

    The prompts are resampled once for both models (a paired bootstrap): the prompt-to-prompt
    spread both models share cancels, so the interval of the difference is narrower than the
    two models' own intervals suggest. The denominators are the same for both models, so the
    difference of the two ratios is one ratio: the per-prompt differences over the shared
    denominators.
    """
    by_key = {r.key: r for r in b}
    if len(by_key) != len(b) or {r.key for r in a} != set(by_key) or len(a) != len(b):
        raise EvolkitError("a paired comparison needs both models scored on the same prompts")
    b_aligned = [by_key[r.key] for r in a]
    kw: dict[str, Any] = {"resamples": resamples, "confidence": confidence, "seed": seed}
    out = {}
    for name in FIGURES:
        num_a, den = units(a, name)
        num_b, _ = units(b_aligned, name)
        diff = [x - y for x, y in zip(num_a, num_b, strict=True)]
        out[name] = bootstrap_ratio(diff, den, **kw)
    return out
