"""Evol-Instruct end to end through a flaky network: the real `evolkit serve` (tiny model) behind
a proxy that fails a seeded 30% of requests with 429 + Retry-After, 500, a stall or a dropped
connection. Every row must come out exactly once, and every retry must be counted by cause.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evolkit.errors import BackendError
from evolkit.models.base import Backend
from evolkit.runs import RunFolder
from evolkit.scenarios.evol_instruct import EvolConfig, evolve
from evolkit.serve import ServerThread, create_app
from tests.faultproxy import FaultProxy

SEEDS = [
    "Write a poem about autumn.",
    "List three uses of vinegar.",
    "Explain how a kite flies.",
    "Describe the smell of rain.",
]
# Short enough that a stall costs little, long enough that a busy machine rarely times out a
# real answer (one that does is retried and counted as a timeout too, which the test allows).
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[tuple[ServerThread, Backend]]:
    from evolkit.models.local import LocalBackend

    backend = LocalBackend(str(tiny_model_dir), batch_size=8)
    with ServerThread(create_app(backend, max_batch=8, batch_wait_ms=20)) as server:
        yield server, backend


def upstream_root(server: ServerThread) -> str:
    return f"http://127.0.0.1:{server.port}"


def config(model: str, base_url: str) -> EvolConfig:
    # Every role on the proxy, with a short timeout so an injected stall costs seconds.
    return EvolConfig(
        backend="openai",
        base_url=base_url,
        timeout=3.0,
        rounds=1,
        seed=0,
        evolver=model,
        rules=["no_information_gain"],
        attempts=1,
        evolve_max_new_tokens=12,
        max_new_tokens=12,
    )


def write_seeds(path: Path) -> Path:
    path.write_text("".join(json.dumps({"instruction": s, "input": ""}) + "\n" for s in SEEDS))
    return path


def rows(out: Path) -> list[dict[str, Any]]:
    found = []
    for name in ("evolved.jsonl", "rejected.jsonl"):
        path = out / name
        if path.exists():
            found += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return found


def assert_complete(out: Path) -> None:
    """Every seed evolved exactly once, and no row hides a failed model call."""
    done = rows(out)
    assert len(done) == len(SEEDS)
    assert len({r["id"] for r in done}) == len(SEEDS)
    assert sorted(r["meta"]["parent"]["instruction"] for r in done) == sorted(SEEDS)
    for row in done:
        assert row["meta"]["evolution"]["error"] == ""
        assert row["meta"]["evolution"]["finish_reason"] in ("stop", "length")
        if "response" in row["meta"]:
            assert row["meta"]["response"]["error"] == ""


def test_evolve_survives_thirty_percent_faults(
    served: tuple[ServerThread, Backend], tmp_path: Path
) -> None:
    server, backend = served
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    with FaultProxy(upstream_root(server), rate=0.3, seed=42, retry_after="1") as proxy:
        summary = evolve(
            seeds,
            out,
            config(backend.model_id, proxy.url),
            batch_size=4,
            cache=None,
            progress=False,
        )
        injected = proxy.injected
        outcomes = dict(proxy.outcomes)
    assert_complete(out)
    # Seed 42 draws all four kinds among the first 8 requests, and a run makes at least 12.
    assert set(injected) == {"429", "500", "stall", "drop"}, outcomes
    retries = summary["models"][backend.model_id]["retries"]
    # Each injected fault cost exactly one retry; a real answer slower than the timeout may
    # add timeouts of its own (a busy machine), never other causes.
    assert retries.get("429", 0) == injected["429"]
    assert retries.get("5xx", 0) == injected["500"]
    assert retries.get("connection", 0) == injected["drop"]
    assert retries.get("timeout", 0) >= injected["stall"]
    assert set(retries) <= {"429", "5xx", "connection", "timeout"}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["models"][backend.model_id]["retries"] == retries


def test_a_server_that_stays_down_stops_the_run_and_a_rerun_resumes(
    served: tuple[ServerThread, Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evolkit.models.openai import OpenAIBackend

    server, backend = served
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    with FaultProxy(upstream_root(server), rate=0.0) as proxy:
        cfg = config(backend.model_id, proxy.url)

        def client() -> dict[str, Backend]:
            # Few, short retries: the default policy would wait ~30 s before giving up.
            http = OpenAIBackend(
                backend.model_id,
                proxy.url,
                api_key="",
                timeout=TIMEOUT,
                max_retries=2,
                backoff_base=0.05,
            )
            return {"evolver": http, "judge": http, "responder": http}

        # The server dies right after the first batch of rows is safely committed.
        commit = RunFolder.commit

        def commit_then_die(self: RunFolder, *args: Any, **kwargs: Any) -> None:
            commit(self, *args, **kwargs)
            proxy.go_down()

        monkeypatch.setattr(RunFolder, "commit", commit_then_die)
        with pytest.raises(BackendError) as info:
            # one batch at a time: the second batch meets the dead server
            evolve(
                seeds,
                out,
                cfg,
                batch_size=2,
                concurrent_batches=1,
                cache=None,
                progress=False,
                backends=client(),
            )
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"cannot reach the OpenAI-compatible server at {proxy.url}")
        assert "connection refused" in message
        assert len(rows(out)) == 2

        monkeypatch.setattr(RunFolder, "commit", commit)
        proxy.come_back()
        summary = evolve(
            seeds, out, cfg, batch_size=2, cache=None, progress=False, backends=client()
        )
    assert summary["resumed"] is True
    assert summary["rows_processed_this_invocation"] == 2
    assert_complete(out)
