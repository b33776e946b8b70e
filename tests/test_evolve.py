"""Evol-Instruct pipeline mechanics with scripted models: lineage, rules, summary, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolkit.errors import ConfigMismatchError
from evolkit.models.base import ChatRequest, Generation
from evolkit.scenarios.evol_instruct import EvolConfig, evolve
from evolkit.scenarios.runner import RunIncompleteError
from evolkit.stages.evolve import OPERATIONS, choose_operation
from tests.fakes import ScriptedBackend, instruction_of, last_user

SEEDS = [
    "Write a poem about autumn.",
    "List three uses of vinegar.",
    "Explain how a kite flies.",
    "Name a famous painter.",
    "Describe the smell of rain.",
    "Suggest a name for a bakery.",
]


def write_seeds(path: Path, seeds: list[str] = SEEDS) -> Path:
    path.write_text("".join(json.dumps({"instruction": s, "input": ""}) + "\n" for s in seeds))
    return path


def good_evolver(req: ChatRequest) -> str:
    text = instruction_of(req)
    if "vinegar" in text:
        return "I'm ready to help! What's your request?"  # asks back: must be eliminated
    return "Rewritten prompt: " + text.rstrip(".") + ", and explain each choice in two sentences."


def judge(req: ChatRequest) -> str:
    return "equal" if "kite" in last_user(req) else "not equal"


def responder(req: ChatRequest) -> str:
    if "painter" in last_user(req):
        return "Sorry, no."
    return "Here is a careful answer with several useful details about the request."


def backends(**over) -> dict:
    return {
        "evolver": over.get("evolver", ScriptedBackend(good_evolver, "evolver-x")),
        "judge": over.get("judge", ScriptedBackend(judge, "judge-x")),
        "responder": over.get("responder", ScriptedBackend(responder, "responder-x")),
    }


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_round_lineage_rules_and_summary(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    summary = evolve(
        seeds, out, EvolConfig(rounds=1), cache=None, progress=False, backends=backends()
    )
    kept, rejected = read(out / "evolved.jsonl"), read(out / "rejected.jsonl")
    assert len(kept) + len(rejected) == len(SEEDS)
    reasons = {r["meta"]["parent"]["instruction"]: r["verdicts"][-1]["rule"] for r in rejected}
    assert reasons == {
        "List three uses of vinegar.": "not_an_instruction",
        "Explain how a kite flies.": "no_information_gain",
        "Name a famous painter.": "sorry",
    }
    for row in kept:
        assert row["round"] == 1 and row["parent_id"] and row["evolver"] == "evolver-x"
        assert not row["instruction"].lower().startswith("rewritten prompt")  # cleaned
        assert row["output"].startswith("Here is")
        assert row["meta"]["seed_id"] == row["parent_id"]
    # rotate policy: seed i in round 1 uses operation (i + 1) mod K
    ops = {r["meta"]["seed_index"]: r["operation"] for r in kept + rejected}
    assert ops == {i: OPERATIONS[(i + 1) % len(OPERATIONS)] for i in range(len(SEEDS))}
    r1 = summary["rounds"][1]
    assert (r1["evolved"], r1["kept"], r1["rejected"]) == (6, 3, 3)
    assert r1["rejected_by_rule"] == {"not_an_instruction": 1, "no_information_gain": 1, "sorry": 1}
    assert summary["kept_rate"] == 0.5
    assert sum(v["kept"] for v in summary["kept_rate_by_operation"].values()) == 3
    assert (out / "config.json").exists()
    assert json.loads((out / "summary.json").read_text())["kept"] == 3


def test_rounds_chain_kept_rows(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    summary = evolve(
        seeds,
        tmp_path / "run",
        EvolConfig(rounds=3, rules=["empty"]),
        cache=None,
        progress=False,
        backends=backends(evolver=ScriptedBackend(lambda r: instruction_of(r) + " More.")),
    )
    rows = read(tmp_path / "run" / "evolved.jsonl")
    assert [summary["rounds"][r]["kept"] for r in (1, 2, 3)] == [6, 6, 6]
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        if row["round"] > 1:
            parent = by_id[row["parent_id"]]
            assert parent["round"] == row["round"] - 1
            assert row["meta"]["parent"]["instruction"] == parent["instruction"]
            assert row["meta"]["seed_id"] == parent["meta"]["seed_id"]
    assert len({r["id"] for r in rows}) == len(rows) == 18


def test_duplicates_across_rows_are_eliminated(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    same = ScriptedBackend(lambda r: "Write a limerick about a cat who loves rainy days?")
    evolve(
        seeds,
        tmp_path / "run",
        EvolConfig(rounds=1, rules=["duplicate"]),
        cache=None,
        progress=False,
        backends=backends(evolver=same),
    )
    assert len(read(tmp_path / "run" / "evolved.jsonl")) == 1
    rejected = read(tmp_path / "run" / "rejected.jsonl")
    assert {r["verdicts"][-1]["rule"] for r in rejected} == {"duplicate"}


def test_resume_after_crash_neither_recomputes_nor_duplicates(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    cfg = EvolConfig(rounds=1)
    crashing = ScriptedBackend(responder, "responder-x", fail_after=3)
    with pytest.raises(RuntimeError):
        evolve(
            seeds,
            out,
            cfg,
            cache=None,
            progress=False,
            batch_size=2,
            # one batch at a time: the crash lands after some batches were committed (batches
            # in flight together share model calls, and so a crash)
            concurrent_batches=1,
            backends=backends(responder=crashing),
        )
    first = read(out / "evolved.jsonl") + read(out / "rejected.jsonl")
    assert 0 < len(first) < len(SEEDS)
    evolver = ScriptedBackend(good_evolver, "evolver-x")
    summary = evolve(
        seeds,
        out,
        cfg,
        cache=None,
        progress=False,
        batch_size=2,
        backends=backends(evolver=evolver),
    )
    rows = read(out / "evolved.jsonl") + read(out / "rejected.jsonl")
    assert len(rows) == len({r["id"] for r in rows}) == len(SEEDS)
    assert evolver.calls == len(SEEDS) - len(first)  # committed batches were not redone
    assert summary["resumed"] is True
    assert summary["rows_processed_this_invocation"] == len(SEEDS) - len(first)


def test_torn_writes_are_repaired_on_resume(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    cfg = EvolConfig(rounds=1, rules=["empty"])
    evolve(seeds, out, cfg, cache=None, progress=False, batch_size=2, backends=backends())
    # Simulate a kill between the row append and the journal append of the last batch,
    # with a torn half line at the end of the output.
    journal = (out / "checkpoint.jsonl").read_text().splitlines()
    (out / "checkpoint.jsonl").write_text("\n".join(journal[:-1]) + "\n")
    with open(out / "evolved.jsonl", "a") as f:
        f.write('{"id": "torn", "instr')
    summary = evolve(seeds, out, cfg, cache=None, progress=False, batch_size=2, backends=backends())
    rows = read(out / "evolved.jsonl")
    assert len(rows) == len({r["id"] for r in rows}) == len(SEEDS)
    assert summary["rows_processed_this_invocation"] == 2


def test_other_config_is_refused_unless_overwrite(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    evolve(seeds, out, EvolConfig(rounds=1), cache=None, progress=False, backends=backends())
    with pytest.raises(ConfigMismatchError, match="rounds"):
        evolve(seeds, out, EvolConfig(rounds=2), cache=None, progress=False, backends=backends())
    summary = evolve(
        seeds,
        out,
        EvolConfig(rounds=2),
        cache=None,
        progress=False,
        overwrite=True,
        backends=backends(),
    )
    assert summary["resumed"] is False and 2 in summary["rounds"]


def test_call_cache_makes_rerun_free(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    cache = tmp_path / "calls.sqlite"
    evolve(
        seeds,
        tmp_path / "a",
        EvolConfig(rounds=1),
        cache=cache,
        progress=False,
        backends=backends(),
    )
    ev = ScriptedBackend(good_evolver, "evolver-x")
    rs = ScriptedBackend(responder, "responder-x")
    jd = ScriptedBackend(judge, "judge-x")
    evolve(
        seeds,
        tmp_path / "b",
        EvolConfig(rounds=1),
        cache=cache,
        progress=False,
        backends={"evolver": ev, "responder": rs, "judge": jd},
    )
    assert ev.calls == rs.calls == jd.calls == 0
    assert read(tmp_path / "a" / "evolved.jsonl") == read(tmp_path / "b" / "evolved.jsonl")


def test_failed_calls_are_not_committed_and_a_rerun_redoes_them(tmp_path: Path) -> None:
    """A call that failed is the run's failure, not the row's: nothing is written as rejected,
    the run ends with one error naming the cause, and the same command later redoes the rows."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    broken = ScriptedBackend(
        lambda r: Generation(text="", finish_reason="error", error="HTTP 400: context too long")
    )
    with pytest.raises(RunIncompleteError, match="context too long") as err:
        evolve(
            seeds,
            tmp_path / "run",
            EvolConfig(rounds=1),
            cache=None,
            progress=False,
            backends=backends(evolver=broken),
        )
    assert (tmp_path / "run" / "rejected.jsonl").read_text() == ""
    assert (tmp_path / "run" / "evolved.jsonl").read_text() == ""
    assert err.value.summary["failed_calls"]["rows_left_for_next_run"] == len(SEEDS)
    summary = evolve(
        seeds,
        tmp_path / "run",
        EvolConfig(rounds=1),
        cache=None,
        progress=False,
        backends=backends(),
    )
    assert summary["kept"] + summary["rejected"] == len(SEEDS)
    rejected = read(tmp_path / "run" / "rejected.jsonl")
    assert not any("context too long" in v["detail"] for r in rejected for v in r["verdicts"])


def test_failed_responses_and_judge_calls_are_redone(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    down = ScriptedBackend(lambda r: Generation(text="", finish_reason="error", error="HTTP 500"))
    for role in ("responder", "judge"):
        out = tmp_path / role
        with pytest.raises(RunIncompleteError):
            evolve(
                seeds,
                out,
                EvolConfig(rounds=1),
                cache=None,
                progress=False,
                backends=backends(**{role: down}),
            )
        rejected = read(out / "rejected.jsonl") if (out / "rejected.jsonl").exists() else []
        # Rows eliminated before the failing call are committed; none is blamed on it.
        rules = {r["verdicts"][-1]["rule"] for r in rejected}
        blamed = {"response_empty", "sorry", "punctuation_stopwords", "call_failed"}
        if role == "judge":
            blamed.add("no_information_gain")
        assert rules and not rules & blamed
        summary = evolve(
            seeds, out, EvolConfig(rounds=1), cache=None, progress=False, backends=backends()
        )
        assert summary["kept"] + summary["rejected"] == len(SEEDS)


def test_choose_operation_policies() -> None:
    ops = list(OPERATIONS)
    assert [choose_operation("rotate", ops, i, 2, 0, "x") for i in range(3)] == ops[2:5]
    assert choose_operation("fixed", ["deepen", "breadth"], 7, 2, 0, "x") == "breadth"
    picks = {choose_operation("random", ops, 0, 1, 5, f"id{i}") for i in range(60)}
    assert picks == set(ops)  # seeded random covers every operation
    assert choose_operation("random", ops, 0, 1, 5, "a") == choose_operation(
        "random", ops, 9, 1, 5, "a"
    )


def test_failed_rewrites_are_resampled_up_to_attempts(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS[:2])
    seen: dict[str, int] = {}

    def flaky(req: ChatRequest) -> str:
        text = instruction_of(req)
        seen[text] = seen.get(text, 0) + 1
        if seen[text] == 1:
            return "Sure! What would you like me to rewrite?"
        return text.rstrip(".") + " for a class of ten-year-old children, in five steps."

    ev = ScriptedBackend(flaky)
    summary = evolve(
        seeds,
        tmp_path / "run",
        EvolConfig(rounds=1, attempts=2),
        cache=None,
        progress=False,
        backends=backends(evolver=ev),
    )
    kept = read(tmp_path / "run" / "evolved.jsonl")
    assert ev.calls == 4 and len(kept) == 2
    for row in kept:
        evo = row["meta"]["evolution"]
        assert evo["attempt"] == 2
        assert evo["failed_tries"][0]["reason"].startswith("not_an_instruction")
    assert summary["evolution_attempts"] == {"2": 2} and summary["kept_on_first_try"] == 0

    # one attempt: the original method, the failure is eliminated
    ev1 = ScriptedBackend(lambda r: "Sure! What would you like me to rewrite?")
    summary = evolve(
        seeds,
        tmp_path / "run1",
        EvolConfig(rounds=1, attempts=1),
        cache=None,
        progress=False,
        backends=backends(evolver=ev1),
    )
    assert ev1.calls == 2 and summary["kept"] == 0


def test_overwrite_starts_over_even_with_the_same_config(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    evolve(seeds, out, EvolConfig(rounds=1), cache=None, progress=False, backends=backends())
    summary = evolve(
        seeds,
        out,
        EvolConfig(rounds=1),
        cache=None,
        progress=False,
        overwrite=True,
        backends=backends(),
    )
    assert summary["resumed"] is False
    assert summary["rows_processed_this_invocation"] == len(SEEDS)
    assert len(read(out / "evolved.jsonl")) + len(read(out / "rejected.jsonl")) == len(SEEDS)
