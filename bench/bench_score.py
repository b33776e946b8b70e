"""Benchmark: the fast LossScorer against the naive loop and the model's raw forward throughput.

All three run in one process on the same model and the same rows, so the ratios are fair:

(a) naive - `score_naive`: one row at a time, a separate full forward pass for each loss;
(b) fast  - `LossScorer.score`: two passes per row, length-bucketed batches, scored-only logits;
(c) raw   - plain full-logits forward passes over the very sequences (b) scores (conditioned and
            unconditioned, after truncation), batched the same way: the model's own throughput.

Tokens are the real (unpadded) ids of the two scored sequences of each row, the same count for
all three, so tokens/s ratios compare like with like. Exactness of (b) against (a) is checked too.

    .venv/bin/python bench/bench_score.py [--rows 40] [--template plain] [--model embedded]
        [--threads N] [--repeat N] [--batch-size N] [--max-length N] [--skip-naive]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a busy machine two spinning threads per
# process wait on each other at every operator (measured 3-5x slower); must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared/data/alpaca_libre/alpaca_libre_tasks_v1.jsonl"


def load_items(path: Path, n: int) -> list[Any]:
    from evolkit.models.scoring import ScoreItem

    items = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("status", "ok") != "ok":
                continue
            items.append(ScoreItem(row["instruction"], row.get("input", ""), row["output"]))
            if len(items) >= n:
                break
    return items


def raw_forward(model: Any, scorer: Any, items: list[Any]) -> float:
    """Seconds for full-logits forward passes over the scored sequences, same batching."""
    import torch

    from evolkit.models.scoring import plan_batches

    seqs = [s for lay in scorer.layouts(items) for s in (lay.cond, lay.uncond) if len(s) > 1]
    seqs.sort(key=len, reverse=True)
    cuts = plan_batches(
        [len(s) for s in seqs],
        scorer.batch_size,
        scorer.max_batch_tokens,
        scorer.batch_overhead_tokens,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        for a, b in cuts:
            batch = seqs[a:b]
            width = len(batch[0])
            x = torch.tensor([list(s) + [s[0]] * (width - len(s)) for s in batch])
            model(input_ids=x, use_cache=False).logits.float().log_softmax(-1)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--model", default="embedded", help="'embedded' or a local HF model folder")
    ap.add_argument("--template", default="plain", choices=["plain", "alpaca", "chat"])
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--skip-naive", action="store_true", help="only (b) and (c)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each measure keeps its best")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolkit.models.embedded import EMBEDDED_ALIASES, embedded_model_dir
    from evolkit.models.scoring import LossScorer, ScoreItem, score_naive

    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(embedded_model_dir()) if args.model in EMBEDDED_ALIASES else args.model
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    items = load_items(args.data, args.rows)
    scorer = LossScorer(
        model, tok, args.template, max_length=args.max_length, batch_size=args.batch_size
    )
    tokens = sum(len(lay.cond) + len(lay.uncond) for lay in scorer.layouts(items))
    print(
        f"model {Path(path).name} | template {args.template} | {len(items)} rows | "
        f"{tokens} tokens | threads {torch.get_num_threads()} | head path {scorer.head} | "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')} | load {os.getloadavg()[0]:.1f}"
    )
    warm = [ScoreItem("Warm up the kernels.", "", "Done.")]
    score_naive(model, tok, warm, args.template, args.max_length)
    scorer.score(warm)

    # Rounds interleave (a), (b), (c) and keep each one's best time, so a burst of load from
    # another process on a shared machine does not land on one side of a ratio only.
    results: dict[str, float] = {}
    naive: list[Any] = []
    fast: list[Any] = []

    def best(key: str, secs: float) -> None:
        results[key] = min(secs, results.get(key, float("inf")))

    for _ in range(max(1, args.repeat)):
        if not args.skip_naive:
            t = time.perf_counter()
            naive = score_naive(model, tok, items, args.template, args.max_length)
            best("naive", time.perf_counter() - t)
        t = time.perf_counter()
        fast = scorer.score(items)
        best("fast", time.perf_counter() - t)
        best("raw", raw_forward(model, scorer, items))

    print(f"{'':14}{'seconds':>9}{'rows/s':>9}{'tokens/s':>10}")
    labels = {"naive": "(a) naive", "fast": "(b) fast", "raw": "(c) raw fwd"}
    for key, secs in results.items():
        print(f"{labels[key]:14}{secs:9.2f}{len(items) / secs:9.2f}{tokens / secs:10.1f}")
    if naive:
        print(f"speed-up (b)/(a): {results['naive'] / results['fast']:.2f}x")
    print(f"throughput (b)/(c) tokens/s: {results['raw'] / results['fast']:.2f}")
    if naive:
        worst = 0.0
        for a, b in zip(naive, fast, strict=True):
            for name in ("loss_q", "loss_a_given_q", "loss_a"):
                x, y = getattr(a, name), getattr(b, name)
                if (x is None) != (y is None):
                    worst = float("inf")
                elif x is not None and y is not None:
                    worst = max(worst, abs(x - y))
        print(f"max |fast - naive| over all losses: {worst:.2e}")
        if worst > 1e-4:
            print("EXACTNESS FAILED", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
