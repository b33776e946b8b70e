"""The engine contract, passed by both engines: the local one and Ray (2 workers, local).

The rows a run writes do not depend on the engine or the batch size; a run that crashed, or was
killed with -9, and left a torn line behind resumes to exactly the rows of an uninterrupted run,
with nothing lost and nothing written twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evolkit.models.base import ChatRequest
from evolkit.scenarios.evol_instruct import evolve
from tests.analyze_fixtures import FakeEmbedder
from tests.fakes import ScriptedBackend, instruction_of, last_user

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [f"Write a short note about topic number {i}." for i in range(9)] + [
    "Write a short note about topic number 1.",  # a duplicate: the dedup stage sees order
    "Name a famous painter.",
    "Describe the water cycle.",
]


def evolver(req: ChatRequest) -> str:
    text = instruction_of(req)
    # A per-request answer (so rows differ), sometimes a reply that the rules reject.
    if "7" in text:
        return "Sure! Here it is."
    return f"{text} Use exactly {len(text) % 4 + 2} sentences and one example."


def judge(req: ChatRequest) -> str:
    return "Equal" if "5" in last_user(req) else "Not equal"


def responder(req: ChatRequest) -> str:
    return "Sorry, no." if "painter" in last_user(req) else "A careful answer with details."


def backends(fail_after: int | None = None) -> dict[str, Any]:
    return {
        "evolver": ScriptedBackend(evolver, "evolver-x", fail_after=fail_after),
        "judge": ScriptedBackend(judge, "judge-x"),
        "responder": ScriptedBackend(responder, "responder-x"),
        # the drifted rule's embedder: no model to load in every Ray actor
        "embedder": FakeEmbedder(),
    }


def write_seeds(path: Path) -> Path:
    path.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    return path


def run(seeds: Path, out: Path, engine: str, **kw: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "rounds": 2,
        "cache": None,
        "progress": False,
        "engine": engine,
        "workers": 2,
        "batch_size": 3,
    }
    settings.update(kw)
    b = settings.pop("backends", None) or backends()
    return evolve(seeds, out, backends=b, **settings)


def outputs(out: Path) -> dict[str, list[str]]:
    """The run's rows, byte for byte (timing-free), per file."""
    files = {}
    for name in ("evolved.jsonl", "rejected.jsonl"):
        path = out / name
        files[name] = path.read_text().splitlines() if path.exists() else []
    return files


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    paths = os.pathsep.join(p for p in sys.path if p)
    ray.init(
        num_cpus=6,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": paths, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One uninterrupted local run at batch size 16: what every other run must equal."""
    tmp = tmp_path_factory.mktemp("reference")
    run(write_seeds(tmp / "seeds.jsonl"), tmp / "run", "local", batch_size=16, concurrent_batches=1)
    rows = outputs(tmp / "run")
    assert rows["evolved.jsonl"] and rows["rejected.jsonl"]
    rules = {json.loads(x)["verdicts"][-1]["rule"] for x in rows["rejected.jsonl"]}
    assert {"duplicate", "no_information_gain", "sorry"} <= rules  # the case exercises them
    return rows


def test_rows_do_not_depend_on_engine_or_batch_size(
    engine: str, reference: dict[str, list[str]], tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    settings = [(1, 1), (4, 1), (2, 4)] if engine == "local" else [(4, 1)]
    for size, overlap in settings:
        out = tmp_path / f"run-{size}-{overlap}"
        summary = run(seeds, out, engine, batch_size=size, concurrent_batches=overlap)
        assert outputs(out) == reference, f"{engine}: batch size {size}, {overlap} in flight"
        assert summary["engine"]["engine"] == engine


def test_resume_after_a_crash_and_a_torn_line(
    engine: str, reference: dict[str, list[str]], tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    with pytest.raises(Exception, match="scripted crash"):
        # one batch at a time, so some batches are committed before the crash
        run(seeds, out, engine, backends=backends(fail_after=5), concurrent_batches=1)
    if engine == "local":  # Ray may fail the whole dataset before the driver commits a batch
        committed = outputs(out)
        assert len(committed["evolved.jsonl"]) + len(committed["rejected.jsonl"]) > 0
    with open(out / "evolved.jsonl", "a") as f:
        f.write('{"id": "torn-by-a-crash", "instr')  # a write cut short
    run(seeds, out, engine)
    assert outputs(out) == reference


KILLED_RUN = """
import json, sys, time
sys.path.insert(0, {root!r})
from evolkit.scenarios.evol_instruct import evolve
from tests import test_engine_contract as t
from tests.fakes import ScriptedBackend

def slow(req):
    time.sleep(0.3)
    return t.evolver(req)

b = t.backends()
b["evolver"] = ScriptedBackend(slow, "evolver-x")
evolve({seeds!r}, {out!r}, rounds=2, cache=None, progress=False, engine={engine!r},
       workers=2, batch_size=3, backends=b)
"""


def test_kill_9_mid_run_resumes_exactly(
    engine: str, reference: dict[str, list[str]], tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    script = KILLED_RUN.format(root=str(ROOT), seeds=str(seeds), out=str(out), engine=engine)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    journal = out / "checkpoint.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and, under Ray, its local cluster
    proc.wait()
    assert 1 <= journal.read_text().count("\n") < 8  # stopped part way
    summary = run(seeds, out, engine)
    assert summary["resumed"] is True
    assert outputs(out) == reference


def test_ray_scores_equal_local_scores(
    ray_cluster: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from evolkit.scenarios.score import score

    src = tmp_path / "rows.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": f"Say {w} twice.", "output": f"{w} {w}."}) + "\n"
            for w in ("one", "two", "three", "four", "five")
        )
    )
    common = {"scorer": str(tiny_model_dir), "max_length": 64, "progress": False, "batch_size": 2}
    score(src, tmp_path / "local", **common)
    score(src, tmp_path / "ray", engine="ray", workers=2, **common)

    def scores(out: Path) -> list[dict[str, float]]:
        lines = (out / "scored.jsonl").read_text().splitlines()
        return [json.loads(x)["scores"] for x in lines]

    a, b = scores(tmp_path / "local"), scores(tmp_path / "ray")
    assert len(a) == len(b) == 5
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert abs(x[k] - y[k]) < 1e-4, k


class CountingBackend(ScriptedBackend):
    """Counts generate calls (not requests): merged calls show up as fewer calls."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.generate_calls = 0
        self.sizes: list[int] = []

    def generate(self, requests: Any) -> Any:
        self.generate_calls += 1
        self.sizes.append(len(requests))
        return super().generate(requests)


def test_batches_in_flight_share_model_calls(tmp_path: Path) -> None:
    """The local engine merges the calls of batches in flight: fewer, fuller model calls,
    and the same rows."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    calls = {}
    for overlap in (1, 4):
        b = {
            "evolver": CountingBackend(evolver, "evolver-x"),
            "judge": CountingBackend(judge, "judge-x"),
            "responder": CountingBackend(responder, "responder-x"),
        }
        out = tmp_path / f"run-{overlap}"
        given = {**b, "embedder": FakeEmbedder()}
        run(seeds, out, "local", batch_size=2, concurrent_batches=overlap, backends=given)
        calls[overlap] = {role: (m.generate_calls, max(m.sizes)) for role, m in b.items()}
        if overlap == 4:
            assert outputs(out) == outputs(tmp_path / "run-1")
    for role in ("evolver", "judge", "responder"):
        assert calls[4][role][0] < calls[1][role][0], role
        assert calls[4][role][1] > calls[1][role][1], role


def test_a_failed_batch_in_flight_keeps_earlier_batches(tmp_path: Path) -> None:
    """Batches before the one that failed are committed, as one at a time would have."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")

    def fails_on_topic_8(req: ChatRequest) -> str:
        if "number 8" in instruction_of(req):
            raise RuntimeError("scripted crash")
        return evolver(req)

    class PerRequest(ScriptedBackend):
        def generate(self, requests: Any) -> Any:
            return [g for r in requests for g in ScriptedBackend.generate(self, [r])]

    b = backends()
    b["evolver"] = PerRequest(fails_on_topic_8, "evolver-x")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="scripted crash"):
        run(seeds, out, "local", rounds=1, batch_size=2, concurrent_batches=2, backends=b)
    journal = [json.loads(x) for x in (out / "checkpoint.jsonl").read_text().splitlines()]
    done = [i for e in journal for i in e["inputs"]]
    assert len(done) >= 2 and len(done) % 2 == 0  # whole batches, from the start


def test_analysis_on_ray_equals_local(ray_cluster: None, tmp_path: Path) -> None:
    """A step with a whole-step stage (diversity after two model stages) on both engines."""
    from tests.test_analyze import analysed, make_run

    source = make_run(tmp_path)
    analysed(source, tmp_path / "local", batch_size=2)
    analysed(source, tmp_path / "ray", batch_size=2, engine="ray", workers=2)
    local = (tmp_path / "local" / "measures.jsonl").read_bytes()
    assert local and (tmp_path / "ray" / "measures.jsonl").read_bytes() == local
