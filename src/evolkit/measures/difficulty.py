"""Difficulty: a judge model labels each instruction on five levels and scores it from 0 to 100.

The study reported both per round: the share of hard + very hard instructions and the mean
score (SPEC sections 5, 9). An answer outside the five labels, or a score that is not one
integer in 0-100, is counted as unparsed and never mapped to the nearest value: a judge that
cannot follow the format should show up as such in the report, not as a made-up difficulty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from evolkit.models.base import ChatRequest, SamplingParams
from evolkit.prompts import few_shot

LEVELS = ("very easy", "easy", "medium", "hard", "very hard")
HARD = ("hard", "very hard")

#: Row score names (floats, as `Record.scores` holds): the level is 1 (very easy) to 5.
LEVEL_SCORE = "difficulty_level"
SCORE_SCORE = "difficulty_score"
LEVEL_UNPARSED = "difficulty_level_unparsed"
SCORE_UNPARSED = "difficulty_score_unparsed"

LABEL_MAX_NEW_TOKENS = 8
SCORE_MAX_NEW_TOKENS = 6

# "very hard" must win over the "hard" inside it: the alternation tries the two-word labels
# first at each position, and a match consumes its words.
_LABEL = re.compile(r"\b(very easy|very hard|easy|medium|hard)\b")
# A negation or a different intensifier changes the label's meaning ("not hard", "extremely
# hard"); reading such answers as a plain label would be a guess.
_HEDGE = re.compile(
    r"\b(not|no|never|neither|nor|isn t|extremely|really|quite|super|incredibly|fairly|"
    r"moderately|somewhat|rather|pretty|too|so|slightly|mostly|relatively|between|or|sort|kind|"
    r"ish|bit|little|maybe|probably|perhaps|possibly)\b"
)
_OUT_OF_100 = re.compile(r"\s*(?:/|out\s+of)\s*100\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


def parse_label(answer: str) -> str | None:
    """One of LEVELS, or None when the answer is not exactly one unhedged label.

    Case, punctuation and framing words ("Label: Hard.", "**Very hard**") are tolerated;
    two different labels ("medium-hard"), a negation or a hedge make the answer unparsed.
    """
    words = re.sub(r"[\W_]+", " ", answer.casefold()).strip()
    found = {m.group(1) for m in _LABEL.finditer(words)}
    if len(found) != 1 or _HEDGE.search(words):
        return None
    return found.pop()


def parse_score(answer: str) -> int | None:
    """An integer 0-100 ("72", "Score: 72", "72/100"), or None: no number, several numbers,
    a fraction or a value out of range."""
    text = _OUT_OF_100.sub("", answer)
    numbers = _NUMBER.findall(text)
    if len(numbers) != 1 or not re.fullmatch(r"\d+", numbers[0]):
        return None
    value = int(numbers[0])
    return value if 0 <= value <= 100 else None


def _messages(prompt: str, text: str) -> list[dict[str, str]]:
    shots = few_shot(prompt)
    messages = []
    for example, answer in shots.examples:
        messages.append({"role": "user", "content": f"{shots.task}\nInstruction: {example}"})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"{shots.task}\nInstruction: {text}"})
    return messages


def label_messages(text: str) -> list[dict[str, str]]:
    return _messages("judge_difficulty_label", text)


def score_messages(text: str) -> list[dict[str, str]]:
    return _messages("judge_difficulty_score", text)


def label_request(text: str, max_new_tokens: int = LABEL_MAX_NEW_TOKENS) -> ChatRequest:
    """The judge call for the five-level label of `text` (a row's query), greedy."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return ChatRequest.of(label_messages(text), params)


def score_request(text: str, max_new_tokens: int = SCORE_MAX_NEW_TOKENS) -> ChatRequest:
    """The judge call for the 0-100 difficulty score of `text`, greedy."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return ChatRequest.of(score_messages(text), params)


def row_scores(label_answer: str | None, score_answer: str | None) -> dict[str, float]:
    """The `scores` entries for one judged row. An unparsed answer is recorded as such (so the
    run can count it); an answer that was not asked for (None) leaves no entry."""
    out: dict[str, float] = {}
    if label_answer is not None:
        label = parse_label(label_answer)
        if label is None:
            out[LEVEL_UNPARSED] = 1.0
        else:
            out[LEVEL_SCORE] = float(LEVELS.index(label) + 1)
    if score_answer is not None:
        score = parse_score(score_answer)
        if score is None:
            out[SCORE_UNPARSED] = 1.0
        else:
            out[SCORE_SCORE] = float(score)
    return out


def level_label(level: float) -> str | None:
    """The label of a stored level (1-5); None for anything else (a hand-edited file)."""
    if not 1 <= level <= len(LEVELS) or level != round(level):
        return None
    return LEVELS[round(level) - 1]


@dataclass(frozen=True)
class DifficultyStats:
    """Difficulty of a set of rows. Shares are over parsed labels only."""

    labelled: int
    label_unparsed: int
    label_counts: dict[str, int]
    label_shares: dict[str, float | None]
    hard_share: float | None
    scored: int
    score_unparsed: int
    mean_score: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def measured(self) -> bool:
        return bool(self.labelled or self.label_unparsed or self.scored or self.score_unparsed)


def difficulty_stats(rows: Iterable[Mapping[str, float]]) -> DifficultyStats:
    """Aggregate rows' `scores` dicts (rows never judged count nowhere)."""
    counts = dict.fromkeys(LEVELS, 0)
    label_unparsed = score_unparsed = 0
    scores: list[float] = []
    for s in rows:
        label = level_label(s[LEVEL_SCORE]) if LEVEL_SCORE in s else None
        if label is not None:
            counts[label] += 1
        elif LEVEL_SCORE in s or s.get(LEVEL_UNPARSED):
            label_unparsed += 1
        if SCORE_SCORE in s:
            scores.append(float(s[SCORE_SCORE]))
        elif s.get(SCORE_UNPARSED):
            score_unparsed += 1
    labelled = sum(counts.values())
    shares = {k: (round(v / labelled, 6) if labelled else None) for k, v in counts.items()}
    hard = sum(counts[k] for k in HARD)
    return DifficultyStats(
        labelled=labelled,
        label_unparsed=label_unparsed,
        label_counts=counts,
        label_shares=shares,
        hard_share=round(hard / labelled, 6) if labelled else None,
        scored=len(scores),
        score_unparsed=score_unparsed,
        mean_score=round(sum(scores) / len(scores), 6) if scores else None,
    )


def difficulty_by_round(
    rows: Iterable[tuple[int, Mapping[str, float]]],
) -> dict[int, DifficultyStats]:
    """`difficulty_stats` per round, from (round, scores) pairs."""
    groups: dict[int, list[Mapping[str, float]]] = {}
    for r, s in rows:
        groups.setdefault(int(r), []).append(s)
    return {r: difficulty_stats(groups[r]) for r in sorted(groups)}
