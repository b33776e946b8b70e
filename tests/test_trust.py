"""Trust: no silent data loss, no silently wrong data, one clear line for every failure.

Each test here pins a failure a user met on an earlier version (issue 7): two writers on one
run folder, --overwrite deleting a user's file, empty input "succeeding", a damaged journal or
an edited output file, a full disk, a bad --top, and a 5 MB rewrite bloating the rejects file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from evolkit.errors import EvolkitError
from evolkit.models.base import ChatRequest, Generation
from evolkit.runs import LOCK, RunFolder, RunLock
from evolkit.scenarios.evol_instruct import EvolConfig, evolve
from tests.fakes import ScriptedBackend, instruction_of

SEEDS = [
    "Write a short poem about the sea.",
    "Explain how a bicycle gear works.",
    "List three uses of vinegar in cooking.",
    "Describe the water cycle for a child.",
]


def write_seeds(path: Path, seeds: list[str] = SEEDS) -> Path:
    path.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds))
    return path


def good_evolver(req: ChatRequest) -> str:
    return instruction_of(req) + " Answer in exactly three numbered steps."


def responder(req: ChatRequest) -> str:
    if "painter" in req.messages[-1][1]:
        return "Sorry, no."
    return "Here is a careful answer with several useful details."


def backends() -> dict[str, ScriptedBackend]:
    return {
        "evolver": ScriptedBackend(good_evolver, "evolver-x"),
        "judge": ScriptedBackend(lambda r: "Not equal", "judge-x"),
        "responder": ScriptedBackend(responder, "responder-x"),
    }


def run_evolve(seeds: Path, out: Path, **kw: object) -> dict:
    settings: dict[str, object] = {"rounds": 1, "cache": None, "progress": False, "batch_size": 2}
    settings.update(kw)
    return evolve(seeds, out, backends=backends(), **settings)  # type: ignore[arg-type]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess: exit code and every line it printed."""
    code = "import sys; from evolkit.cli import main; sys.argv[0] = 'evolkit'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- 1. one writer per run folder ---------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from evolkit.runs import RunFolder
    folder = RunFolder(sys.argv[1], {"x": 1})
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(out: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    holder = hold_lock(out, 60)
    try:
        line = one_error_line(cli("evolve", str(seeds), "-o", str(out), "--rounds", "1"))
        assert str(out) in line and f"PID {holder.pid}" in line
        with pytest.raises(EvolkitError, match=f"PID {holder.pid}"):
            RunFolder(out, {"x": 1})
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    holder = hold_lock(out, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (out / LOCK).read_text()  # the dead process's note is still there
    with caplog.at_level("INFO", logger="evolkit"), RunFolder(out, {"x": 1}):
        assert str(os.getpid()) in (out / LOCK).read_text()
    assert f"left by PID {holder.pid}" in caplog.text


def test_two_runs_at_once_never_duplicate_rows(tmp_path: Path) -> None:
    """The reproduced bug: two processes on one -o both wrote every row."""
    out = tmp_path / "run"
    out.mkdir()
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    other = RunLock(out)
    other.acquire()
    with pytest.raises(EvolkitError, match="in use by another"):
        run_evolve(seeds, out)
    other.release()
    run_evolve(seeds, out)
    done = rows(out / "evolved.jsonl") + rows(out / "rejected.jsonl")
    assert len(done) == len({r["id"] for r in done}) == len(SEEDS)


# -- 5. --overwrite removes only evolkit's files -------------------------------------------------


def test_overwrite_refuses_a_folder_with_a_users_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run_evolve(seeds, out)
    notes = out / "my_notes.txt"
    notes.write_text("mine")
    with pytest.raises(EvolkitError, match=r"my_notes\.txt"):
        run_evolve(seeds, out, overwrite=True)
    assert notes.read_text() == "mine"
    assert (out / "evolved.jsonl").exists()  # nothing of the run was removed either
    line = one_error_line(cli("evolve", str(seeds), "-o", str(out), "--overwrite"))
    assert "my_notes.txt" in line and notes.exists()


def test_overwrite_starts_over_and_a_new_run_refuses_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run_evolve(seeds, out)
    summary = run_evolve(seeds, out, overwrite=True)
    assert summary["resumed"] is False and summary["rows_processed_this_invocation"] == 4
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text("print(1)")
    with pytest.raises(EvolkitError, match=r"train\.py"):
        run_evolve(seeds, elsewhere)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["train.py"]


# -- 6. every failure is one line, exit non-zero -------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_input_is_an_error_not_a_success(tmp_path: Path, content: str) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(content)
    line = one_error_line(cli("evolve", str(seeds), "-o", str(tmp_path / "run")))
    assert str(seeds) in line and "no seed rows" in line


def test_out_naming_a_file_is_one_line(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    target = tmp_path / "afile.txt"
    target.write_text("keep me")
    line = one_error_line(cli("evolve", str(seeds), "-o", str(target)))
    assert "is a file" in line and target.read_text() == "keep me"


def test_select_top_abc_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "scored.jsonl"
    src.write_text(json.dumps({"instruction": "a", "output": "b", "scores": {"ic_ifd": 1}}) + "\n")
    line = one_error_line(cli("select", str(src), "-o", str(tmp_path / "sel"), "--top", "abc"))
    assert "--top 'abc'" in line


def test_a_journal_line_missing_keys_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run_evolve(seeds, out)
    journal = out / "checkpoint.jsonl"
    lines = journal.read_text().splitlines()
    broken = json.loads(lines[0])
    del broken["inputs"]
    journal.write_text("\n".join([json.dumps(broken), *lines[1:]]) + "\n")
    with pytest.raises(EvolkitError, match=r"checkpoint.jsonl:1: field 'inputs'"):
        run_evolve(seeds, out)
    line = one_error_line(cli("evolve", str(seeds), "-o", str(out), "--rounds", "1"))
    assert "checkpoint.jsonl:1" in line and "--overwrite" in line


@pytest.mark.parametrize("name", ["evolved.jsonl", "rejected.jsonl"])
def test_a_committed_row_removed_by_hand_is_redone(tmp_path: Path, name: str) -> None:
    """Today: a missing rejected row vanished with exit 0 and a wrong summary; a missing kept
    row raised KeyError on every rerun. Now its batch is redone, and the totals come back."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", [*SEEDS, "Name a famous painter."])
    out = tmp_path / "run"
    first = run_evolve(seeds, out)
    assert first["kept"] >= 1 and first["rejected"] >= 1
    path = out / name
    kept_lines = path.read_text().splitlines()
    path.write_text("\n".join(kept_lines[1:]) + ("\n" if kept_lines[1:] else ""))
    again = run_evolve(seeds, out)
    assert again["rows_processed_this_invocation"] >= 1
    assert (again["kept"], again["rejected"]) == (first["kept"], first["rejected"])
    done = rows(out / "evolved.jsonl") + rows(out / "rejected.jsonl")
    assert len(done) == len({r["id"] for r in done}) == len(SEEDS) + 1


def test_a_full_disk_stops_with_one_line_and_keeps_finished_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evolkit.io.writers as writers

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    real_write = os.write
    calls = {"n": 0}

    def full_after_one(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(writers.os, "write", full_after_one)
    with pytest.raises(EvolkitError, match="No space left on device") as err:
        run_evolve(seeds, out)
    assert "run the same command again" in str(err.value)
    monkeypatch.undo()
    summary = run_evolve(seeds, out)
    assert summary["resumed"] is True
    done = rows(out / "evolved.jsonl") + rows(out / "rejected.jsonl")
    assert len(done) == len({r["id"] for r in done}) == len(SEEDS)


# -- 10. a rejected row stores a prefix of a huge failed try, not all of it ---------------------


def test_a_huge_rewrite_does_not_bloat_the_rejects_file(tmp_path: Path) -> None:
    huge = "word " * 1_000_000  # 5 MB
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS[:1])
    out = tmp_path / "run"
    b = backends()
    b["evolver"] = ScriptedBackend(lambda r: huge, "evolver-x")
    evolve(seeds, out, rounds=1, attempts=3, cache=None, progress=False, backends=b)
    (row,) = rows(out / "rejected.jsonl")
    size = (out / "rejected.jsonl").stat().st_size
    assert size < len(huge) + 20_000  # the row's own instruction, and small notes besides
    evo = row["meta"]["evolution"]
    assert evo["raw_chars"] == len(huge) and len(evo["raw"]) <= 1000
    assert len(evo["failed_tries"]) == 2
    for tried in evo["failed_tries"]:
        assert tried["chars"] == len(huge.strip()) and len(tried["text"]) <= 300


# -- 3. only what a server understands ---------------------------------------------------------


def test_repetition_penalty_is_unset_for_servers_and_1_15_locally() -> None:
    assert EvolConfig(backend="openai").respond_params().repetition_penalty is None
    assert EvolConfig(backend="local").respond_params().repetition_penalty == 1.15
    set_by_user = EvolConfig(backend="openai", repetition_penalty=1.1)
    assert set_by_user.respond_params().repetition_penalty == 1.1


# -- 11. the scorer uses the supported cache argument ------------------------------------------


def test_scoring_with_a_shared_prefix_raises_no_deprecation(tiny_model_dir: Path) -> None:
    from evolkit.models.scoring import LossScorer, ScoreItem

    scorer = LossScorer.load(str(tiny_model_dir), template="alpaca", max_length=64)
    items = [ScoreItem(f"Say {w}.", "", f"{w} {w}.") for w in ("one", "two", "three", "four")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        scorer.score(items)
    assert not [w for w in seen if "past_key_values" in str(w.message)]


# -- the run records the model calls that failed, and says so -----------------------------------


def test_every_row_failing_is_the_runs_failure(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    b = backends()
    b["responder"] = ScriptedBackend(
        lambda r: Generation("", "error", error="HTTP 400: unknown field"), "responder-x"
    )
    with pytest.raises(EvolkitError, match="HTTP 400: unknown field") as err:
        evolve(seeds, tmp_path / "run", rounds=1, cache=None, progress=False, backends=b)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["failed_calls"]["rows_left_for_next_run"] == len(SEEDS)
    assert "run the same command again" in str(err.value)
