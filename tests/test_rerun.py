"""Reruns from a run's config.json: `evolkit COMMAND --config RUN/config.json [-o NEW]`.

The tiny random model answers (mechanics only); the call cache makes every rerun's answers
free, which the summaries show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolkit.cli import app

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ["Write a haiku about snow.", "List two uses of salt.", "Explain why ice floats."]


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res.output


def cli_line(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """Run the real entry point (the one-line error handling lives there)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "-m", "evolkit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    return res.returncode, [x for x in res.stderr.splitlines() if x.strip()]


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.fixture(scope="module")
def evolved_once(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp_path = tmp_path_factory.mktemp("rerun")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    out = tmp_path / "a"
    invoke(
        "evolve", str(seeds), "-o", str(out), "--rounds", "1", "--evolver", str(tiny_model_dir),
        "--max-new-tokens", "6", "--evolve-max-new-tokens", "12", "--rules", "empty",
        "--cache", str(tmp_path / "calls.sqlite"),
    )  # fmt: skip
    assert rows(out / "evolved.jsonl")
    return out


@pytest.fixture()
def evolved(evolved_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run for each test (a copied folder resumes like the original)."""
    copy = tmp_path / "a"
    shutil.copytree(evolved_once, copy)
    return copy


def test_evolve_rerun_gives_the_same_rows_from_the_cache(evolved: Path, tmp_path: Path) -> None:
    new = tmp_path / "b"
    invoke("evolve", "--config", str(evolved / "config.json"), "-o", str(new))
    keys = ("id", "parent_id", "instruction", "output", "operation")
    assert [[r[k] for k in keys] for r in rows(new / "evolved.jsonl")] == [
        [r[k] for k in keys] for r in rows(evolved / "evolved.jsonl")
    ]
    assert config(new)["fingerprint"] == config(evolved)["fingerprint"]
    usage = json.loads((new / "summary.json").read_text())["models"]
    assert usage and all(u["requests"] == u["cached"] > 0 for u in usage.values())


def test_an_override_changes_only_that_setting(evolved: Path, tmp_path: Path) -> None:
    new = tmp_path / "c"
    invoke("evolve", "--config", str(evolved), "-o", str(new), "--max-new-tokens", "4")
    before, after = config(evolved), config(new)
    changed = {k for k in before["settings"] if before["settings"][k] != after["settings"][k]}
    assert changed == {"max_new_tokens"}
    assert after["settings"]["max_new_tokens"] == 4
    assert after["fingerprint"] != before["fingerprint"]


def test_rerun_in_place_resumes_and_never_repeats_overwrite(evolved: Path, tmp_path: Path) -> None:
    # A run started with --overwrite: its config.json says so, but a rerun must not wipe it.
    invoke("evolve", "--config", str(evolved), "--overwrite")
    assert config(evolved)["settings"]["overwrite"] is True
    kept = rows(evolved / "evolved.jsonl")
    invoke("evolve", "--config", str(evolved / "config.json"))
    assert json.loads((evolved / "summary.json").read_text())["resumed"] is True
    assert rows(evolved / "evolved.jsonl") == kept


def test_another_commands_config_is_refused_in_one_line(evolved: Path, tmp_path: Path) -> None:
    code, lines = cli_line(
        "score", "--config", str(evolved / "config.json"), "-o", "s", cwd=tmp_path
    )
    assert code == 1 and len(lines) == 1
    assert "written by `evolkit evolve`, not `evolkit score`" in lines[0]
    assert not (tmp_path / "s").exists()


def test_rows_given_in_memory_must_be_given_again(tmp_path: Path) -> None:
    import evolkit
    from tests.test_evolve import backends

    evolkit.evolve(
        [{"instruction": s} for s in SEEDS],
        tmp_path / "mem",
        backends=backends(),
        rounds=1,
        cache=None,
        progress=False,
    )
    code, lines = cli_line("evolve", "--config", str(tmp_path / "mem"), "-o", "x", cwd=tmp_path)
    assert code == 1 and len(lines) == 1
    assert "rows in memory" in lines[0] and "give INPUT" in lines[0]


def test_score_rerun_and_override(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": s, "output": f"An answer of some words for {s}"}) + "\n"
            for s in SEEDS
        )
    )
    first = tmp_path / "s1"
    invoke(
        "score", str(src), "-o", str(first), "--scorer", str(tiny_model_dir), "--max-length", "64"
    )
    again = tmp_path / "s2"
    invoke("score", "--config", str(first / "config.json"), "-o", str(again))
    assert [r["scores"] for r in rows(again / "scored.jsonl")] == [
        r["scores"] for r in rows(first / "scored.jsonl")
    ]
    assert config(again)["fingerprint"] == config(first)["fingerprint"]
    short = tmp_path / "s3"
    invoke("score", "--config", str(first), "-o", str(short), "--max-length", "8")
    a, b = config(first)["settings"], config(short)["settings"]
    assert {k for k in a if a[k] != b[k]} == {"max_length"}
    assert config(short)["fingerprint"] != config(first)["fingerprint"]
    assert all(r["meta"]["scoring"]["truncated"] for r in rows(short / "scored.jsonl"))


def test_version() -> None:
    from evolkit import __version__

    assert invoke("--version").strip() == f"evolkit {__version__}"
