"""Scenario B: AutoIF. Verifiable instructions from constraints checked by executed code.

Six engine steps, in order (SPEC 3):

1. ``augment``       the evolver writes new constraints from the seeds; duplicates dropped;
2. ``verifiers``     the evolver writes K candidate ``evaluate(response)`` functions + cases;
3. ``crossval``      functions and cases are executed against each other in the sandbox;
4. ``backtranslate`` the evolver describes each kept function, the judge compares with the
                     constraint;
5. ``compose``       kept constraints are joined to real user queries;
6. ``respond``       the responder answers, the kept functions verify the answer in the
                     sandbox, and (optionally) the judge scores quality.

Each step is one engine step over one run folder, so a killed run resumes inside the step it
stopped in. All steps append their kept rows to ``steps.jsonl`` (the run's working store) and
their dropped rows, with step and reason, to ``rejected.jsonl``; at the end the user-facing
``constraints.jsonl`` and ``evolved.jsonl`` are (re)written from the store, so they are always
complete and never hold a duplicate.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evolkit.engines.local import LocalEngine
from evolkit.errors import EvolkitError
from evolkit.io.readers import BadRow, read_records
from evolkit.io.writers import read_jsonl_tolerant, write_jsonl
from evolkit.models import BackendFactory, ModelSpec
from evolkit.models.base import Backend, SamplingParams
from evolkit.models.embedded import cache_root
from evolkit.records import Record, make_id
from evolkit.runs import RunFolder
from evolkit.sandbox import Sandbox, SandboxLimits
from evolkit.scenarios.common import write_bad_rows
from evolkit.stages.augment import AugmentStage, ConstraintFilterStage, call_row, unique_seeds
from evolkit.stages.back_translate import BackTranslateStage
from evolkit.stages.compose import DEFAULT_TEMPLATE, ComposeStage
from evolkit.stages.constraints import CONSTRAINT_ID, KIND, ORIGIN, STEP, constraint_row
from evolkit.stages.crossval import CrossValConfig
from evolkit.stages.quality import QualityJudgeStage
from evolkit.stages.respond import RespondStage
from evolkit.stages.validate_verifiers import ValidateVerifiersStage
from evolkit.stages.verify_responses import VerifyResponsesStage
from evolkit.stages.write_verifiers import WriteVerifiersStage

STEPS = ("augment", "verifiers", "crossval", "backtranslate", "compose", "respond")
STORE = "steps.jsonl"


@dataclass
class AutoIFConfig:
    """Every setting of an AutoIF run. Defaults are the original AutoIF's values where it had
    one (noted "original"); everything here is fingerprinted, so changing a setting needs a new
    run folder (or --overwrite)."""

    # step 1: augment
    augment_calls: int = 100  # original: 100 calls
    per_call: int = 50  # original: 50 new constraints asked per call
    include_seeds: bool = True  # seeds join the pool, as in the original
    limit_seeds: int | None = None  # use only the first N seed constraints
    constraint_min_chars: int = 10
    constraint_max_chars: int = 200
    augment_max_new_tokens: int = 1024
    # step 2: verifier candidates
    functions_per_constraint: int = 8  # original K = 8
    verifier_max_new_tokens: int = 384
    # step 3: cross-validation (original values)
    min_accuracy: float = 0.8
    min_functions: int = 3
    min_cases: int = 10
    require_both_labels: bool = True  # ours: kept cases must include a True and a False
    sandbox_timeout: float = 2.0  # wall seconds per call
    sandbox_memory_mb: int = 256
    # step 4: back-translation
    backtranslate_functions: int = 3  # original: the first 3 kept functions
    # step 5: compose
    queries_per_constraint: int = 16  # original: 16
    query_min_chars: int = 20  # original: first turns of 20-300 characters
    query_max_chars: int = 300
    compose_template: str = DEFAULT_TEMPLATE
    # step 6: respond and verify
    min_pass_rate: float = 0.0  # original: any pass rate above 0 (see verify_responses)
    drop_truncated: bool = True
    quality_judge: bool = False  # original scored quality with a judge; off by default here
    quality_threshold: float = 8.0  # original: keep > 8 (of 10)
    max_new_tokens: int = 512  # response length
    # as in Evol-Instruct: tiny responders loop into the token limit without a mild penalty
    repetition_penalty: float = 1.15
    # models and sampling
    evolver: ModelSpec = field(default_factory=ModelSpec)
    responder: ModelSpec = field(default_factory=ModelSpec)
    judge: ModelSpec = field(default_factory=ModelSpec)
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    on_bad_record: str = "error"  # for the queries files

    def __post_init__(self) -> None:
        for name in ("per_call", "functions_per_constraint", "queries_per_constraint"):
            if getattr(self, name) < 1:
                raise EvolkitError(f"{name} must be at least 1")
        if self.augment_calls < 0:
            raise EvolkitError("augment_calls must be >= 0 (0 = verify the seeds only)")
        if not 0.0 <= self.min_pass_rate <= 1.0 or not 0.0 <= self.min_accuracy <= 1.0:
            raise EvolkitError("min_pass_rate and min_accuracy must be within [0, 1]")

    def crossval(self) -> CrossValConfig:
        return CrossValConfig(
            min_accuracy=self.min_accuracy,
            min_functions=self.min_functions,
            min_cases=self.min_cases,
        )

    def limits(self) -> SandboxLimits:
        return SandboxLimits(wall_seconds=self.sandbox_timeout, memory_mb=self.sandbox_memory_mb)

    def fingerprint_dict(self, constraints: str | Path, queries: Sequence[str | Path]) -> dict:
        d = asdict(self)
        for role in ("evolver", "responder", "judge"):
            d[role].pop("api_key", None)
            d[role].pop("batch_size", None)
        d["constraints_file"] = str(Path(constraints).resolve())
        d["queries_files"] = [str(Path(q).resolve()) for q in queries]
        return d


# --------------------------------------------------------------------------- inputs


def read_seed_constraints(path: str | Path) -> list[str]:
    """One constraint per line; blank lines and `#` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise EvolkitError(f"{p}: no such constraints file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvolkitError(f"{p}: not UTF-8 text ({exc.reason})") from None
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def load_queries(
    paths: Sequence[str | Path], min_chars: int, max_chars: int, on_bad: str
) -> tuple[list[tuple[str, str]], list[BadRow], dict[str, int]]:
    """User queries (the first user turn of each row) whose length is in range, deduplicated.

    Any format `read_records` knows works: MT-Bench / Vicuna `turns`, Alpaca, ShareGPT, messages.
    """
    bad: list[BadRow] = []
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    stats = {"read": 0, "out_of_range": 0, "duplicates": 0}
    for path in paths:
        for rec in read_records(path, on_bad=on_bad, bad_sink=bad.append):  # type: ignore[arg-type]
            stats["read"] += 1
            text = rec.instruction.strip()
            if not min_chars <= len(text) <= max_chars:
                stats["out_of_range"] += 1
                continue
            if text in seen:
                stats["duplicates"] += 1
                continue
            seen.add(text)
            out.append((make_id("query", text), text))
    stats["used"] = len(out)
    return out, bad, stats


# --------------------------------------------------------------------------- the run


def autoif(
    constraints_path: str | Path,
    queries_paths: Sequence[str | Path],
    out: str | Path,
    config: AutoIFConfig | None = None,
    *,
    overwrite: bool = False,
    batch_size: int = 16,
    cache: str | Path | None = "default",
    progress: bool = True,
    backends: Mapping[str, Backend] | None = None,
    sandbox_workers: int = 2,
    isolation: str = "auto",
) -> dict[str, Any]:
    """Run AutoIF into the run folder `out` and return the summary (also in summary.json).

    `backends` maps a role ("evolver", "responder", "judge") to a ready Backend object that
    replaces that role's model spec (for notebooks and tests). The sandbox settings
    (`sandbox_workers`, `isolation`) change speed and safety, not results, so they are not
    part of the run's fingerprint.
    """
    cfg = config or AutoIFConfig()
    t_start = time.perf_counter()
    # Read and check every input before any model loads.
    seed_lines = read_seed_constraints(constraints_path)
    seeds, seed_dups = unique_seeds(seed_lines)
    if cfg.limit_seeds is not None:
        seeds = seeds[: cfg.limit_seeds]
    if not seeds:
        raise EvolkitError(f"{constraints_path}: no seed constraints (one per line expected)")
    if not queries_paths:
        raise EvolkitError("AutoIF needs at least one queries file (--queries)")
    queries, bad, query_stats = load_queries(
        queries_paths, cfg.query_min_chars, cfg.query_max_chars, cfg.on_bad_record
    )
    if not queries:
        raise EvolkitError(
            f"no query of {cfg.query_min_chars}-{cfg.query_max_chars} characters in "
            + ", ".join(map(str, queries_paths))
        )
    run = RunFolder(
        out,
        cfg.fingerprint_dict(constraints_path, queries_paths),
        overwrite=overwrite,
        kept_name=STORE,
    )
    write_bad_rows(run, bad)

    cache_path = cache_root() / "calls.sqlite" if cache == "default" else cache
    factory = BackendFactory(cache_path)
    try:
        with Sandbox(cfg.limits(), workers=sandbox_workers, isolation=isolation) as sandbox:
            given = dict(backends or {})
            adopted = {id(b): factory.adopt(b) for b in {id(b): b for b in given.values()}.values()}

            def role(name: str, spec: ModelSpec) -> Backend:
                return adopted[id(given[name])] if name in given else factory.get(spec)

            evolver = role("evolver", cfg.evolver)
            judge = role("judge", cfg.judge)
            responder = role("responder", cfg.responder)
            engine = LocalEngine(batch_size=batch_size, progress=progress)
            t_work = time.perf_counter()
            processed = _run_steps(
                cfg, seeds, queries, run, engine, sandbox, evolver, judge, responder
            )
            work_seconds = time.perf_counter() - t_work
            isolation_text = sandbox.isolation
            sandbox_mode = sandbox.mode
        kept_constraints = write_constraints(run.kept_records("backtranslate"), run.dir)
        evolved = write_jsonl(run.kept_records("respond"), run.dir / "evolved.jsonl")
        summary = summarize(run, cfg)
        summary["seeds"] = {
            "read": len(seed_lines),
            "duplicates": len(seed_dups),
            "used": len(seeds),
        }
        summary["queries"] = {**query_stats, "bad_records": len(bad)}
        summary["kept_constraints"] = kept_constraints
        summary["evolved"] = evolved
        summary["sandbox"] = {
            "isolation": isolation_text,
            "mode": sandbox_mode,
            "workers": sandbox_workers,
            "limits": cfg.limits().to_dict(),
        }
        summary["backtranslation"] = {"method": "judge", "judge": judge.model_id}
        summary["seconds"] = {
            "total": round(time.perf_counter() - t_start, 2),
            "work": round(work_seconds, 2),
        }
        summary["rows_processed_this_invocation"] = processed
        summary["resumed"] = run.resumed
        summary["models"] = factory.usage()
        summary["outputs"] = {
            "constraints": str(run.dir / "constraints.jsonl"),
            "evolved": str(run.dir / "evolved.jsonl"),
            "rejected": str(run.rejected_path),
            "steps": str(run.kept_path),
            "summary": str(run.summary_path),
        }
        run.write_summary(summary)
        return summary
    finally:
        factory.close()


def _run_steps(
    cfg: AutoIFConfig,
    seeds: list[str],
    queries: list[tuple[str, str]],
    run: RunFolder,
    engine: LocalEngine,
    sandbox: Sandbox,
    evolver: Backend,
    judge: Backend,
    responder: Backend,
) -> int:
    """Run the six steps in order; returns the number of rows this invocation processed."""
    sample = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    processed = 0
    pool = (
        [constraint_row(s, "seed", "seed", seed_index=i) for i, s in enumerate(seeds)]
        if cfg.include_seeds
        else []
    )
    if cfg.augment_calls > 0:
        params = SamplingParams(**{**sample.__dict__, "max_new_tokens": cfg.augment_max_new_tokens})
        step = engine.run(
            "augment",
            [
                AugmentStage(evolver, seeds, cfg.per_call, params, cfg.seed),
                ConstraintFilterStage(seeds, cfg.constraint_min_chars, cfg.constraint_max_chars),
            ],
            [call_row(i) for i in range(cfg.augment_calls)],
            run,
        )
        processed += step.processed
        pool += step.kept
    params = SamplingParams(**{**sample.__dict__, "max_new_tokens": cfg.verifier_max_new_tokens})
    step = engine.run(
        "verifiers",
        [WriteVerifiersStage(evolver, cfg.functions_per_constraint, params, cfg.seed)],
        pool,
        run,
    )
    processed += step.processed
    step = engine.run(
        "crossval",
        [ValidateVerifiersStage(sandbox, cfg.crossval(), cfg.require_both_labels)],
        step.kept,
        run,
    )
    processed += step.processed
    step = engine.run(
        "backtranslate",
        [BackTranslateStage(evolver, judge, cfg.backtranslate_functions)],
        step.kept,
        run,
    )
    processed += step.processed
    step = engine.run(
        "compose",
        [ComposeStage(queries, cfg.queries_per_constraint, cfg.seed, cfg.compose_template)],
        step.kept,
        run,
    )
    processed += step.processed
    respond = [
        RespondStage(
            responder,
            SamplingParams(
                temperature=0.0,
                max_new_tokens=cfg.max_new_tokens,
                repetition_penalty=cfg.repetition_penalty,
            ),
        ),
        VerifyResponsesStage(sandbox, cfg.min_pass_rate, cfg.drop_truncated),
    ]
    if cfg.quality_judge:
        respond.append(QualityJudgeStage(judge, cfg.quality_threshold))
    step = engine.run("respond", respond, step.kept, run)
    return processed + step.processed


# --------------------------------------------------------------------------- outputs


def constraint_export(row: Record) -> dict[str, Any]:
    """A kept constraint as users read it; `check-verifiers` reads the same shape back."""
    out: dict[str, Any] = {
        "id": row.meta[CONSTRAINT_ID],
        "constraint": row.instruction,
        "origin": row.meta.get(ORIGIN),
        "functions": row.meta.get("functions", []),
        "accuracy": row.meta.get("accuracy", []),
        "cases": row.meta.get("cases", []),
    }
    if row.evolver:
        out["evolver"] = row.evolver
    if "backtranslation" in row.meta:
        out["backtranslation"] = row.meta["backtranslation"]
    return out


def write_constraints(rows: Iterable[Record], folder: Path) -> int:
    """Write constraints.jsonl atomically (a reader never sees half a file)."""
    path = folder / "constraints.jsonl"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(constraint_export(row), ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def step_counts(run: RunFolder, steps: Sequence[str] = STEPS) -> dict[str, dict[str, Any]]:
    """Per step: inputs, kept rows, and dropped rows by kind and rule (from the run's files, so
    true across any number of resumes)."""
    journal, _ = read_jsonl_tolerant(run.journal_path)
    rejected, _ = read_jsonl_tolerant(run.rejected_path)
    counts: dict[str, dict[str, Any]] = {s: {"inputs": 0, "kept": 0, "rejected": {}} for s in steps}
    for e in journal:
        c = counts.setdefault(e["step"], {"inputs": 0, "kept": 0, "rejected": {}})
        c["inputs"] += len(e["inputs"])
        c["kept"] += len(e["kept"])
    by_rule: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for row in rejected:
        meta = row.get("meta", {})
        rule = next((v["rule"] for v in row.get("verdicts", []) if not v["kept"]), "?")
        by_rule[meta.get(STEP, "?")][meta.get(KIND, "?")][rule] += 1
    for step, kinds in by_rule.items():
        c = counts.setdefault(step, {"inputs": 0, "kept": 0, "rejected": {}})
        c["rejected"] = {
            kind: {"total": sum(rules.values()), **dict(rules.most_common())}
            for kind, rules in sorted(kinds.items())
        }
    return counts


def summarize(run: RunFolder, cfg: AutoIFConfig) -> dict[str, Any]:
    """Counts per step and the funnel from seeds to verified responses."""
    steps = step_counts(run)
    verifiers = run.kept_records("verifiers")
    crossval = run.kept_records("crossval")
    responses = run.kept_records("respond")
    rates = [r.scores.get("pass_rate", 0.0) for r in responses]
    steps["augment"]["calls"] = steps["augment"].pop("inputs")
    steps["verifiers"]["candidates_asked"] = steps["verifiers"]["inputs"] * (
        cfg.functions_per_constraint
    )
    steps["verifiers"]["distinct_functions_parsed"] = sum(
        len(r.meta.get("functions", [])) for r in verifiers
    )
    steps["verifiers"]["distinct_cases_parsed"] = sum(
        len(r.meta.get("cases", [])) for r in verifiers
    )
    steps["crossval"]["functions_kept"] = sum(len(r.meta.get("functions", [])) for r in crossval)
    steps["crossval"]["cases_kept"] = sum(len(r.meta.get("cases", [])) for r in crossval)
    steps["respond"]["mean_pass_rate_kept"] = round(sum(rates) / len(rates), 4) if rates else None
    return {
        "funnel": {
            "constraints_in_pool": steps["verifiers"]["inputs"],
            "augmented_constraints_kept": steps["augment"]["kept"],
            "with_parsed_functions": steps["verifiers"]["kept"],
            "cross_validated": steps["crossval"]["kept"],
            "back_translated": steps["backtranslate"]["kept"],
            "composed_instructions": steps["compose"]["kept"],
            "verified_responses": steps["respond"]["kept"],
        },
        "steps": steps,
        "config": run.config,
    }
