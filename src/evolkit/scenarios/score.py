"""Scoring and selection runs: `evolkit score` (model) and `evolkit select` (no model)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evolkit.engines.local import LocalEngine
from evolkit.io.writers import read_jsonl_tolerant, write_jsonl
from evolkit.records import Record
from evolkit.runs import RunFolder
from evolkit.scenarios.common import load_input, write_bad_rows
from evolkit.selection import SelectBy, select

SCORE_NAMES = ("loss_q", "loss_a_given_q", "loss_a", "ifd", "ic_ifd")


@dataclass
class ScoreConfig:
    scorer: str = "embedded"
    template: str = "plain"
    max_length: int = 2048
    batch_size: int = 8
    limit: int | None = None
    on_bad_record: str = "error"


def score(
    input_path: str | Path,
    out: str | Path,
    config: ScoreConfig | None = None,
    *,
    overwrite: bool = False,
    rows_per_step: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every row of `input_path` into `out/scored.jsonl`; return the summary."""
    from evolkit.models.local import quiet_transformers, resolve_model_path
    from evolkit.models.scoring import LossScorer
    from evolkit.stages.score import ScoreStage

    cfg = config or ScoreConfig()
    records, bad = load_input(input_path, cfg.on_bad_record, cfg.limit)
    fp = {**asdict(cfg), "input": str(Path(input_path).resolve())}
    fp.pop("batch_size")
    run = RunFolder(out, fp, overwrite=overwrite, kept_name="scored.jsonl")
    write_bad_rows(run, bad)
    quiet_transformers()
    path, scorer_id = resolve_model_path(cfg.scorer)
    t_load = time.perf_counter()
    scorer = LossScorer.load(
        path, template=cfg.template, max_length=cfg.max_length, batch_size=cfg.batch_size
    )
    load_seconds = time.perf_counter() - t_load
    engine = LocalEngine(batch_size=rows_per_step, progress=progress)
    result = engine.run("score", [ScoreStage(scorer, scorer_id)], records, run)
    rows, _ = read_jsonl_tolerant(run.kept_path)
    rejected, _ = read_jsonl_tolerant(run.rejected_path)
    tokens = sum(int(r["meta"].get("scoring", {}).get("n_tokens", 0)) for r in rows)
    summary: dict[str, Any] = {
        "rows": len(records),
        "scored": len(rows),
        "unscorable": len(rejected),
        "bad_records": len(bad),
        "truncated": sum(1 for r in rows if r["meta"].get("scoring", {}).get("truncated")),
        "tokens": tokens,
        "scorer": scorer_id,
        "template": cfg.template,
        "max_length": cfg.max_length,
        "head": scorer.head,
        "seconds": {"load": round(load_seconds, 2), "scoring": round(result.seconds, 2)},
        "rows_scored_this_invocation": result.processed,
        "rows_per_s": round(result.processed / result.seconds, 3) if result.seconds > 0 else None,
        "resumed": run.resumed,
        "scores": {name: describe([r["scores"].get(name) for r in rows]) for name in SCORE_NAMES},
        "ifd_at_or_above_1": sum(1 for r in rows if r["scores"].get("ifd", 0) >= 1.0),
        "outputs": {"scored": str(run.kept_path), "rejected": str(run.rejected_path)},
    }
    run.write_summary(summary)
    return summary


def describe(values: list[Any]) -> dict[str, float | int | None]:
    """Mean and quantiles of the finite values (rows without the score are not counted)."""
    xs = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not xs:
        return {"n": 0, "mean": None}

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 6)

    return {
        "n": len(xs),
        "mean": round(sum(xs) / len(xs), 6),
        "min": xs[0],
        "p10": q(0.1),
        "p25": q(0.25),
        "p50": q(0.5),
        "p75": q(0.75),
        "p90": q(0.9),
        "max": xs[-1],
    }


def select_run(
    input_path: str | Path,
    out: str | Path,
    by: SelectBy = "ic_ifd",
    top: float | int = 0.25,
    drop_ifd_at_or_above: float | None = 1.0,
) -> dict[str, Any]:
    """Rank stored scores and keep the top rows; writes selected.jsonl and removed.jsonl."""
    from evolkit.io.readers import read_records

    src = Path(input_path)
    if src.is_dir() and (src / "scored.jsonl").exists():
        src = src / "scored.jsonl"
    records: list[Record] = list(read_records(src))
    result = select(records, by=by, top=top, drop_ifd_at_or_above=drop_ifd_at_or_above)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(result.kept, out_dir / "selected.jsonl")
    write_jsonl(result.removed, out_dir / "removed.jsonl")
    summary = {
        "input": str(src),
        "rows": len(records),
        "by": by,
        "top": top,
        "drop_ifd_at_or_above": drop_ifd_at_or_above,
        "kept": len(result.kept),
        "removed": len(result.removed),
        "removed_by_rule": result.counts,
        "kept_scores": {by: describe([r.scores.get(by) for r in result.kept])}
        if by != "length"
        else {},
        "outputs": {
            "selected": str(out_dir / "selected.jsonl"),
            "removed": str(out_dir / "removed.jsonl"),
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
