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

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evolkit.config import Settings, opt
from evolkit.errors import EvolkitError
from evolkit.io.readers import BadRow
from evolkit.io.writers import read_jsonl_tolerant, write_jsonl
from evolkit.models.base import Backend, SamplingParams
from evolkit.records import Record, make_id
from evolkit.resources import SandboxSpec
from evolkit.runs import CONSTRAINTS, EVOLVED, STEPS, RunFolder
from evolkit.sandbox import SandboxLimits
from evolkit.scenarios.evol_instruct import ResponseSettings
from evolkit.scenarios.runner import Runner, RunSettings, as_records, describe_input
from evolkit.stages.augment import AugmentStage, ConstraintFilterStage, call_row, unique_seeds
from evolkit.stages.back_translate import BackTranslateStage
from evolkit.stages.base import Stage
from evolkit.stages.compose import DEFAULT_TEMPLATE, ComposeStage
from evolkit.stages.constraints import CONSTRAINT_ID, KIND, ORIGIN, STEP, constraint_row
from evolkit.stages.crossval import CrossValConfig
from evolkit.stages.quality import QualityJudgeStage
from evolkit.stages.respond import RespondStage
from evolkit.stages.sample import STEP_NAME as SAMPLE_STEP
from evolkit.stages.sample import FanOutStage, SampledRespondStage
from evolkit.stages.validate_verifiers import ValidateVerifiersStage
from evolkit.stages.verify_responses import VerifyResponsesStage
from evolkit.stages.write_verifiers import WriteVerifiersStage

STEP_NAMES = ("augment", "verifiers", "crossval", "backtranslate", "compose", "respond")
#: Sandbox isolation modes (the `--isolation` choices); "auto" picks the strongest available.
ISOLATIONS = ("auto", "bwrap", "unshare", "rlimits")


@dataclass
class CrossValSettings(Settings):
    """AutoIF step 3's settings (thresholds and sandbox), shared with `check-verifiers`."""

    min_accuracy: float = opt(
        0.8, "Keep functions with at least this accuracy on kept cases (original 0.8)."
    )
    min_functions: int = opt(3, "Keep constraints with at least this many functions (orig. 3).")
    min_cases: int = opt(10, "Keep constraints with at least this many cases (orig. 10).")
    require_both_labels: bool = opt(
        True,
        "Drop constraints whose kept cases are all True (or all False): a constant function "
        "would pass them (not in the original).",
        bool_flags="--require-both-labels/--allow-one-sided-cases",
    )
    sandbox_timeout: float = opt(2.0, "Wall-clock seconds per verifier call in the sandbox.")
    sandbox_memory_mb: int = opt(256, "Memory limit per verifier call (MB).")
    sandbox_workers: int = opt(2, "Sandbox worker processes.", fingerprint=False)
    isolation: str = opt(
        "auto",
        "Sandbox isolation: auto picks the strongest that works here.",
        choices=ISOLATIONS,
        fingerprint=False,
    )

    def crossval(self) -> CrossValConfig:
        return CrossValConfig(
            min_accuracy=self.min_accuracy,
            min_functions=self.min_functions,
            min_cases=self.min_cases,
        )

    def limits(self) -> SandboxLimits:
        return SandboxLimits(wall_seconds=self.sandbox_timeout, memory_mb=self.sandbox_memory_mb)

    def sandbox(self) -> SandboxSpec:
        return SandboxSpec(self.limits(), self.sandbox_workers, self.isolation)


@dataclass
class AutoIFConfig(RunSettings, ResponseSettings, CrossValSettings):
    """Every setting of an AutoIF run. Defaults are the original AutoIF's values where it had
    one (noted "original")."""

    # step 1: augment
    augment_calls: int = opt(
        100, "Augmentation calls (original: 100; try 1-5 on a laptop; 0 = seeds only)."
    )
    per_call: int = opt(50, "New constraints asked per call (original: 50).")
    include_seeds: bool = opt(True, "Verify the seed constraints too, not only the new ones.")
    limit_seeds: int | None = opt(None, "Use only the first N seed constraints.")
    constraint_min_chars: int = opt(10, "Drop augmented constraints shorter than this.")
    constraint_max_chars: int = opt(200, "Drop augmented constraints longer than this.")
    augment_max_new_tokens: int = opt(1024, "Max tokens of one augmentation answer.")
    # step 2: verifier candidates
    functions_per_constraint: int = opt(
        8, "Candidate verifiers per constraint (original K: 8).", flags=("--functions", "-k")
    )
    verifier_max_new_tokens: int = opt(384, "Max tokens of one verifier answer (function + cases).")
    # step 4: back-translation
    backtranslate_functions: int = opt(
        3, "Kept functions back-translated per constraint (original: 3)."
    )
    # step 5: compose
    queries_per_constraint: int = opt(
        16, "Queries paired with each kept constraint (original: 16)."
    )
    query_min_chars: int = opt(20, "Use queries of at least this many characters (orig. 20).")
    query_max_chars: int = opt(300, "Use queries of at most this many characters (orig. 300).")
    compose_template: str = opt(
        DEFAULT_TEMPLATE, "How a query and a constraint are joined ({query}, {constraint})."
    )
    # step 6: respond and verify
    responses_per_query: int = opt(
        1,
        "Responses per composed instruction. 1: one greedy response. K > 1: K responses "
        "sampled at --temperature with distinct seeds, so a query can have a passing and a "
        "failing one (export --format dpo pairs them; the original sampled several for its "
        "DPO data).",
    )
    min_pass_rate: float = opt(
        0.0,
        "Keep responses passing at least this share of the verifiers; one pass is always "
        "needed (original: any pass, i.e. 0.0).",
    )
    drop_truncated: bool = opt(True, "Drop responses that hit the token limit.")
    quality_judge: bool = opt(False, "Also score each verified pair with the judge (original: on).")
    quality_threshold: float = opt(
        8.0, "With --quality-judge keep scores above this (original: 8 of 10)."
    )
    # models and sampling
    evolver: str = opt("embedded", "Model writing constraints, verifiers and back-translations.")
    responder: str | None = opt(
        None, "Model answering the composed instructions (default: the evolver)."
    )
    judge: str | None = opt(
        None, "Model judging back-translations and quality (default: the evolver)."
    )
    temperature: float = opt(0.7, "Sampling temperature for writing.")
    top_p: float = opt(0.95, "Nucleus sampling for writing.")
    seed: int = opt(0, "Sampling and query-draw seed.")

    def check(self) -> None:
        super().check()
        for name in ("per_call", "functions_per_constraint", "queries_per_constraint"):
            if getattr(self, name) < 1:
                raise EvolkitError(f"{name} must be at least 1")
        if self.responses_per_query < 1:
            raise EvolkitError("responses_per_query must be at least 1")
        if self.responses_per_query > 1 and self.temperature <= 0:
            raise EvolkitError(
                "responses_per_query > 1 samples its responses: give a temperature above 0"
            )
        if self.augment_calls < 0:
            raise EvolkitError("augment_calls must be >= 0 (0 = verify the seeds only)")
        if not 0.0 <= self.min_pass_rate <= 1.0 or not 0.0 <= self.min_accuracy <= 1.0:
            raise EvolkitError("min_pass_rate and min_accuracy must be within [0, 1]")

    def role_models(self) -> dict[str, str]:
        return {
            "evolver": self.evolver,
            "responder": self.responder or self.evolver,
            "judge": self.judge or self.evolver,
        }

    def sample_params(self) -> SamplingParams:
        """How the K > 1 responses are sampled (each copy adds its index to the seed)."""
        greedy = self.respond_params()
        return replace(greedy, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def step_names(self) -> tuple[str, ...]:
        if self.responses_per_query == 1:
            return STEP_NAMES
        return (*STEP_NAMES[:-1], SAMPLE_STEP, STEP_NAMES[-1])


# --------------------------------------------------------------------------- inputs


def read_seed_constraints(source: str | Path | Sequence[str]) -> list[str]:
    """One constraint per line of a file, or a list of constraints in memory; blank lines and
    `#` comments are skipped."""
    if isinstance(source, str | Path):
        p = Path(source)
        if not p.is_file():
            raise EvolkitError(f"{p}: no such constraints file")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise EvolkitError(f"{p}: not UTF-8 text ({exc.reason})") from None
    elif isinstance(source, list | tuple) and all(isinstance(x, str) for x in source):
        lines = list(source)
    else:
        raise EvolkitError(
            "constraints: expected a file of one constraint per line or a list of strings, "
            f"not a {type(source).__name__}"
        )
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def describe_constraints(source: str | Path | Sequence[str]) -> Any:
    """What config.json records about the seed constraints (a path, or a digest of lines)."""
    if isinstance(source, str | Path):
        return describe_input(source)
    digest = hashlib.sha256("\n".join(source).encode("utf-8")).hexdigest()[:16]
    return {"lines": "in memory", "digest": digest}


def query_sources(queries: Any) -> list[Any]:
    """Files (or hf:// names) as a list of paths; rows in memory (dicts, a datasets.Dataset, a
    DataFrame) as one source."""
    if isinstance(queries, str | Path):
        return [queries]
    if isinstance(queries, list | tuple) and all(isinstance(q, str | Path) for q in queries):
        return list(queries)
    return [queries]


def load_queries(
    paths: Sequence[Any], min_chars: int, max_chars: int, on_bad: str
) -> tuple[list[tuple[str, str]], list[BadRow], dict[str, int]]:
    """User queries (the first user turn of each row) whose length is in range, deduplicated.

    Any format `read_records` knows works: MT-Bench / Vicuna `turns`, Alpaca, ShareGPT, messages;
    a source may be a file, an hf:// name or rows in memory.
    """
    bad: list[BadRow] = []
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    stats = {"read": 0, "out_of_range": 0, "duplicates": 0}
    for path in paths:
        records, bad_here = as_records(path, on_bad)
        bad += bad_here
        for rec in records:
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
    constraints_path: str | Path | Sequence[str],
    queries_paths: Any,
    out: str | Path,
    config: AutoIFConfig | Mapping[str, Any] | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run AutoIF into the run folder `out` and return the summary (also in summary.json).

    `constraints_path` is a file of one constraint per line, or a list of constraints;
    `queries_paths` is a list of files (or hf:// names), or rows in memory (a list of dicts,
    a datasets.Dataset, a DataFrame). `settings` are the CLI's option names. `backends` maps a
    role ("evolver", "responder", "judge") to a ready Backend object that replaces that role's
    model (notebooks, tests).
    """
    cfg = AutoIFConfig.make(config, **settings)
    # Read and check every input before any model loads.
    seed_lines = read_seed_constraints(constraints_path)
    seeds, seed_dups = unique_seeds(seed_lines)
    if cfg.limit_seeds is not None:
        seeds = seeds[: cfg.limit_seeds]
    if not seeds:
        raise EvolkitError(f"{constraints_path}: no seed constraints (one per line expected)")
    sources = query_sources(queries_paths)
    if not sources:
        raise EvolkitError("AutoIF needs at least one queries file (--queries)")
    queries, bad, query_stats = load_queries(
        sources, cfg.query_min_chars, cfg.query_max_chars, cfg.on_bad_record
    )
    if not queries:
        raise EvolkitError(
            f"no query of {cfg.query_min_chars}-{cfg.query_max_chars} characters in "
            + ", ".join(str(q) if isinstance(q, str | Path) else "the rows given" for q in sources)
        )
    roles = {r: cfg.model_spec(m, cfg.batch_size) for r, m in cfg.role_models().items()}
    with Runner(
        "autoif",
        cfg,
        out,
        inputs={
            "constraints": describe_constraints(constraints_path),
            "queries": describe_input(
                sources if all(isinstance(q, str | Path) for q in sources) else sources[0]
            ),
        },
        roles=roles,
        sandbox=cfg.sandbox(),
        objects=dict(backends or {}),
        kept_name=STEPS,
    ) as run:
        run.folder.write_bad_rows(bad)
        _run_steps(run, cfg, seeds, queries)
        folder = run.folder
        judged = folder.kept_records("backtranslate")
        responses = folder.kept_records("respond")
        kept_constraints = write_constraints(judged, folder.dir)
        evolved = write_jsonl(responses, folder.path(EVOLVED))
        summary = summarize(folder, cfg, responses)
        summary["seeds"] = {
            "read": len(seed_lines),
            "duplicates": len(seed_dups),
            "used": len(seeds),
        }
        summary["queries"] = {**query_stats, "bad_records": len(bad)}
        summary["kept_constraints"] = kept_constraints
        summary["evolved"] = evolved
        summary["sandbox"] = {
            "workers": cfg.sandbox_workers,
            "limits": cfg.limits().to_dict(),
        }
        judge_id = next(
            (
                str(r.meta["backtranslation"]["judge"])
                for r in judged
                if "backtranslation" in r.meta
            ),
            cfg.role_models()["judge"],
        )
        summary["backtranslation"] = {"method": "judge", "judge": judge_id}
        result = run.finish(
            summary,
            {
                "constraints": folder.path(CONSTRAINTS),
                "evolved": folder.path(EVOLVED),
                "rejected": folder.rejected_path,
                "steps": folder.kept_path,
            },
        )
        # Which isolation was in force is known only once the sandbox ran (not on a resume
        # that had nothing left to check).
        info = result.get("sandbox_in_force")
        if info:
            result["sandbox"].update(info)
            folder.write_summary(result)
        return result


def _run_steps(
    run: Runner, cfg: AutoIFConfig, seeds: list[str], queries: list[tuple[str, str]]
) -> None:
    """The six steps, in order: each one a list of stages over the previous step's rows."""
    sample = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    pool = (
        [constraint_row(s, "seed", "seed", seed_index=i) for i, s in enumerate(seeds)]
        if cfg.include_seeds
        else []
    )
    if cfg.augment_calls > 0:
        params = SamplingParams(**{**sample.__dict__, "max_new_tokens": cfg.augment_max_new_tokens})
        pool += run.step(
            "augment",
            [
                AugmentStage(seeds, cfg.per_call, params, cfg.seed),
                ConstraintFilterStage(seeds, cfg.constraint_min_chars, cfg.constraint_max_chars),
            ],
            [call_row(i) for i in range(cfg.augment_calls)],
        ).kept
    params = SamplingParams(**{**sample.__dict__, "max_new_tokens": cfg.verifier_max_new_tokens})
    rows = run.step(
        "verifiers", [WriteVerifiersStage(cfg.functions_per_constraint, params, cfg.seed)], pool
    ).kept
    rows = run.step(
        "crossval", [ValidateVerifiersStage(cfg.crossval(), cfg.require_both_labels)], rows
    ).kept
    rows = run.step("backtranslate", [BackTranslateStage(cfg.backtranslate_functions)], rows).kept
    rows = run.step(
        "compose",
        [ComposeStage(queries, cfg.queries_per_constraint, cfg.seed, cfg.compose_template)],
        rows,
    ).kept
    answer: Stage = RespondStage(cfg.respond_params())
    if cfg.responses_per_query > 1:
        # K copies of each composed instruction, kept in the store so every response's
        # parent is on disk; each copy samples with its own seed.
        rows = run.step(SAMPLE_STEP, [FanOutStage(cfg.responses_per_query)], rows).kept
        answer = SampledRespondStage(cfg.sample_params())
    respond: list[Stage] = [answer, VerifyResponsesStage(cfg.min_pass_rate, cfg.drop_truncated)]
    if cfg.quality_judge:
        respond.append(QualityJudgeStage(cfg.quality_threshold))
    run.step("respond", respond, rows)


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
    return write_jsonl((constraint_export(r) for r in rows), folder / CONSTRAINTS)


def step_counts(run: RunFolder, steps: Sequence[str] = STEP_NAMES) -> dict[str, dict[str, Any]]:
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


def summarize(run: RunFolder, cfg: AutoIFConfig, responses: list[Record]) -> dict[str, Any]:
    """Counts per step and the funnel from seeds to `responses` (the verified ones)."""
    steps = step_counts(run, cfg.step_names())
    verifiers = run.kept_records("verifiers")
    crossval = run.kept_records("crossval")
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
        "config": cfg.fingerprint_dict(),
    }
