"""AutoIF step 3: cross-validate model-written verifier functions by executing them.

For each constraint the model wrote K candidate ``evaluate(response) -> bool`` functions and some
test cases (response, expected bool). Neither is trusted: a function can be wrong, a case can be
mislabelled. Running every function on every case (in the sandbox) lets them check each other:

1. identical function sources are merged (a duplicate would vote twice);
2. a case is kept if at least one function reproduces its label (otherwise the label itself is
   the likely error);
3. a function is kept if its accuracy on the kept cases is >= ``min_accuracy``;
4. the constraint is kept if it has >= ``min_functions`` kept functions and >= ``min_cases``
   kept cases.

Only a ``pass`` verdict reproduces a True label and only ``fail`` a False one: an error, a
timeout, a memory or forbidden verdict never counts as agreement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evolkit.sandbox import VERDICTS, CallResult, Sandbox

STEP = "crossval"


@dataclass(frozen=True)
class Case:
    """One test case: a response text and whether the constraint holds for it."""

    input: str
    output: bool


@dataclass
class VerifierSet:
    """A constraint with the candidate verifiers and test cases the model wrote for it."""

    constraint: str
    functions: list[str]
    cases: list[Case]


@dataclass(frozen=True)
class CrossValConfig:
    """Thresholds of the cross-validation (the original AutoIF values are the defaults)."""

    min_accuracy: float = 0.8
    min_functions: int = 3
    min_cases: int = 10
    func: str = "evaluate"
    """Name of the function each source must define."""
    batch_size: int = 512
    """Calls handed to the sandbox at once (bounds memory); the sandbox spreads them."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError("min_accuracy must be within [0, 1]")
        if self.min_functions < 0 or self.min_cases < 0:
            raise ValueError("min_functions and min_cases must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class FunctionScore:
    """How one (deduplicated) candidate function did."""

    source: str
    accuracy: float
    """Share of the kept cases whose label it reproduced (0.0 when no case was kept)."""
    correct: int
    evaluated: int
    """Number of kept cases it was scored on."""
    kept: bool
    verdicts: dict[str, int]
    """Verdict counts over all cases (pass, fail, error, timeout, memory, forbidden)."""
    duplicates: int = 0
    """How many identical copies of this source were merged into it."""
    errors: list[str] = field(default_factory=list)
    """Up to three distinct error details, to show why a function failed."""


@dataclass
class CrossValResult:
    """The outcome for one constraint."""

    constraint: str
    kept: bool
    functions: list[FunctionScore]
    """The kept functions, with their accuracy."""
    cases: list[Case]
    """The kept cases."""
    scores: list[FunctionScore]
    """Every deduplicated function, kept or not, with verdict counts."""
    reasons: list[dict[str, str]]
    dropped_cases: list[Case] = field(default_factory=list)

    @property
    def kept_sources(self) -> list[str]:
        return [f.source for f in self.functions]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dedupe(functions: Sequence[str]) -> tuple[list[str], Counter[str]]:
    """Unique sources in first-seen order; identical up to surrounding whitespace counts as one."""
    seen: dict[str, str] = {}
    copies: Counter[str] = Counter()
    for source in functions:
        key = source.strip()
        if key in seen:
            copies[seen[key]] += 1
        else:
            seen[key] = source
    return list(seen.values()), copies


def _reproduces(result: CallResult, label: bool) -> bool:
    return result.verdict == ("pass" if label else "fail")


def _run_all(
    items: Sequence[VerifierSet], uniques: list[list[str]], sandbox: Sandbox, config: CrossValConfig
) -> list[CallResult]:
    """Every function on every case of every item, in batches, in a stable order."""
    jobs: list[tuple[str, str, str]] = []
    for item, functions in zip(items, uniques, strict=True):
        for source in functions:
            for case in item.cases:
                jobs.append((source, case.input, config.func))
    results: list[CallResult] = []
    for start in range(0, len(jobs), config.batch_size):
        results.extend(sandbox.run_many(jobs[start : start + config.batch_size]))
    return results


def cross_validate(
    items: Sequence[VerifierSet], sandbox: Sandbox, config: CrossValConfig | None = None
) -> list[CrossValResult]:
    """Cross-validate each verifier set; one result per item, in order."""
    config = config or CrossValConfig()
    deduped = [_dedupe(item.functions) for item in items]
    uniques = [functions for functions, _ in deduped]
    results = _run_all(items, uniques, sandbox, config)
    out: list[CrossValResult] = []
    offset = 0
    for item, (functions, copies) in zip(items, deduped, strict=True):
        n_cases = len(item.cases)
        # matrix[f][c]: the call result of function f on case c
        matrix = [
            results[offset + f * n_cases : offset + (f + 1) * n_cases]
            for f in range(len(functions))
        ]
        offset += len(functions) * n_cases
        out.append(_judge(item, functions, copies, matrix, config))
    return out


def _judge(
    item: VerifierSet,
    functions: list[str],
    copies: Counter[str],
    matrix: list[list[CallResult]],
    config: CrossValConfig,
) -> CrossValResult:
    kept_case_idx = [
        c
        for c, case in enumerate(item.cases)
        if any(_reproduces(row[c], case.output) for row in matrix)
    ]
    scores: list[FunctionScore] = []
    for source, row in zip(functions, matrix, strict=True):
        correct = sum(1 for c in kept_case_idx if _reproduces(row[c], item.cases[c].output))
        evaluated = len(kept_case_idx)
        accuracy = correct / evaluated if evaluated else 0.0
        counts = Counter(r.verdict for r in row)
        errors: list[str] = []
        for r in row:
            if r.verdict not in ("pass", "fail") and r.detail and r.detail not in errors:
                errors.append(r.detail)
            if len(errors) == 3:
                break
        scores.append(
            FunctionScore(
                source=source,
                accuracy=accuracy,
                correct=correct,
                evaluated=evaluated,
                kept=evaluated > 0 and accuracy >= config.min_accuracy,
                verdicts={v: counts.get(v, 0) for v in VERDICTS},
                duplicates=copies.get(source, 0),
                errors=errors,
            )
        )
    kept_functions = [s for s in scores if s.kept]
    kept_cases = [item.cases[c] for c in kept_case_idx]
    kept_set = set(kept_case_idx)
    dropped_cases = [case for c, case in enumerate(item.cases) if c not in kept_set]

    reasons: list[dict[str, str]] = []
    if len(kept_functions) < config.min_functions:
        reasons.append(
            {
                "step": STEP,
                "rule": "min_functions",
                "detail": f"{len(kept_functions)} of {len(functions)} distinct functions reach "
                f"accuracy >= {config.min_accuracy:g} on the kept cases; "
                f"{config.min_functions} needed",
            }
        )
    if len(kept_cases) < config.min_cases:
        reasons.append(
            {
                "step": STEP,
                "rule": "min_cases",
                "detail": f"{len(kept_cases)} of {len(item.cases)} test cases are reproduced by "
                f"at least one function; {config.min_cases} needed",
            }
        )
    kept = not reasons
    if kept:
        reasons.append(
            {
                "step": STEP,
                "rule": "kept",
                "detail": f"{len(kept_functions)} functions, {len(kept_cases)} cases "
                f"(dropped {len(functions) - len(kept_functions)} functions, "
                f"{len(dropped_cases)} cases, merged {sum(copies.values())} duplicates)",
            }
        )
    return CrossValResult(
        constraint=item.constraint,
        kept=kept,
        functions=kept_functions,
        cases=kept_cases,
        scores=scores,
        reasons=reasons,
        dropped_cases=dropped_cases,
    )
