"""`evolkit train-eval`: the study's experiment in miniature.

Several runs, one selection: does data from one evolver train a model that follows
instructions better than data from another? Each run gives the same number of rows to a model
trained with the same settings from the same base; every model and the untrained base answer
the same IFEval prompts, and the report shows each figure with a bootstrap interval over
prompts and each model's paired difference to the base and to the first trained model.

One run, several `--select` values: the selection experiment (top rows by IC-IFD against IFD,
the longest responses, or a random draw, all of the same size).

Rows ranked by IC-IFD or IFD need those scores. A run whose trainable rows all carry them (a
`score` run, or a `select` run made from one) is used as it is; any other run is scored on the
way by `evolkit.scenarios.score` with the base model as the scorer (the model that will learn
from the rows; the IFD work scores with it too), into REPORT/scoring/<run>.

REPORT is a run folder. Every trained model and every evaluation is its own run folder under
it (REPORT/arms/<arm>/train, REPORT/arms/<arm>/eval, REPORT/base), so a rerun of the same
command skips whatever finished and resumes whatever was interrupted.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolkit.config import opt
from evolkit.errors import EvolkitError
from evolkit.evaluate.ifeval import DEFAULT_MAX_NEW_TOKENS
from evolkit.records import Record
from evolkit.runs import (
    ARM_EVAL_DIR,
    ARM_ROWS,
    ARM_TRAIN_DIR,
    ARMS_DIR,
    BASE_EVAL_DIR,
    EVOLVED,
    SCORED,
    SCORING_DIR,
    SELECTED,
    SUMMARY,
    RunFolder,
)
from evolkit.selection import parse_ifd_limit, parse_top, select, top_count
from evolkit.train import TrainConfig, TrainSettings, base_model, data_file, rows_digest

log = logging.getLogger("evolkit.progress")

SELECTIONS = ("random", "ic_ifd", "ifd", "length")
SCORED_SELECTIONS = ("ic_ifd", "ifd")
EVAL_BACKENDS = ("local", "vllm")
#: Without --rows: all the smallest run's rows, or this share of them when a selection ranks.
DEFAULT_RANKED_SHARE = 0.25


@dataclass
class TrainEvalConfig(TrainSettings):
    """`evolkit train-eval`: the training settings, plus what is compared and how it is
    evaluated."""

    rows: str | None = opt(
        None,
        "Rows per trained model: a count, or a share of the smallest run ('10%'); default: "
        "all its trainable rows, or 25% of them when a --select ranks.",
    )
    select: list[str] = opt(
        ["random"],
        "How each model's rows are picked: random, ic_ifd or ifd (top by the score), length "
        "(longest responses); several values train one model each.",
        choices=SELECTIONS,
        csv=True,
    )
    drop_ifd_at_or_above: str = opt(
        "1.0", "Before ranking by ic_ifd or ifd, drop rows with IFD at or above this ('none')."
    )
    limit: int | None = opt(
        None, "Evaluate on only the first N IFEval prompts (all 541 by default).", fingerprint=False
    )
    max_new_tokens: int = opt(DEFAULT_MAX_NEW_TOKENS, "Tokens per IFEval answer.")
    eval_batch_size: int = opt(16, "IFEval prompts per batch.", fingerprint=False)
    eval_backend: str = opt(
        "local",
        "Where the trained models answer IFEval: transformers in this process, or vLLM (GPU).",
        choices=EVAL_BACKENDS,
    )
    resamples: int = opt(1000, "Bootstrap resamples of the prompts.", fingerprint=False)
    confidence: float = opt(0.95, "Confidence of the intervals.", fingerprint=False)
    cache: str | None = opt(
        "default",
        "Call cache file for the evaluations ('default': the per-user evolkit cache).",
        fingerprint=False,
        none_flag="--no-cache",
    )
    overwrite: bool = opt(
        False,
        "Start over in REPORT (only evolkit's own files and folders are removed).",
        fingerprint=False,
    )
    progress: bool = opt(True, "Show progress.", fingerprint=False, cli=False)

    def check(self) -> None:
        super().check()
        if not self.select:
            raise EvolkitError("select: give at least one of " + ", ".join(SELECTIONS))
        if len(set(self.select)) != len(self.select):
            raise EvolkitError(f"select: a value is repeated ({', '.join(self.select)})")
        if self.rows is not None:
            parse_top(self.rows)
        self.ifd_limit()
        if self.limit is not None and self.limit < 1:
            raise EvolkitError("limit must be at least 1")
        if self.max_new_tokens < 1:
            raise EvolkitError("max_new_tokens must be at least 1")
        if not 0 < self.confidence < 1:
            raise EvolkitError("confidence must be between 0 and 1")

    def ifd_limit(self) -> float | None:
        return parse_ifd_limit(self.drop_ifd_at_or_above)


@dataclass
class Source:
    """One input run: its label, file, and the rows a trainer can learn from."""

    label: str
    path: Path
    rows: list[Record]
    summary: dict[str, Any]


@dataclass
class Arm:
    """One model to train: which run, which selection, its rows and folders."""

    name: str
    source: Source
    selection: str
    rows: list[Record]

    def folder(self, out: Path) -> Path:
        return out / ARMS_DIR / self.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def _label(path: Path) -> str:
    # A run's rows file is named after its kind (evolved.jsonl): its folder names the run.
    return _slug(path.parent.name if path.name in _RUN_FILES else path.stem)


_RUN_FILES = (EVOLVED, SELECTED, SCORED)


def _read_sources(runs: Sequence[str | Path]) -> list[Source]:
    import json

    from evolkit.io.readers import read_records

    sources: list[Source] = []
    seen: dict[str, int] = {}
    for run in runs:
        path = data_file(run)
        rows = [r for r in read_records(path) if not r.rejected and r.output.strip()]
        if not rows:
            raise EvolkitError(f"{run}: no rows to train on (none kept with a response)")
        label = _label(path)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        summary: dict[str, Any] = {}
        if (path.parent / SUMMARY).is_file():
            try:
                loaded = json.loads((path.parent / SUMMARY).read_text(encoding="utf-8"))
                summary = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                summary = {}
        sources.append(Source(label, path, rows, summary))
    return sources


def _row_count(cfg: TrainEvalConfig, sources: Sequence[Source]) -> int:
    smallest = min(len(s.rows) for s in sources)
    if cfg.rows is None:
        ranked = any(s != "random" for s in cfg.select)
        top: float | int = DEFAULT_RANKED_SHARE if ranked else smallest
    else:
        top = parse_top(cfg.rows)
    n = top_count(top, smallest)
    if isinstance(top, int) and top > smallest:
        small = min(sources, key=lambda s: len(s.rows))
        raise EvolkitError(
            f"--rows {top}: {small.label} has only {smallest} trainable rows; every model "
            f"trains on the same number of rows, so use --rows {smallest} or fewer"
        )
    if n < 1:
        raise EvolkitError("--rows leaves no row to train on")
    return n


def _scored(source: Source, cfg: TrainEvalConfig, out: Path) -> list[Record]:
    """The source's rows with IC-IFD and IFD: as stored, or scored now with the base model."""
    import math

    def has(r: Record) -> bool:
        return all(
            isinstance(r.scores.get(k), int | float) and math.isfinite(r.scores[k])
            for k in SCORED_SELECTIONS
        )

    if all(has(r) for r in source.rows):
        return source.rows
    from evolkit.io.readers import read_records
    from evolkit.scenarios.score import score

    folder = out / SCORING_DIR / source.label
    log.info(
        "scoring %d rows of %s with %s (IC-IFD, IFD)", len(source.rows), source.label, cfg.base
    )
    unscorable = score(source.rows, folder, scorer=cfg.base, progress=cfg.progress)["unscorable"]
    if unscorable:
        log.info("%s: %d rows could not be scored and are left out", source.label, unscorable)
    return [r for r in read_records(folder / SCORED) if has(r)]


def _pick(source: Source, selection: str, n: int, cfg: TrainEvalConfig, out: Path) -> list[Record]:
    if selection == "random":
        pool = sorted(source.rows, key=lambda r: r.id)
        return random.Random(cfg.seed).sample(pool, n)
    if selection == "length":
        return select(source.rows, by="length", top=n, drop_ifd_at_or_above=None).kept
    rows = _scored(source, cfg, out)
    limit = cfg.ifd_limit()
    result = select(rows, by=selection, top=n, drop_ifd_at_or_above=limit)  # type: ignore[arg-type]
    if len(result.kept) < n:
        raise EvolkitError(
            f"{source.label}: only {len(result.kept)} rows are left to rank by {selection} "
            f"(IFD >= {limit}: {result.counts.get('ifd_at_or_above', 0)}, no score: "
            f"{result.counts.get('missing_score', 0)}); every model trains on {n} rows: use "
            f"--rows {len(result.kept)} or --drop-ifd-at-or-above none"
        )
    return result.kept


def _arms(sources: Sequence[Source], cfg: TrainEvalConfig, n: int, out: Path) -> list[Arm]:
    arms = []
    for source in sources:
        for selection in cfg.select:
            if len(cfg.select) == 1:
                name = source.label
            elif len(sources) == 1:
                name = selection
            else:
                name = f"{source.label}-{selection}"
            arms.append(Arm(_slug(name), source, selection, _pick(source, selection, n, cfg, out)))
    return arms


def train_eval(
    runs: Sequence[str | Path],
    out: str | Path,
    config: TrainEvalConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train one model per run (and per selection), evaluate each and the base on IFEval,
    and write REPORT/report.html and REPORT/summary.json; return the summary."""
    if "select" in settings and isinstance(settings["select"], str):
        settings["select"] = [s.strip() for s in settings["select"].split(",") if s.strip()]
    if "rows" in settings and settings["rows"] is not None:
        settings["rows"] = str(settings["rows"])
    cfg = TrainEvalConfig.make(config, **settings)
    if not runs:
        raise EvolkitError("give at least one run (or data file) to train on")
    if len(runs) == 1 and cfg.select == ["random"]:
        log.info("one run and one selection: this compares one trained model with the base")
    try:
        # Checked before hours of training: the report draws its plots with matplotlib.
        import matplotlib  # noqa: F401

        from evolkit.report import RunMeasures, write_report
    except ImportError as exc:
        raise EvolkitError(
            f"the train-eval report needs '{exc.name}': pip install 'evolkit[analyze]'"
        ) from None
    t_start = time.perf_counter()
    sources = _read_sources(runs)
    _, base_info = base_model(cfg.base)
    inputs = {
        "runs": [str(s.path.resolve()) for s in sources],
        "rows_digests": [rows_digest([r.model_dump(mode="json") for r in s.rows]) for s in sources],
        **base_info,
    }
    out = Path(out)
    from evolkit.console import log_file

    with (
        RunFolder(
            out,
            {**cfg.fingerprint_dict(), **inputs},
            overwrite=cfg.overwrite,
            command="train-eval",
            settings={**cfg.to_dict(), "inputs": {"runs": [str(s.path) for s in sources]}},
        ) as folder,
        log_file(folder.log_path),
    ):
        n = _row_count(cfg, sources)
        t0 = time.perf_counter()
        arms = _arms(sources, cfg, n, out)
        select_seconds = time.perf_counter() - t0
        log.info(
            "train-eval: %d model(s) of %d rows each (%s), then IFEval on %s prompts",
            len(arms),
            n,
            ", ".join(a.name for a in arms),
            cfg.limit or "all",
        )
        trained = {a.name: _train_arm(a, cfg, out) for a in arms}
        evals = {BASE_EVAL_DIR: _evaluate(cfg.base, out / BASE_EVAL_DIR, cfg, "base")}
        for a in arms:
            evals[a.name] = _evaluate(
                str(a.folder(out) / ARM_TRAIN_DIR), a.folder(out) / ARM_EVAL_DIR, cfg, a.name
            )
        table = _table(cfg, arms, trained, evals, out, n)
        measures = [
            RunMeasures.from_rows(
                a.name, a.rows, summary=a.source.summary, source=str(a.source.path)
            )
            for a in arms
        ]
        table.settings["seconds"] = {
            "select_and_score": round(select_seconds, 2),
            "total_this_invocation": round(time.perf_counter() - t_start, 2),
        }
        page = write_report(measures, out, train_eval=table)
        log.info("train-eval: report %s", page)
        return {
            "report": str(page),
            "summary": str(out / SUMMARY),
            "rows": n,
            "train_eval": table.to_dict(),
        }


def _train_arm(arm: Arm, cfg: TrainEvalConfig, out: Path) -> dict[str, Any]:
    from evolkit.io.writers import write_jsonl
    from evolkit.train import train

    folder = arm.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / ARM_ROWS
    write_jsonl(arm.rows, rows_path)  # the same rows on every rerun: the selection is seeded
    log.info("train-eval: training %s on %d rows", arm.name, len(arm.rows))
    train_cfg = TrainConfig.make(cfg.train_settings(), progress=cfg.progress)
    return train(rows_path, folder / ARM_TRAIN_DIR, train_cfg)


def _evaluate(model: str, folder: Path, cfg: TrainEvalConfig, name: str) -> dict[str, Any]:
    from evolkit.evaluate import evaluate

    log.info("train-eval: evaluating %s on IFEval", name)
    return evaluate(
        model,
        folder,
        limit=cfg.limit,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.eval_batch_size,
        backend=cfg.eval_backend,
        cache=cfg.cache,
        progress=cfg.progress,
    )


def _table(
    cfg: TrainEvalConfig,
    arms: Sequence[Arm],
    trained: Mapping[str, dict[str, Any]],
    evals: Mapping[str, dict[str, Any]],
    out: Path,
    n: int,
) -> Any:
    from evolkit.evaluate import load_results
    from evolkit.evaluate.stats import ifeval_intervals, paired_intervals
    from evolkit.report.train_eval import TrainEvalTable

    kw: dict[str, Any] = {"resamples": cfg.resamples, "confidence": cfg.confidence, "seed": 0}
    base_results = load_results(out / BASE_EVAL_DIR)
    results = {a.name: load_results(a.folder(out) / ARM_EVAL_DIR) for a in arms}
    first = arms[0].name if len(arms) > 1 else None

    def ivs(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in d.items()}

    def eval_seconds(s: Mapping[str, Any]) -> float | None:
        sec = s.get("seconds") or {}
        return sec.get("generate_all_runs", sec.get("total"))

    models: list[dict[str, Any]] = [
        {
            "name": "base",
            "role": "base",
            "model": cfg.base,
            "source": None,
            "selection": None,
            "prompts": len(base_results),
            "intervals": ivs(ifeval_intervals(base_results, **kw)),
            "eval_seconds": eval_seconds(evals[BASE_EVAL_DIR]),
            "eval": str(out / BASE_EVAL_DIR),
        }
    ]
    for a in arms:
        t = trained[a.name]
        mine = results[a.name]
        models.append(
            {
                "name": a.name,
                "role": "trained",
                "model": str(a.folder(out) / ARM_TRAIN_DIR),
                "source": str(a.source.path),
                "selection": a.selection,
                "prompts": len(mine),
                "intervals": ivs(ifeval_intervals(mine, **kw)),
                "vs_base": ivs(paired_intervals(mine, base_results, **kw)),
                "vs_first": ivs(paired_intervals(mine, results[first], **kw))
                if first is not None and a.name != first
                else None,
                "training": {
                    "rows": t.get("rows"),
                    "steps": t.get("steps"),
                    "first_loss": t.get("first_loss"),
                    "last_loss": t.get("last_loss"),
                    "seconds": (t.get("seconds") or {}).get("train"),
                },
                "eval_seconds": eval_seconds(evals[a.name]),
                "eval": str(a.folder(out) / ARM_EVAL_DIR),
            }
        )
    notes = []
    if len(base_results) < 541:
        notes.append(
            f"Evaluated on the first {len(base_results)} of IFEval's 541 prompts: the intervals "
            "are wide, and only large differences can show."
        )
    return TrainEvalTable(
        models=models,
        settings={
            "base": cfg.base,
            "rows_per_model": n,
            "training": cfg.train_settings(),
            "learning_rate": cfg.learning_rate(),
            "select": list(cfg.select),
            "drop_ifd_at_or_above": cfg.ifd_limit(),
            "max_new_tokens": cfg.max_new_tokens,
            "limit": cfg.limit,
            "eval_backend": cfg.eval_backend,
        },
        confidence=cfg.confidence,
        resamples=cfg.resamples,
        notes=notes,
    )
