"""The Ray engine against the local engine on the same rows, in one run.

Run: .venv/bin/python bench/bench_ray.py [--limit 20] [--tokens 96] [--workers 2]
     [--batch-size 8] [--model embedded]

Both engines evolve the same seeds (examples/seeds.jsonl, 1 round, no call cache) with the same
model; Ray starts a local cluster of `--workers` actors per model stage (each loads its own copy
of the model). Printed: seconds and rows/s of each, the ratio Ray/local (> 1: Ray faster), the
seconds per 1,000 rows of the step, the peak memory of the local process and of a Ray worker,
and whether both wrote the same rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(engine: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from evolkit.scenarios.evol_instruct import evolve

    t0 = time.perf_counter()
    summary = evolve(
        args.seeds,
        out,
        rounds=1,
        limit=args.limit,
        evolver=args.model,
        max_new_tokens=args.tokens,
        evolve_max_new_tokens=args.tokens,
        batch_size=args.batch_size,
        engine=engine,
        workers=args.workers,
        cache=None,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    step = summary["step_seconds"]["round-1"]
    rows = summary["kept"] + summary["rejected"]
    return {
        "seconds": round(seconds, 1),
        "rows": rows,
        "rows_per_s": rows / seconds,
        "step_per_1000_rows_s": step.get("per_1000_rows"),
        "engine": summary["engine"],
        "lines": sorted((out / "evolved.jsonl").read_text().splitlines())
        + sorted((out / "rejected.jsonl").read_text().splitlines()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=Path, default=ROOT / "examples" / "seeds.jsonl")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        local = run("local", args, Path(tmp) / "local")
        local_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ray = run("ray", args, Path(tmp) / "ray")
    same = local.pop("lines") == ray.pop("lines")
    print(f"{'engine':8} {'s':>7} {'rows':>5} {'rows/s':>7} {'s per 1,000 rows':>17}")
    for name, r in (("local", local), ("ray", ray)):
        print(
            f"{name:8} {r['seconds']:7.1f} {r['rows']:5d} {r['rows_per_s']:7.3f} "
            f"{r['step_per_1000_rows_s']:17.0f}"
        )
    ratio = ray["rows_per_s"] / local["rows_per_s"]
    print(f"ray / local rows/s: {ratio:.2f}x ({args.workers} workers)")
    print(
        f"peak memory: local process {local_mb:.0f} MB; "
        f"a Ray worker {ray['engine'].get('worker_peak_mb', 0):.0f} MB"
    )
    print(f"same rows: {same}")
    if args.json:
        args.json.write_text(
            json.dumps({"local": local, "ray": ray, "ratio": ratio, "same_rows": same}, indent=2)
        )


if __name__ == "__main__":
    main()
