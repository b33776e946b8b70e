"""Batched generation against one-prompt-at-a-time generation, same prompts, same model.

Run: .venv/bin/python bench/bench_generate.py [--model embedded] [--prompts 32] [--tokens 64]
     [--scheduler static|continuous]

Both sides generate greedily with the same token cap, so they produce the same tokens; the
ratio of tokens per second is the speed-up. The baseline is measured in the same run. The
default `--scheduler static` measures length-sorted static batches (the figures in
docs/benchmarks.md); bench/bench_decode.py compares the schedulers on evolve prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evolkit.models.base import ChatRequest, SamplingParams
from evolkit.models.local import LocalBackend

ROOT = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[str]:
    seeds = ROOT.parent / "shared" / "data" / "self_instruct_seed" / "seed_tasks.jsonl"
    if seeds.exists():
        rows = [json.loads(x) for x in seeds.read_text().splitlines()]
        texts = [r["instruction"] for r in rows]
    else:
        texts = [json.loads(x)["instruction"] for x in (ROOT / "examples" / "seeds.jsonl").open()]
    return [texts[i % len(texts)] for i in range(n)]


def run(
    backend: LocalBackend, texts: list[str], tokens: int, one_by_one: bool
) -> tuple[int, float]:
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    reqs = [ChatRequest.of([{"role": "user", "content": t}], params) for t in texts]
    t0 = time.perf_counter()
    gens = [backend.generate([r])[0] for r in reqs] if one_by_one else backend.generate(reqs)
    return sum(g.completion_tokens for g in gens), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--scheduler", choices=("static", "continuous"), default="static")
    args = ap.parse_args()
    texts = prompts(args.prompts)
    backend = LocalBackend(args.model, batch_size=1, scheduler=args.scheduler)
    run(backend, texts[:2], 4, one_by_one=True)  # warm-up
    n1, s1 = run(backend, texts[: args.baseline_prompts], args.tokens, one_by_one=True)
    base = n1 / s1
    print(
        f"model {backend.model_id}, {args.tokens} new tokens per prompt, greedy, {args.scheduler}"
    )
    print("| mode | prompts | tokens | seconds | tok/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| one at a time | {args.baseline_prompts} | {n1} | {s1:.1f} | {base:.1f} | 1.00x |")
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        backend.batch_size = bs
        n, s = run(backend, texts, args.tokens, one_by_one=False)
        rate = n / s
        cells = f"{len(texts)} | {n} | {s:.1f} | {rate:.1f} | {rate / base:.2f}x"
        print(f"| batched, batch {bs} | {cells} |")


if __name__ == "__main__":
    main()
