"""Select the top rows of a scored data set, from stored scores only (no model is loaded).

The rules run in a fixed order and each removed row carries a verdict naming the rule, so a
selection can be audited and its rejects written out:

1. ``already_rejected`` - rows that an earlier stage already rejected are not eligible;
2. ``missing_score``    - rows without a finite value of a score the selection needs (the ranking
   score, and ``ifd`` when the IFD filter is on);
3. ``ifd_at_or_above``  - IFD >= the threshold (default 1.0): the instruction does not help predict
   the response, the original IFD work's rule, applied before ranking;
4. ``below_top``        - the rest are ranked, best first, and only the top ``k`` are kept.

``k`` for a fraction is taken of *all* input rows, not of what survives rules 1-3, so every
method run on the same input keeps the same number of rows (as in the paper's comparison at 25%)
unless the filters leave fewer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from evolkit.errors import SettingError
from evolkit.records import Record

SelectBy = Literal["ic_ifd", "ifd", "length", "loss_q"]
SELECT_BY: tuple[str, ...] = get_args(SelectBy)
STAGE = "select"
RULES = ("already_rejected", "missing_score", "ifd_at_or_above", "below_top")


@dataclass
class SelectionResult:
    """Kept rows best first; removed rows with a ``select`` verdict; how many each rule removed."""

    kept: list[Record]
    removed: list[Record]
    counts: dict[str, int] = field(default_factory=dict)


def parse_top(value: str | float) -> float | int:
    """Read a --top value: "25%" or "0.25" is a fraction, "1000" a row count.

    An integer (or a string without a dot or percent sign) is a count; anything else must be a
    fraction in (0, 1]. "100%" and "1.0" keep everything; "1" keeps one row.
    """
    if isinstance(value, bool):
        raise SettingError("top must be a fraction, a percentage or a row count")
    if isinstance(value, int):
        result: float | int = value
    elif isinstance(value, float):
        result = value
    else:
        text = value.strip()
        try:
            if text.endswith("%"):
                result = float(text[:-1]) / 100.0
            elif any(c in text for c in ".eE") or text.lower() in {"nan", "inf", "-inf"}:
                result = float(text)
            else:
                result = int(text)
        except ValueError:
            raise SettingError(
                f"--top {value!r}: give a percentage (25%), a fraction (0.25) or a count (1000)"
            ) from None
    if isinstance(result, int):
        if result < 0:
            raise SettingError(f"--top {value!r}: a row count cannot be negative")
        return result
    if not (0.0 < result <= 1.0):
        raise SettingError(f"--top {value!r}: a fraction must be above 0 and at most 1 (100%)")
    return result


def parse_ifd_limit(value: str | float | None) -> float | None:
    """Read --drop-ifd-at-or-above: a number, or 'none'/'off' (None: the IFD filter is off)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise SettingError(
            f"--drop-ifd-at-or-above: expected a number or 'none', not {text!r}"
        ) from None


def top_count(top: float | int, total: int) -> int:
    """How many rows `top` keeps out of `total` input rows (a fraction rounds half up)."""
    if isinstance(top, int):
        return min(top, total)
    if total == 0:
        return 0
    return min(total, max(1, math.floor(top * total + 0.5)))


def _score(record: Record, name: str) -> float | None:
    value = record.scores.get(name)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _rank_key(by: SelectBy) -> Callable[[Record], float | None]:
    """The value ranked on, higher is better. Length is the output's character count: the
    SPEC's length baseline picks the longest responses, and characters need no tokenizer."""
    if by == "length":
        return lambda r: float(len(r.output))
    return lambda r: _score(r, by)


def select(
    records: Sequence[Record],
    by: SelectBy = "ic_ifd",
    top: float | str = 0.25,
    drop_ifd_at_or_above: float | None = 1.0,
) -> SelectionResult:
    """Keep the top rows by a stored score after the IFD filter; say why each other row went.

    Ranking is descending on ``by`` (IC-IFD, IFD, L(Q) or output length); ties are broken by
    record id so the same input always gives the same selection. ``top`` is a fraction of all
    input rows (0.25), a row count (1000) or a --top string (see :func:`parse_top`).
    ``drop_ifd_at_or_above=None`` turns the IFD filter off - useful for the length baseline on
    data that was never scored.
    """
    if by not in SELECT_BY:
        raise SettingError(f"unknown ranking {by!r}: choose one of {', '.join(SELECT_BY)}")
    top = parse_top(top)
    counts = dict.fromkeys(RULES, 0)
    removed: list[Record] = []

    def drop(record: Record, rule: str, detail: str) -> None:
        counts[rule] += 1
        removed.append(record.reject(rule, detail, stage=STAGE))

    key = _rank_key(by)
    needed = [] if by == "length" else [by]
    if drop_ifd_at_or_above is not None and "ifd" not in needed:
        needed.append("ifd")
    pool: list[tuple[float, Record]] = []
    for rec in records:
        if rec.rejected:
            drop(rec, "already_rejected", "rejected by an earlier stage")
            continue
        missing = [name for name in needed if _score(rec, name) is None]
        if missing:
            drop(rec, "missing_score", f"no finite {' or '.join(missing)} score")
            continue
        ifd = _score(rec, "ifd")
        if drop_ifd_at_or_above is not None and ifd is not None and ifd >= drop_ifd_at_or_above:
            drop(rec, "ifd_at_or_above", f"ifd {ifd:.4f} >= {drop_ifd_at_or_above:g}")
            continue
        pool.append((cast(float, key(rec)), rec))

    pool.sort(key=lambda pair: (-pair[0], pair[1].id))
    k = top_count(top, len(records))
    kept = [rec for _, rec in pool[:k]]
    for rank, (value, rec) in enumerate(pool[k:], start=k + 1):
        drop(rec, "below_top", f"rank {rank} by {by} ({value:.6g}); kept the top {k}")
    return SelectionResult(kept=kept, removed=removed, counts=counts)


def as_select_by(name: str) -> SelectBy:
    """Validate a --by value from the command line."""
    if name not in SELECT_BY:
        raise SettingError(f"unknown ranking {name!r}: choose one of {', '.join(SELECT_BY)}")
    return cast(SelectBy, name)
