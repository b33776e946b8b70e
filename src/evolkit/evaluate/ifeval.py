"""IFEval: the 541 prompts shipped with evolkit, scored by lm-eval's own IFEval checkers.

The checkers are lm-eval's `lm_eval/tasks/ifeval` (the Google checkers as the evaluation
ecosystem runs them), called through its own strict and loose test functions; evolkit adds only
the data loading, the seeding and the aggregation into the four standard figures.

Seeding: a `keywords:letter_frequency` instruction whose letter is not a letter (two prompts ask
about '#' and '!') makes the checker draw a random letter, and `langdetect` draws from a fresh
random source on every call unless its factory has a seed. Each prompt is scored under a fixed
seed for both, and the caller's random state is put back afterwards, so the same responses
always get the same scores, whatever the order or the subset scored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from evolkit.errors import EvolkitError

BENCH = "ifeval"
CHECKER_PACKAGE = "lm-eval"
#: The four standard figures, named as lm-eval names them.
METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)
#: lm-eval's IFEval task generates up to this many tokens (its `max_gen_toks`).
DEFAULT_MAX_NEW_TOKENS = 1280
N_PROMPTS = 541


@dataclass(frozen=True)
class IFEvalPrompt:
    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]


@dataclass
class PromptResult:
    """One prompt's verdicts, one per instruction, strict and loose."""

    key: int
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_strict(self) -> bool:
        return all(self.strict)

    @property
    def all_loose(self) -> bool:
        return all(self.loose)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "instruction_id_list": self.instruction_id_list,
            "strict": self.strict,
            "loose": self.loose,
            "prompt_strict": self.all_strict,
            "prompt_loose": self.all_loose,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptResult:
        return cls(
            key=int(d["key"]),
            instruction_id_list=list(d["instruction_id_list"]),
            strict=[bool(x) for x in d["strict"]],
            loose=[bool(x) for x in d["loose"]],
        )


def load_prompts(limit: int | None = None) -> list[IFEvalPrompt]:
    """The shipped IFEval prompts in file order; `limit` keeps the first N."""
    if limit is not None and limit < 1:
        raise EvolkitError(f"--limit must be at least 1, not {limit}")
    path = resources.files("evolkit") / "data" / "ifeval" / "input_data.jsonl"
    prompts: list[IFEvalPrompt] = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompts.append(
                IFEvalPrompt(
                    key=int(row["key"]),
                    prompt=row["prompt"],
                    instruction_id_list=tuple(row["instruction_id_list"]),
                    kwargs=tuple(row["kwargs"]),
                )
            )
            if limit is not None and len(prompts) >= limit:
                break
    return prompts


def checker_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(CHECKER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@functools.cache
def _checkers() -> Any:
    """lm-eval's IFEval module, imported only once nltk can find punkt_tab without a download.
    Set up once per process: every scored response asks for it."""
    from evolkit.evaluate.punkt_data import ensure_punkt_tab

    ensure_punkt_tab()
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError as exc:
        raise EvolkitError(
            f"IFEval scoring runs lm-eval's checkers, which need '{exc.name}': "
            "pip install 'evolkit[eval]'"
        ) from None
    # A response in no detectable language (empty, digits only) is a plain failure of the
    # language instruction; the checker also logs an error line for it, which would only bury
    # the progress display.
    logging.getLogger("lm_eval.tasks.ifeval.instructions").setLevel(logging.CRITICAL)
    return utils


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fix the two random sources the checkers draw from, then restore the caller's state."""
    from langdetect import DetectorFactory

    state = random.getstate()
    old = DetectorFactory.seed
    random.seed(seed)
    DetectorFactory.seed = seed
    try:
        yield
    finally:
        random.setstate(state)
        DetectorFactory.seed = old


def score_response(prompt: IFEvalPrompt, response: str, seed: int = 0) -> PromptResult:
    """Check one response against its prompt's instructions, strictly and loosely."""
    utils = _checkers()
    inp = utils.InputExample(
        key=prompt.key,
        instruction_id_list=list(prompt.instruction_id_list),
        prompt=prompt.prompt,
        kwargs=[dict(k) for k in prompt.kwargs],
    )
    # Each test function builds its own checkers, so both start from the same seed: a drawn
    # letter is the same for the strict and the loose check.
    with seeded(seed):
        strict = utils.test_instruction_following_strict(inp, response)
    with seeded(seed):
        loose = utils.test_instruction_following_loose(inp, response)
    return PromptResult(
        key=prompt.key,
        instruction_id_list=list(prompt.instruction_id_list),
        strict=[bool(x) for x in strict.follow_instruction_list],
        loose=[bool(x) for x in loose.follow_instruction_list],
    )


def score_responses(
    prompts: Sequence[IFEvalPrompt], responses: Mapping[int, str], seed: int = 0
) -> list[PromptResult]:
    """Score every prompt that has a response, in prompt order."""
    missing = [p.key for p in prompts if p.key not in responses]
    if missing:
        raise EvolkitError(
            f"{len(missing)} IFEval prompts have no response (first key: {missing[0]})"
        )
    return [score_response(p, responses[p.key], seed) for p in prompts]


def metrics(results: Sequence[PromptResult]) -> dict[str, Any]:
    """The four standard figures and the accuracy of each instruction type.

    Prompt-level: the share of prompts whose instructions all pass. Instruction-level: the share
    of all instructions that pass, pooled over prompts (lm-eval's aggregation), not a mean of
    per-prompt shares.
    """
    if not results:
        raise EvolkitError("no IFEval prompts were scored")
    strict = [x for r in results for x in r.strict]
    loose = [x for r in results for x in r.loose]
    per_type: dict[str, dict[str, int]] = {}
    for r in results:
        for iid, s, lo in zip(r.instruction_id_list, r.strict, r.loose, strict=True):
            t = per_type.setdefault(iid, {"count": 0, "strict": 0, "loose": 0})
            t["count"] += 1
            t["strict"] += s
            t["loose"] += lo
    return {
        "prompt_level_strict_acc": sum(r.all_strict for r in results) / len(results),
        "inst_level_strict_acc": sum(strict) / len(strict),
        "prompt_level_loose_acc": sum(r.all_loose for r in results) / len(results),
        "inst_level_loose_acc": sum(loose) / len(loose),
        "prompts": len(results),
        "instructions": len(strict),
        "per_instruction": {
            iid: {
                "count": t["count"],
                "strict_acc": t["strict"] / t["count"],
                "loose_acc": t["loose"] / t["count"],
            }
            for iid, t in sorted(per_type.items())
        },
    }
