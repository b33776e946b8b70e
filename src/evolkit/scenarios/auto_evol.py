"""Scenario C: Auto Evol-Instruct. The evolving method improves itself, then evolves the data.

The optimisation loop (SPEC 4) as engine steps, so a kill -9 anywhere resumes in the step it
stopped in, with every method already chosen:

* ``opt-0-dev``          the starting method evolves the dev set (its failure rate);
* ``opt-S-evolve``       step S's mini-batch, each instruction evolved L times with the current
                         method (the trajectories);
* ``opt-S-candidates``   one row per candidate: the optimizer reads the trajectories and writes
                         an improved method;
* ``opt-S-dev-K``        candidate K evolves the dev set;

then ``final``: every input row evolved once with the best method, then the Evol-Instruct
checks, responder and response checks (the very stages `evolve` uses).

Every step's rows go to ``steps.jsonl`` (the working store). Nothing in the loop is decided
outside the rows: a method's dev failure rate is counted from its committed dev evolutions, and
step S's current method follows from the rates of the earlier steps, so a rerun rebuilds the same
choices from the store. A candidate becomes the current method only with a dev failure rate
strictly lower than the current one's (ties keep the current method; among equal candidates the
first wins). ``evolved.jsonl``, ``methods/``, ``methods.json`` and ``trajectory_methods.json``
are (re)written from the store.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolkit.config import opt
from evolkit.errors import EvolkitError
from evolkit.io.writers import (
    atomic_write_json,
    atomic_write_text,
    read_jsonl_tolerant,
    write_jsonl,
)
from evolkit.models.base import Backend, SamplingParams
from evolkit.records import Record
from evolkit.runs import (
    EVOLVED,
    METHODS,
    METHODS_DIR,
    STEPS,
    TRAJECTORY_METHODS,
    RunFolder,
    writing,
)
from evolkit.scenarios.evol_instruct import (
    EliminationSettings,
    ResponseSettings,
    instruction_check_stages,
    response_stages,
)
from evolkit.scenarios.runner import Runner, RunSettings, describe_input
from evolkit.stages.auto_evol import (
    FAILURE_RULES,
    MethodEvolveStage,
    OptimizeStage,
    candidate_row,
    describe_cases,
    universal_method,
)
from evolkit.stages.trajectory import count_methods

INITIAL = "step0-initial"
FINAL_STEP = "final"


@dataclass
class AutoEvolConfig(RunSettings, ResponseSettings, EliminationSettings):
    """Every setting of an Auto Evol-Instruct run (CLI options and Python keywords alike)."""

    steps: int = opt(3, "Optimisation steps (the study: 10).")
    mini_batch: int = opt(
        10,
        "Instructions sampled per optimisation step (the study: 10); not the engine's "
        "--batch-size.",
    )
    evolutions_per_item: int = opt(
        1, "Evolutions of each mini-batch instruction per step (the trajectories' l)."
    )
    candidates: int = opt(5, "Candidate methods the optimizer writes per step (the study: 5).")
    dev_size: int = opt(
        50, "Instructions in the dev set on which every method's failure rate is measured."
    )
    evolver: str = opt("embedded", "Evolver model: 'embedded', a folder or a model id.")
    optimizer: str | None = opt(
        None, "Model that reads trajectories and writes improved methods (default: the evolver)."
    )
    responder: str | None = opt(None, "Responder model (default: the evolver).")
    judge: str | None = opt(None, "Judge model (default: the evolver).")
    temperature: float = opt(
        0.7, "Sampling temperature of the mini-batch trajectories and the final evolution."
    )
    dev_temperature: float = opt(
        0.2, "Sampling temperature of dev-set evolutions (the open implementation: 0.2)."
    )
    optimizer_temperature: float = opt(
        0.5, "Sampling temperature of the optimizer (the open implementation: 0.5)."
    )
    top_p: float = opt(0.95, "Nucleus sampling of every sampled call.")
    evolve_max_new_tokens: int = opt(
        512, "Max tokens of one evolution (methods, plan, rewrite, review and final together)."
    )
    optimizer_max_new_tokens: int = opt(1024, "Max tokens of one optimizer answer.")
    attempts: int = opt(
        3,
        "Tries per final evolution when it cannot be parsed or fails a cheap rule (the loop "
        "always measures one try).",
    )
    seed: int = opt(0, "Sampling seed, and the seed of the dev set and mini-batch draws.")

    def check(self) -> None:
        super().check()
        for name in ("mini_batch", "evolutions_per_item", "candidates", "dev_size", "attempts"):
            if getattr(self, name) < 1:
                raise EvolkitError(f"{name} must be at least 1")
        if self.steps < 0:
            raise EvolkitError("steps must be >= 0 (0 = evolve with the starting method)")

    def role_models(self) -> dict[str, str]:
        return {
            "evolver": self.evolver,
            "optimizer": self.optimizer or self.evolver,
            "responder": self.responder or self.evolver,
            "judge": self.judge or self.evolver,
        }

    def params(self, temperature: float, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(
            temperature=temperature,
            top_p=self.top_p,
            max_new_tokens=max_new_tokens,
            seed=self.seed,
        )


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One evolving method: the starting one or a candidate, and how it did on the dev set."""

    version: str
    step: int
    candidate: int | None
    parent: str | None
    text: str | None
    problem: str | None = None  # why a candidate was not evaluated
    dev_failures: dict[str, int] = field(default_factory=dict)
    dev_size: int = 0
    chosen: bool = False  # became the current method at its step

    @property
    def dev_failure_rate(self) -> float | None:
        if not self.dev_size:
            return None
        return round(sum(self.dev_failures.values()) / self.dev_size, 4)

    def to_dict(self, best: str) -> dict[str, Any]:
        return {
            "version": self.version,
            "step": self.step,
            "candidate": self.candidate,
            "parent": self.parent,
            "file": f"{METHODS_DIR}/{self.version}.txt" if self.text is not None else None,
            "evaluated": bool(self.dev_size),
            "problem": self.problem,
            "dev_size": self.dev_size,
            "dev_failure_rate": self.dev_failure_rate,
            "dev_failures": {r: self.dev_failures.get(r, 0) for r in FAILURE_RULES}
            if self.dev_size
            else None,
            "chosen": self.chosen,
            "best": self.version == best,
        }


def load_method(path: str | Path | None) -> str:
    """The starting method: a user's file, or evolkit's universal method."""
    if path is None:
        return universal_method()
    p = Path(path)
    if not p.is_file():
        raise EvolkitError(f"--method {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise EvolkitError(f"--method {p}: not UTF-8 text ({exc.reason})") from None
    if not text:
        raise EvolkitError(f"--method {p}: the file is empty; write the evolving method in it")
    return text


def split_dev(rows: Sequence[Record], cfg: AutoEvolConfig) -> tuple[list[Record], list[Record]]:
    """(dev set, mini-batch pool), each in input order. The dev set is a seeded draw of
    `dev_size` rows; mini-batches come from the other rows, or from all rows when too few are
    left for one mini-batch (small inputs), which the summary reports."""
    order = list(range(len(rows)))
    random.Random(f"{cfg.seed}:dev").shuffle(order)
    chosen = set(order[: cfg.dev_size])
    dev = [r for i, r in enumerate(rows) if i in chosen]
    rest = [r for i, r in enumerate(rows) if i not in chosen]
    return dev, (rest if len(rest) >= cfg.mini_batch else list(rows))


def mini_batch(pool: Sequence[Record], cfg: AutoEvolConfig, step: int) -> list[Record]:
    """Step `step`'s seeded mini-batch, in input order."""
    index = {r.id: i for i, r in enumerate(pool)}
    picked = random.Random(f"{cfg.seed}:mini-batch:{step}").sample(
        list(pool), min(cfg.mini_batch, len(pool))
    )
    return sorted(picked, key=lambda r: index[r.id])


def _failures(rows: Sequence[Record]) -> Counter[str]:
    return Counter(
        str(r.meta["auto_evol"]["failure"]) for r in rows if r.meta["auto_evol"]["failure"]
    )


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


# --------------------------------------------------------------------------- the run


class _Loop:
    """The optimisation loop over one runner: every decision read back from committed rows."""

    def __init__(self, run: Runner, cfg: AutoEvolConfig, seeds: list[Record], start: str) -> None:
        self.run = run
        self.cfg = cfg
        self.seeds = len(seeds)
        self.dev, self.pool = split_dev(seeds, cfg)
        self.methods: list[Method] = []
        self.steps: list[dict[str, Any]] = []
        self.current = Method(INITIAL, 0, None, None, start, chosen=True)

    def evaluate(self, method: Method, step: str) -> None:
        assert method.text is not None
        params = self.cfg.params(self.cfg.dev_temperature, self.cfg.evolve_max_new_tokens)
        stage = MethodEvolveStage(method.text, method.version, step, params)
        rows = self.complete(self.run.step(step, [stage], self.dev).kept)
        method.dev_size = len(rows)
        method.dev_failures = dict(_failures(rows))

    def complete(self, rows: list[Record]) -> list[Record]:
        """The step's rows, or the run ends here: what follows depends on every one of them."""
        if self.run.failed:
            self.write()
            self.run.finish(self.summary(None))  # raises RunIncompleteError
        return rows

    def optimise(self) -> Method:
        self.methods.append(self.current)
        if self.cfg.steps == 0:
            self.write()  # nothing to compare the starting method with: no dev evolutions
            return self.current
        self.evaluate(self.current, "opt-0-dev")
        self.write()
        for s in range(1, self.cfg.steps + 1):
            self.step(s)
            self.write()
        return self.current

    def step(self, s: int) -> None:
        cfg, parent = self.cfg, self.current
        assert parent.text is not None
        tag = f"opt-{s}-evolve"
        evolve = MethodEvolveStage(
            parent.text,
            parent.version,
            tag,
            cfg.params(cfg.temperature, cfg.evolve_max_new_tokens),
            cfg.evolutions_per_item,
        )
        batch = mini_batch(self.pool, cfg, s)
        order = {r.id: i for i, r in enumerate(batch)}
        trajectories = self.complete(self.run.step(tag, [evolve], batch).kept)
        # The order the optimizer reads them in must not depend on where a resume cut the step.
        trajectories.sort(
            key=lambda r: (order[r.parent_id or ""], int(r.meta["auto_evol"]["sample"]))
        )
        optimize = OptimizeStage(
            parent.text,
            parent.version,
            describe_cases(trajectories),
            cfg.params(cfg.optimizer_temperature, cfg.optimizer_max_new_tokens),
        )
        calls = [candidate_row(s, k) for k in range(1, cfg.candidates + 1)]
        written = self.complete(self.run.step(f"opt-{s}-candidates", [optimize], calls).kept)
        candidates: list[Method] = []
        for row in sorted(written, key=lambda r: int(r.meta["candidate"])):
            k = int(row.meta["candidate"])
            info = row.meta["optimizer"]
            text = row.instruction if info["parsed"] else None
            cand = Method(str(row.method_version), s, k, parent.version, text, info["problem"])
            twin = next(
                (c for c in candidates if c.text and text and _same_text(c.text, text)), None
            )
            if text is not None and _same_text(text, parent.text):
                cand.problem = "the same text as its parent"
            elif twin is not None:
                # A greedy optimizer writes the same candidate M times: one evaluation is enough.
                cand.problem = f"the same text as {twin.version}"
            elif text is not None:
                self.evaluate(cand, f"opt-{s}-dev-{k}")
            candidates.append(cand)
            self.methods.append(cand)
        scored = [c for c in candidates if c.dev_failure_rate is not None]
        best = min(scored, key=lambda c: c.dev_failure_rate or 0.0, default=None)
        before = parent.dev_failure_rate
        if best is not None and before is not None and (best.dev_failure_rate or 0.0) < before:
            best.chosen = True
            self.current = best
        failures = _failures(trajectories)
        self.steps.append(
            {
                "step": s,
                "current_before": parent.version,
                "mini_batch": len(batch),
                "trajectories": len(trajectories),
                "trajectory_failures": {r: failures.get(r, 0) for r in FAILURE_RULES},
                "candidates": len(candidates),
                "candidates_unparsed": sum(1 for c in candidates if c.text is None),
                "candidates_evaluated": len(scored),
                "chosen": self.current.version,
                "changed": self.current is not parent,
                "dev_failure_rate": self.current.dev_failure_rate,
            }
        )

    # -- outputs -----------------------------------------------------------------------------
    def write(self) -> None:
        folder = self.run.folder
        with writing(folder.dir):
            (folder.path(METHODS_DIR)).mkdir(exist_ok=True)
            for m in self.methods:
                if m.text is not None:
                    atomic_write_text(folder.path(METHODS_DIR) / f"{m.version}.txt", m.text + "\n")
            atomic_write_json(folder.path(METHODS), self.methods_json())

    def methods_json(self) -> dict[str, Any]:
        best = self.current.version
        return {
            "best": best,
            "best_dev_failure_rate": self.current.dev_failure_rate,
            "failure_rules": list(FAILURE_RULES),
            "dev_size": len(self.dev),
            "history": [{"step": 0, "current": INITIAL}]
            + [{"step": s["step"], "current": s["chosen"]} for s in self.steps],
            "methods": [m.to_dict(best) for m in self.methods],
        }

    def summary(self, final: dict[str, Any] | None) -> dict[str, Any]:
        first = self.methods[0] if self.methods else self.current
        return {
            "seeds": self.seeds,
            "dev_size": len(self.dev),
            "mini_batch_pool": len(self.pool),
            "mini_batch_overlaps_dev": bool({r.id for r in self.dev} & {r.id for r in self.pool}),
            "optimisation": {
                "initial_dev_failure_rate": first.dev_failure_rate,
                "initial_dev_failures": {r: first.dev_failures.get(r, 0) for r in FAILURE_RULES}
                if first.dev_size
                else None,
                "steps": self.steps,
            },
            "best_method": {
                "version": self.current.version,
                "dev_failure_rate": self.current.dev_failure_rate,
                "file": str(self.run.folder.path(METHODS_DIR) / f"{self.current.version}.txt"),
            },
            "final": final,
            "config": self.cfg.fingerprint_dict(),
        }


def auto_evol(
    input_path: Any,
    out: str | Path,
    config: AutoEvolConfig | Mapping[str, Any] | None = None,
    *,
    method: str | Path | None = None,
    backends: Mapping[str, Backend] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run Auto Evol-Instruct from `input_path` (a file, or rows in memory) into the run folder
    `out`; return the summary (also in out/summary.json).

    `method` is a file holding the starting evolving method (default: evolkit's universal
    method); ``{instruction}`` in it marks where each instruction goes. `settings` are the CLI's
    option names; `backends` maps a role ("evolver", "optimizer", "responder", "judge") to a
    ready Backend object.
    """
    cfg = AutoEvolConfig.make(config, **settings)
    start = load_method(method)
    roles = {r: cfg.model_spec(m, cfg.batch_size) for r, m in cfg.role_models().items()}
    inputs = {
        "input": describe_input(input_path),
        "method": str(Path(method).resolve()) if method is not None else None,
        "method_sha256": hashlib.sha256(start.encode("utf-8")).hexdigest()[:16],
    }
    with Runner(
        "auto-evol",
        cfg,
        out,
        inputs=inputs,
        roles=roles,
        embedder=cfg.embedder,
        objects=dict(backends or {}),
        kept_name=STEPS,
    ) as run:
        seeds = run.read(input_path, what="seed")
        for i, rec in enumerate(seeds):
            rec.meta.setdefault("seed_index", i)
            rec.meta.setdefault("seed_id", rec.id)
        loop = _Loop(run, cfg, seeds, start)
        best = loop.optimise()
        assert best.text is not None
        final_evolve = MethodEvolveStage(
            best.text,
            best.version,
            FINAL_STEP,
            cfg.params(cfg.temperature, cfg.evolve_max_new_tokens),
            reject_unparsed=True,
            attempts=cfg.attempts,
            rules=cfg.rules,
            rule_settings=cfg.rule_settings,
        )
        stages = [
            final_evolve,
            *instruction_check_stages(cfg.rules, cfg.rule_settings),
            *response_stages(cfg.rules, cfg.rule_settings, cfg.respond_params()),
        ]
        run.step(FINAL_STEP, stages, seeds)
        folder = run.folder
        evolved = write_jsonl(folder.kept_records(FINAL_STEP), folder.path(EVOLVED))
        rejected, _ = read_jsonl_tolerant(folder.rejected_path)
        analysis = write_trajectory_methods(folder, rejected)
        summary = loop.summary(final_counts(rejected, evolved))
        summary["trajectory_methods"] = {k: v for k, v in analysis["all"].items() if k != "methods"}
        return run.finish(
            summary,
            {
                "evolved": folder.path(EVOLVED),
                "rejected": folder.rejected_path,
                "methods": folder.path(METHODS),
                "methods_dir": folder.path(METHODS_DIR),
                "trajectory_methods": folder.path(TRAJECTORY_METHODS),
                "steps": folder.kept_path,
            },
        )


def final_counts(rejected: Sequence[dict[str, Any]], kept: int) -> dict[str, Any]:
    """Kept and rejected rows of the final evolution, by rule (`rejected`: the rejects file)."""
    rules: Counter[str] = Counter()
    for row in rejected:
        rules[next((v["rule"] for v in row["verdicts"] if not v["kept"]), "?")] += 1
    total = kept + len(rejected)
    return {
        "evolved": total,
        "kept": kept,
        "rejected": len(rejected),
        "kept_rate": round(kept / total, 4) if total else None,
        "rejected_by_rule": dict(rules.most_common()),
    }


# --------------------------------------------------------------------------- trajectory methods


def _phase(step: str) -> str:
    if step == FINAL_STEP:
        return "final"
    return "dev" if "-dev" in step else "trajectories"


def write_trajectory_methods(
    folder: RunFolder, rejected: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Count the methods every evolution of the run listed (its "methods" section), overall
    and per phase (mini-batch trajectories, dev evolutions, final evolutions); write
    trajectory_methods.json. `rejected`: the rows of the rejects file."""
    rows, _ = read_jsonl_tolerant(folder.kept_path)
    lists: dict[str, list[list[str]]] = {"trajectories": [], "dev": [], "final": []}
    evolvers: Counter[str] = Counter()
    for row in [*rows, *rejected]:
        info = row.get("meta", {}).get("auto_evol")
        if not info:
            continue
        lists[_phase(str(info["step"]))].append(list(info.get("methods") or []))
        evolvers[str(row.get("evolver"))] += 1
    every = [items for group in lists.values() for items in group]
    data: dict[str, Any] = {
        "label": evolvers.most_common(1)[0][0] if evolvers else None,
        "how": "items of each evolution's methods section, lowercased, numbering, punctuation "
        "and filler words removed, plural and verb endings folded; distinct = distinct keys",
        "all": count_methods(every).to_dict(),
        "by_phase": {
            phase: {k: v for k, v in count_methods(group).to_dict().items() if k != "methods"}
            for phase, group in lists.items()
        },
    }
    with writing(folder.dir):
        atomic_write_json(folder.path(TRAJECTORY_METHODS), data)
    return data


def trajectory_method_counts(run_dir: str | Path) -> dict[str, float] | None:
    """{label: number} for `evolkit compare` (RunMeasures.trajectory_methods): the distinct
    methods a run's evolutions listed, how many they listed, and over how many evolutions.
    None when the run has no trajectory_methods.json (not an Auto Evol-Instruct run)."""
    import json

    path = Path(run_dir) / TRAJECTORY_METHODS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["all"]
        return {
            "distinct methods": float(data["distinct_methods"]),
            "methods listed": float(data["methods_listed"]),
            "evolutions": float(data["trajectories"]),
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvolkitError(f"{path}: not a readable trajectory_methods.json ({exc})") from None
