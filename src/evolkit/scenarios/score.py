"""Scoring and selection runs: `evolkit score` (model) and `evolkit select` (no model)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolkit.config import Settings, opt
from evolkit.io.writers import read_jsonl_tolerant, write_jsonl
from evolkit.models import ScorerSpec
from evolkit.models.scoring import TEMPLATES
from evolkit.records import Record
from evolkit.runs import REMOVED, SCORED, SELECTED, RunFolder
from evolkit.scenarios.runner import Runner, RunSettings, describe_input
from evolkit.selection import SELECT_BY, SelectBy, parse_ifd_limit, parse_top, select
from evolkit.stages.score import ScoreStage

SCORE_NAMES = ("loss_q", "loss_a_given_q", "loss_a", "ifd", "ic_ifd")
#: Where the scorer runs (an HTTP server returns no prompt token losses).
SCORER_BACKENDS = ("local", "vllm")


@dataclass
class ScoreConfig(RunSettings):
    batch_size: int = opt(
        64, "Rows per batch: the unit of progress and checkpoints.", fingerprint=False
    )
    scorer: str = opt("embedded", "Scoring model: 'embedded' or a model folder.")
    backend: str = opt("local", "Where the scorer runs.", choices=SCORER_BACKENDS)
    template: str = opt(
        "plain", "Text layout scored: plain (the paper's), alpaca, chat.", choices=TEMPLATES
    )
    max_length: int = opt(2048, "Tokens per scored sequence; the tail is cut (and reported).")
    forward_batch: int = opt(
        8, "Sequences per forward pass (one row is two sequences).", fingerprint=False
    )

    def scorer_spec(self) -> ScorerSpec:
        return ScorerSpec(
            model=self.scorer,
            backend=self.backend,
            template=self.template,
            max_length=self.max_length,
            batch_size=self.forward_batch,
        )


def score(
    input_path: Any,
    out: str | Path,
    config: ScoreConfig | Mapping[str, Any] | None = None,
    *,
    scorer: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Score every row of `input_path` (a file or rows in memory) into `out/scored.jsonl`;
    return the summary. `scorer` is a ready scorer object (tests, notebooks)."""
    if isinstance(scorer, str):  # the setting, given by keyword
        settings["scorer"] = scorer
        scorer = None
    cfg = ScoreConfig.make(config, **settings)
    with Runner(
        "score",
        cfg,
        out,
        inputs={"input": describe_input(input_path)},
        scorer=cfg.scorer_spec(),
        objects={"scorer": scorer},
        kept_name=SCORED,
    ) as run:
        records = run.read(input_path)
        run.step("score", [ScoreStage()], records)
        rows, _ = read_jsonl_tolerant(run.folder.kept_path)
        rejected, _ = read_jsonl_tolerant(run.folder.rejected_path)
        info = [r["meta"].get("scoring", {}) for r in rows]
        summary: dict[str, Any] = {
            "rows": len(records),
            "scored": len(rows),
            "unscorable": len(rejected),
            "truncated": sum(1 for i in info if i.get("truncated")),
            "tokens": sum(int(i.get("n_tokens", 0)) for i in info),
            "scorer": next((i["scorer"] for i in info if "scorer" in i), cfg.scorer),
            "template": cfg.template,
            "max_length": cfg.max_length,
            "head": next((i["head"] for i in info if "head" in i), None),
            "scores": {n: describe([r["scores"].get(n) for r in rows]) for n in SCORE_NAMES},
            "ifd_at_or_above_1": sum(1 for r in rows if r["scores"].get("ifd", 0) >= 1.0),
        }
        summary["rows_scored_this_invocation"] = run.processed
        return run.finish(
            summary, {"scored": run.folder.kept_path, "rejected": run.folder.rejected_path}
        )


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


@dataclass
class SelectConfig(Settings):
    by: str = opt("ic_ifd", "Score to rank by (descending).", choices=SELECT_BY)
    top: str = opt("25%", "How many to keep: '25%', '0.25' or a count.")
    drop_ifd_at_or_above: str = opt(
        "1.0", "Drop rows with IFD at or above this first (the IFD work's rule); 'none': off."
    )

    def check(self) -> None:
        super().check()
        parse_top(self.top)
        self.ifd_limit()

    def ifd_limit(self) -> float | None:
        return parse_ifd_limit(self.drop_ifd_at_or_above)


def select_run(
    input_path: str | Path,
    out: str | Path,
    config: SelectConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Rank stored scores and keep the top rows; writes selected.jsonl and removed.jsonl.

    A selection is cheap, so a rerun always starts over (only evolkit's files are replaced).
    """
    from evolkit.io.readers import read_records

    if "top" in settings and not isinstance(settings["top"], str):
        settings["top"] = str(settings["top"])
    if "drop_ifd_at_or_above" in settings and not isinstance(settings["drop_ifd_at_or_above"], str):
        value = settings["drop_ifd_at_or_above"]
        settings["drop_ifd_at_or_above"] = "none" if value is None else str(value)
    cfg = SelectConfig.make(config, **settings)
    src = Path(input_path)
    if src.is_dir() and (src / SCORED).exists():
        src = src / SCORED
    records: list[Record] = list(read_records(src))
    by: SelectBy = cfg.by  # type: ignore[assignment]
    top = parse_top(cfg.top)
    limit = cfg.ifd_limit()
    result = select(records, by=by, top=top, drop_ifd_at_or_above=limit)
    with RunFolder(
        out,
        {**cfg.fingerprint_dict(), "input": str(src.resolve())},
        overwrite=True,
        kept_name=SELECTED,
        command="select",
        settings={**cfg.to_dict(), "inputs": {"input": str(src.resolve())}},
    ) as folder:
        write_jsonl(result.kept, folder.path(SELECTED))
        write_jsonl(result.removed, folder.path(REMOVED))
        summary = {
            "input": str(src),
            "rows": len(records),
            "by": by,
            "top": top,
            "drop_ifd_at_or_above": limit,
            "kept": len(result.kept),
            "removed": len(result.removed),
            "removed_by_rule": result.counts,
            "kept_scores": {by: describe([r.scores.get(by) for r in result.kept])}
            if by != "length"
            else {},
            "outputs": {
                "selected": str(folder.path(SELECTED)),
                "removed": str(folder.path(REMOVED)),
            },
        }
        folder.write_summary(summary)
    return summary
