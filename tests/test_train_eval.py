"""`evolkit train-eval`: paired bootstrap differences on fixed verdicts, the report's table,
the whole experiment on the tiny random model (two runs) and, marked slow, the selection
experiment on the embedded model with IC-IFD scored on the way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evolkit.errors import EvolkitError
from evolkit.evaluate.ifeval import PromptResult
from evolkit.evaluate.stats import ifeval_intervals, paired_intervals
from evolkit.report.train_eval import TrainEvalTable, verdict


def results(passes: list[bool]) -> list[PromptResult]:
    return [PromptResult(i, ["x"], [p], [p]) for i, p in enumerate(passes)]


def test_paired_difference_cancels_what_both_models_share() -> None:
    # Both models pass the same 50 prompts; model a also passes 10 more. Unpaired intervals
    # overlap, but every resample of the difference is positive.
    a = results([True] * 60 + [False] * 40)
    b = results([True] * 50 + [False] * 50)
    diff = paired_intervals(a, b, resamples=500, seed=1)["prompt_level_strict_acc"]
    assert diff.value == pytest.approx(0.10)
    assert diff.low > 0 and verdict(diff.to_dict()) == "higher"
    ia = ifeval_intervals(a, resamples=500, seed=1)["prompt_level_strict_acc"]
    ib = ifeval_intervals(b, resamples=500, seed=1)["prompt_level_strict_acc"]
    assert ia.low < ib.high  # the models' own intervals overlap
    same = paired_intervals(a, a, resamples=100)["inst_level_loose_acc"]
    assert (same.low, same.value, same.high) == (0.0, 0.0, 0.0)
    assert verdict(same.to_dict()) == "no clear difference"
    with pytest.raises(EvolkitError, match="same prompts"):
        paired_intervals(a, b[:10])


def test_paired_instruction_level_difference_pools_instructions() -> None:
    a = [PromptResult(1, ["x", "y", "z"], [True, True, True], [True] * 3), *results([False])]
    b = [PromptResult(1, ["x", "y", "z"], [True, False, False], [True] * 3), *results([False])]
    b[1] = PromptResult(0, ["x"], [False], [False])
    a[1] = PromptResult(0, ["x"], [False], [False])
    d = paired_intervals(a, b, resamples=50)["inst_level_strict_acc"]
    assert d.value == pytest.approx((3 - 1) / 4)  # pooled over the 4 instructions


def test_the_table_renders_intervals_and_differences() -> None:
    iv = {"value": 0.25, "low": 0.1, "high": 0.4, "confidence": 0.95, "resamples": 10, "seed": 0}
    d = {"value": -0.05, "low": -0.2, "high": 0.1, "confidence": 0.95, "resamples": 10, "seed": 0}
    figs = ("prompt_level_strict_acc", "inst_level_strict_acc")
    figs += ("prompt_level_loose_acc", "inst_level_loose_acc")
    models = [
        {"name": "base", "role": "base", "prompts": 5, "intervals": dict.fromkeys(figs, iv)},
        {
            "name": "a<b>",
            "role": "trained",
            "prompts": 5,
            "intervals": dict.fromkeys(figs, iv),
            "vs_base": dict.fromkeys(figs, d),
            "training": {"rows": 8, "steps": 2, "first_loss": 2.5, "last_loss": 2.25},
        },
    ]
    page = TrainEvalTable(models).html()
    assert "0.250 " in page and "[0.100, 0.400]" in page
    assert "-0.050" in page and "no clear difference" in page
    assert "a&lt;b&gt;" in page and "<b>" not in page  # names are escaped
    assert "2.500 &rarr; 2.250" in page


def write_run(folder: Path, n: int, factor: int) -> Path:
    folder.mkdir(parents=True)
    with (folder / "evolved.jsonl").open("w") as f:
        for i in range(n):
            row = {
                "id": f"{folder.name}-{i}",
                "instruction": f"Write the number {i * factor} in words.",
                "output": "It is " + " ".join(["many"] * (1 + i % 4)) + f" {i * factor}.",
                "round": 1,
                "operation": "deepen",
            }
            f.write(json.dumps(row) + "\n")
    (folder / "summary.json").write_text(json.dumps({"config": {"temperature": 0.7}}))
    return folder


TINY: dict[str, Any] = {
    "max_steps": 1,
    "batch_size": 4,
    "max_length": 64,
    "limit": 2,
    "max_new_tokens": 4,
    "resamples": 200,
    "progress": False,
    "cache": None,
}


def test_two_runs_train_two_models_of_the_same_size_and_a_rerun_skips_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("lm_eval")
    pytest.importorskip("matplotlib")
    from evolkit.scenarios.train_eval import train_eval

    a = write_run(tmp_path / "small", 12, 1)
    b = write_run(tmp_path / "large", 20, 3)
    out = tmp_path / "report"
    res = train_eval([a, b], out, base=str(tiny_model_dir), **TINY)
    assert res["rows"] == 12  # the smallest run's trainable rows
    summary = json.loads((out / "summary.json").read_text())
    te = summary["train_eval"]
    assert [m["name"] for m in te["models"]] == ["base", "small", "large"]
    for m in te["models"]:
        assert m["prompts"] == 2
        for iv in m["intervals"].values():
            assert iv["low"] <= iv["value"] <= iv["high"]
    small, large = te["models"][1:]
    assert small["training"]["rows"] == large["training"]["rows"] == 12
    assert small["vs_base"] and large["vs_first"] and small["vs_first"] is None
    picked = [json.loads(x)["id"] for x in (out / "arms/large/rows.jsonl").read_text().splitlines()]
    assert len(picked) == 12 and all(i.startswith("large-") for i in picked)
    page = (out / "report.html").read_text()
    assert "Trained models on IFEval" in page and 'id="train-eval-table"' in page
    # The compare report's own sections are there too (one run per trained model).
    assert [r["name"] for r in summary["runs"]] == ["small", "large"]

    model = out / "arms/small/train/model/model.safetensors"
    stamp = model.stat().st_mtime_ns
    again = train_eval([a, b], out, base=str(tiny_model_dir), **TINY)
    assert model.stat().st_mtime_ns == stamp  # not trained again
    evals = [
        json.loads((out / p / "summary.json").read_text()) for p in ("base", "arms/large/eval")
    ]
    assert all(e["generation"]["generated_now"] == 0 for e in evals)
    assert again["train_eval"]["models"][1]["intervals"] == small["intervals"]

    with pytest.raises(EvolkitError, match="only 12 trainable rows"):
        train_eval([a, b], tmp_path / "r2", base=str(tiny_model_dir), rows="13", **TINY)
    with pytest.raises(EvolkitError, match="select"):
        train_eval([a], tmp_path / "r3", base=str(tiny_model_dir), select="best", **TINY)


@pytest.mark.slow
def test_selection_experiment_on_the_embedded_model(tmp_path: Path) -> None:
    """One run, random against IC-IFD: scores come from the base model on the way."""
    pytest.importorskip("trl")
    pytest.importorskip("lm_eval")
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from evolkit.cli import app

    run = write_run(tmp_path / "evolved", 16, 1)
    out = tmp_path / "report"
    args = ["train-eval", str(run), "-o", str(out), "--select", "random,ic_ifd", "--rows", "8"]
    args += ["--max-steps", "2", "--batch-size", "4", "--max-length", "96", "--limit", "2"]
    args += ["--max-new-tokens", "12", "--no-cache"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "vs base" in res.output and "report:" in res.output
    te = json.loads((out / "summary.json").read_text())["train_eval"]
    assert [m["name"] for m in te["models"]] == ["base", "random", "ic_ifd"]
    assert all(m["training"]["steps"] == 2 for m in te["models"][1:])
    # The IC-IFD arm holds the 8 best-ranked rows among those IFD kept (IFD < 1).
    scored = [
        json.loads(x) for x in (out / "scoring/evolved/scored.jsonl").read_text().split("\n") if x
    ]
    eligible = sorted(
        (r for r in scored if r["scores"]["ifd"] < 1.0),
        key=lambda r: (-r["scores"]["ic_ifd"], r["id"]),
    )
    picked = [
        json.loads(x)["id"] for x in (out / "arms/ic_ifd/rows.jsonl").read_text().split("\n") if x
    ]
    assert picked == [r["id"] for r in eligible[:8]]
    assert te["models"][0]["model"] == "embedded"
