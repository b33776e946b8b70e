"""AutoIF end to end with scripted models: every step's keep/drop logic, outputs, resume.

The scripted evolver writes verifiers whose quality depends on the constraint, so each step has
something to keep and something to drop, with a known reason:

- "Answer in fewer than 5 words": good functions and cases; survives everything;
- "Use only lowercase letters": good functions, but the back-translation says "upper case"
  -> the judge says contradiction -> dropped at backtranslate;
- "Write the word banana at least once" (augmented): functions disagree with their cases
  -> dropped at crossval;
- "End every answer with an exclamation mark" (augmented): the model writes prose, no code
  -> dropped at verifiers;
- a duplicate of a seed, a too-short line and a line copied from the prompt's worked example
  in the augmentation answer -> dropped at augment.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evolkit.models.base import ChatRequest, Generation
from evolkit.scenarios.autoif import AutoIFConfig, autoif
from evolkit.stages.augment import parse_constraint_list
from evolkit.stages.back_translate import parse_consistency
from evolkit.stages.quality import parse_score
from evolkit.stages.write_verifiers import parse_candidate
from tests.fakes import ScriptedBackend, last_user

SEEDS = ["Answer in fewer than 5 words", "Use only lowercase letters"]
QUERIES = [
    "What is a good name for a pet turtle?",
    "How do bees make honey from nectar?",
    "Suggest a weekend activity for a rainy day.",
    "Why is the sky blue during the day?",
    "Too short?",  # under 20 characters: never used
]

FEWER = [
    "def evaluate(response):\n    return len(response.split()) < 5",
    "def evaluate(response):\n    return len(response.strip().split()) <= 4",
    "import re\n\ndef evaluate(response):\n    return len(re.findall(r'\\S+', response)) < 5",
]
FEWER_CASES = (
    "PASS: Yes.\nPASS: I like tea.\nPASS: Red and blue\nPASS: Go now\nPASS: Fine thanks\n"
    "FAIL: This sentence has six words in it\nFAIL: One two three four five six\n"
    "FAIL: A much longer answer than allowed\nFAIL: I do not think that is right\n"
    "FAIL: Five words are not fewer than five\n"
)
LOWER = [
    "def evaluate(response):\n    return response == response.lower()",
    "def evaluate(response):\n    return not any(c.isupper() for c in response)",
    "def evaluate(response):\n    return response.lower() == response",
]
LOWER_CASES = (
    "PASS: all lower\nPASS: x\nPASS: some words here\nPASS: ok fine\nPASS: abc def\n"
    "FAIL: Not Lower\nFAIL: ABC\nFAIL: Hello\nFAIL: mixed Case\nFAIL: END\n"
)
BANANA_CASES = (
    "PASS: I ate a banana\nPASS: banana\nPASS: a banana split\nPASS: banana bread\n"
    "PASS: two banana\nFAIL: apple\nFAIL: pear\nFAIL: nothing\nFAIL: kiwi\nFAIL: grape\n"
)
AUGMENTED = (
    "Here are new constraints:\n"
    "1. Write the word banana at least once\n"
    "2. End every answer with an exclamation mark\n"
    "3. answer in fewer than 5 words!\n"  # a seed again, up to case and punctuation
    "4. Be\n"  # too short
    "5. Do not use the letter Z anywhere\n"  # copied from the prompt's worked example
)


def evolver_answer(req: ChatRequest) -> str:
    user = last_user(req)
    if "new constraints of the same kind" in user:
        return AUGMENTED
    if "say what rule a response must follow" in user:
        if "lower" in user:
            return "The response must be written in upper case."
        return "The response must have fewer than five words."
    if "Write a Python function evaluate(response)" in user:
        j = req.params.seed  # candidates differ by sampling seed
        constraint = user.rsplit("Constraint: ", 1)[1]
        if constraint.startswith("Answer in fewer"):
            return f"```python\n{FEWER[j % 3]}\n```\n{FEWER_CASES}"
        if constraint.startswith("Use only lowercase"):
            return f"Sure!\n```python\n{LOWER[j % 3]}\n```\n{LOWER_CASES}"
        if constraint.startswith("Write the word banana"):
            # one right, one inverted, one that always says yes: only 1 of 3 is accurate
            body = ("'banana' in response", "'banana' not in response", "True")[j % 3]
            return f"def evaluate(response):\n    return {body}\n\n{BANANA_CASES}"
        return "I think the answer should end with a question mark, like this one?"
    raise AssertionError(f"unexpected evolver prompt: {user[:80]}")


def judge_answer(req: ChatRequest) -> str:
    user = last_user(req)
    if "Description:" in user:
        return "contradiction" if "upper case" in user else "consistent"
    if "Response:" in user:
        return "Score: 9" if "Bees" in user else "Score: 5"
    raise AssertionError(f"unexpected judge prompt: {user[:80]}")


def responder_answer(req: ChatRequest) -> str:
    user = last_user(req)
    if "bees" in user:
        return "Bees process nectar."  # 3 words: passes
    if "turtle" in user:
        return ""  # empty: rejected before verification
    if "sky" in user:
        return Generation(text="Because of", finish_reason="length", completion_tokens=2)  # type: ignore[return-value]
    return "A museum visit is a lovely option for the whole family."  # too long


def backends(**over: ScriptedBackend) -> dict[str, ScriptedBackend]:
    return {
        "evolver": over.get("evolver", ScriptedBackend(evolver_answer, "evolver-x")),
        "judge": over.get("judge", ScriptedBackend(judge_answer, "judge-x")),
        "responder": over.get("responder", ScriptedBackend(responder_answer, "responder-x")),
    }


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# seed constraints\n" + "\n".join(SEEDS) + "\n\n" + SEEDS[0] + "\n")
    queries = tmp_path / "questions.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"question_id": i, "turns": [q, "follow-up"]}) + "\n"
            for i, q in enumerate(QUERIES)
        )
    )
    return seeds, queries


def config(**over: object) -> AutoIFConfig:
    base: dict[str, object] = dict(
        augment_calls=1,
        per_call=10,
        functions_per_constraint=3,
        queries_per_constraint=4,
    )
    base.update(over)
    return AutoIFConfig(**base)  # type: ignore[arg-type]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rejected_by(path: Path) -> dict[tuple[str, str, str], int]:
    """(step, kind, rule) -> count, over the rejects file."""
    out: Counter[tuple[str, str, str]] = Counter()
    for r in read(path):
        rule = next(v["rule"] for v in r["verdicts"] if not v["kept"])
        out[(r["meta"]["step"], r["meta"]["kind"], rule)] += 1
    return dict(out)


def run(tmp_path: Path, out: Path, cfg: AutoIFConfig | None = None, **kw: object) -> dict:
    seeds, queries = write_inputs(tmp_path)
    return autoif(
        seeds,
        [queries],
        out,
        cfg or config(),
        cache=None,
        progress=False,
        batch_size=kw.pop("batch_size", 8),  # type: ignore[arg-type]
        backends=kw.pop("backends", None) or backends(),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_every_step_keeps_and_drops_for_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run(tmp_path, out)

    constraints = read(out / "constraints.jsonl")
    assert [c["constraint"] for c in constraints] == ["Answer in fewer than 5 words"]
    c = constraints[0]
    assert c["functions"] == [parse_candidate(f"```python\n{f}\n```").source for f in FEWER]
    assert c["accuracy"] == [1.0, 1.0, 1.0]
    assert len(c["cases"]) == 10
    assert c["origin"] == "seed"
    assert c["backtranslation"]["method"] == "judge"
    assert c["backtranslation"]["judge"] == "judge-x"
    assert [i["label"] for i in c["backtranslation"]["items"]] == ["consistent"] * 3

    assert rejected_by(out / "rejected.jsonl") == {
        ("augment", "constraint", "duplicate"): 1,
        ("augment", "constraint", "too_short"): 1,
        ("augment", "constraint", "copies_example"): 1,
        ("verifiers", "constraint", "no_usable_function"): 1,
        ("verifiers", "function", "no_code"): 3,
        ("crossval", "constraint", "min_functions"): 1,
        ("crossval", "function", "low_accuracy"): 2,
        ("backtranslate", "constraint", "contradiction"): 1,
        ("respond", "response", "empty_response"): 1,
        ("respond", "response", "truncated"): 1,
        ("respond", "response", "no_function_passed"): 1,
    }
    rejected = read(out / "rejected.jsonl")
    banana = next(
        r for r in rejected if r["meta"]["step"] == "crossval" and r["meta"]["kind"] == "constraint"
    )
    assert banana["instruction"] == "Write the word banana at least once"
    assert banana["operation"] == "augment"
    accuracies = [s["accuracy"] for s in banana["meta"]["function_scores"]]
    assert accuracies == [1.0, 0.0, 0.5]
    contradiction = next(r for r in rejected if r["meta"]["step"] == "backtranslate")
    assert contradiction["instruction"] == "Use only lowercase letters"
    assert "upper case" in contradiction["verdicts"][-1]["detail"]

    evolved = read(out / "evolved.jsonl")
    assert len(evolved) == 1
    row = evolved[0]
    assert (
        row["instruction"] == "How do bees make honey from nectar?\n\nAnswer in fewer than 5 words"
    )
    assert row["output"] == "Bees process nectar."
    assert row["scores"]["pass_rate"] == 1.0
    assert row["meta"]["constraint"] == "Answer in fewer than 5 words"
    assert row["meta"]["verification"]["verdicts"] == ["pass"] * 3

    f = summary["funnel"]
    assert f == {
        "constraints_in_pool": 4,  # 2 seeds (one duplicate line dropped) + 2 augmented
        "augmented_constraints_kept": 2,
        "with_parsed_functions": 3,
        "cross_validated": 2,
        "back_translated": 1,
        "composed_instructions": 4,  # 4 queries in range, 4 per constraint
        "verified_responses": 1,
    }
    assert summary["seeds"] == {"read": 3, "duplicates": 1, "used": 2}
    assert summary["queries"]["used"] == 4 and summary["queries"]["out_of_range"] == 1
    assert summary["steps"]["augment"]["calls"] == 1
    assert summary["steps"]["verifiers"]["candidates_asked"] == 12
    assert summary["steps"]["crossval"]["functions_kept"] == 6
    assert summary["steps"]["respond"]["rejected"]["response"]["total"] == 3
    assert summary["sandbox"]["isolation"] and summary["sandbox"]["mode"]
    assert summary["backtranslation"] == {"method": "judge", "judge": "judge-x"}
    written = json.loads((out / "summary.json").read_text())
    assert written["funnel"] == f


def test_quality_judge_and_pass_rate_threshold(tmp_path: Path) -> None:
    out = tmp_path / "q"
    summary = run(tmp_path, out, config(quality_judge=True, quality_threshold=8.0))
    evolved = read(out / "evolved.jsonl")
    assert [r["scores"]["quality"] for r in evolved] == [9.0]
    # a stricter threshold drops the only survivor, with the judge's score in the reason
    out2 = tmp_path / "q2"
    summary = run(tmp_path, out2, config(quality_judge=True, quality_threshold=9.0))
    assert summary["funnel"]["verified_responses"] == 0
    low = [r for r in read(out2 / "rejected.jsonl") if r["verdicts"][-1]["rule"] == "low_quality"]
    assert len(low) == 1 and "scored 9" in low[0]["verdicts"][-1]["detail"]


def test_resume_after_a_crash_has_no_duplicates(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    run(tmp_path, clean, batch_size=1)

    out = tmp_path / "crashed"
    # 1 augmentation call + 3 verifier answers for the first constraint, then the model dies
    flaky = ScriptedBackend(evolver_answer, "evolver-x", fail_after=4)
    with pytest.raises(RuntimeError, match="scripted crash"):
        # one batch at a time, so the crash lands where the comment above says
        run(tmp_path, out, batch_size=1, concurrent_batches=1, backends=backends(evolver=flaky))
    journal = read(out / "checkpoint.jsonl")
    assert {e["step"] for e in journal} == {"augment", "verifiers"}

    summary = run(tmp_path, out, batch_size=1)
    assert summary["resumed"] is True
    for name in ("steps.jsonl", "rejected.jsonl", "evolved.jsonl"):
        ids = [r["id"] for r in read(out / name)]
        assert len(ids) == len(set(ids)), name
        assert sorted(ids) == sorted(r["id"] for r in read(clean / name)), name
    assert read(out / "constraints.jsonl") == read(clean / "constraints.jsonl")
    assert summary["funnel"] == json.loads((clean / "summary.json").read_text())["funnel"]


def test_changed_threshold_needs_a_new_folder(tmp_path: Path) -> None:
    from evolkit.errors import ConfigMismatchError

    out = tmp_path / "run"
    run(tmp_path, out)
    with pytest.raises(ConfigMismatchError, match="min_accuracy"):
        run(tmp_path, out, config(min_accuracy=0.9))


def test_parsers_are_forgiving_but_never_guess() -> None:
    # open fence, example call after the function, cases as JSON lines
    c = parse_candidate(
        "```python\ndef evaluate(response):\n    return response.endswith('!')\n"
        "print(evaluate('hi!'))\n"
        '{"input": "Wow!", "output": true}\n{"input": "ok", "output": false}\n'
    )
    assert c.source == "def evaluate(response):\n    return response.endswith('!')"
    assert c.cases == [("Wow!", True), ("ok", False)]
    # no fence at all, truncated mid-line
    c = parse_candidate(
        "def evaluate(response):\n    return 'x' in response\nPASS: x marks\nFAIL: none\nPASS: ex"
    )
    assert c.source is not None and ("x marks", True) in c.cases
    # the original AutoIF JSON shape
    c = parse_candidate(
        '```json\n{"func": "def evaluate(response):\\n    return len(response) < 9", '
        '"cases": [{"input": "short", "output": true}]}\n```'
    )
    assert c.source == "def evaluate(response):\n    return len(response) < 9"
    assert c.cases == [("short", True)]
    # prose, wrong name, broken code
    assert parse_candidate("It should end with a question mark.").problem == "no_code"
    assert parse_candidate("```python\ndef check(r):\n    return True\n```").problem == (
        "no_evaluate_function"
    )
    assert parse_candidate("```python\ndef evaluate(:\n```").source is None

    assert parse_constraint_list(
        "Sure! Here are some:\n- Use no commas\n2) End with 'OK'\n- cut of", truncated=True
    ) == [
        "Use no commas",
        "End with 'OK'",
    ]
    assert parse_consistency("Consistent.") == "consistent"
    assert parse_consistency("contradiction") == "contradiction"
    assert parse_consistency("I think so") is None
    assert parse_score("Score: 9") == 9.0 and parse_score("7/10") == 7.0
    assert parse_score("great") is None and parse_score("Score: 42") is None


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path: Path, embedded_dir: Path) -> None:
    """The real 135M model on a tiny setting: the pipeline finishes and its files agree.

    Nothing here asserts the model is good: with K=2 it rarely writes two working verifiers.
    The thresholds are lowered (1 function, 2 cases) only so that later steps get a chance
    to run on whatever the model does write.
    """
    seeds, queries = write_inputs(tmp_path)
    out = tmp_path / "real"
    cfg = AutoIFConfig(
        augment_calls=1,
        per_call=3,
        augment_max_new_tokens=48,
        functions_per_constraint=2,
        verifier_max_new_tokens=96,
        min_functions=1,
        min_cases=2,
        queries_per_constraint=2,
        max_new_tokens=32,
    )
    summary = autoif(seeds, [queries], out, cfg, cache=tmp_path / "calls.sqlite", progress=False)

    steps, funnel = summary["steps"], summary["funnel"]
    assert steps["augment"]["calls"] == 1
    assert funnel["constraints_in_pool"] == len(SEEDS) + funnel["augmented_constraints_kept"]
    assert steps["verifiers"]["candidates_asked"] == 2 * funnel["constraints_in_pool"]
    assert steps["crossval"]["inputs"] == funnel["with_parsed_functions"]
    assert steps["backtranslate"]["inputs"] == funnel["cross_validated"]
    assert funnel["composed_instructions"] == 2 * funnel["back_translated"]
    assert steps["respond"]["inputs"] == funnel["composed_instructions"]
    for name in ("steps.jsonl", "rejected.jsonl"):
        ids = [r["id"] for r in read(out / name)]
        assert len(ids) == len(set(ids))
    constraints = read(out / "constraints.jsonl")
    assert len(constraints) == funnel["back_translated"] == summary["kept_constraints"]
    for c in constraints:
        assert c["functions"] and min(c["accuracy"]) >= cfg.min_accuracy
        assert c["backtranslation"]["method"] == "judge"
    evolved = read(out / "evolved.jsonl")
    assert len(evolved) == funnel["verified_responses"]
    assert all(r["scores"]["pass_rate"] > 0 and r["output"] for r in evolved)
    for row in read(out / "rejected.jsonl"):
        assert row["meta"]["step"] in (
            "augment",
            "verifiers",
            "crossval",
            "backtranslate",
            "respond",
        )
        assert any(not v["kept"] and v["detail"] for v in row["verdicts"])
    assert summary["sandbox"]["isolation"]
