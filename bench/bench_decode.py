"""Local decoding on evolve prompts: one at a time, static batches, continuous batching + prefixes.

Run: .venv/bin/python bench/bench_decode.py [--model embedded] [--rows 48] [--tokens 128]
     [--batch-size 16] [--baseline-rows 8] [--threads N]

The prompts are the real evolve prompts (`build_messages`: system line + worked examples of one
operation + the instruction), over examples/seeds.jsonl with the operations rotated as the
`rotate` policy does, sampled as the evolve stage samples by default (temperature 0.7, top-p
0.95), so some rewrites run on to the token cap. Every mode runs in this one process:

- one at a time: `scheduler="static"`, one prompt per call (the baseline, on the first
  `--baseline-rows` rows);
- static: length-sorted batches of `--batch-size` through `model.generate` (the old path);
- continuous: the decode loop with slot refill, without shared-prefix reuse;
- continuous + prefix: the default local backend.

Each request samples with its own seed, so every mode writes the same rows (up to float noise
on near-ties); the `same rows` column counts rows equal to the default backend's. Ratios are
tokens per second against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.models.local import LocalBackend
from evolkit.stages.evolve import OPERATIONS, build_messages

ROOT = Path(__file__).resolve().parents[1]


def requests(n: int, params: SamplingParams) -> list[ChatRequest]:
    seeds = [json.loads(x)["instruction"] for x in (ROOT / "examples" / "seeds.jsonl").open()]
    out = []
    for i in range(n):
        # Round r of the rotate policy gives seed i the operation (i + r) mod K; later rounds
        # see other instructions, so the seed text is varied per lap of the list.
        lap, k = divmod(i, len(seeds))
        op = OPERATIONS[(k + lap + 1) % len(OPERATIONS)]
        text = seeds[k] if lap == 0 else f"{seeds[k]} (variant {lap})"
        out.append(ChatRequest.of(build_messages(op, text), params))
    return out


def run(backend: LocalBackend, reqs: list[ChatRequest], one_by_one: bool) -> tuple[list, float]:
    t0 = time.perf_counter()
    gens = [backend.generate([r])[0] for r in reqs] if one_by_one else backend.generate(reqs)
    return gens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--baseline-rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.tokens, seed=args.seed
    )
    reqs = requests(args.rows, params)
    modes = [
        ("one at a time", {"scheduler": "static"}, True),
        (f"static, batch {args.batch_size}", {"scheduler": "static"}, False),
        (f"continuous, batch {args.batch_size}", {"prefix_reuse": False}, False),
        (f"continuous + prefix, batch {args.batch_size}", {}, False),
    ]
    results: list[tuple[str, list[Generation], float]] = []
    stats = None
    model_id = args.model
    for name, settings, one_by_one in modes:
        backend = LocalBackend(
            args.model, batch_size=1 if one_by_one else args.batch_size, **settings
        )
        model_id = backend.model_id
        run(backend, reqs[:1], one_by_one=True)  # warm-up
        before = replace(backend.decode_stats)
        gens, seconds = run(backend, reqs[: args.baseline_rows] if one_by_one else reqs, one_by_one)
        results.append((name, gens, seconds))
        stats = backend.decode_stats.since(before)
        del backend
        gc.collect()

    reference = results[-1][1]
    base_gens, base_seconds = results[0][1], results[0][2]
    base = sum(g.completion_tokens for g in base_gens) / base_seconds
    load = os.getloadavg()[0]
    print(
        f"model {model_id}, {args.rows} evolve prompts, sampled (T={args.temperature},"
        f" top-p={args.top_p}), cap {args.tokens} new tokens; load average {load:.1f} at the end"
    )
    print("| mode | rows | tokens | at cap | seconds | tok/s | ratio | same rows |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, gens, seconds in results:
        tokens = sum(g.completion_tokens for g in gens)
        capped = sum(g.finish_reason == "length" for g in gens)
        same = sum(a.text == b.text for a, b in zip(gens, reference, strict=False))
        rate = tokens / seconds
        print(
            f"| {name} | {len(gens)} | {tokens} | {capped} | {seconds:.1f} | {rate:.1f} "
            f"| {rate / base:.2f}x | {same}/{len(gens)} |"
        )
    assert stats is not None
    print(
        f"\ncontinuous + prefix: {stats.prompt_tokens} prompt tokens, {stats.prefill_tokens} run "
        f"through the model ({stats.prefill_saved} saved, "
        f"{stats.prefill_saved / max(1, stats.prompt_tokens):.0%}), {stats.steps} decode steps"
    )


if __name__ == "__main__":
    main()
