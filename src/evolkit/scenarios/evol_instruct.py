"""Scenario A: Evol-Instruct. Rounds of evolve -> eliminate -> respond -> eliminate.

Round r's kept rows are round r+1's parents. Every round is one engine step, so a rerun after a
kill resumes inside the round it stopped in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evolkit.config import Settings, opt
from evolkit.errors import EvolkitError
from evolkit.io.writers import read_jsonl_tolerant
from evolkit.measures.diversity import DEFAULT_EMBEDDER
from evolkit.models.base import Backend, SamplingParams
from evolkit.runs import RunFolder
from evolkit.scenarios.runner import ModelSettings, Runner, RunSettings, describe_input
from evolkit.stages.base import Stage
from evolkit.stages.eliminate import DedupStage, DriftStage, EliminateStage, JudgeStage
from evolkit.stages.evolve import OPERATIONS, POLICIES, EvolveStage
from evolkit.stages.respond import RespondStage
from evolkit.stages.rules import ALL_RULES, RuleSettings

#: The responder's repetition penalty on the local backend when none is set: tiny models loop,
#: and 1.15 let 6 of 8 SmolLM2-135M answers finish within 256 tokens where plain greedy finished
#: 4 (docs/evol_instruct.md). Servers get nothing unless the user sets a value.
LOCAL_REPETITION_PENALTY = 1.15


@dataclass
class ResponseSettings(ModelSettings):
    """How responses are written (shared by Evol-Instruct, AutoIF and Auto Evol-Instruct)."""

    max_new_tokens: int = opt(512, "Max response tokens (the paper: 2048).")
    repetition_penalty: float | None = opt(
        None,
        "Responder repetition penalty; 1.0 = plain greedy (the paper). Unset: 1.15 on the "
        "local backend (tiny models loop), nothing sent to a server.",
    )

    def respond_params(self) -> SamplingParams:
        penalty = self.repetition_penalty
        if penalty is None and self.backend == "local":
            penalty = LOCAL_REPETITION_PENALTY
        return SamplingParams(
            temperature=0.0, max_new_tokens=self.max_new_tokens, repetition_penalty=penalty
        )


@dataclass
class EliminationSettings(Settings):
    """Which rules eliminate rewrites, and their thresholds (Evol-Instruct and Auto Evol)."""

    rules: list[str] = opt(
        list(ALL_RULES),
        "Elimination rules to apply (comma-separated).",
        choices=ALL_RULES,
        csv=True,
    )
    disable_rule: list[str] = opt(
        [], "Switch one rule off (repeatable).", choices=ALL_RULES, multiple=True
    )
    min_parent_similarity: float | None = opt(
        None,
        "drifted rule: the least embedding similarity of an in-depth rewrite to its parent "
        f"(default {RuleSettings().min_parent_similarity}; lower it for a bold evolver).",
    )
    embedder: str = opt(
        DEFAULT_EMBEDDER,
        "Sentence embedder of the drifted rule: the all-MiniLM-L6-v2 wheel (trained on "
        "English), or a sentence-transformers folder (a multilingual one for other languages).",
    )
    rule_settings: RuleSettings = opt(RuleSettings(), "Rule thresholds.", cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.rule_settings, dict):
            self.rule_settings = RuleSettings(**self.rule_settings)
        # One effective rule list and one threshold record, so the fingerprint and a rerun
        # see the same thing.
        if self.disable_rule:
            self.rules = [r for r in self.rules if r not in set(self.disable_rule)]
            self.disable_rule = []
        if self.min_parent_similarity is not None:
            self.rule_settings = replace(
                self.rule_settings, min_parent_similarity=self.min_parent_similarity
            )
            self.min_parent_similarity = None
        super().__post_init__()

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.rule_settings.min_parent_similarity <= 1.0:
            raise EvolkitError("min_parent_similarity must be between 0 and 1")


@dataclass
class EvolConfig(RunSettings, ResponseSettings, EliminationSettings):
    """Every setting of an Evol-Instruct run (CLI options and Python keywords alike)."""

    rounds: int = opt(2, "Evolution rounds (the paper: 1 to 3).")
    operations: list[str] = opt(
        list(OPERATIONS), "Operations to use (comma-separated).", choices=OPERATIONS, csv=True
    )
    policy: str = opt("rotate", "How each row's operation is chosen.", choices=POLICIES)
    seed: int = opt(0, "Sampling and choice seed.")
    evolver: str = opt("embedded", "Evolver model: 'embedded', a folder or a model id.")
    responder: str | None = opt(None, "Responder model (default: the evolver).")
    judge: str | None = opt(None, "Judge model (default: the evolver).")
    temperature: float = opt(0.7, "Evolution sampling temperature.")
    top_p: float = opt(0.95, "Evolution nucleus sampling.")
    attempts: int = opt(
        3, "Tries per evolution when a rewrite fails a cheap rule (1 = the original's one try)."
    )
    evolve_max_new_tokens: int = opt(160, "Max tokens of one rewrite.")

    def check(self) -> None:
        super().check()
        if self.rounds < 1:
            raise EvolkitError("rounds must be at least 1")
        if not self.operations:
            raise EvolkitError("operations: give at least one operation")

    def role_models(self) -> dict[str, str]:
        return {
            "evolver": self.evolver,
            "responder": self.responder or self.evolver,
            "judge": self.judge or self.evolver,
        }


def instruction_check_stages(rules: Sequence[str], settings: RuleSettings) -> list[Stage]:
    """What judges a rewritten instruction: the cheap rules, then duplicates across the run,
    then the judge model (each only when its rule is on). Shared with Auto Evol-Instruct."""
    stages: list[Stage] = [EliminateStage(rules, "instruction", settings)]
    if "drifted" in rules:
        # Before dedup and the judge: a drifted rewrite neither blocks a later duplicate nor
        # costs a judge call.
        stages.append(DriftStage(settings))
    if "duplicate" in rules:
        stages.append(DedupStage())
    if "no_information_gain" in rules:
        stages.append(JudgeStage())
    return stages


def response_stages(
    rules: Sequence[str], settings: RuleSettings, params: SamplingParams
) -> list[Stage]:
    """What answers a kept instruction and judges the answer. Shared with Auto Evol-Instruct."""
    return [RespondStage(params), EliminateStage(rules, "response", settings)]


def round_stages(cfg: EvolConfig, r: int) -> list[Stage]:
    """One round of Evol-Instruct: the list of stages, as plain specs."""
    evolve = EvolveStage(
        r,
        cfg.operations,
        cfg.policy,
        cfg.seed,
        SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.evolve_max_new_tokens,
            seed=cfg.seed,
        ),
        attempts=cfg.attempts,
        rules=cfg.rules,
        rule_settings=cfg.rule_settings,
    )
    return [
        evolve,
        *instruction_check_stages(cfg.rules, cfg.rule_settings),
        *response_stages(cfg.rules, cfg.rule_settings, cfg.respond_params()),
    ]


def evolve(
    input_path: Any,
    out: str | Path,
    config: EvolConfig | Mapping[str, Any] | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run Evol-Instruct from `input_path` (a file, or rows in memory) into the run folder
    `out`; return the summary (also in out/summary.json).

    `settings` are the same names as the CLI's options (`rounds=1`, `evolver="m"`, ...).
    `backends` maps a role ("evolver", "responder", "judge") to a ready Backend object, which
    then replaces the model of that role (for notebooks and tests).
    """
    cfg = EvolConfig.make(config, **settings)
    models = cfg.role_models()
    roles = {r: cfg.model_spec(m, cfg.batch_size) for r, m in models.items()}
    with Runner(
        "evolve",
        cfg,
        out,
        inputs={"input": describe_input(input_path)},
        roles=roles,
        embedder=cfg.embedder,
        objects=dict(backends or {}),
    ) as run:
        seeds = run.read(input_path, what="seed")
        for i, rec in enumerate(seeds):
            rec.meta.setdefault("seed_index", i)
            rec.meta.setdefault("seed_id", rec.id)
        parents = seeds
        for r in range(1, cfg.rounds + 1):
            parents = run.step(f"round-{r}", round_stages(cfg, r), parents).kept
            if not parents:
                break
        summary = summarize(run.folder, cfg, len(seeds))
        return run.finish(
            summary,
            {"evolved": run.folder.kept_path, "rejected": run.folder.rejected_path},
        )


def summarize(run: RunFolder, cfg: EvolConfig, n_seeds: int) -> dict[str, Any]:
    """Counts per round, operation and rule, computed from the files (true across resumes)."""
    kept, _ = read_jsonl_tolerant(run.kept_path)
    rejected, _ = read_jsonl_tolerant(run.rejected_path)
    rounds: dict[int, dict[str, Any]] = {}
    per_op: dict[int, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    per_rule: dict[int, Counter[str]] = defaultdict(Counter)
    for rows, status in ((kept, "kept"), (rejected, "rejected")):
        for row in rows:
            r = int(row["round"])
            per_op[r][row.get("operation") or "?"][status] += 1
            if status == "rejected":
                rule = next((v["rule"] for v in row["verdicts"] if not v["kept"]), "?")
                per_rule[r][rule] += 1
    totals_ops: dict[str, Counter[str]] = defaultdict(Counter)
    for r in sorted(per_op):
        ops = per_op[r]
        n_kept = sum(c["kept"] for c in ops.values())
        n_rej = sum(c["rejected"] for c in ops.values())
        for op, c in ops.items():
            totals_ops[op].update(c)
        rounds[r] = {
            "evolved": n_kept + n_rej,
            "kept": n_kept,
            "rejected": n_rej,
            "kept_rate": _rate(n_kept, n_kept + n_rej),
            "by_operation": {op: _op_stats(c) for op, c in sorted(ops.items())},
            "rejected_by_rule": dict(per_rule[r].most_common()),
        }
    n_kept = sum(x["kept"] for x in rounds.values())
    n_all = sum(x["evolved"] for x in rounds.values())
    tries = Counter(_attempt(row) for row in kept + rejected)
    first_try_kept = sum(1 for row in kept if _attempt(row) == 1)
    judged = [v for row in kept for v in row["verdicts"] if v["rule"] == "no_information_gain"]
    unparsed = sum(1 for v in judged if "unparsed" in v["detail"])
    return {
        "seeds": n_seeds,
        "rounds": rounds,
        "kept": n_kept,
        "rejected": n_all - n_kept,
        "kept_rate": _rate(n_kept, n_all),
        "kept_rate_by_operation": {op: _op_stats(c) for op, c in sorted(totals_ops.items())},
        "judge": {"judged_kept": len(judged), "unparsed_kept": unparsed},
        "judge_unparsed_kept": unparsed,
        "evolution_attempts": {str(k): v for k, v in sorted(tries.items())},
        "kept_on_first_try": first_try_kept,
        "config": cfg.fingerprint_dict(),
    }


def _attempt(row: dict[str, Any]) -> int:
    return int(row.get("meta", {}).get("evolution", {}).get("attempt", 1))


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _op_stats(c: Counter[str]) -> dict[str, Any]:
    return {
        "kept": c["kept"],
        "rejected": c["rejected"],
        "kept_rate": _rate(c["kept"], c["kept"] + c["rejected"]),
    }
