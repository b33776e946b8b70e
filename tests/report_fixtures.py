"""Two small synthetic runs for the report tests: every measure present in the first, some
missing in the second, so both the plots and the "not measured" notes are exercised."""

from __future__ import annotations

import random

from evolkit.report import Outcomes, RowScores, RunMeasures

OPS = ("deepen", "breadth", "concretize")


def synthetic_run(
    name: str, seed: int, *, harder: float, confident: float, with_ifd: bool = True
) -> RunMeasures:
    rng = random.Random(seed)
    rows = []
    for r in (0, 1, 2):
        for i in range(24):
            scores = {
                "difficulty_level": float(min(5, max(1, round(rng.gauss(2 + harder * r, 1))))),
                "difficulty_score": round(
                    min(100.0, max(0.0, rng.gauss(25 + 20 * r * harder, 10))), 1
                ),
                "min_nn_distance": 0.02 if i % 11 == 0 else abs(rng.gauss(0.35, 0.1)),
            }
            if r and with_ifd:
                scores["ifd"] = rng.gauss(0.8, 0.15)
                scores["ic_ifd"] = rng.gauss(0.35, 0.1)
            top1 = [min(1.0, rng.betavariate(confident, 1)) for _ in range(rng.randint(6, 20))]
            rows.append(
                RowScores(
                    round=r,
                    operation=OPS[i % 3] if r else None,
                    scores=scores,
                    text=f"Write note {i} on topic {rng.randint(0, 40)}, round {r}.",
                    top1=top1 if r else None,
                )
            )
    by_op = {
        op: Outcomes(
            kept=16, rejected=4 + k, rejected_by_rule={"unchanged": 3, "repetitive": 1 + k}
        )
        for k, op in enumerate(sorted(OPS))
    }
    return RunMeasures(
        name=name,
        rows=rows,
        by_round={1: Outcomes(kept=24, rejected=7), 2: Outcomes(kept=24, rejected=8)},
        by_operation=by_op,
        summary={
            "seeds": 24,
            "config": {
                "evolver": {"model": "embedded", "backend": "local"},
                "rounds": 2,
                "temperature": 0.7 if seed == 1 else 1.0,
            },
        },
        source=f"/runs/{name}",
    )


def two_runs() -> list[RunMeasures]:
    a = synthetic_run("small <t0.7>", 1, harder=1.0, confident=1.5)
    b = synthetic_run("small-t1.0", 2, harder=0.6, confident=5.0, with_ifd=False)
    b.trajectory_methods = {"distinct methods": 4, "iterations": 3}
    return [a, b]
