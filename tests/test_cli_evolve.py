"""The evolve command as a user runs it: bad input, kill -9 and resume, the real model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cache: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    extra = (
        []
        if args[0] == "export"
        else (["--no-cache"] if cache is None else ["--cache", str(cache)])
    )
    return subprocess.run(
        [sys.executable, "-m", "evolkit", *args, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def read(path: Path) -> list[dict]:
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


BAD = (
    '{"instruction": "Name a bird.", "input": ""}\n'
    '{"instruction": "List two fruits.", "input": ""\n'  # malformed JSON on line 2
    '{"instruction": 42}\n'  # wrong type on line 3
    '{"input": "no instruction here"}\n'  # missing field on line 4
    '{"instruction": "Describe snow.", "input": ""}\n'
)


def test_bad_input_stops_with_one_line_naming_file_line_field(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(BAD)
    res = cli("evolve", str(src), "-o", str(tmp_path / "run"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert f"{src}:2" in lines[0].replace("\n", "") and "error" in lines[0]


def test_bad_input_skip_keeps_good_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(BAD)
    out = tmp_path / "run"
    res = cli(
        "evolve",
        str(src),
        "-o",
        str(out),
        "--on-bad-record",
        "skip",
        "--rounds",
        "1",
        "--evolver",
        str(tiny_model_dir),
        "--max-new-tokens",
        "4",
        "--rules",
        "empty",
    )
    assert res.returncode == 0, res.stderr
    bad = read(out / "bad_records.jsonl")
    assert [(b["line"], b["field"]) for b in bad] == [
        (2, "json"),
        (3, "instruction"),
        (4, "instruction"),
    ] or [b["line"] for b in bad] == [2, 3, 4]
    assert all(b["raw"] for b in bad)  # the original text is kept, nothing is lost
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == 2 and summary["bad_records"] == 3
    assert summary["rounds"]["1"]["evolved"] == 2


def test_kill_9_then_resume_finishes_without_duplicates(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"instruction": f"Write fact number {i} about owls."}) + "\n"
            for i in range(10)
        )
    )
    out = tmp_path / "run"
    cache = tmp_path / "calls.sqlite"
    args = [
        "evolve",
        str(seeds),
        "-o",
        str(out),
        "--rounds",
        "2",
        "--batch-size",
        "2",
        "--evolver",
        str(tiny_model_dir),
        "--max-new-tokens",
        "8",
        "--rules",
        "empty",
        "--cache",
        str(cache),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolkit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    journal = out / "checkpoint.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert journal.exists(), "the run never committed a batch before the kill"
    before = len(read(out / "evolved.jsonl")) + len(read(out / "rejected.jsonl"))
    res = subprocess.run(
        [sys.executable, "-m", "evolkit", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    kept, rejected = read(out / "evolved.jsonl"), read(out / "rejected.jsonl")
    ids = [r["id"] for r in kept + rejected]
    assert len(ids) == len(set(ids))
    round1 = [r for r in kept + rejected if r["round"] == 1]
    assert sorted(r["parent_id"] for r in round1) == sorted({r["parent_id"] for r in round1})
    assert len(round1) == 10
    round2 = [r for r in kept + rejected if r["round"] == 2]
    assert len(round2) == len([r for r in kept if r["round"] == 1])
    assert len(kept) + len(rejected) >= before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] is True


def test_other_config_into_same_out_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Name a bird."}) + "\n")
    base = [
        "evolve",
        str(seeds),
        "-o",
        str(tmp_path / "run"),
        "--evolver",
        str(tiny_model_dir),
        "--max-new-tokens",
        "4",
        "--rounds",
        "1",
    ]
    assert cli(*base).returncode == 0
    res = cli(*base[:-1], "2")
    assert (
        res.returncode == 1
        and "another configuration" in res.stderr
        and "--overwrite" in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert cli(*base[:-1], "2", "--overwrite").returncode == 0


@pytest.mark.slow
def test_end_to_end_embedded_model_three_seeds(tmp_path: Path, embedded_dir: Path) -> None:
    out = tmp_path / "run"
    res = cli(
        "evolve",
        str(ROOT / "examples" / "seeds.jsonl"),
        "-o",
        str(out),
        "--limit",
        "3",
        "--rounds",
        "1",
        "--max-new-tokens",
        "96",
        cache=tmp_path / "calls.sqlite",
    )
    assert res.returncode == 0, res.stderr
    kept, rejected = read(out / "evolved.jsonl"), read(out / "rejected.jsonl")
    assert len(kept) + len(rejected) == 3
    for row in kept:
        assert row["evolver"] == "smollm2-135m-instruct"
        assert row["instruction"].strip() and row["output"].strip()
        assert row["instruction"] != row["meta"]["parent"]["instruction"]
    for row in rejected:
        assert any(not v["kept"] and v["detail"] for v in row["verdicts"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]["1"]["evolved"] == 3
    assert summary["models"]["smollm2-135m-instruct"]["completion_tokens"] > 0
    # export to training formats from the run
    alpaca = tmp_path / "train.json"
    res = cli("export", str(out), "-o", str(alpaca), "--format", "alpaca")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(alpaca.read_text())) == len(kept)
    assert (tmp_path / "dataset_info.json").exists()
