"""`evolve` end to end on the embedded model: what a laptop user feels.

Run: .venv/bin/python bench/bench_pipeline.py [--seeds examples/seeds.jsonl] [--limit 20]
     [--tokens 128] [--batch-size 16] [--baseline-rows 6] [--threads N]

Three measurements in this one process, same seeds, 1 round, no call cache:

- one at a time: the model's own rate on evolve prompts, one prompt per call (the baseline
  every ratio is against);
- static pipeline: what evolkit did before: `scheduler="static"` (each batch runs until its
  longest row), one engine batch at a time (`concurrent_batches=1`);
- default pipeline: continuous batching with shared-prefix reuse, batches in flight sharing
  model calls (`concurrent_batches=4`).

Printed per pipeline: seconds, rows/s (rows written, kept + rejected), completion tokens and
completion tokens/s end to end, and the ratio of that rate to the one-at-a-time rate; then the
default pipeline's rows/s over the static one's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def one_at_a_time(backend: Any, seeds: list[str], n: int, tokens: int) -> float:
    """Completion tokens/s of single evolve requests (sampled as the evolve stage samples)."""
    from evolkit.models.base import ChatRequest, SamplingParams
    from evolkit.prompts.evolve import OPERATIONS, build_messages

    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=tokens, seed=0)
    done = 0
    t0 = time.perf_counter()
    for i, text in enumerate(seeds[:n]):
        req = ChatRequest.of(build_messages(OPERATIONS[(i + 1) % len(OPERATIONS)], text), params)
        done += backend.generate([req])[0].completion_tokens
    return done / (time.perf_counter() - t0)


def pipeline(backend: Any, seeds: Path, limit: int, tokens: int, batch: int, overlap: int) -> dict:
    from evolkit.scenarios.evol_instruct import evolve

    before = (backend.usage.requests, backend.usage.completion_tokens, backend.usage.prompt_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = evolve(
            seeds,
            Path(tmp) / "run",
            rounds=1,
            limit=limit,
            max_new_tokens=tokens,
            evolve_max_new_tokens=tokens,
            batch_size=batch,
            concurrent_batches=overlap,
            cache=None,
            progress=False,
            backends={"evolver": backend, "responder": backend, "judge": backend},
        )
        seconds = time.perf_counter() - t0
    # The backend's counts are cumulative (it may have served the baseline): take the delta.
    requests = backend.usage.requests - before[0]
    completion = backend.usage.completion_tokens - before[1]
    rows = summary["kept"] + summary["rejected"]
    return {
        "seconds": round(seconds, 1),
        "rows": rows,
        "kept": summary["kept"],
        "rows_per_s": rows / seconds,
        "calls": requests,
        "prompt_tokens": backend.usage.prompt_tokens - before[2],
        "completion_tokens": completion,
        "tok_per_s": completion / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=Path, default=ROOT / "examples" / "seeds.jsonl")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=128, help="cap of rewrites and responses")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--baseline-rows", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from evolkit.models.local import LocalBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [json.loads(x)["instruction"] for x in args.seeds.read_text().splitlines() if x]
    static = LocalBackend("embedded", batch_size=args.batch_size, scheduler="static")
    base = one_at_a_time(static, seeds, args.baseline_rows, args.tokens)
    print(f"one at a time: {base:.1f} completion tok/s ({args.baseline_rows} evolve prompts)")
    results = {"one_at_a_time_tok_per_s": round(base, 2)}
    runs = {
        "static pipeline": (static, 1),
        "default pipeline": (LocalBackend("embedded", batch_size=args.batch_size), 4),
    }
    print(
        f"{'pipeline':18} {'s':>7} {'rows':>5} {'rows/s':>7} {'calls':>6} "
        f"{'compl tok':>9} {'tok/s':>6} {'vs 1-at-a-time':>15}"
    )
    for name, (backend, overlap) in runs.items():
        r = pipeline(backend, args.seeds, args.limit, args.tokens, args.batch_size, overlap)
        r["ratio_vs_one_at_a_time"] = round(r["tok_per_s"] / base, 2)
        results[name] = r
        print(
            f"{name:18} {r['seconds']:7.1f} {r['rows']:5d} {r['rows_per_s']:7.3f} "
            f"{r['calls']:6d} {r['completion_tokens']:9d} {r['tok_per_s']:6.1f} "
            f"{r['ratio_vs_one_at_a_time']:14.2f}x"
        )
    gain = results["default pipeline"]["rows_per_s"] / results["static pipeline"]["rows_per_s"]
    results["rows_per_s_default_over_static"] = round(gain, 2)
    print(f"default pipeline rows/s over static pipeline: {gain:.2f}x")
    print(f"(cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
