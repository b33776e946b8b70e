"""Evaluate a model on a benchmark: `evaluate(model, out)` generates, scores and summarises.

The eval folder OUT holds:

- `eval_config.json`: what the responses depend on (benchmark, model, generation settings); a
  folder made with other settings is refused rather than mixed.
- `responses.jsonl`: one line per prompt (key, prompt, response, finish reason), appended batch
  by batch, so a killed run resumes where it stopped and never asks twice.
- `scores.jsonl`: per prompt, each instruction's strict and loose verdict (the input of the
  bootstrap intervals in `evolkit.evaluate.stats`).
- `summary.json`: the four standard figures, per-instruction-type accuracy, the model, the
  number of prompts, the seeds and the seconds spent.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from evolkit.errors import ConfigMismatchError, EvolkitError
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
from evolkit.evaluate.stats import Interval, bootstrap_ratio, ifeval_intervals
from evolkit.models.base import Backend, ChatRequest, SamplingParams

__all__ = [
    "BENCHES",
    "METRICS",
    "Interval",
    "PromptResult",
    "bootstrap_ratio",
    "evaluate",
    "ifeval_intervals",
    "load_prompts",
    "load_results",
    "metrics",
    "score_response",
    "score_responses",
]

BENCHES = (BENCH,)
CONFIG_FILE = "eval_config.json"
RESPONSES_FILE = "responses.jsonl"
SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"
_OUR_FILES = (CONFIG_FILE, RESPONSES_FILE, SCORES_FILE, SUMMARY_FILE)
_CHECKERS = "lm_eval.tasks.ifeval"


def evaluate(
    model: str | Backend,
    out: str | Path,
    bench: str = BENCH,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate greedy answers to the benchmark's prompts with the model's chat template, score
    them with the benchmark's own checkers, and write OUT (see the module docstring).

    `model` is 'embedded', a model folder, or a ready `Backend` (its `model_id` is recorded).
    `limit` takes the first N prompts; a later call with a larger limit only generates the new
    ones. The model is loaded only if some prompt still lacks a response.
    """
    t_start = time.perf_counter()
    if bench not in BENCHES:
        raise EvolkitError(f"unknown benchmark '{bench}' (known: {', '.join(BENCHES)})")
    if batch_size < 1:
        raise EvolkitError(f"--batch-size must be at least 1, not {batch_size}")
    if max_new_tokens < 1:
        raise EvolkitError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    prompts = load_prompts(limit)
    out = Path(out)
    model_name = model.model_id if isinstance(model, Backend) else str(model)
    config = {"bench": bench, "model": model_name, "max_new_tokens": max_new_tokens, "greedy": True}
    _prepare_folder(out, config, overwrite)

    responses_path = out / RESPONSES_FILE
    done = _read_responses(responses_path)
    todo = [p for p in prompts if p.key not in done]
    t_gen = time.perf_counter()
    failed = 0
    if todo:
        backend = model if isinstance(model, Backend) else _load_backend(model, batch_size)
        try:
            failed = _generate(backend, todo, responses_path, batch_size, max_new_tokens, progress)
        finally:
            if not isinstance(model, Backend):
                backend.close()
        done = _read_responses(responses_path)
    gen_seconds = time.perf_counter() - t_gen
    if failed:
        raise EvolkitError(
            f"{failed} of {len(todo)} prompts got no answer (generation errors); the "
            f"{len(todo) - failed} answered are kept in {responses_path}: run again to retry"
        )

    t_score = time.perf_counter()
    results = score_responses(prompts, {k: r["response"] for k, r in done.items()}, seed)
    score_seconds = time.perf_counter() - t_score
    _write_jsonl_atomic(out / SCORES_FILE, [r.to_dict() for r in results])
    figures = metrics(results)
    finish = Counter(done[p.key].get("finish_reason", "stop") for p in prompts)
    # The id the backend reported when it answered (a resumed run need not load the model).
    model_ids = sorted({str(done[p.key].get("model", model_name)) for p in prompts})
    summary: dict[str, Any] = {
        "bench": bench,
        "model": model_ids[0] if len(model_ids) == 1 else model_ids,
        **{m: figures[m] for m in METRICS},
        "prompts": figures["prompts"],
        "instructions": figures["instructions"],
        "per_instruction": figures["per_instruction"],
        "limit": limit,
        "generation": {
            "greedy": True,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "generated_now": len(todo),
            "resumed": len(prompts) - len(todo),
            "finish_reasons": dict(sorted(finish.items())),
        },
        "seeds": {"checker_random": seed, "langdetect": seed},
        "checkers": {"package": "lm-eval", "version": checker_version(), "module": _CHECKERS},
        "seconds": {
            "generate": round(gen_seconds, 2),
            "score": round(score_seconds, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "outputs": {
            "responses": str(responses_path),
            "scores": str(out / SCORES_FILE),
            "summary": str(out / SUMMARY_FILE),
        },
    }
    _write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def load_results(out: str | Path) -> list[PromptResult]:
    """The per-prompt verdicts an earlier `evaluate` wrote to OUT (for bootstrap intervals)."""
    from evolkit.io.writers import read_jsonl_tolerant

    path = Path(out) / SCORES_FILE
    if not path.exists():
        raise EvolkitError(f"{path}: no scores here (run evolkit eval first)")
    rows, _ = read_jsonl_tolerant(path)
    return [PromptResult.from_dict(r) for r in rows]


# -- folder -------------------------------------------------------------------------------------
def _prepare_folder(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    cfg_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise EvolkitError(f"{out} is a file, not a folder")
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError:
            raise EvolkitError(f"{cfg_path}: not valid JSON; use another -o folder") from None
        if overwrite:
            # Starts over even with the same settings, like a run folder's --overwrite; only the
            # files evaluate writes are removed.
            for name in _OUR_FILES:
                (out / name).unlink(missing_ok=True)
        elif old != config:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ConfigMismatchError(
                f"{out} holds an evaluation with other settings (changed: "
                f"{', '.join(changed)}); use another -o folder, or --overwrite to replace it"
            )
    elif out.exists() and any(out.iterdir()):
        raise EvolkitError(
            f"{out} is not empty and holds no evolkit evaluation: choose another -o folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(cfg_path, json.dumps(config, indent=2) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_responses(path: Path) -> dict[int, dict[str, Any]]:
    from evolkit.io.writers import read_jsonl_tolerant

    rows, _ = read_jsonl_tolerant(path)
    return {int(r["key"]): r for r in rows}


# -- generation ---------------------------------------------------------------------------------
def _load_backend(model: str, batch_size: int) -> Backend:
    from evolkit.models.local import LocalBackend

    return LocalBackend(model, batch_size=batch_size)


def _generate(
    backend: Backend,
    todo: list[IFEvalPrompt],
    path: Path,
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
) -> int:
    """Answer `todo` batch by batch, appending each batch; returns how many got no answer."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from evolkit.console import console
    from evolkit.io.writers import JsonlAppender

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    # Similar lengths in one batch waste less padding; the file order does not matter.
    ordered = sorted(todo, key=lambda p: len(p.prompt))
    failed = 0
    bar = Progress(
        "[bold]generating",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    with bar, JsonlAppender(path) as sink:
        task = bar.add_task("generate", total=len(ordered))
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            requests = [
                ChatRequest.of([{"role": "user", "content": p.prompt}], params) for p in chunk
            ]
            gens = backend.generate(requests)
            rows = []
            for p, g in zip(chunk, gens, strict=True):
                if g.finish_reason == "error":
                    failed += 1
                    continue
                rows.append(
                    {
                        "key": p.key,
                        "prompt": p.prompt,
                        "response": g.text,
                        "finish_reason": g.finish_reason,
                        "completion_tokens": g.completion_tokens,
                        "model": backend.model_id,
                    }
                )
            sink.write(rows)
            bar.advance(task, len(chunk))
    return failed
