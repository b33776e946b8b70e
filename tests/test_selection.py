"""Selection from stored scores: ranking, top-k, the IFD filter, missing scores, reasons."""

from __future__ import annotations

import math

import pytest

from evolkit.records import Record, seed_record
from evolkit.selection import RULES, as_select_by, parse_top, select, top_count


def rec(rid: str, output: str = "answer", **scores: float) -> Record:
    return seed_record(f"instruction {rid}", output=output, id=rid, scores=scores)


def ids(records: list[Record]) -> list[str]:
    return [r.id for r in records]


def test_ranks_descending_and_breaks_ties_by_id() -> None:
    rows = [
        rec("d", ic_ifd=0.2, ifd=0.5),
        rec("b", ic_ifd=0.9, ifd=0.5),
        rec("c", ic_ifd=0.5, ifd=0.5),
        rec("a", ic_ifd=0.5, ifd=0.5),
    ]
    res = select(rows, by="ic_ifd", top=3)
    assert ids(res.kept) == ["b", "a", "c"]
    assert ids(res.removed) == ["d"]
    assert res.removed[0].verdicts[-1].rule == "below_top"
    assert res.removed[0].verdicts[-1].stage == "select"
    assert "rank 4" in res.removed[0].verdicts[-1].detail
    assert select(list(reversed(rows)), by="ic_ifd", top=3).kept == res.kept


def test_top_fraction_is_of_all_input_rows() -> None:
    rows = [rec(f"r{i}", ifd=i / 10, ic_ifd=i / 20) for i in range(8)]
    res = select(rows, by="ifd", top=0.25)
    assert ids(res.kept) == ["r7", "r6"]
    assert res.counts["below_top"] == 6
    # 25% of 10 rows is 2.5 -> 3 (half up); a fraction never keeps nothing from a non-empty set.
    assert top_count(0.25, 10) == 3 and top_count(0.01, 10) == 1 and top_count(0.25, 0) == 0
    assert top_count(1.0, 7) == 7 and top_count(1000, 7) == 7 and top_count(0, 7) == 0


def test_ifd_at_or_above_threshold_dropped_first_with_counts() -> None:
    rows = [
        rec("high", ic_ifd=9.0, ifd=1.2),  # best IC-IFD, but the instruction does not help
        rec("edge", ic_ifd=8.0, ifd=1.0),  # exactly 1.0 is dropped too
        rec("ok1", ic_ifd=0.3, ifd=0.6),
        rec("ok2", ic_ifd=0.4, ifd=0.7),
        rec("ok3", ic_ifd=0.1, ifd=0.9),
        rec("ok4", ic_ifd=0.2, ifd=0.8),
    ]
    res = select(rows, by="ic_ifd", top=0.5)  # 3 of 6 input rows
    assert ids(res.kept) == ["ok2", "ok1", "ok4"]
    assert res.counts == {
        "already_rejected": 0,
        "missing_score": 0,
        "ifd_at_or_above": 2,
        "below_top": 1,
    }
    reasons = {r.id: r.verdicts[-1] for r in res.removed}
    assert reasons["high"].rule == "ifd_at_or_above" and "1.2" in reasons["high"].detail
    assert reasons["edge"].rule == "ifd_at_or_above"
    assert reasons["ok3"].rule == "below_top"
    # With the filter off, the high-IFD rows compete.
    assert ids(select(rows, by="ic_ifd", top=2, drop_ifd_at_or_above=None).kept) == [
        "high",
        "edge",
    ]
    # A custom threshold.
    assert select(rows, by="ifd", top=10, drop_ifd_at_or_above=0.85).counts["ifd_at_or_above"] == 3


def test_missing_or_non_finite_scores_removed_with_reason() -> None:
    rows = [
        rec("full", ic_ifd=0.5, ifd=0.5, loss_q=2.0),
        rec("no_ic", ifd=0.5, loss_q=2.0),
        rec("nan", ic_ifd=math.nan, ifd=0.5),
        rec("no_ifd", ic_ifd=0.7),
        rec("bare"),
    ]
    res = select(rows, by="ic_ifd", top=1.0)
    assert ids(res.kept) == ["full"]
    assert res.counts["missing_score"] == 4
    details = {r.id: r.verdicts[-1].detail for r in res.removed}
    assert details["no_ic"] == "no finite ic_ifd score"
    assert details["no_ifd"] == "no finite ifd score"
    assert details["bare"] == "no finite ic_ifd or ifd score"
    # L(Q) ranking needs loss_q (and ifd while the filter is on).
    res_q = select(rows, by="loss_q", top=1.0)
    assert ids(res_q.kept) == ["full", "no_ic"]


def test_length_baseline_picks_longest_outputs_without_scores() -> None:
    rows = [rec("s", "short"), rec("l", "a much longer response"), rec("m", "medium one")]
    res = select(rows, by="length", top=2, drop_ifd_at_or_above=None)
    assert ids(res.kept) == ["l", "m"]
    # With the IFD filter on, unscored rows cannot be judged and are removed with a reason.
    res_f = select(rows, by="length", top=2)
    assert res_f.kept == [] and res_f.counts["missing_score"] == 3


def test_loss_q_ranks_hardest_instructions_first() -> None:
    rows = [rec("easy", loss_q=1.0, ifd=0.5), rec("hard", loss_q=4.0, ifd=0.5)]
    assert ids(select(rows, by="loss_q", top=1).kept) == ["hard"]


def test_already_rejected_rows_are_not_eligible() -> None:
    rows = [
        rec("a", ic_ifd=0.9, ifd=0.5).reject("too_similar", stage="dedup"),
        rec("b", ic_ifd=0.1, ifd=0.5),
    ]
    res = select(rows, by="ic_ifd", top=1)
    assert ids(res.kept) == ["b"] and res.counts["already_rejected"] == 1
    assert [v.rule for v in res.removed[0].verdicts] == ["too_similar", "already_rejected"]


def test_inputs_are_not_modified_and_counts_cover_every_row() -> None:
    rows = [rec(f"r{i}", ic_ifd=i, ifd=0.1 * i) for i in range(12)]
    res = select(rows, by="ic_ifd", top="25%")
    assert all(not r.verdicts for r in rows)
    assert len(res.kept) + len(res.removed) == len(rows)
    assert sum(res.counts.values()) == len(res.removed)
    assert set(res.counts) == set(RULES)


def test_parse_top() -> None:
    assert parse_top("25%") == 0.25
    assert parse_top("0.25") == 0.25
    assert parse_top("1000") == 1000 and isinstance(parse_top("1000"), int)
    assert parse_top("100%") == 1.0 and parse_top("1.0") == 1.0
    assert parse_top(" 12.5% ") == 0.125
    assert parse_top(0.5) == 0.5 and parse_top(3) == 3
    for bad in ("0", "0%", "150%", "1.5", "abc", "-1", "", "nan", "-0.2"):
        if bad == "0":
            assert parse_top(bad) == 0  # a count of zero is allowed (keeps nothing)
            continue
        with pytest.raises(ValueError):
            parse_top(bad)


def test_bad_ranking_name() -> None:
    with pytest.raises(ValueError):
        as_select_by("perplexity")
    with pytest.raises(ValueError):
        select([], by="perplexity")  # type: ignore[arg-type]
    assert as_select_by("ifd") == "ifd"
    assert select([], by="ifd").kept == []


def test_the_ifd_limit_reads_numbers_and_off() -> None:
    from evolkit.errors import SettingError
    from evolkit.scenarios.score import SelectConfig
    from evolkit.selection import parse_ifd_limit

    assert parse_ifd_limit("1.0") == 1.0 and parse_ifd_limit(0.9) == 0.9
    assert parse_ifd_limit("none") is parse_ifd_limit("Off") is parse_ifd_limit(None) is None
    with pytest.raises(SettingError, match="--drop-ifd-at-or-above: expected a number"):
        parse_ifd_limit("abc")
    with pytest.raises(SettingError):
        SelectConfig(drop_ifd_at_or_above="abc").check()
