"""What a report is made of: one RunMeasures per run, and the figures computed from them.

A RunMeasures holds only what the report needs (each kept row's round, operation, scores,
query text and top-1 probabilities; kept / eliminated counts per round and operation), so it
can be filled from an analysed run folder or built by hand in a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evolkit.measures.difficulty import difficulty_stats
from evolkit.measures.diversity import MIN_NN_SCORE, diversity_stats
from evolkit.measures.output_space import META_KEY, run_distributions

IFD_SCORES = ("ic_ifd", "ifd")


@dataclass
class RowScores:
    """One kept row as the report sees it. Round 0 rows are seeds (measured for reference)."""

    round: int
    operation: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    text: str = ""  # the query (instruction + "\n" + input), for distinct-n
    top1: list[float] | None = None  # per-token top-1 probabilities of the greedy re-generation

    @classmethod
    def from_row(cls, row: Any) -> RowScores:
        """From a Record or its JSON dict (as read from a run's rows file)."""
        get = row.get if isinstance(row, Mapping) else lambda k, d=None: getattr(row, k, d)
        meta = get("meta", None) or {}
        instruction, inp = str(get("instruction", "") or ""), str(get("input", "") or "")
        top1 = (meta.get(META_KEY) or {}).get("top1") if isinstance(meta, Mapping) else None
        return cls(
            round=int(get("round", 0) or 0),
            operation=get("operation", None),
            scores={k: float(v) for k, v in (get("scores", None) or {}).items()},
            text=f"{instruction}\n{inp}" if inp else instruction,
            top1=[float(p) for p in top1] if top1 is not None else None,
        )


@dataclass
class Outcomes:
    """Rows kept and eliminated (by the first rule that eliminated each) in one group."""

    kept: int = 0
    rejected: int = 0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def kept_rate(self) -> float | None:
        total = self.kept + self.rejected
        return round(self.kept / total, 6) if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "rejected": self.rejected,
            "kept_rate": self.kept_rate,
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items(), key=lambda kv: -kv[1])),
        }


@dataclass
class RunMeasures:
    """Everything the report shows about one run.

    rows: the run's kept rows with their scores (seeds may be included as round 0);
    by_round / by_operation: kept and eliminated counts of evolved rows (empty: not known);
    summary: the run's own summary.json (its `config` names the evolver and temperature);
    trajectory_methods: optional label -> count figures (Auto Evol-Instruct's distinct
    methods), shown in their own section when any run has them.
    """

    name: str
    rows: list[RowScores] = field(default_factory=list)
    by_round: dict[int, Outcomes] = field(default_factory=dict)
    by_operation: dict[str, Outcomes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    trajectory_methods: dict[str, Any] | None = None
    source: str = ""

    @classmethod
    def from_rows(
        cls,
        name: str,
        kept: Iterable[Any],
        rejected: Iterable[Any] = (),
        *,
        summary: Mapping[str, Any] | None = None,
        trajectory_methods: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> RunMeasures:
        """Build from a run's kept rows and eliminated rows (Records or JSON dicts)."""
        kept = list(kept)
        rows = [RowScores.from_row(r) for r in kept]
        by_round: dict[int, Outcomes] = {}
        by_op: dict[str, Outcomes] = {}
        for group, is_kept in ((kept, True), (list(rejected), False)):
            for row in group:
                rs = row if isinstance(row, RowScores) else RowScores.from_row(row)
                if rs.round < 1:
                    continue
                rule = None if is_kept else (_first_rule(row) or "?")
                for o in (
                    by_round.setdefault(rs.round, Outcomes()),
                    by_op.setdefault(rs.operation or "?", Outcomes()),
                ):
                    if rule is None:
                        o.kept += 1
                    else:
                        o.rejected += 1
                        o.rejected_by_rule[rule] = o.rejected_by_rule.get(rule, 0) + 1
        return cls(
            name=name,
            rows=rows,
            by_round=dict(sorted(by_round.items())),
            by_operation=dict(sorted(by_op.items())),
            summary=dict(summary or {}),
            trajectory_methods=dict(trajectory_methods) if trajectory_methods else None,
            source=source,
        )

    @property
    def evolved(self) -> list[RowScores]:
        return [r for r in self.rows if r.round >= 1]

    @property
    def rounds(self) -> list[int]:
        return sorted({r.round for r in self.rows})


def _first_rule(row: Any) -> str | None:
    verdicts = row.get("verdicts") if isinstance(row, Mapping) else getattr(row, "verdicts", [])
    for v in verdicts or []:
        kept = v.get("kept") if isinstance(v, Mapping) else v.kept
        if not kept:
            return str(v.get("rule") if isinstance(v, Mapping) else v.rule)
    return None


def describe(values: Iterable[float | None]) -> dict[str, Any]:
    """n, mean and median of the finite values."""
    xs = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not xs:
        return {"n": 0, "mean": None, "median": None}
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return {"n": len(xs), "mean": round(sum(xs) / len(xs), 6), "median": round(median, 6)}


def group_figures(rows: Sequence[RowScores]) -> dict[str, Any]:
    """The measured figures of a set of rows (a run's evolved rows, or one round's)."""
    diff = difficulty_stats(r.scores for r in rows)
    space = run_distributions(r.top1 for r in rows)
    nn = [r.scores.get(MIN_NN_SCORE) for r in rows]
    div = diversity_stats(nn, (r.text for r in rows))
    return {
        "rows": len(rows),
        "difficulty": diff.to_dict() if diff.measured else None,
        "output_space": {k: d.to_dict() for k, d in space.items()} if space["all"].n else None,
        "diversity": div.to_dict() if div.n else None,
        "distinct": div.distinct,
        **{name: describe(r.scores.get(name) for r in rows) for name in IFD_SCORES},
    }


def run_figures(run: RunMeasures) -> dict[str, Any]:
    """Everything summary.json says about one run; the headline figures under `headline`."""
    evolved = run.evolved
    overall = group_figures(evolved)
    per_round = {str(r): group_figures([x for x in run.rows if x.round == r]) for r in run.rounds}
    kept = sum(o.kept for o in run.by_round.values())
    rejected = sum(o.rejected for o in run.by_round.values())
    total = kept + rejected
    diff, space, div = overall["difficulty"], overall["output_space"], overall["diversity"]
    headline = {
        "rows": len(evolved),
        "kept_rate": round(kept / total, 6) if total else None,
        "mean_difficulty": diff["mean_score"] if diff else None,
        "hard_share": diff["hard_share"] if diff else None,
        "label_unparsed": diff["label_unparsed"] if diff else None,
        "mean_top1_first5": space["first5"]["mean"] if space else None,
        "share_top1_first5_above_0.9": space["first5"]["share_above_0_9"] if space else None,
        "mean_top1_all": space["all"]["mean"] if space else None,
        "share_top1_all_above_0.9": space["all"]["share_above_0_9"] if space else None,
        "mean_min_nn_distance": div["mean_min_distance"] if div else None,
        "near_duplicates": div["near_duplicates"] if div else None,
        "distinct_2": overall["distinct"]["2"],
        "mean_ic_ifd": overall["ic_ifd"]["mean"],
        "mean_ifd": overall["ifd"]["mean"],
    }
    return {
        "name": run.name,
        "source": run.source,
        "config": _config_line(run.summary),
        "headline": headline,
        "overall": overall,
        "per_round": per_round,
        "outcomes_by_round": {str(k): o.to_dict() for k, o in run.by_round.items()},
        "outcomes_by_operation": {k: o.to_dict() for k, o in run.by_operation.items()},
        "trajectory_methods": run.trajectory_methods,
    }


def _config_line(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The few settings that tell two runs apart, from a run summary's `config`."""
    cfg = summary.get("config") or {}
    evolver = cfg.get("evolver") or {}
    if isinstance(evolver, Mapping):
        backend = evolver.get("backend")
        evolver = f"{evolver.get('model')} ({backend})" if backend else evolver.get("model")
    return {
        "evolver": evolver,
        "temperature": cfg.get("temperature"),
        "rounds": cfg.get("rounds"),
        "seed": cfg.get("seed"),
        "seeds": summary.get("seeds"),
    }


HEADLINE_LABELS = {
    "rows": "evolved rows kept",
    "kept_rate": "kept rate",
    "mean_difficulty": "mean difficulty (0-100)",
    "hard_share": "hard + very hard",
    "label_unparsed": "labels unparsed",
    "mean_top1_first5": "mean top-1 prob (first 5 tokens)",
    "share_top1_first5_above_0.9": "top-1 > 0.9 (first 5 tokens)",
    "mean_top1_all": "mean top-1 prob (all tokens)",
    "share_top1_all_above_0.9": "top-1 > 0.9 (all tokens)",
    "mean_min_nn_distance": "mean min-NN distance",
    "near_duplicates": "near-duplicates",
    "distinct_2": "distinct-2",
    "mean_ic_ifd": "mean IC-IFD",
    "mean_ifd": "mean IFD",
}
PERCENT = {"kept_rate", "hard_share", "share_top1_first5_above_0.9", "share_top1_all_above_0.9"}
