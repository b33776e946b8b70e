"""The comparison report's files and numbers (the browser check is test_report_browser.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evolkit.errors import EvolkitError
from evolkit.records import Record, Verdict
from evolkit.report import RowScores, RunMeasures, write_report
from tests.report_fixtures import two_runs

pytest.importorskip("matplotlib")


def test_report_files_and_headline_numbers(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    runs = two_runs()
    page = write_report(runs, tmp_path)
    assert page == tmp_path / "report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "report.html",
        "summary.json",
    ]
    assert (tmp_path / "notes.txt").read_text() == "mine"

    summary = json.loads((tmp_path / "summary.json").read_text())
    a, b = summary["runs"]
    evolved = [r for r in runs[0].rows if r.round >= 1]
    scores = [r.scores["difficulty_score"] for r in evolved]
    assert a["headline"]["rows"] == len(evolved) == 48
    assert a["headline"]["mean_difficulty"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    hard = sum(1 for r in evolved if r.scores["difficulty_level"] >= 4)
    assert a["headline"]["hard_share"] == pytest.approx(hard / 48, abs=1e-5)
    near = sum(1 for r in evolved if r.scores["min_nn_distance"] < 0.05)
    assert a["headline"]["near_duplicates"] == near > 0
    assert a["headline"]["kept_rate"] == pytest.approx(48 / 63, abs=1e-5)
    first5 = [p for r in evolved for p in (r.top1 or [])[:5]]
    assert a["headline"]["mean_top1_first5"] == pytest.approx(sum(first5) / len(first5), abs=1e-5)
    assert b["headline"]["mean_ifd"] is None and a["headline"]["mean_ifd"] is not None
    assert set(a["per_round"]) == {"0", "1", "2"}
    assert a["per_round"]["0"]["output_space"] is None  # seeds are not re-generated
    assert summary["plots"]["ifd"] and summary["plots"]["trajectory-methods"]


def test_report_is_self_contained_and_escapes_names(tmp_path: Path) -> None:
    html = write_report(two_runs(), tmp_path).read_text()
    assert "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", html)
    assert "@import" not in html and "url(http" not in html
    assert "small &lt;t0.7&gt;" in html and "small <t0.7>" not in html
    figures = re.findall(r'<figure class="plot" data-plot="([^"]+)">(.*?)</figure>', html, re.S)
    keys = [k for k, _ in figures]
    assert keys == [
        "difficulty-labels",
        "difficulty-scores",
        "top1-density",
        "nn-distance",
        "ifd",
        "kept-by-operation",
        "eliminations",
        "trajectory-methods",
    ]
    assert all("<svg" in svg and "<path" in svg for _, svg in figures)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids repeat across plots"
    # The second run has no IFD scores: the plot says so instead of leaving it out silently.
    assert "Not measured for: small-t1.0." in html


def test_unmeasured_runs_get_notes_not_empty_plots(tmp_path: Path) -> None:
    bare = [
        RunMeasures(name="a", rows=[RowScores(round=1, text="Write a poem.")]),
        RunMeasures(name="b", rows=[RowScores(round=1, text="Write a song.")]),
    ]
    html = write_report(bare, tmp_path).read_text()
    assert "<figure" not in html
    assert html.count('class="not-measured"') == 7
    assert "Not measured: no run has difficulty labels." in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"][0]["headline"]["mean_difficulty"] is None
    assert not any(summary["plots"].values())


def test_report_refuses_no_runs_or_equal_names(tmp_path: Path) -> None:
    with pytest.raises(EvolkitError, match="at least one run"):
        write_report([], tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(EvolkitError, match="names must differ"):
        write_report([RunMeasures(name="x"), RunMeasures(name="x")], tmp_path)


def test_run_measures_from_run_rows() -> None:
    kept = [
        Record(
            id="k1",
            instruction="Plan a picnic.",
            input="for 8",
            round=1,
            operation="deepen",
            scores={"difficulty_score": 40.0},
            meta={"output_space": {"top1": [0.5, 1.0]}},
        ).model_dump(mode="json"),
        Record(id="k2", instruction="Name a fish.", round=2, operation="breadth"),
    ]
    rejected = [
        Record(
            id="r1",
            instruction="x",
            round=1,
            operation="deepen",
            verdicts=[
                Verdict(rule="no_information_gain", kept=True),
                Verdict(rule="too_short", kept=False),
                Verdict(rule="repetitive", kept=False),
            ],
        ),
        {"round": 2, "operation": "deepen", "verdicts": [{"rule": "unchanged", "kept": False}]},
    ]
    run = RunMeasures.from_rows("r", kept, rejected, summary={"seeds": 2}, source="/x")
    assert [r.round for r in run.rows] == [1, 2]
    assert run.rows[0].text == "Plan a picnic.\nfor 8"
    assert run.rows[0].top1 == [0.5, 1.0] and run.rows[1].top1 is None
    assert run.rows[0].scores == {"difficulty_score": 40.0}
    deepen = run.by_operation["deepen"]
    assert (deepen.kept, deepen.rejected) == (1, 2)
    assert deepen.rejected_by_rule == {"too_short": 1, "unchanged": 1}
    assert run.by_operation["breadth"].kept_rate == 1.0
    assert {r: (o.kept, o.rejected) for r, o in run.by_round.items()} == {1: (1, 1), 2: (1, 1)}
