"""`evolkit score` / `evolkit select` as a user runs them (tiny model: mechanics only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolkit.cli import app

pytest.importorskip("torch")

ROWS = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {
        "instruction": "Add the numbers.",
        "input": "2 and 3",
        "output": "2 + 3 = 5, so the sum is 5.",
    },
    {"instruction": "Say nothing.", "input": "", "output": ""},  # unscorable: no output
    {"instruction": "Describe rain.", "input": "", "output": "Water falls from clouds " * 30},
]


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture()
def scored(tmp_path: Path, tiny_model_dir: Path) -> Path:
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "scored"
    res = CliRunner().invoke(
        app,
        ["score", str(src), "-o", str(out), "--scorer", str(tiny_model_dir), "--max-length", "64"],
    )
    assert res.exit_code == 0, res.output
    return out


def test_score_writes_every_loss_and_summary(scored: Path) -> None:
    rows = read(scored / "scored.jsonl")
    assert len(rows) == 3
    for row in rows:
        s = row["scores"]
        assert set(s) >= {"loss_q", "loss_a_given_q", "loss_a", "ifd", "ic_ifd"}
        assert s["ifd"] == pytest.approx(s["loss_a_given_q"] / s["loss_a"])
        assert s["ic_ifd"] == pytest.approx(s["loss_a_given_q"] / (s["loss_q"] * s["loss_a"]))
        assert "truncated" in row["meta"]["scoring"]
    long_row = next(r for r in rows if r["instruction"] == "Describe rain.")
    assert long_row["meta"]["scoring"]["truncated"] is True
    rejected = read(scored / "rejected.jsonl")
    assert [r["verdicts"][-1]["rule"] for r in rejected] == ["unscorable"]
    summary = json.loads((scored / "summary.json").read_text())
    assert summary["scored"] == 3 and summary["unscorable"] == 1 and summary["truncated"] == 1
    assert summary["tokens"] > 0 and summary["rows_per_s"] > 0
    assert summary["scores"]["ifd"]["n"] == 3
    assert set(summary["scores"]["ic_ifd"]) >= {"mean", "p10", "p50", "p90"}


def test_score_rerun_resumes_without_rescoring(scored: Path, tiny_model_dir: Path) -> None:
    cfg = json.loads((scored / "config.json").read_text())["config"]
    res = CliRunner().invoke(
        app,
        [
            "score",
            cfg["input"],
            "-o",
            str(scored),
            "--scorer",
            str(tiny_model_dir),
            "--max-length",
            "64",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((scored / "summary.json").read_text())
    assert summary["rows_scored_this_invocation"] == 0 and summary["resumed"] is True
    assert len(read(scored / "scored.jsonl")) == 3


def test_select_ranks_stored_scores_without_a_model(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel"
    res = CliRunner().invoke(
        app,
        [
            "select",
            str(scored),
            "-o",
            str(out),
            "--by",
            "loss_q",
            "--top",
            "2",
            "--drop-ifd-at-or-above",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    kept = read(out / "selected.jsonl")
    all_rows = read(scored / "scored.jsonl")
    best = sorted(all_rows, key=lambda r: -r["scores"]["loss_q"])[:2]
    assert [r["id"] for r in kept] == [r["id"] for r in best]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == 2 and summary["removed"] == 1
    assert len(read(out / "removed.jsonl")) == 1
