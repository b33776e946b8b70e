"""GPU benchmark: evolkit on vLLM against vLLM alone, and IC-IFD scoring against the study's loop.

Needs a CUDA GPU and `pip install 'evolkit[vllm]'`; exits with one line where either is missing.

    python bench/bench_gpu.py --model /models/Llama-3.1-8B-Instruct [--rows 256]

(a) evolve. One Evol-Instruct round (evolve -> eliminate -> respond -> eliminate) through
    `evolkit.scenarios.evol_instruct.evolve`, every role on the vllm backend
    (`backend="vllm", evolver=M`), no call cache. Every request evolkit hands the engine is
    recorded, then the very same
    requests (same token ids, same SamplingParams, same per-request seeds) are replayed straight
    into the same `vllm.LLM`:
      vLLM, same calls - in the calls evolkit made: what evolkit costs besides the engine;
      vLLM, one call   - all of them in one `LLM.generate`: vLLM's own offline throughput.
    The prefix cache is reset before each, so no side reuses another's prefill.
(b) score. IC-IFD rows/s of `VLLMScorer` against `score_naive` (one row at a time, three
    transformers forward passes: the study's method) on the same GPU, and the batched
    transformers `LossScorer` as a third point. All three score the same layouts.

Every ratio is against a baseline measured in the same run. With a local model folder nothing
is downloaded (HF_HUB_OFFLINE=1); a hub id is fetched by vLLM and transformers if the machine
has network. Sized to finish in well under 10 minutes with a 1-8B model on one H100/H200.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared/data/alpaca_libre/alpaca_libre_tasks_v1.jsonl"
SEEDS = ROOT / "examples" / "seeds.jsonl"
MODEL_ENV = "EVOLKIT_BENCH_MODEL"


class Stop(Exception):
    """Nothing can be measured here: the message says why, in one line."""


def load_rows(path: Path, n: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("status", "ok") != "ok" or not str(row.get("instruction", "")).strip():
                continue
            rows.append(
                {
                    "id": str(row.get("id", f"row-{len(rows)}")),
                    "instruction": row["instruction"],
                    "input": row.get("input", "") or "",
                    "output": row.get("output", "") or "",
                }
            )
            if len(rows) >= n:
                break
    return rows


# -- recording the engine calls ------------------------------------------------------------------


@dataclass
class Call:
    prompts: list[Any]
    params: list[Any]
    seconds: float
    tokens: int


@dataclass
class Recorder:
    """Stands in for `llm.generate` during the evolkit run and keeps what went through it."""

    inner: Any
    calls: list[Call] = field(default_factory=list)

    def __call__(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> Any:
        prompts = list(prompts)
        params = (
            list(sampling_params)
            if isinstance(sampling_params, list)
            else [sampling_params] * len(prompts)
        )
        t0 = time.perf_counter()
        outs = self.inner(prompts, sampling_params, **kwargs)
        seconds = time.perf_counter() - t0
        # Cloned now: the engine may adjust a SamplingParams it was given.
        self.calls.append(Call(prompts, [_clone(p) for p in params], seconds, _tokens(outs)))
        return outs


def _clone(params: Any) -> Any:
    clone = getattr(params, "clone", None)
    return clone() if callable(clone) else copy.deepcopy(params)


def _tokens(outputs: Any) -> int:
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def _reset_prefix_cache(llm: Any) -> None:
    reset = getattr(llm, "reset_prefix_cache", None)
    if callable(reset):
        reset()


def replay(llm: Any, calls: list[Call], one_call: bool) -> tuple[float, int]:
    """Seconds and generated tokens for the recorded requests, sent straight to the engine."""
    _reset_prefix_cache(llm)
    batches = (
        [([p for c in calls for p in c.prompts], [s for c in calls for s in c.params])]
        if one_call
        else [(c.prompts, c.params) for c in calls]
    )
    tokens = 0
    t0 = time.perf_counter()
    for prompts, params in batches:
        outs = llm.generate(prompts, [_clone(p) for p in params], use_tqdm=False)
        tokens += _tokens(outs)
    return time.perf_counter() - t0, tokens


# -- (a) evolve ----------------------------------------------------------------------------------


def bench_evolve(
    args: argparse.Namespace, llm: Any, model: str, rows: list[dict[str, str]]
) -> dict[str, Any]:
    from evolkit.scenarios.evol_instruct import EvolConfig, evolve

    config = EvolConfig(rounds=args.rounds, backend="vllm", evolver=model, seed=0)
    recorder = Recorder(llm.generate)
    with tempfile.TemporaryDirectory(prefix="evolkit-bench-gpu-") as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        _reset_prefix_cache(llm)
        llm.generate = recorder
        try:
            summary = evolve(
                seeds,
                Path(tmp) / "run",
                config,
                overwrite=True,
                batch_size=len(rows),  # one engine step per stage: vLLM sees every row at once
                concurrent_batches=1,
                cache=None,
                progress=False,
            )
        finally:
            llm.generate = recorder.inner
    calls = recorder.calls
    work = float(summary["seconds"]["work"])
    evolkit_tokens = sum(c.tokens for c in calls)
    same_s, same_tok = replay(llm, calls, one_call=False)
    one_s, one_tok = replay(llm, calls, one_call=True)
    processed = int(summary["rows_processed_this_invocation"])
    return {
        "rows": processed,
        "kept": summary.get("kept"),
        "requests": sum(len(c.prompts) for c in calls),
        "calls": len(calls),
        "evolkit": {"seconds": work, "tokens": evolkit_tokens},
        "engine_seconds_inside_evolkit": sum(c.seconds for c in calls),
        "vllm_same_calls": {"seconds": same_s, "tokens": same_tok},
        "vllm_one_call": {"seconds": one_s, "tokens": one_tok},
    }


def print_evolve(res: dict[str, Any], rounds: int) -> None:
    print(
        f"\n(a) Evol-Instruct, {rounds} round(s): {res['rows']} rows processed, "
        f"{res['requests']} engine requests in {res['calls']} generate calls"
    )
    print(f"{'':22}{'seconds':>9}{'rows/s':>9}{'tokens':>9}{'tokens/s':>10}{'x evolkit':>11}")
    base = res["evolkit"]["tokens"] / res["evolkit"]["seconds"]
    for label, key in (
        ("evolkit evolve", "evolkit"),
        ("vLLM, same calls", "vllm_same_calls"),
        ("vLLM, one call", "vllm_one_call"),
    ):
        s, tok = res[key]["seconds"], res[key]["tokens"]
        print(
            f"{label:22}{s:9.2f}{res['rows'] / s:9.2f}{tok:9d}{tok / s:10.1f}"
            f"{(tok / s) / base:10.2f}x"
        )
    share = res["engine_seconds_inside_evolkit"] / res["evolkit"]["seconds"]
    one = res["vllm_one_call"]
    ratio = (one["tokens"] / one["seconds"]) / base
    print(
        f"evolkit overhead: vLLM's offline throughput is {ratio:.2f}x evolkit's tokens/s; "
        f"{share:.0%} of evolve's time was spent inside the engine"
    )


# -- (b) scoring ---------------------------------------------------------------------------------


def bench_score(
    args: argparse.Namespace, llm: Any, path: str, rows: list[dict[str, str]]
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolkit.models.scoring import LossScorer, ScoreItem, as_template, score_naive
    from evolkit.models.vllm import VLLMScorer

    template = as_template(args.template)
    items = [ScoreItem(r["instruction"], r["input"], r["output"]) for r in rows if r["output"]]
    naive_items = items[: args.naive_rows]
    vscorer = VLLMScorer(llm, template=template, max_length=args.max_length)
    tokens = sum(len(lay.cond) + len(lay.uncond) for lay in vscorer.layouts(items))
    naive_tokens = sum(len(lay.cond) + len(lay.uncond) for lay in vscorer.layouts(naive_items))
    dtype = getattr(getattr(llm.llm_engine, "model_config", None), "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.bfloat16
    tok = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda").eval()
    lscorer = LossScorer(
        model, tok, template, max_length=args.max_length, batch_size=args.score_batch_size
    )
    warm = [ScoreItem("Warm up the kernels.", "", "Done.")]
    score_naive(model, tok, warm, template, args.max_length)
    lscorer.score(warm)
    vscorer.score(warm)

    def timed(fn: Any) -> tuple[float, Any]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    naive_s, naive = timed(lambda: score_naive(model, tok, naive_items, template, args.max_length))
    loss_s, _ = timed(lambda: lscorer.score(items))
    _reset_prefix_cache(llm)
    vllm_s, fast = timed(lambda: vscorer.score(items))
    worst = 0.0
    for a, b in zip(naive, fast, strict=False):
        for name in ("loss_q", "loss_a_given_q", "loss_a"):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None and y is not None:
                worst = max(worst, abs(x - y))
    return {
        "template": template,
        "max_length": args.max_length,
        "dtype": str(dtype).replace("torch.", ""),
        "naive": {"rows": len(naive_items), "tokens": naive_tokens, "seconds": naive_s},
        "loss_scorer": {"rows": len(items), "tokens": tokens, "seconds": loss_s},
        "vllm_scorer": {"rows": len(items), "tokens": tokens, "seconds": vllm_s},
        "max_abs_diff_vs_naive": worst,
    }


def print_score(res: dict[str, Any]) -> None:
    print(
        f"\n(b) IC-IFD scoring, template {res['template']}, max_length {res['max_length']}, "
        f"{res['dtype']}: naive on {res['naive']['rows']} rows, the others on "
        f"{res['vllm_scorer']['rows']}"
    )
    print(f"{'':38}{'rows':>6}{'seconds':>9}{'rows/s':>9}{'tokens/s':>10}{'x naive':>9}")
    base = res["naive"]["rows"] / res["naive"]["seconds"]
    for label, key in (
        ("naive (1 row, 3 passes, transformers)", "naive"),
        ("LossScorer (transformers, batched)", "loss_scorer"),
        ("VLLMScorer (prompt log-probabilities)", "vllm_scorer"),
    ):
        r = res[key]
        rate = r["rows"] / r["seconds"]
        print(
            f"{label:38}{r['rows']:6d}{r['seconds']:9.2f}{rate:9.2f}"
            f"{r['tokens'] / r['seconds']:10.0f}{rate / base:8.1f}x"
        )
    print(
        f"max |VLLMScorer - naive| over the naive rows' losses: "
        f"{res['max_abs_diff_vs_naive']:.1e} ({res['dtype']}; the 1e-3 check is the fp32 test "
        "test_gpu_scorer_equals_transformers_scorer)"
    )


# -- main ----------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[str, str]:
    """Check the machine and the model before anything heavy loads; (model setting, path)."""
    try:
        import torch
    except ImportError as exc:
        raise Stop("no torch installed: pip install 'evolkit[vllm]' on a CUDA machine") from exc
    if not torch.cuda.is_available():
        raise Stop("no CUDA GPU found: this benchmark measures vLLM on a GPU, nothing to do here")
    from evolkit.models.vllm import _import_vllm

    model = args.model or os.environ.get(MODEL_ENV, "")
    if not model:
        raise Stop(
            f"give --model (a local instruct model folder, 1-8B, or 'embedded') or set ${MODEL_ENV}"
        )
    local = model == "embedded" or Path(model).expanduser().exists()
    if not local and model.startswith(("/", ".", "~")):
        raise Stop(f"{model}: no such model folder")
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        _import_vllm()
    except Exception as exc:
        raise Stop(str(exc)) from exc
    from evolkit.models.local import resolve_model_path

    path, _ = resolve_model_path(model)
    return model, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", default="", help=f"model folder, 'embedded' or hub id (${MODEL_ENV})"
    )
    ap.add_argument("--rows", type=int, default=256, help="seed rows for evolve and for scoring")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--naive-rows", type=int, default=32, help="rows for the slow naive loop")
    ap.add_argument("--template", default="plain", choices=["plain", "alpaca", "chat"])
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--score-batch-size", type=int, default=64, help="LossScorer's batch size")
    ap.add_argument("--dtype", default="auto", help="vLLM dtype (auto, bfloat16, float32, ...)")
    ap.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.55,
        help="vLLM's share of the GPU (the rest holds the transformers model for (b))",
    )
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start)")
    ap.add_argument("--data", type=Path, default=ALPACA if ALPACA.exists() else SEEDS)
    ap.add_argument("--skip-evolve", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    try:
        model, path = prepare(args)
    except Stop as exc:
        print(f"bench_gpu.py: {exc}", file=sys.stderr)
        return 2

    import torch
    import vllm

    from evolkit.errors import EvolkitError
    from evolkit.models import vllm as vmod

    rows = load_rows(args.data, args.rows)
    if len(rows) < args.rows:
        print(f"note: {args.data} has only {len(rows)} usable rows (asked for {args.rows})")
    engine_args: dict[str, Any] = {
        "dtype": args.dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": max(args.max_model_len, args.max_length + 1),
        "tensor_parallel_size": args.tensor_parallel_size,
        "enforce_eager": args.enforce_eager,
        "seed": 0,
    }
    # The evolve run's backend finds this very engine through the same arguments.
    os.environ[vmod.ENGINE_ARGS_ENV] = json.dumps(engine_args)
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "vllm": getattr(vllm, "__version__", "?"),
        "torch": torch.__version__,
        "model": model,
        "engine_args": engine_args,
        "data": str(args.data),
    }
    print(
        f"GPU {results['gpu']} (x{results['gpus']}) | vLLM {results['vllm']} | "
        f"torch {results['torch']} | model {model} | {len(rows)} rows from {args.data.name}"
    )
    try:
        t0 = time.perf_counter()
        llm = vmod.shared_llm(path, engine_args)
        results["engine_load_seconds"] = time.perf_counter() - t0
        print(f"vLLM engine loaded in {results['engine_load_seconds']:.1f} s")
        warm = llm.get_tokenizer()("Warm up.", add_special_tokens=False)["input_ids"]
        llm.generate(
            [{"prompt_token_ids": warm}], vllm.SamplingParams(max_tokens=4), use_tqdm=False
        )
        if not args.skip_evolve:
            results["evolve"] = bench_evolve(args, llm, model, rows)
            print_evolve(results["evolve"], args.rounds)
        if not args.skip_score:
            results["score"] = bench_score(args, llm, path, rows)
            print_score(results["score"])
    except EvolkitError as exc:
        print(f"bench_gpu.py: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
