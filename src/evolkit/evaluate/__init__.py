"""Evaluate a model on a benchmark: `evaluate(model, out)` answers, scores and summarises.

The eval folder OUT is a run folder (`evolkit.runs`: locked while in use, refused when it holds
files evolkit did not write or a run with other settings, `--overwrite` removes only evolkit's
files). Answering is one engine step, `answer`, over the benchmark's prompts, so it resumes
batch by batch after a kill, shows progress, goes through the call cache and runs on Ray with
`engine="ray"`. Scoring follows, on every run, over all answers (it takes seconds). OUT holds:

- `config.json`: the settings and inputs (benchmark, model and, for a model folder, a
  fingerprint of its weights); a folder made with other settings is refused rather than mixed.
- `responses.jsonl`: one record per prompt (`id` = the prompt's key, `instruction` = the
  prompt, `output` = the answer as written, `meta.response` = model, finish reason, tokens).
- `scores.jsonl`: per prompt, each instruction's strict and loose verdict (the input of the
  bootstrap intervals in `evolkit.evaluate.stats`).
- `summary.json`: the four standard figures, per-instruction-type accuracy, the model, the
  number of prompts, the seeds and the seconds spent.

`MODEL` is 'embedded', a Hugging Face model folder, a `train` run folder (its `model/` is
evaluated), a model name on an OpenAI-compatible server (`backend="openai"`), or a ready
`Backend` object.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolkit.config import opt
from evolkit.errors import EvolkitError
from evolkit.evaluate.ifeval import (
    BENCH,
    DEFAULT_MAX_NEW_TOKENS,
    METRICS,
    IFEvalPrompt,
    PromptResult,
    checker_version,
    load_prompts,
    metrics,
    score_response,
    score_responses,
)
from evolkit.evaluate.stage import AnswerStage
from evolkit.evaluate.stats import Interval, bootstrap_ratio, ifeval_intervals
from evolkit.io.writers import read_jsonl_tolerant, write_jsonl
from evolkit.models.base import Backend
from evolkit.records import Record
from evolkit.runs import CHECKPOINTS_DIR, CONFIG, EVAL_SCORES, MODEL_DIR, RESPONSES
from evolkit.scenarios.runner import ModelSettings, Runner, RunSettings

__all__ = [
    "BENCHES",
    "METRICS",
    "EvalConfig",
    "Interval",
    "PromptResult",
    "bootstrap_ratio",
    "evaluate",
    "ifeval_intervals",
    "load_prompts",
    "load_results",
    "metrics",
    "resolve_eval_model",
    "score_response",
    "score_responses",
]

BENCHES = (BENCH,)
STEP = "answer"
_CHECKERS = "lm_eval.tasks.ifeval"


@dataclass
class EvalConfig(RunSettings, ModelSettings):
    """`evolkit eval`: the benchmark, and how answers are generated."""

    bench: str = opt(BENCH, "Benchmark.", choices=BENCHES)
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS, "Tokens per answer (lm-eval's IFEval uses 1280)."
    )
    seed: int = opt(
        0,
        "Seed of the checkers' random draws (scoring is redone on every run).",
        fingerprint=False,
    )
    # Answers do not depend on how many prompts are asked, so a larger limit later only adds
    # prompts to the same folder.
    limit: int | None = opt(
        None, "Evaluate only the first N prompts (a larger N later adds to OUT).", fingerprint=False
    )

    def check(self) -> None:
        super().check()
        if self.max_new_tokens < 1:
            raise EvolkitError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")


def resolve_eval_model(model: str | Path) -> str:
    """A `train` run folder stands for the model it wrote (its `model/`); anything else is
    returned as given."""
    p = Path(model).expanduser()
    if (p / CONFIG).is_file() and (p / MODEL_DIR / CONFIG).is_file():
        return str(p / MODEL_DIR)
    if (p / CONFIG).is_file() and (p / CHECKPOINTS_DIR).is_dir() and not (p / MODEL_DIR).exists():
        raise EvolkitError(
            f"{p}: a train run that has not finished (no {MODEL_DIR}/ yet): run the same "
            "`evolkit train` command again to finish it"
        )
    return str(model)


def _model_input(model: str, backend: str) -> dict[str, Any]:
    """What the run's fingerprint records about the model: its name, and for a local folder
    its resolved path and a fingerprint of its weights, so answers of a model retrained in
    place are never mixed with the old ones."""
    from evolkit.models.embedded import EMBEDDED_ALIASES

    if backend == "openai" or model in EMBEDDED_ALIASES:
        return {"model": model}
    path = Path(model).expanduser()
    if not path.is_dir():
        return {"model": model}
    from evolkit.models.identity import model_fingerprint

    return {
        "model": model,
        "model_path": str(path.resolve()),
        "model_weights": model_fingerprint(path),
    }


def _prompt_record(p: IFEvalPrompt, bench: str) -> Record:
    return Record(id=str(p.key), instruction=p.prompt, meta={"bench": bench, "key": p.key})


def evaluate(
    model: str | Path | Backend,
    out: str | Path,
    config: EvalConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Answer the benchmark's prompts greedily with the model's chat template, score them with
    the benchmark's own checkers, and write OUT (see the module docstring); return the summary.

    `limit` takes the first N prompts; a later call with a larger limit only answers the new
    ones. The model is loaded only if some prompt still lacks an answer.
    """
    cfg = EvalConfig.make(config, **settings)
    given: Backend | None = None
    if isinstance(model, Backend):
        given, name = model, model.model_id
        model_input: dict[str, Any] = {"model": name, "model_object": type(model).__name__}
    else:
        name = resolve_eval_model(model)
        model_input = _model_input(name, cfg.backend)
    prompts = load_prompts(cfg.limit)
    roles = {} if given is not None else {"responder": cfg.model_spec(name, cfg.batch_size)}
    with Runner(
        "eval",
        cfg,
        out,
        inputs={"bench": cfg.bench, **model_input},
        roles=roles,
        objects={"responder": given},
        kept_name=RESPONSES,
    ) as run:
        earlier = _earlier_generate_seconds(run.folder.summary_path)
        records = run.read([_prompt_record(p, cfg.bench) for p in prompts], what="prompt")
        done = run.folder.done_inputs(STEP)
        todo = [r for r in records if r.id not in done]
        t_gen = time.perf_counter()
        generated = 0
        if todo:
            # Similar lengths side by side waste less padding; the order changes no answer.
            ordered = sorted(records, key=lambda r: (len(r.instruction), r.id))
            result = run.step(STEP, [AnswerStage(cfg.max_new_tokens)], ordered)
            generated = result.processed
        gen_seconds = time.perf_counter() - t_gen
        answers = {r.id: r for r in run.kept(STEP)}
        missing = [p for p in prompts if str(p.key) not in answers]
        summary: dict[str, Any] = {"bench": cfg.bench, "model": name, "limit": cfg.limit}
        if missing:
            # Failed calls: Runner.finish writes the summary and says how to finish the run.
            summary.update(prompts_unanswered=len(missing), prompts=len(prompts))
            run.finish(summary, {"responses": run.folder.kept_path})
            raise EvolkitError(
                f"{len(missing)} of {len(prompts)} prompts have no answer in "
                f"{run.folder.kept_path}: run the same command again"
            )
        t_score = time.perf_counter()
        mine = [answers[str(p.key)] for p in prompts]
        results = score_responses(prompts, {int(r.id): r.output for r in mine}, cfg.seed)
        score_seconds = time.perf_counter() - t_score
        scores_path = run.folder.path(EVAL_SCORES)
        write_jsonl([r.to_dict() for r in results], scores_path)
        figures = metrics(results)
        info = [r.meta.get("response") or {} for r in mine]
        finish = Counter(str(i.get("finish_reason", "stop")) for i in info)
        # The id the backend reported when it answered (a resumed run need not load the model).
        ids = sorted({str(i.get("model", name)) for i in info})
        summary.update(
            {
                "model": ids[0] if len(ids) == 1 else ids,
                "model_arg": name,
                **{m: figures[m] for m in METRICS},
                "prompts": figures["prompts"],
                "instructions": figures["instructions"],
                "per_instruction": figures["per_instruction"],
                "generation": {
                    "greedy": True,
                    "max_new_tokens": cfg.max_new_tokens,
                    "batch_size": cfg.batch_size,
                    "generated_now": generated,
                    "resumed": len(prompts) - generated,
                    "finish_reasons": dict(sorted(finish.items())),
                },
                "seeds": {"checker_random": cfg.seed, "langdetect": cfg.seed},
                "checkers": {
                    "package": "lm-eval",
                    "version": checker_version(),
                    "module": _CHECKERS,
                },
            }
        )
        full = run.finish(summary, {"responses": run.folder.kept_path, "scores": scores_path})
        full["seconds"].update(
            generate=round(gen_seconds, 2),
            score=round(score_seconds, 2),
            # What answering took over every invocation that finished, so a resumed or
            # skipped rerun still reports the cost of the evaluation.
            generate_all_runs=round(earlier + gen_seconds, 2),
        )
        run.folder.write_summary(full)
        return full


def _earlier_generate_seconds(path: Path) -> float:
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        return float(old["seconds"]["generate_all_runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def load_results(out: str | Path) -> list[PromptResult]:
    """The per-prompt verdicts an earlier `evaluate` wrote to OUT (for bootstrap intervals)."""
    path = Path(out) / EVAL_SCORES
    if not path.exists():
        raise EvolkitError(f"{path}: no scores here (run evolkit eval first)")
    rows, _ = read_jsonl_tolerant(path)
    return [PromptResult.from_dict(r) for r in rows]
