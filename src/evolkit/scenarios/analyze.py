"""`evolkit analyze` and `evolkit compare`: measure runs, then set them side by side.

`analyze(RUN, OUT)` reads a run's kept rows (and its seeds, as round 0, where the run's input
file is still readable), runs the measure stages over them in one engine step, and writes
OUT/measures.jsonl (every row with its scores) and OUT/summary.json (per-run, per-round and
per-operation figures, elimination reasons from the run's rejected.jsonl, IFD / IC-IFD where
the rows were scored). OUT is a run folder of its own: locked, fingerprinted, resumable, its
model calls cached. The run folder itself is only read.

`compare(RUN_A, RUN_B, ..., REPORT)` analyses the runs that are not analyses yet into
REPORT/<name>/ (never into the run folders: they may be read-only, shared, or another
command's to resume) and writes REPORT/report.html and REPORT/summary.json through
`evolkit.report.write_report`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evolkit.config import opt
from evolkit.errors import EvolkitError
from evolkit.io.writers import read_json_object, read_jsonl_tolerant
from evolkit.measures.diversity import DEFAULT_EMBEDDER, NEAR_DUPLICATE
from evolkit.measures.output_space import DEFAULT_MAX_NEW_TOKENS
from evolkit.models import ModelSpec
from evolkit.models.base import Backend
from evolkit.records import Record
from evolkit.runs import CONFIG, EVOLVED, MEASURES, REJECTED, SCORED, SELECTED, SUMMARY
from evolkit.scenarios.runner import ModelSettings, Runner, RunSettings, rows_fingerprint
from evolkit.stages.base import Stage
from evolkit.stages.measure import DifficultyStage, DiversityStage, OutputSpaceStage

log = logging.getLogger(__name__)

MEASURES_ALL = ("output_space", "difficulty", "diversity")
#: A run folder's rows, in the order they are looked for.
ROW_FILES = (EVOLVED, SCORED, SELECTED)
#: Scores a scored file contributes to the analysed rows.
SCORE_KEYS = ("loss_q", "loss_a_given_q", "loss_a", "ifd", "ic_ifd")
STEP = "measure"


@dataclass
class AnalyzeConfig(RunSettings, ModelSettings):
    """Every setting of an analysis (CLI options and Python keywords alike)."""

    measures: list[str] = opt(
        list(MEASURES_ALL),
        "Measures to compute (comma-separated).",
        choices=MEASURES_ALL,
        csv=True,
    )
    evolver: str | None = opt(
        None,
        "Model that re-generates each evolution greedily for the output space (default: the "
        "run's own evolver, reached the way the run reached it).",
    )
    judge: str = opt(
        "embedded",
        "Difficulty judge; keep it the same for runs you compare. The tiny embedded model is a "
        "weak judge: use a larger one (--backend openai) for figures you quote.",
    )
    embedder: str = opt(
        DEFAULT_EMBEDDER,
        "Sentence embedder for diversity: the all-MiniLM-L6-v2 wheel, or a "
        "sentence-transformers folder.",
    )
    max_new_tokens: int | None = opt(
        None,
        "Max tokens of a re-generated evolution (default: the run's evolve_max_new_tokens, "
        f"else {DEFAULT_MAX_NEW_TOKENS}).",
    )
    seeds: bool = opt(True, "Measure the run's seeds too (round 0), where its input is readable.")
    scored: str | None = opt(
        None,
        "A scored file or `evolkit score` folder of this run's rows: their IFD and IC-IFD "
        "(matched by id) go into the report.",
    )
    near_duplicate: float = opt(
        NEAR_DUPLICATE, "Nearest-neighbour cosine distance below which a row is a near-duplicate."
    )

    def check(self) -> None:
        super().check()
        if not self.measures:
            raise EvolkitError("measures: give at least one of " + ", ".join(MEASURES_ALL))
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise EvolkitError("max_new_tokens must be at least 1")
        if not 0.0 <= self.near_duplicate <= 2.0:
            raise EvolkitError("near_duplicate must be a cosine distance between 0 and 2")


# -- the run being analysed ------------------------------------------------------------------


@dataclass
class SourceRun:
    """What analyze reads from a run: its rows, its rejects, its config and summary."""

    path: Path  # the folder (or the rows file given directly)
    rows_path: Path
    rejected_path: Path | None
    config: dict[str, Any]  # the run's config.json ({} when none)
    summary: dict[str, Any]  # the run's summary.json ({} when none)

    @classmethod
    def open(cls, run: str | Path) -> SourceRun:
        path = Path(run).expanduser()
        if path.is_file():
            return cls(path, path, None, {}, {})
        if not path.is_dir():
            raise EvolkitError(f"{path}: no such run folder or rows file")
        rows = next((path / n for n in ROW_FILES if (path / n).is_file()), None)
        config = read_json_object(path / CONFIG)
        if rows is None and config.get("command") == "evolve":
            rows = path / EVOLVED  # a run that kept nothing still has seeds and rejects
        if rows is None:
            if (path / MEASURES).is_file():
                raise EvolkitError(
                    f"{path} is an analysis (it holds {MEASURES}); give the run it analysed"
                )
            raise EvolkitError(
                f"{path}: no run rows here (looked for {', '.join(ROW_FILES)}); give an "
                "evolkit run folder or a rows file"
            )
        rejected = path / REJECTED
        return cls(
            path,
            rows,
            rejected if rejected.is_file() else None,
            config,
            read_json_object(path / SUMMARY),
        )

    @property
    def settings(self) -> dict[str, Any]:
        s = self.config.get("settings")
        return s if isinstance(s, dict) else {}

    def rows(self, limit: int | None = None) -> list[Record]:
        if not self.rows_path.exists():
            return []
        data, _ = read_jsonl_tolerant(self.rows_path)
        try:
            rows = [Record.model_validate(r) for r in data]
        except ValueError:
            # Not evolkit's own rows: read them like any input file.
            from evolkit.io.readers import read_records

            rows = list(read_records(self.rows_path))
        return rows[:limit] if limit else rows

    def rejected(self) -> list[dict[str, Any]]:
        if self.rejected_path is None:
            return []
        return read_jsonl_tolerant(self.rejected_path)[0]

    def seeds(self) -> tuple[list[Record], str | None]:
        """The evolve run's seed rows as round 0, and where they came from; none when the run
        was not an evolve run or its input is no longer readable (said in one line)."""
        if self.config.get("command") != "evolve":
            return [], None
        source = (self.settings.get("inputs") or {}).get("input")
        if not isinstance(source, str):
            return [], None
        from evolkit.io.readers import read_records

        try:
            seeds = list(read_records(source, on_bad="skip", limit=self.settings.get("limit")))
        except (EvolkitError, OSError) as exc:
            log.warning("seeds not measured: the run's input %s is not readable (%s)", source, exc)
            return [], None
        return [r.model_copy(update={"round": 0, "operation": None}) for r in seeds], source

    def evolver_spec(self, cfg: AnalyzeConfig) -> ModelSpec | None:
        """The model the run evolved with, reached as the run reached it (None: not recorded)."""
        s = self.settings
        model = s.get("evolver")
        if not isinstance(model, str):
            return None
        # reached as the run reached it; how hard to try (timeout, ...) is this analysis's
        return replace(
            cfg.model_spec(model, cfg.batch_size),
            backend=str(s.get("backend") or "local"),
            base_url=s.get("base_url"),
            extra_body=s.get("extra_body"),
        )

    def report_summary(self, evolver: ModelSpec | None) -> dict[str, Any]:
        """The run's summary as the report reads it: its config, with the evolver's backend."""
        config = dict(self.summary.get("config") or {})
        if evolver is not None:
            config["evolver"] = {"model": evolver.model, "backend": evolver.backend}
        out = {"config": config}
        if "seeds" in self.summary:
            out["seeds"] = self.summary["seeds"]
        return out


def join_scores(rows: Sequence[Record], scored: str | Path) -> tuple[list[Record], int]:
    """Rows with the IFD-family scores of the same rows (id and text) in `scored` (a file or
    a score run folder), and how many rows matched."""
    path = Path(scored).expanduser()
    if path.is_dir():
        path = path / SCORED
    if not path.is_file():
        raise EvolkitError(f"--scored {scored}: no scored rows there (expected {SCORED})")
    data, _ = read_jsonl_tolerant(path)
    # Keyed by id and text: runs from the same seeds share row ids, and another run's scores
    # must not attach to this run's rows.
    by_key = {
        (str(r.get("id")), str(r.get("instruction")), str(r.get("input") or "")): r.get("scores")
        for r in data
        if isinstance(r, dict) and isinstance(r.get("scores"), dict)
    }
    out, matched = [], 0
    for rec in rows:
        found = by_key.get((rec.id, rec.instruction, rec.input))
        if found:
            extra = {k: float(found[k]) for k in SCORE_KEYS if k in found}
            if extra:
                matched += 1
                rec = rec.model_copy(update={"scores": {**rec.scores, **extra}})
        out.append(rec)
    return out, matched


# -- analyze ---------------------------------------------------------------------------------


def measure_stages(cfg: AnalyzeConfig, max_new_tokens: int) -> list[Stage]:
    """The step's stages: model measures batch by batch, then diversity over every row."""
    stages: list[Stage] = []
    if "output_space" in cfg.measures:
        stages.append(OutputSpaceStage(max_new_tokens))
    if "difficulty" in cfg.measures:
        stages.append(DifficultyStage())
    if "diversity" in cfg.measures:
        stages.append(DiversityStage(cfg.near_duplicate))
    return stages


def analyze(
    run_dir: str | Path,
    out: str | Path,
    config: AnalyzeConfig | Mapping[str, Any] | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    embedder: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Measure the run in `run_dir` into the analysis folder `out`; return its summary.

    `backends` maps "evolver" / "judge" to ready Backend objects and `embedder` is a ready
    embedder (anything with `encode(texts)`), for notebooks and tests.
    """
    cfg = AnalyzeConfig.make(config, **settings)
    src = SourceRun.open(run_dir)
    rows = src.rows(cfg.limit)
    seeds, seeds_from = src.seeds() if cfg.seeds else ([], None)
    if not rows and not seeds:
        raise EvolkitError(f"{src.rows_path}: no rows to analyse")
    matched = None
    if cfg.scored:
        rows, matched = join_scores(rows, cfg.scored)
    given = dict(backends or {})
    roles: dict[str, ModelSpec] = {}
    evolver = cfg.model_spec(cfg.evolver, cfg.batch_size) if cfg.evolver else None
    if evolver is None:
        evolver = src.evolver_spec(cfg)
    if "output_space" in cfg.measures:
        if evolver is None and "evolver" not in given:
            raise EvolkitError(
                f"{src.path} records no evolver to re-generate with: give --evolver, or leave "
                "output_space out of --measures"
            )
        if evolver is not None:
            roles["evolver"] = evolver
    if "difficulty" in cfg.measures:
        roles["judge"] = cfg.model_spec(cfg.judge, cfg.batch_size)
    max_new = cfg.max_new_tokens or int(
        src.settings.get("evolve_max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    )
    every = seeds + rows
    inputs = {
        "run": str(src.path.resolve()),
        "rows": rows_fingerprint(every),
        "evolver": _describe(evolver) if "output_space" in cfg.measures else None,
        "max_new_tokens": max_new,
    }
    with Runner(
        "analyze",
        cfg,
        out,
        inputs=inputs,
        roles=roles,
        embedder=cfg.embedder,
        objects={**given, "embedder": embedder},
        kept_name=MEASURES,
    ) as run:
        run.step(STEP, measure_stages(cfg, max_new), every)
        measured = [Record.model_validate(r) for r in read_jsonl_tolerant(run.folder.kept_path)[0]]
        summary = summarize(src, cfg, measured, evolver)
        summary.update(
            {
                "seeds_measured": len(seeds),
                "seeds_from": seeds_from,
                "max_new_tokens": max_new,
                "scored_rows_matched": matched,
            }
        )
        return run.finish(summary, {"measures": run.folder.kept_path})


def _describe(spec: ModelSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {
        "model": spec.model,
        "backend": spec.backend,
        "base_url": spec.base_url,
        "extra_body": spec.extra_body,
    }


def summarize(
    src: SourceRun, cfg: AnalyzeConfig, measured: Sequence[Record], evolver: ModelSpec | None
) -> dict[str, Any]:
    """The analysis figures: per run (headline), per round, per operation, and outcomes."""
    from evolkit.report.data import RunMeasures, group_figures, run_figures
    from evolkit.scenarios.auto_evol import trajectory_method_counts

    # an Auto Evol-Instruct run brings the methods its evolutions listed (None otherwise)
    trajectory = trajectory_method_counts(src.path) if src.path.is_dir() else None
    run_summary = src.report_summary(evolver)
    rm = RunMeasures.from_rows(
        src.path.name,
        measured,
        src.rejected(),
        summary=run_summary,
        source=str(src.path),
        trajectory_methods=trajectory,
    )
    figures = run_figures(rm)
    by_op: dict[str, list[Any]] = {}
    for r in rm.evolved:
        by_op.setdefault(r.operation or "?", []).append(r)
    figures["per_operation"] = {op: group_figures(rs) for op, rs in sorted(by_op.items())}
    rejected_by_rule: dict[str, int] = {}
    for o in rm.by_round.values():
        for rule, n in o.rejected_by_rule.items():
            rejected_by_rule[rule] = rejected_by_rule.get(rule, 0) + n
    return {
        "run": str(src.path),
        "rows_file": str(src.rows_path),
        "rows": len(measured),
        "measures": list(cfg.measures),
        "evolver": _describe(evolver),
        "judge": cfg.judge if "difficulty" in cfg.measures else None,
        "embedder": cfg.embedder if "diversity" in cfg.measures else None,
        "rejected_by_rule": dict(sorted(rejected_by_rule.items(), key=lambda kv: -kv[1])),
        "run_summary": run_summary,
        "trajectory_methods": trajectory,
        "figures": figures,
    }


# -- compare ---------------------------------------------------------------------------------


@dataclass
class CompareConfig(AnalyzeConfig):
    """A comparison: the analysis settings (for runs analysed on the way) and run names."""

    names: list[str] = opt(
        [], "Names for the runs in the report (comma-separated; default: folder names).", csv=True
    )


def is_analysis(path: Path) -> bool:
    if not (path / MEASURES).is_file():
        return False
    return read_json_object(path / CONFIG).get("command") == "analyze"


def report_names(runs: Sequence[Path], names: Sequence[str]) -> list[str]:
    """One distinct name per run: given ones, else folder names (made unique by a suffix)."""
    if names:
        if len(names) != len(runs):
            raise EvolkitError(f"--names: {len(names)} names for {len(runs)} runs")
        if len(set(names)) != len(names):
            raise EvolkitError(f"--names must differ: {', '.join(names)}")
        return list(names)
    out: list[str] = []
    for p in runs:
        base = p.resolve().name or "run"
        if base.endswith(".jsonl"):
            base = base[: -len(".jsonl")]
        name, n = base, 2
        while name in out or name in ("report.html", "summary.json"):
            name, n = f"{base}-{n}", n + 1
        out.append(name)
    return out


def compare(
    runs: Sequence[str | Path],
    out: str | Path,
    config: CompareConfig | Mapping[str, Any] | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    embedder: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Write out/report.html and out/summary.json comparing `runs` (run folders or analyses);
    runs not yet analysed are analysed into out/<name>/ first. Returns the report's summary
    with `report` (the page's path) and `analyses` (name -> analysis folder)."""
    from evolkit.report import RunMeasures, write_report

    cfg = CompareConfig.make(config, **settings)
    if not runs:
        raise EvolkitError("compare needs at least one run folder")
    if cfg.scored:
        raise EvolkitError(
            "--scored belongs to one run: analyse that run with `evolkit analyze RUN --scored "
            "S -o A`, then give the analysis folder A to compare"
        )
    paths = [Path(r).expanduser() for r in runs]
    names = report_names(paths, cfg.names)
    report_dir = Path(out)
    analysis_settings = {k: v for k, v in cfg.to_dict(secrets=True).items() if k != "names"}
    measured: list[RunMeasures] = []
    folders: dict[str, str] = {}
    for name, path in zip(names, paths, strict=True):
        if path.is_dir() and is_analysis(path):
            folder = path
        else:
            folder = report_dir / name
            log.info("analysing %s into %s", path, folder)
            analyze(
                path,
                folder,
                AnalyzeConfig.make(analysis_settings),
                backends=backends,
                embedder=embedder,
            )
        folders[name] = str(folder)
        measured.append(load_analysis(folder, name))
    page = write_report(measured, report_dir)
    summary = read_json_object(report_dir / SUMMARY)
    return {**summary, "report": str(page), "analyses": folders}


def load_analysis(folder: Path, name: str) -> Any:
    """An analysis folder as the report's RunMeasures. Kept and eliminated counts come from
    the analysis's own summary (recorded with the rows it measured), so a run folder moved or
    resumed since does not change them."""
    from evolkit.report import Outcomes, RunMeasures

    summary = read_json_object(folder / SUMMARY)
    rows, _ = read_jsonl_tolerant(folder / MEASURES)
    if not rows:
        raise EvolkitError(f"{folder}: the analysis holds no measured rows")
    source = str(summary.get("run") or folder)
    run = RunMeasures.from_rows(
        name,
        rows,
        (),
        summary=summary.get("run_summary") or {},
        source=source,
        trajectory_methods=summary.get("trajectory_methods"),
    )
    figures = summary.get("figures") or {}

    def outcomes(data: Mapping[str, Any]) -> Outcomes:
        return Outcomes(
            kept=int(data.get("kept", 0)),
            rejected=int(data.get("rejected", 0)),
            rejected_by_rule={
                str(k): int(v) for k, v in (data.get("rejected_by_rule") or {}).items()
            },
        )

    by_round = figures.get("outcomes_by_round")
    if isinstance(by_round, dict):
        run.by_round = {
            int(k): outcomes(v) for k, v in sorted(by_round.items(), key=lambda kv: int(kv[0]))
        }
    by_op = figures.get("outcomes_by_operation")
    if isinstance(by_op, dict):
        run.by_operation = {str(k): outcomes(v) for k, v in sorted(by_op.items())}
    return run
