"""Auto Evol-Instruct with scripted models: the loop's choices, ties, failure rules, outputs,
resume after a crash inside the loop (and kill -9); the parser on messy texts; one run of the
real embedded model on a tiny setting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from evolkit.errors import EvolkitError
from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.records import Record
from evolkit.scenarios.auto_evol import auto_evol, trajectory_method_counts
from evolkit.scenarios.runner import RunIncompleteError
from evolkit.stages.auto_evol import (
    asks_back,
    describe_cases,
    evolution_failure,
    optimizer_messages,
    render_method,
    universal_method,
)
from evolkit.stages.rules import RuleSettings
from evolkit.stages.trajectory import (
    count_methods,
    fold,
    method_items,
    normalize_method,
    parse_candidate,
    parse_trajectory,
)
from tests.fakes import ScriptedBackend, last_user

ROOT = Path(__file__).resolve().parents[1]

SEEDS = [
    "Write a poem about autumn.",
    "List three uses of vinegar.",
    "Explain how a kite flies.",
    "Name a famous painter.",
    "Describe the smell of rain.",
    "Suggest a name for a bakery.",
    "Give two tips for sleeping well.",
    "Summarise the plot of a fairy tale.",
]


def write_seeds(path: Path, seeds: list[str] = SEEDS) -> Path:
    path.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- scripted models -------------------------------------------------------------------------
# A method's behaviour is written in it as a marker word: the scripted evolver reads the marker
# of the method it was given and answers accordingly.


def method_text(marker: str) -> str:
    return (
        f"Make the instruction harder ({marker}). Answer with a Methods: list, a Plan:, a "
        "Rewrite:, a Review: and the Final instruction: heading.\nInstruction:\n{instruction}"
    )


def sections(instruction: str, methods: list[str], final: str) -> str:
    listed = "\n".join(f"{i}. {m}" for i, m in enumerate(methods, 1))
    return (
        f"**Methods:**\n{listed}\n\nPlan:\nUse them.\n\nRewrite:\n{final}\n\n"
        f"Review:\nFine.\n\n## Final Rewritten Instruction\n{final}\n\nThis version is harder."
    )


def evolver(req: ChatRequest) -> str:
    text = last_user(req)
    instruction = text.rsplit("\n", 1)[-1]
    harder = instruction.rstrip(".") + ", and explain each step in two sentences."
    methods = ["Add a constraint", "Ask for the reasoning"]
    if "(GOOD" in text:  # never fails
        return sections(instruction, [*methods, "Narrow the topic"], harder)
    if "(WORSE)" in text:  # every rewrite is unchanged
        return sections(instruction, methods, instruction)
    if "(NOFINAL)" in text:
        return "Methods:\n- add detail\nRewrite:\n" + harder
    # the starting method and TIE: asks back on two seeds, else fine
    if "vinegar" in instruction or "kite" in instruction:
        return "Sure! Could you please provide the instruction you want me to rewrite?"
    return sections(instruction, ["Adding constraints", "Require a format"], harder)


def optimizer_for(plan: dict[int, str]) -> ScriptedBackend:
    """Candidate k (its sampling seed is the run seed + k) writes the method named plan[k]."""

    def answer(req: ChatRequest) -> str:
        k = req.params.seed
        marker = plan.get(k, "UNPARSED")
        if marker == "UNPARSED":
            return "Failed cases: the second one asked back. I would change the plan."
        return (
            f"Failed cases:\nCase 1 asked back.\n\nChanges:\nForbid questions.\n\n"
            f"**Improved method:**\n<<<\n{method_text(marker)}\n>>>"
        )

    return ScriptedBackend(answer, "optimizer-x")


def responder(req: ChatRequest) -> str:
    return "Here is a careful answer with several useful details about the request."


def judge(req: ChatRequest) -> str:
    return "not equal"


def backends(plan: dict[int, str], **over: Any) -> dict[str, Any]:
    return {
        "evolver": over.get("evolver") or ScriptedBackend(evolver, "evolver-x"),
        "optimizer": over.get("optimizer") or optimizer_for(plan),
        "responder": ScriptedBackend(responder, "responder-x"),
        "judge": ScriptedBackend(judge, "judge-x"),
    }


def run(seeds: Path, out: Path, plan: dict[int, str], **kw: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "steps": 1,
        "mini_batch": 3,
        "evolutions_per_item": 2,
        "candidates": 3,
        "dev_size": 4,
        "cache": None,
        "progress": False,
        "batch_size": 2,
        "method": start_method(seeds.parent),
    }
    settings.update(kw)
    b = settings.pop("backends", None) or backends(plan)
    return auto_evol(seeds, out, backends=b, **settings)


def start_method(folder: Path) -> Path:
    path = folder / "start.txt"
    path.write_text(method_text("START"))
    return path


class Recording(ScriptedBackend):
    """A scripted backend that keeps every request it was sent."""

    def __init__(self, inner: ScriptedBackend, fail_after: int | None = None) -> None:
        self.requests: list[ChatRequest] = []

        def answer(req: ChatRequest) -> str | Generation:
            self.requests.append(req)
            return inner.answer(req)

        super().__init__(answer, inner.model_id, fail_after)


def rows_of(out: Path, step: str) -> list[dict[str, Any]]:
    return [
        r for r in read(out / "steps.jsonl") if r["meta"].get("auto_evol", {}).get("step") == step
    ]


def dev_parents_asking_back(out: Path) -> int:
    dev = rows_of(out, "opt-0-dev")
    text = [r["meta"]["parent"]["instruction"] for r in dev]
    return sum(1 for t in text if "vinegar" in t or "kite" in t)


def test_the_candidate_with_the_lowest_dev_failure_rate_becomes_the_method(
    tmp_path: Path,
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    optimizer = Recording(optimizer_for({1: "WORSE", 2: "GOOD", 3: "UNPARSED"}))
    summary = run(seeds, out, {}, backends=backends({}, optimizer=optimizer))
    methods = json.loads((out / "methods.json").read_text())
    by_version = {m["version"]: m for m in methods["methods"]}
    assert list(by_version) == [
        "step0-initial",
        "step1-candidate1",
        "step1-candidate2",
        "step1-candidate3",
    ]
    initial = by_version["step0-initial"]
    asked = dev_parents_asking_back(out)
    assert initial["dev_size"] == 4 and initial["dev_failures"]["asks_back"] == asked
    assert initial["dev_failure_rate"] == asked / 4
    worse, good, unparsed = (by_version[f"step1-candidate{k}"] for k in (1, 2, 3))
    assert worse["dev_failures"] == {"asks_back": 0, "unparsed": 0, "unchanged": 4}
    assert worse["dev_failure_rate"] == 1.0 and good["dev_failure_rate"] == 0.0
    assert good["parent"] == "step0-initial" and good["chosen"] and good["best"]
    assert not unparsed["evaluated"] and unparsed["file"] is None
    assert unparsed["problem"] == "no improved-method section"
    assert methods["best"] == "step1-candidate2"
    assert [h["current"] for h in methods["history"]] == ["step0-initial", "step1-candidate2"]
    # every method text, named by step and candidate
    files = sorted(p.name for p in (out / "methods").iterdir())
    assert files == ["step0-initial.txt", "step1-candidate1.txt", "step1-candidate2.txt"]
    assert (out / "methods" / "step1-candidate2.txt").read_text().strip() == method_text("GOOD")
    assert (out / "methods" / "step0-initial.txt").read_text().strip() == method_text("START")
    # the trajectories: the mini-batch, each evolved L = 2 times with the current method
    traj = rows_of(out, "opt-1-evolve")
    assert len(traj) == 6 and {r["method_version"] for r in traj} == {"step0-initial"}
    assert sorted(r["meta"]["auto_evol"]["sample"] for r in traj) == [0, 0, 0, 1, 1, 1]
    # the optimizer read them, the failed cases named first with their rule
    prompt = last_user(optimizer.requests[0])
    assert method_text("START") in prompt
    failing = [r for r in traj if r["meta"]["auto_evol"]["failure"]]
    if failing:
        assert prompt.index("Problem: asks_back") < prompt.index("Problem: none found")
    assert {r.params.temperature for r in optimizer.requests} == {0.5}
    assert len({r.params.seed for r in optimizer.requests}) == 3  # three different candidates
    # the whole input evolved with the best method, answered and checked like `evolve`
    evolved = read(out / "evolved.jsonl")
    assert len(evolved) == len(SEEDS) == summary["final"]["kept"]
    assert {r["method_version"] for r in evolved} == {"step1-candidate2"}
    assert all(r["output"].startswith("Here is") and r["round"] == 1 for r in evolved)
    assert {r["meta"]["parent"]["instruction"] for r in evolved} == set(SEEDS)
    assert all(r["instruction"].endswith("two sentences.") for r in evolved)
    step = summary["optimisation"]["steps"][0]
    assert step["changed"] and step["chosen"] == "step1-candidate2"
    assert (step["candidates"], step["candidates_unparsed"], step["candidates_evaluated"]) == (
        3,
        1,
        2,
    )
    assert summary["best_method"]["version"] == "step1-candidate2"
    assert summary["trajectory_methods"]["distinct_methods"] >= 3


def test_ties_keep_the_current_method_and_the_first_of_equal_candidates_wins(
    tmp_path: Path,
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    # TIE behaves exactly like the starting method: the same failure rate
    run(seeds, tmp_path / "tie", {1: "TIE", 2: "WORSE"}, candidates=2)
    methods = json.loads((tmp_path / "tie" / "methods.json").read_text())
    rates = {m["version"]: m["dev_failure_rate"] for m in methods["methods"]}
    assert rates["step1-candidate1"] == rates["step0-initial"] > 0
    assert methods["best"] == "step0-initial"
    assert not any(m["chosen"] for m in methods["methods"][1:])
    evolved = read(tmp_path / "tie" / "evolved.jsonl")
    assert {r["method_version"] for r in evolved} == {"step0-initial"}
    # two candidates with the same (lowest) rate: the first one
    run(seeds, tmp_path / "equal", {1: "GOOD-A", 2: "GOOD-B"}, candidates=2)
    methods = json.loads((tmp_path / "equal" / "methods.json").read_text())
    rates = {m["version"]: m["dev_failure_rate"] for m in methods["methods"]}
    assert rates["step1-candidate1"] == rates["step1-candidate2"] == 0.0
    assert methods["best"] == "step1-candidate1"
    # the same text twice (a greedy optimizer): the second is recorded, not evaluated again
    run(seeds, tmp_path / "twins", {1: "GOOD", 2: "GOOD"}, candidates=2)
    methods = json.loads((tmp_path / "twins" / "methods.json").read_text())
    twin = methods["methods"][2]
    assert twin["problem"] == "the same text as step1-candidate1" and not twin["evaluated"]
    assert "opt-1-dev-2" not in journal_steps(tmp_path / "twins")


def test_later_steps_start_from_the_chosen_method(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    summary = run(seeds, out, {1: "WORSE", 2: "GOOD"}, steps=2, candidates=2)
    assert {r["method_version"] for r in rows_of(out, "opt-2-evolve")} == {"step1-candidate2"}
    methods = {m["version"]: m for m in json.loads((out / "methods.json").read_text())["methods"]}
    # step 2's optimizer wrote the parent's own text again: recorded, not re-evaluated
    same = methods["step2-candidate2"]
    assert same["parent"] == "step1-candidate2" and not same["evaluated"]
    assert same["problem"] == "the same text as its parent"
    assert methods["step2-candidate1"]["dev_failure_rate"] == 1.0
    assert [s["chosen"] for s in summary["optimisation"]["steps"]] == ["step1-candidate2"] * 2
    assert [s["changed"] for s in summary["optimisation"]["steps"]] == [True, False]
    # different mini-batches per step, drawn with the seed
    b1 = {r["parent_id"] for r in rows_of(out, "opt-1-evolve")}
    b2 = {r["parent_id"] for r in rows_of(out, "opt-2-evolve")}
    assert len(b1) == len(b2) == 3
    again = run(seeds, tmp_path / "again", {1: "WORSE", 2: "GOOD"}, steps=2, candidates=2)
    assert again["optimisation"] == summary["optimisation"]


OUTPUTS = ("methods.json", "evolved.jsonl", "steps.jsonl", "trajectory_methods.json")


def outputs(out: Path) -> dict[str, str]:
    files = {name: (out / name).read_text() for name in OUTPUTS}
    for p in sorted((out / "methods").iterdir()):
        files[f"methods/{p.name}"] = p.read_text()
    return files


PLAN = {1: "WORSE", 2: "GOOD", 3: "UNPARSED"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("reference")
    run(write_seeds(tmp / "seeds.jsonl"), tmp / "run", PLAN, batch_size=1)
    return outputs(tmp / "run")


def journal_steps(out: Path) -> list[str]:
    return [json.loads(x)["step"] for x in (out / "checkpoint.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("where", ["optimizer", "evolver"])
def test_a_crash_inside_the_loop_resumes_in_its_step_with_the_same_methods(
    where: str, reference: dict[str, str], tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    if where == "optimizer":
        # crashes after candidate 1 of step 1 was written and committed
        crashing = backends(
            PLAN, optimizer=ScriptedBackend(optimizer_for(PLAN).answer, "optimizer-x", fail_after=1)
        )
        step, left = "opt-1-candidates", 2
    else:
        # 4 dev + 6 trajectories + 4 dev (candidate 1) + 2 of candidate 2's dev evolutions
        crashing = backends(PLAN, evolver=ScriptedBackend(evolver, "evolver-x", fail_after=16))
        step, left = "opt-1-dev-2", 2 + len(SEEDS)
    with pytest.raises(RuntimeError, match="scripted crash"):
        # one batch at a time, so the crash lands in the step the case names
        run(seeds, out, PLAN, batch_size=1, concurrent_batches=1, backends=crashing)
    assert journal_steps(out)[-1] == step  # it stopped inside that step
    again = backends(PLAN)
    summary = run(seeds, out, PLAN, batch_size=1, backends=again)
    assert summary["resumed"] is True
    # only what was left was asked again: the loop's earlier steps came from the store
    assert again[where].calls == left
    assert outputs(out) == reference


KILLED_RUN = """
import sys, time
sys.path.insert(0, {root!r})
from tests import test_auto_evol as t
from tests.fakes import ScriptedBackend

def slow(req):
    time.sleep(0.15)
    return t.evolver(req)

b = t.backends(t.PLAN, evolver=ScriptedBackend(slow, "evolver-x"))
t.run(t.Path({seeds!r}), t.Path({out!r}), t.PLAN, batch_size=1, backends=b)
"""


def test_kill_9_inside_the_loop_resumes_exactly(reference: dict[str, str], tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    script = KILLED_RUN.format(root=str(ROOT), seeds=str(seeds), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    journal = out / "checkpoint.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and '"opt-1-dev-1"' in journal.read_text():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "final" not in journal_steps(out)
    summary = run(seeds, out, PLAN, batch_size=1)
    assert summary["resumed"] is True
    assert outputs(out) == reference


def test_a_failed_optimizer_call_stops_the_loop_and_a_rerun_finishes_it(
    reference: dict[str, str], tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    good = optimizer_for(PLAN)

    def flaky(req: ChatRequest) -> str | Generation:
        if req.params.seed == 2:
            return Generation(text="", finish_reason="error", error="HTTP 503")
        return good.answer(req)

    with pytest.raises(RunIncompleteError, match="HTTP 503"):
        run(
            seeds,
            out,
            PLAN,
            batch_size=1,
            backends=backends(PLAN, optimizer=ScriptedBackend(flaky, "optimizer-x")),
        )
    assert "final" not in journal_steps(out)
    assert not (out / "evolved.jsonl").exists()
    partial = json.loads((out / "summary.json").read_text())
    assert partial["failed_calls"]["rows_left_for_next_run"] == 1
    run(seeds, out, PLAN, batch_size=1)
    # the redone candidate was committed after candidate 3: the same rows, in another order
    got, want = outputs(out), dict(reference)
    assert sorted(got.pop("steps.jsonl").splitlines()) == sorted(
        want.pop("steps.jsonl").splitlines()
    )
    assert got == want


def test_method_file_errors_are_one_line(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    with pytest.raises(EvolkitError, match="no such file"):
        run(seeds, tmp_path / "a", PLAN, method=tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EvolkitError, match="the file is empty"):
        run(seeds, tmp_path / "b", PLAN, method=empty)
    with pytest.raises(EvolkitError, match="candidates must be at least 1"):
        run(seeds, tmp_path / "c", PLAN, candidates=0)


def test_a_changed_method_file_is_another_run(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    method = tmp_path / "m.txt"
    method.write_text(method_text("GOOD"))
    run(seeds, tmp_path / "run", PLAN, method=method, steps=0)
    method.write_text(method_text("WORSE"))
    with pytest.raises(EvolkitError, match="method_sha256"):
        run(seeds, tmp_path / "run", PLAN, method=method, steps=0)


def test_zero_steps_evolves_with_the_starting_method(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    summary = run(seeds, tmp_path / "run", PLAN, steps=0)
    assert journal_steps(tmp_path / "run")[0] == "final"  # no dev evaluation, no loop
    rejected = read(tmp_path / "run" / "rejected.jsonl")
    # the starting method asks back on two seeds: the final evolution rejects them
    assert summary["final"]["kept"] == len(SEEDS) - 2
    assert {r["verdicts"][-1]["rule"] for r in rejected} == {"unparsed"}
    assert summary["final"]["rejected_by_rule"] == {"unparsed": 2}


def test_trajectory_method_counts_feed_the_report(tmp_path: Path) -> None:
    from evolkit.report.data import RunMeasures

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "run"
    run(seeds, out, PLAN)
    data = json.loads((out / "trajectory_methods.json").read_text())
    listed = [
        r["meta"]["auto_evol"]["methods"]
        for r in read(out / "steps.jsonl")  # every step's kept rows
        if "auto_evol" in r["meta"]
    ]
    assert (out / "rejected.jsonl").read_text() == ""  # nothing else to count
    assert data["all"]["trajectories"] == len(listed)
    assert data["all"]["methods_listed"] == sum(len(x) for x in listed)
    # "Add a constraint" and "Adding constraints" are one method; the scripted evolver lists 4
    assert data["all"]["distinct_methods"] == 4
    assert data["label"] == "evolver-x"
    counts = trajectory_method_counts(out)
    assert counts == {
        "distinct methods": 4.0,
        "methods listed": float(data["all"]["methods_listed"]),
        "evolutions": float(len(listed)),
    }
    measures = RunMeasures.from_rows(
        "small", read(out / "evolved.jsonl"), trajectory_methods=counts
    )
    assert measures.trajectory_methods == counts
    assert trajectory_method_counts(tmp_path) is None
    (tmp_path / "trajectory_methods.json").write_text("{not json")
    with pytest.raises(EvolkitError, match="not a readable"):
        trajectory_method_counts(tmp_path)


# -- the parser, on what models write ---------------------------------------------------------

FULL = """Methods:
1. Add a constraint.
2. Ask for the reasoning.

Plan:
Use both.

Rewrite:
Write a poem about autumn in four stanzas.

Review:
Fine.

Final instruction:
Write a poem about autumn in exactly four stanzas, and explain your imagery."""

PARSED = [
    # (what the model wrote, the final instruction the parser must find)
    (FULL, "Write a poem about autumn in exactly four stanzas, and explain your imagery."),
    # markdown headings, the text on the next line, commentary after it
    (
        "## Methods\n- narrow it\n\n## Final Instruction\n\nName three painters of the "
        "1880s and one work each.\n\nThis version is harder because it adds a period.",
        "Name three painters of the 1880s and one work each.",
    ),
    # bold label with the text on the same line
    (
        "**Methods List:**\n- add format\n**Final Rewritten Instruction:** Describe rain in a "
        "haiku.",
        "Describe rain in a haiku.",
    ),
    # the study's #Heading# style, and "Finally Rewritten"
    (
        "#Methods List#\n1) narrow the topic; 2) demand a format\n#Plan#\nx\n"
        "#Finally Rewritten Instruction#\nDescribe the water cycle in three numbered steps.",
        "Describe the water cycle in three numbered steps.",
    ),
    # only the final section, quoted, in a blockquote
    (
        '### Final instruction\n> "List three uses of vinegar in cooking and why each works."',
        "List three uses of vinegar in cooking and why each works.",
    ),
    # an opening sentence and a final heading inside one
    (
        "Here is the final rewritten instruction: Create a meal plan: include breakfast.",
        "Create a meal plan: include breakfast.",
    ),
    # "Plan:" inside the instruction is not a heading when it only looks like one
    (
        "Final instruction:\nCreate a meal plan:\n- breakfast\n- lunch\n\nNote: added a list.",
        "Create a meal plan:\n- breakfast\n- lunch",
    ),
    # lower case, a dash instead of a colon, numbered section names
    (
        "1. Methods:\n- add a step\n5. final instruction - Explain kites to a child, in 50 words.",
        "Explain kites to a child, in 50 words.",
    ),
    # in a code fence
    (
        "Final Instruction:\n```\nSort these numbers and show each comparison.\n```",
        "Sort these numbers and show each comparison.",
    ),
    # bold around the instruction, a repeated final section (the first counts)
    (
        "Final instruction:\n**Plan a picnic for eight people.**\nFinal instruction:\nOther.",
        "Plan a picnic for eight people.",
    ),
    # the first final section only echoes the method; the second holds the rewrite
    (
        "Final instruction:\nWrite only the final rewritten instruction here.\n\n"
        "Final instruction:\nSummarise the article in two sentences.",
        "Summarise the article in two sentences.",
    ),
]


@pytest.mark.parametrize("text,final", PARSED, ids=range(len(PARSED)))
def test_the_parser_reads_what_models_write(text: str, final: str) -> None:
    got = parse_trajectory(text, universal_method())
    assert got.problem is None
    assert got.final == final


UNPARSED = [
    ("", "the answer is empty"),
    ("Sure! What would you like me to rewrite?", "no final-instruction section"),
    # a rewrite section is not the final one: the method was not finished
    ("Methods:\n- add detail\nRewrite:\nWrite more.", "no final-instruction section"),
    ("Methods:\n- a\nFinal instruction:\n\nReview:\nok", "the final section is empty"),
    (
        "Final instruction:\nWrite only the final rewritten instruction here, with nothing "
        "after it.",
        "the final section repeats the method's words",
    ),
    # the word "final" inside a sentence is no heading
    ("Explain why the final answer of a sum can be checked twice.", "no final-instruction section"),
]


@pytest.mark.parametrize("text,problem", UNPARSED, ids=range(len(UNPARSED)))
def test_what_the_parser_cannot_read_is_named(text: str, problem: str) -> None:
    got = parse_trajectory(text, universal_method())
    assert got.final is None and got.problem == problem


def test_sections_and_methods_are_read_in_order() -> None:
    got = parse_trajectory(FULL)
    assert got.sections == ["methods", "plan", "rewrite", "review", "final"]
    assert got.methods == ["Add a constraint", "Ask for the reasoning"]
    assert parse_trajectory(
        "Methods: add a constraint, ask for reasoning and require a table"
    ).methods == [
        "add a constraint",
        "ask for reasoning",
        "require a table",
    ]
    assert method_items("- Add steps\n  over two lines\n- Use a table") == [
        "Add steps over two lines",
        "Use a table",
    ]
    assert method_items("Answer in a logical and coherent way") == [
        "Answer in a logical and coherent way"
    ]
    assert method_items("Add a constraint\nNarrow the topic") == [
        "Add a constraint",
        "Narrow the topic",
    ]


def test_method_names_are_normalised_and_counted() -> None:
    assert fold("adding") == fold("add") == fold("added") == fold("adds")
    assert fold("making") == fold("make") and fold("constraints") == fold("constraint")
    assert fold("studies") == fold("study") and fold("processes") == fold("process")
    assert fold("string") == "string"  # no vowel before -ing: not a verb form
    same = [
        "Add a constraint to the instruction",
        "Adding constraints",
        "**Add more constraints**: e.g. a word limit",
        "Method 3: add constraint.",
    ]
    assert len({normalize_method(m)[0] for m in same}) == 1
    assert normalize_method("Narrow the topic") != normalize_method("Widen the topic")
    assert normalize_method("1.") == ("", "")
    counts = count_methods([same, ["Ask for the reasoning", "asking for reasoning"], []])
    assert (counts.trajectories, counts.with_methods, counts.listed, counts.distinct) == (
        3,
        2,
        6,
        2,
    )
    shown = counts.to_dict()["methods"]
    assert shown[0] == {"method": "add constraint", "count": 4}  # the commonest surface form


def test_improved_methods_are_read_from_the_optimizer_answer() -> None:
    body = (
        "You rewrite instructions into harder ones. List methods, write a plan, rewrite and "
        "review.\nFinal instruction:\n{instruction}"
    )
    for text in (
        f"Failed cases:\n1 asked back.\nImproved method:\n{body}",
        f"## Improved Method\n<<<\n{body}\n>>>",
        f"**Optimized method:**\n```\n{body}\n```",
        f"The improved method is needed because...\nNew method:\n{body}",  # the last heading
    ):
        assert parse_candidate(text).method == body, text
    # a small model copies the prompt's <<< >>> frame instead: the last block with the placeholder
    copied = f"The current method:\n<<<\nOld one.\n>>>\nCases...\n<<<\n{body}\n>>\nCase 1"
    assert parse_candidate(copied).method == body
    # a sentence that mentions an improved method is no heading
    assert (
        parse_candidate("The improved method is needed because it fails.\nIt asks.").method is None
    )
    assert parse_candidate("Changes: ask fewer questions.").problem == "no improved-method section"
    assert parse_candidate("Improved method:\n").problem == "the improved-method section is empty"
    assert "too short" in str(parse_candidate("Improved method: be better").problem)


# -- failure rules ------------------------------------------------------------------------------

S = RuleSettings()


@pytest.mark.parametrize(
    "text",
    [
        "Sure! What would you like me to rewrite?",
        "Understood. Which instruction should I make harder?",
        "Thank you! Could you share the instruction?",
        "Please provide the instruction you want rewritten.",
        "I can do that, but please provide more details.",
        "Gerne! Welche Anweisung soll ich umschreiben?",
        "好的！请提供您的指令。",
    ],
)
def test_asks_back(text: str) -> None:
    assert asks_back(text, S)


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France, and why was it chosen?",
        "Sure-footed goats climb cliffs: explain how, in three steps.",
        "Sure, write a poem.",  # a reply opener alone, with no question back, is not asking
        "Name three painters.",
        "",
    ],
)
def test_not_asks_back(text: str) -> None:
    assert asks_back(text, S) is None


def test_failure_rules_are_named_and_ordered() -> None:
    parent = "Write a poem about autumn."

    def child(final: str) -> Record:
        return Record(id="c", instruction=final, meta={"parent": {"instruction": parent}})

    sure = "Sure! Please provide the instruction?"
    assert evolution_failure(child(""), sure, "no final-instruction section", S)[0] == "asks_back"  # type: ignore[index]
    assert evolution_failure(child(""), "Methods:\n- x", "no final-instruction section", S) == (
        "unparsed",
        "no final-instruction section",
    )
    assert evolution_failure(child("Write a poem about autumn!"), "", None, S)[0] == "unchanged"  # type: ignore[index]
    assert (
        evolution_failure(child("Write a sonnet about autumn leaves and frost."), "", None, S)
        is None
    )


def test_method_rendering_and_the_optimizer_prompt() -> None:
    assert render_method("Do it:\n{instruction}\nGo.", "X") == "Do it:\nX\nGo."
    assert render_method("Do it.", "X") == "Do it.\n\nInstruction to rewrite:\nX"
    # texts holding the other placeholder are not substituted twice
    body = last_user(
        ChatRequest.of(optimizer_messages("M {cases}", "C {method}"), SamplingParams())
    )
    assert "M {cases}" in body and "C {method}" in body
    assert "{instruction}" in body  # the optimizer is told to keep it
    assert "{instruction}" in universal_method()
    rows = [
        Record(
            id=str(i),
            instruction="",
            meta={
                "parent": {"instruction": f"seed {i}"},
                "evolution": {"raw": "x" * (2000 if i else 10)},
                "auto_evol": {"failure": "unparsed" if i == 2 else None, "failure_detail": "none"},
            },
        )
        for i in range(3)
    ]
    cases = describe_cases(rows)
    assert cases.index("seed 2") < cases.index("seed 0")  # failed cases first
    assert "Problem: unparsed: none" in cases and "[...]" in cases


def test_the_ray_engine_writes_the_same_run(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    # one candidate and one batch per step: Ray's cost is per step (an actor pool each)
    small: dict[str, Any] = {"candidates": 1, "batch_size": 16}
    plan = {1: "GOOD"}
    run(seeds, tmp_path / "local", plan, **small)
    paths = os.pathsep.join(p for p in sys.path if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": paths, "OMP_NUM_THREADS": "1"}},
    )
    try:
        summary = run(seeds, tmp_path / "ray", plan, engine="ray", workers=1, **small)
    finally:
        ray.shutdown()
    assert summary["engine"]["engine"] == "ray"
    assert summary["best_method"]["version"] == "step1-candidate1"
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evolkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
        cwd=ROOT,
    )


def test_the_command_line_runs_resumes_and_explains_errors(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    method = start_method(tmp_path)
    out = tmp_path / "run"
    args = [
        "auto-evol", str(seeds), "-o", str(out), "--steps", "1", "--mini-batch", "2",
        "--evolutions-per-item", "1", "--candidates", "2", "--dev-size", "2",
        "--evolver", str(tiny_model_dir), "--optimizer", str(tiny_model_dir),
        "--method", str(method), "--max-new-tokens", "8", "--evolve-max-new-tokens", "8",
        "--optimizer-max-new-tokens", "8", "--limit", "4", "--no-cache",
    ]  # fmt: skip
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "Auto Evol-Instruct" in res.stdout + res.stderr  # the summary table
    methods = json.loads((out / "methods.json").read_text())
    # a random 2-layer model writes no sections: nothing parses, the starting method stays
    assert methods["best"] == "step0-initial"
    assert methods["methods"][0]["dev_failures"]["unparsed"] == 2
    assert [m["problem"] for m in methods["methods"][1:]] == ["no improved-method section"] * 2
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["inputs"]["method"] == str(method.resolve())
    # --config reruns the recorded configuration, --method included: a resume, nothing to do
    again = cli("auto-evol", "--config", str(out), "--no-cache")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    bad = cli("auto-evol", str(seeds), "-o", str(tmp_path / "b"), "--method", "nope.txt")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert [ln for ln in bad.stderr.splitlines() if ln.strip()] == [
        "error: --method nope.txt: no such file"
    ]


def test_help_lists_the_settings() -> None:
    res = cli("auto-evol", "--help")
    assert res.returncode == 0
    for flag in (
        "--steps", "--mini-batch", "--evolutions-per-item", "--candidates", "--dev-size",
        "--evolver", "--optimizer", "--method", "--max-new-tokens", "--engine",
    ):  # fmt: skip
        assert flag in res.stdout, flag


@pytest.mark.slow
def test_the_embedded_model_on_a_tiny_setting(tmp_path: Path, embedded_dir: Path) -> None:
    """The real 135M model through the whole loop: its multi-part answers are read (or named
    failures), the optimizer's answers recorded, and every input row accounted for."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS[:3])
    out = tmp_path / "run"
    summary = auto_evol(
        seeds,
        out,
        steps=1,
        mini_batch=1,
        candidates=1,
        dev_size=2,
        attempts=1,
        evolve_max_new_tokens=160,
        optimizer_max_new_tokens=200,
        max_new_tokens=48,
        cache=None,
        progress=False,
    )
    methods = json.loads((out / "methods.json").read_text())
    initial, candidate = methods["methods"]
    assert initial["dev_size"] == 2
    assert sum(initial["dev_failures"].values()) == initial["dev_failure_rate"] * 2
    assert candidate["evaluated"] or candidate["problem"]
    evolutions = [r for r in read(out / "steps.jsonl") if "auto_evol" in r["meta"]]
    rejected = read(out / "rejected.jsonl") if (out / "rejected.jsonl").exists() else []
    for row in evolutions + rejected:
        info = row["meta"]["auto_evol"]
        assert row["meta"]["evolution"]["raw"]  # the model wrote something
        assert (info["failure"] is None and row["instruction"]) or info["failure"] in (
            "asks_back",
            "unparsed",
            "unchanged",
        )
    final = summary["final"]
    assert final["kept"] + final["rejected"] == 3
    assert len(read(out / "evolved.jsonl")) == final["kept"]
    data = json.loads((out / "trajectory_methods.json").read_text())
    assert data["all"]["trajectories"] == len(evolutions) + len(rejected)


def test_compare_shows_an_auto_evol_runs_trajectory_methods(tmp_path: Path) -> None:
    from evolkit.scenarios.analyze import compare
    from tests.analyze_fixtures import FakeEmbedder, measure_backends

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run(seeds, tmp_path / "auto", PLAN)
    report = tmp_path / "report"
    compare(
        [tmp_path / "auto"],
        report,
        backends=measure_backends(),
        embedder=FakeEmbedder(),
        cache=None,
        progress=False,
    )
    (entry,) = json.loads((report / "summary.json").read_text())["runs"]
    assert entry["trajectory_methods"] == trajectory_method_counts(tmp_path / "auto")
    assert entry["trajectory_methods"]["distinct methods"] == 4.0
    assert "Trajectory methods" in (report / "report.html").read_text()
