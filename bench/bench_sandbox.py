"""Sandbox throughput: the zygote pool against one fresh sandboxed process per call.

    .venv/bin/python bench/bench_sandbox.py [--calls 2000] [--fresh-calls 40] [--workers 2]

Both sides use the same isolation, limits, guard and verifier functions, and the same
concurrency (``--workers`` calls at a time), measured in the same run. "Fresh" starts a new
isolated interpreter for each call (a one-worker Sandbox without preloading, then closed), which
is what running each function with its own subprocess costs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from evolkit.sandbox import Sandbox, SandboxLimits, available_modes

VERIFIERS = [
    "def evaluate(response):\n    return len(response.split()) < 50\n",
    "import re\ndef evaluate(response):\n    return re.search(r'P\\.S\\.', response) is not None\n",
    "import json\ndef evaluate(response):\n"
    "    try:\n        json.loads(response)\n    except ValueError:\n        return False\n"
    "    return True\n",
    "def evaluate(response):\n    return response.strip().endswith('?')\n",
    "import string\ndef evaluate(response):\n"
    "    return not any(ch in string.punctuation for ch in response.replace('.', ''))\n",
]
RESPONSES = [
    "A short answer. P.S. with a postscript",
    '{"answer": 42}',
    "Is this a question?",
    "word " * 60,
]


def jobs(n: int) -> list[tuple[str, str]]:
    return [(VERIFIERS[i % len(VERIFIERS)], RESPONSES[i % len(RESPONSES)]) for i in range(n)]


def bench_pool(
    mode: str, limits: SandboxLimits, calls: int, workers: int
) -> tuple[float, set[str]]:
    with Sandbox(limits=limits, workers=workers, isolation=mode) as sb:
        sb.run_many(jobs(workers * 4))  # warm: first calls after start
        started = time.perf_counter()
        results = sb.run_many(jobs(calls))
        elapsed = time.perf_counter() - started
    return calls / elapsed, {r.verdict for r in results}


def bench_fresh(
    mode: str, limits: SandboxLimits, calls: int, workers: int
) -> tuple[float, set[str]]:
    # One warning per fresh sandbox in rlimits mode would drown the table; it was shown once.
    logging.getLogger("evolkit.sandbox").setLevel(logging.ERROR)

    def one(job: tuple[str, str]) -> str:
        with Sandbox(limits=limits, workers=1, isolation=mode, preload=False) as sb:
            return sb.run(*job).verdict

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = set(pool.map(one, jobs(calls)))
    elapsed = time.perf_counter() - started
    logging.getLogger("evolkit.sandbox").setLevel(logging.NOTSET)
    return calls / elapsed, verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls through the pool")
    parser.add_argument("--fresh-calls", type=int, default=40, help="calls with a fresh process")
    parser.add_argument("--workers", type=int, default=2, help="concurrency on both sides")
    parser.add_argument("--mode", action="append", help="isolation mode(s); default: all here")
    args = parser.parse_args()
    modes = args.mode or available_modes()
    limits = SandboxLimits()
    rows = []
    for mode in modes:
        pool_rate, pool_verdicts = bench_pool(mode, limits, args.calls, args.workers)
        fresh_rate, fresh_verdicts = bench_fresh(mode, limits, args.fresh_calls, args.workers)
        if not pool_verdicts <= {"pass", "fail"} or not fresh_verdicts <= {"pass", "fail"}:
            print(f"unexpected verdicts: {pool_verdicts | fresh_verdicts}", file=sys.stderr)
            return 1
        rows.append((mode, pool_rate, fresh_rate))
    print(f"Sandbox throughput, {args.workers} calls at a time, {len(VERIFIERS)} verifiers\n")
    print("| isolation | pool calls/s | fresh process calls/s | speed-up |")
    print("|---|---:|---:|---:|")
    for mode, pool_rate, fresh_rate in rows:
        print(f"| {mode} | {pool_rate:.0f} | {fresh_rate:.1f} | {pool_rate / fresh_rate:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
