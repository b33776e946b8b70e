"""AutoIF with several responses per query, and the preference data made from the verifiers:
`export --format kto` / `--format dpo`, the dataset card and the Hub push (offline line only).

The scripted run keeps one constraint, "Answer in fewer than 5 words", composed with four
queries (tests/test_autoif.py). With two responses per query the scripted responder answers:
bees: a short answer with seed 0, a long one with seed 1 (one passes, one fails: a DPO pair);
sky: short both times (both pass); rainy day: long both times (both fail); turtle: empty (not a
verifier verdict at all, so in neither side).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import evolkit
from evolkit.cli import app
from evolkit.errors import EvolkitError
from evolkit.models.base import ChatRequest
from evolkit.scenarios.autoif import AutoIFConfig
from tests.fakes import ScriptedBackend, last_user
from tests.test_autoif import QUERIES, SEEDS, backends, config, write_inputs

ROOT = Path(__file__).resolve().parents[1]
SHORT, LONG = "Bees process nectar.", "Bees collect nectar and slowly turn it into honey."


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, int]] = []

    def __call__(self, req: ChatRequest) -> str:
        user = last_user(req)
        self.seen.append((user, req.params.temperature, req.params.seed))
        if "bees" in user:
            return SHORT if req.params.seed % 2 == 0 else LONG
        if "sky" in user:
            return "Light scatters."
        if "turtle" in user:
            return ""
        return "A museum visit is a lovely option for the whole family."


def run_autoif(out: Path, k: int, recorder: Recorder) -> evolkit.RunResult:
    seeds, queries = write_inputs(out.parent)
    return evolkit.autoif(
        seeds,
        [queries],
        out,
        config(responses_per_query=k),
        backends=backends(responder=ScriptedBackend(recorder, "responder-x")),
        cache=None,
        progress=False,
    )


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> tuple[evolkit.RunResult, Recorder]:
    rec = Recorder()
    return run_autoif(tmp_path_factory.mktemp("pref") / "run", 2, rec), rec


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_k_responses_sample_with_distinct_seeds(
    sampled: tuple[evolkit.RunResult, Recorder],
) -> None:
    res, rec = sampled
    per_query: dict[str, list[tuple[float, int]]] = {}
    for user, temperature, seed in rec.seen:
        per_query.setdefault(user, []).append((temperature, seed))
    assert len(per_query) == 4
    for calls in per_query.values():
        assert sorted(calls) == [(0.7, 0), (0.7, 1)]  # sampled, one seed per copy
    steps = read(res.folder / "steps.jsonl")
    copies = {r["id"]: r for r in steps if r["meta"]["step"] == "sample"}
    composed = {r["id"] for r in steps if r["meta"]["step"] == "compose"}
    assert len(copies) == 2 * len(composed) == 8
    assert sorted(Counter(c["meta"]["response_index"] for c in copies.values()).values()) == [4, 4]
    # Every response's lineage is on disk: response -> copy -> composed instruction.
    responses = res.rows() + [r for r in res.rejected() if r.meta.get("kind") == "response"]
    assert len(responses) == 8
    for r in responses:
        assert copies[r.parent_id]["parent_id"] in composed
    assert res.summary["steps"]["sample"]["kept"] == 8
    assert (
        list(res.summary["steps"]).index("sample")
        == list(res.summary["steps"]).index("respond") - 1
    )


def test_one_response_stays_greedy(tmp_path: Path) -> None:
    rec = Recorder()
    res = run_autoif(tmp_path / "run", 1, rec)
    assert {(t, s) for _, t, s in rec.seen} == {(0.0, 0)}
    assert "sample" not in res.summary["steps"]
    with pytest.raises(EvolkitError, match="temperature above 0"):
        AutoIFConfig(responses_per_query=2, temperature=0.0)


def test_kto_labels_are_the_verifier_verdicts(sampled: tuple[evolkit.RunResult, Recorder]) -> None:
    res, _ = sampled
    rows = res.to_dataset("kto").to_list()
    labels = Counter((r["completion"][0]["content"], r["label"]) for r in rows)
    assert labels == {
        (SHORT, True): 1,
        ("Light scatters.", True): 2,
        (LONG, False): 1,
        ("A museum visit is a lovely option for the whole family.", False): 2,
    }
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert all("Answer in fewer than 5 words" in r["prompt"][-1]["content"] for r in rows)


def test_dpo_pairs_a_passing_and_a_failing_answer(
    sampled: tuple[evolkit.RunResult, Recorder], tmp_path: Path
) -> None:
    res, _ = sampled
    out = tmp_path / "dpo.jsonl"
    cli = CliRunner().invoke(app, ["export", str(res.folder), "-o", str(out), "--format", "dpo"])
    assert cli.exit_code == 0, cli.output
    (pair,) = read(out)
    assert pair["prompt"] == [
        {
            "role": "user",
            "content": "How do bees make honey from nectar?\n\nAnswer in fewer than 5 words",
        }
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": SHORT}]
    assert pair["rejected"] == [{"role": "assistant", "content": LONG}]
    assert "1 dpo rows from 3 accepted and 3 failed responses" in cli.output
    assert "2 prompts had responses on one side only" in cli.output


def test_preference_formats_need_verifier_verdicts(tmp_path: Path) -> None:
    from tests.test_evolve import backends as evolve_backends

    res = evolkit.evolve(
        [{"instruction": "Write a poem about autumn."}],
        tmp_path / "evol",
        backends=evolve_backends(),
        rounds=1,
        cache=None,
        progress=False,
    )
    with pytest.raises(EvolkitError, match="--format dpo needs the responses of an AutoIF run"):
        res.to_dataset("dpo")


def test_constraints_and_queries_in_memory(
    sampled: tuple[evolkit.RunResult, Recorder], tmp_path: Path
) -> None:
    res = evolkit.autoif(
        SEEDS,
        [{"turns": [q, "follow-up"]} for q in QUERIES],
        tmp_path / "mem",
        config(responses_per_query=2),
        backends=backends(responder=ScriptedBackend(Recorder(), "responder-x")),
        cache=None,
        progress=False,
    )
    want, _ = sampled
    assert [(r.instruction, r.output) for r in res.rows()] == [
        (r.instruction, r.output) for r in want.rows()
    ]
    inputs = json.loads((tmp_path / "mem/config.json").read_text())["settings"]["inputs"]
    assert inputs["constraints"]["lines"] == "in memory"
    assert inputs["queries"]["rows"] == "in memory"


def test_show_an_autoif_run(sampled: tuple[evolkit.RunResult, Recorder]) -> None:
    res, _ = sampled
    out = CliRunner().invoke(app, ["show", str(res.folder)], env={"COLUMNS": "100"}).output
    assert "query" in out and "instruction (query + constraint)" in out
    assert "verifiers: 3 of 3 passed" in out
    assert "response 1 · id" in out and "response 2 · id" in out  # the sampled copies


def test_dataset_card_beside_the_export(
    sampled: tuple[evolkit.RunResult, Recorder], tmp_path: Path
) -> None:
    hf_hub = pytest.importorskip("huggingface_hub")
    res, _ = sampled
    out = tmp_path / "data" / "kto.jsonl"
    args = ["export", str(res.folder), "-o", str(out), "--format", "kto", "--hub-card"]
    cli = CliRunner().invoke(app, [*args, "--license", "apache-2.0"])
    assert cli.exit_code == 0, cli.output
    card = hf_hub.DatasetCard.load(out.parent / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "kto.jsonl"}]}
    ]
    info = meta["evolkit"]
    run_config = json.loads((res.folder / "config.json").read_text())
    assert info["command"] == "autoif" and info["fingerprint"] == run_config["fingerprint"]
    assert info["config"] == {k: v for k, v in run_config["settings"].items() if k != "inputs"}
    assert info["seeds"] == run_config["settings"]["inputs"]
    assert info["models"] == {"evolver": "embedded", "responder": "embedded", "judge": "embedded"}
    assert info["models_used"] == ["evolver-x", "judge-x", "responder-x"]
    assert info["counts"]["export"]["exported_rows"] == 6
    assert info["counts"]["run"]["funnel"]["verified_responses"] == 3
    assert "kto.jsonl" in card.text and "KTOTrainer" in card.text
    # Exporting again replaces evolkit's own card; a README.md of the user's is never touched.
    assert CliRunner().invoke(app, args).exit_code == 0
    mine = tmp_path / "mine" / "README.md"
    mine.parent.mkdir()
    mine.write_text("# my notes\n")
    res2 = CliRunner().invoke(
        app,
        [
            "export",
            str(res.folder),
            "-o",
            str(mine.parent / "k.jsonl"),
            "--format",
            "kto",
            "--hub-card",
        ],
    )
    assert res2.exit_code == 1 and "refusing to replace it" in str(res2.exception)
    assert mine.read_text() == "# my notes\n"


def test_push_to_hub_offline_is_one_line(
    sampled: tuple[evolkit.RunResult, Recorder], tmp_path: Path
) -> None:
    res, _ = sampled
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "push" / "kto.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "evolkit", "export", str(res.folder), "-o", str(out),
         "--format", "kto", "--push-to-hub", "someone/evolkit-data"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE" in errors[0], proc.stderr
    assert out.exists() and (out.parent / "README.md").exists()  # nothing lost: push later
