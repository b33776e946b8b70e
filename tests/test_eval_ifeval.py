"""IFEval evaluation: lm-eval's checkers on hand-made responses, the four figures, determinism,
the punkt_tab data without a download, bootstrap intervals, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("punkt")

from evolkit.errors import ConfigMismatchError, EvolkitError
from evolkit.evaluate import evaluate, load_results
from evolkit.evaluate.ifeval import (
    IFEvalPrompt,
    PromptResult,
    load_prompts,
    metrics,
    score_response,
    score_responses,
)
from evolkit.evaluate.stats import bootstrap_ratio, ifeval_intervals, percentile
from evolkit.models.base import Generation
from evolkit.scenarios.runner import RunIncompleteError
from tests.fakes import ScriptedBackend, last_user


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The punkt_tab tables go to a test folder, never to the user's cache."""
    monkeypatch.setenv("EVOLKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "evolkit-cache"))


def one(iid: str, kwargs: dict[str, Any] | None = None, prompt: str = "Answer.") -> IFEvalPrompt:
    return IFEvalPrompt(key=1, prompt=prompt, instruction_id_list=(iid,), kwargs=(kwargs or {},))


ENGLISH = "the river runs past the old mill and the children watch the boats go by every morning"

# (instruction, kwargs, response, strict, loose): each verdict follows from the instruction's
# published definition; the loose check also tries the response without its first or last line
# and without asterisks.
CASES = [
    ("change_case:english_lowercase", {}, ENGLISH + ".", True, True),
    ("change_case:english_lowercase", {}, "The River Runs Past The Old Mill.", False, False),
    ("change_case:english_lowercase", {}, "Here It Is:\n" + ENGLISH + ".", False, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two\n* three", 1, 1),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two", False, False),
    # Four bullets: strictly wrong, but dropping the first (or last) line leaves three.
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "- a\n- b\n- c\n- d", 0, 1),
    ("punctuation:no_comma", {}, "no commas at all here", True, True),
    ("punctuation:no_comma", {}, "one, two", False, False),
    ("startend:quotation", {}, '"all of it in quotes"', True, True),
    ("startend:quotation", {}, 'Sure:\n"all of it in quotes"', False, True),
    ("detectable_format:title", {}, "<<A Quiet Morning>>\nThe mill is still.", True, True),
    ("detectable_format:title", {}, "A Quiet Morning\nThe mill is still.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. Bye.", 1, 1),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi. Bye.", False, False),
    # Sentence counting runs nltk's punkt: "Mr." and "p.m." must not end a sentence.
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "Mr. Smith came at 5 p.m. on Friday. He left early.",
        True,
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "He came. He saw. He left.",
        False,
        False,
    ),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and *b*", 1, 1),
    ("keywords:forbidden_words", {"forbidden_words": ["mill"]}, ENGLISH, False, False),
    ("language:response_language", {"language": "de"}, "Das ist ein kurzer deutscher Satz.", 1, 1),
    ("change_case:english_lowercase", {}, "", False, False),  # empty: every check fails
]


@pytest.mark.parametrize(("iid", "kwargs", "response", "strict", "loose"), CASES)
def test_checker_verdicts_on_hand_made_responses(
    iid: str, kwargs: dict[str, Any], response: str, strict: bool, loose: bool
) -> None:
    r = score_response(one(iid, kwargs), response)
    assert r.strict == [bool(strict)]
    assert r.loose == [bool(loose)]


def test_four_figures_on_a_fixed_set_match_hand_counts() -> None:
    prompts = [
        IFEvalPrompt(1, "p1", ("change_case:english_lowercase", "punctuation:no_comma"), ({}, {})),
        IFEvalPrompt(2, "p2", ("detectable_format:number_bullet_lists",), ({"num_bullets": 3},)),
        IFEvalPrompt(3, "p3", ("startend:quotation",), ({},)),
    ]
    responses = {
        1: ENGLISH + ", and that is all.",  # lowercase passes, the comma fails
        2: "* a\n* b\n* c",  # exactly three bullets
        3: 'Sure:\n"the answer"',  # quoted only once the first line is dropped (loose)
    }
    results = score_responses(prompts, responses)
    assert [(r.strict, r.loose) for r in results] == [
        ([True, False], [True, False]),
        ([True], [True]),
        ([False], [True]),
    ]
    m = metrics(results)
    # Prompt level: all instructions pass in prompt 2 (strict), prompts 2 and 3 (loose).
    assert m["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert m["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    # Instruction level, pooled over the 4 instructions: 2 pass strictly, 3 loosely.
    assert m["inst_level_strict_acc"] == pytest.approx(2 / 4)
    assert m["inst_level_loose_acc"] == pytest.approx(3 / 4)
    assert m["prompts"] == 3 and m["instructions"] == 4
    per = m["per_instruction"]
    assert per["startend:quotation"] == {"count": 1, "strict_acc": 0.0, "loose_acc": 1.0}
    assert per["punctuation:no_comma"]["strict_acc"] == 0.0
    assert per["change_case:english_lowercase"]["strict_acc"] == 1.0


def test_aggregation_matches_lm_evals_own(tmp_path: Path) -> None:
    """Our figures equal lm-eval's process_results + aggregation on the same responses (prompts
    whose checkers draw nothing at random, where lm-eval's own result is fixed)."""
    from lm_eval.tasks.ifeval import utils

    prompts = [p for p in load_prompts(40) if p.key not in (1122, 1129)]
    responses = {p.key: variant(p.prompt, i) for i, p in enumerate(prompts)}
    ours = metrics(score_responses(prompts, responses))
    docs = [
        utils.process_results(
            {
                "key": p.key,
                "instruction_id_list": list(p.instruction_id_list),
                "prompt": p.prompt,
                "kwargs": [dict(k) for k in p.kwargs],
            },
            [responses[p.key]],
        )
        for p in prompts
    ]
    for name in ("prompt_level_strict_acc", "prompt_level_loose_acc"):
        assert ours[name] == pytest.approx(sum(d[name] for d in docs) / len(docs))
    for name in ("inst_level_strict_acc", "inst_level_loose_acc"):
        assert ours[name] == pytest.approx(utils.agg_inst_level_acc([d[name] for d in docs]))
    assert 0 < ours["inst_level_loose_acc"] < 1  # the set has passes and failures


def variant(text: str, i: int) -> str:
    """Responses made from the prompts themselves, varied so different checks pass."""
    return [text, text.lower(), text.upper(), f'"{text}"', text.replace(",", "")][i % 5]


# -- determinism ---------------------------------------------------------------------------
def test_random_letter_prompts_score_the_same_every_time() -> None:
    by_key = {p.key: p for p in load_prompts()}
    # Keys 1122 and 1129 ask for the frequency of '#' and '!', which the checker does not take
    # as letters: it draws a random letter instead.
    letters = "".join(c * 6 for c in "abcdefghijklm")  # passes iff the letter drawn is a-m
    for key in (1122, 1129):
        p = by_key[key]
        assert "keywords:letter_frequency" in p.instruction_id_list
        first = score_response(p, letters, seed=0)
        random.seed(12345)  # whatever the caller's random state, the verdict is the same
        again = score_response(p, letters, seed=0)
        assert (first.strict, first.loose) == (again.strict, again.loose)
        # The seed does decide the draw: over seeds the verdict on that letter changes.
        verdicts = {
            score_response(p, letters, seed=s).strict[
                p.instruction_id_list.index("keywords:letter_frequency")
            ]
            for s in range(20)
        }
        assert verdicts == {True, False}


def test_scoring_leaves_the_callers_random_state_alone() -> None:
    p = next(p for p in load_prompts() if p.key == 1122)
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    score_response(p, "anything at all")
    assert [random.random() for _ in range(3)] == expected


def test_two_scorings_of_the_same_responses_are_identical() -> None:
    prompts = load_prompts()
    chosen = [
        p
        for p in prompts
        if p.key in (1122, 1129)
        or "language:response_language" in p.instruction_id_list
        or "change_case:english_lowercase" in p.instruction_id_list
    ][:30]
    # Short and mixed texts are where langdetect's own random sampling could tip the answer.
    responses = {
        p.key: ["ok", "si oui ja", p.prompt.lower(), "Привет мир, hello", "123"][i % 5]
        for i, p in enumerate(chosen)
    }
    a = [r.to_dict() for r in score_responses(chosen, responses)]
    b = [r.to_dict() for r in score_responses(list(reversed(chosen)), responses)]
    assert a == list(reversed(b))


# -- punkt_tab -------------------------------------------------------------------------------
def test_punkt_tab_comes_from_the_package_without_any_download(tmp_path: Path) -> None:
    """A fresh process with no nltk data anywhere: nltk's downloader must never be called."""
    code = """
import nltk, sys
def refuse(*a, **k):
    raise SystemExit("nltk tried to download " + repr(a))
nltk.download = refuse
nltk.downloader.download = refuse
from evolkit.evaluate.ifeval import load_prompts, score_response
from evolkit.evaluate.punkt_data import punkt_root
p = next(p for p in load_prompts() if p.key == 1174)  # counts sentences
score_response(p, "Dr. Who arrived. He left.")
print(nltk.sent_tokenize("Mr. Smith came at 5 p.m. on Friday. He left."))
print(nltk.data.find("tokenizers/punkt_tab/english/"))
print(punkt_root())
"""
    env = dict(os.environ)
    env.update(
        EVOLKIT_CACHE_DIR=str(tmp_path / "cache"),
        HOME=str(tmp_path / "home"),
        NLTK_DATA=str(tmp_path / "no-nltk-data"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-3] == "['Mr. Smith came at 5 p.m. on Friday.', 'He left.']"
    assert lines[-2].startswith(str(tmp_path / "cache"))
    root = Path(lines[-1])
    names = sorted(f.name for f in (root / "tokenizers" / "punkt_tab" / "english").iterdir())
    assert names == [
        "abbrev_types.txt",
        "collocations.tab",
        "ortho_context.tab",
        "sent_starters.txt",
    ]


def test_written_tables_reload_as_the_packaged_model() -> None:
    import nltk
    import punkt
    from nltk.tokenize.punkt import load_punkt_params

    from evolkit.evaluate.punkt_data import ensure_punkt_tab

    root = ensure_punkt_tab()
    assert nltk.data.path[0] == str(root)
    got = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    want = punkt.load_model("english")
    assert got.abbrev_types == want.abbrev_types and "mr" in got.abbrev_types
    assert got.collocations == want.collocations
    assert got.sent_starters == want.sent_starters
    assert dict(got.ortho_context) == dict(want.ortho_context)


# -- bootstrap -------------------------------------------------------------------------------
def test_percentile_interpolates_between_neighbours() -> None:
    assert percentile([0.0, 10.0], 0.25) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0], 1.0) == 3.0


def test_bootstrap_interval_on_a_fixed_vector() -> None:
    values = [1.0] * 200 + [0.0] * 200  # mean 0.5 over 400 prompts
    ci = bootstrap_ratio(values, resamples=2000, seed=3)
    assert ci.value == 0.5
    assert ci == bootstrap_ratio(values, resamples=2000, seed=3)  # seeded: same interval
    # A proportion's standard error is sqrt(p(1-p)/n) = 0.025, so a 95% interval spans about
    # 1.96 * 0.025 = 0.049 on each side.
    assert ci.low == pytest.approx(0.5 - 0.049, abs=0.01)
    assert ci.high == pytest.approx(0.5 + 0.049, abs=0.01)
    narrower = bootstrap_ratio(values, resamples=2000, seed=3, confidence=0.5)
    assert ci.low < narrower.low < 0.5 < narrower.high < ci.high
    flat = bootstrap_ratio([1.0] * 50, resamples=200)
    assert (flat.low, flat.value, flat.high) == (1.0, 1.0, 1.0)


def test_ifeval_intervals_resample_prompts_and_pool_instructions() -> None:
    # 30 prompts with 3 instructions that all pass, 30 with 1 that fails: the pooled
    # instruction-level figure is 90/120 = 0.75, while a mean of per-prompt shares would be 0.5.
    results = [PromptResult(i, ["x"] * 3, [True] * 3, [True] * 3) for i in range(30)]
    results += [PromptResult(100 + i, ["y"], [False], [True]) for i in range(30)]
    ci = ifeval_intervals(results, resamples=500, seed=1)
    m = metrics(results)
    for name, interval in ci.items():
        assert interval.value == pytest.approx(m[name])
        assert interval.low <= interval.value <= interval.high
    assert ci["inst_level_strict_acc"].value == pytest.approx(0.75)
    assert ci["prompt_level_strict_acc"].value == pytest.approx(0.5)
    assert ci["inst_level_strict_acc"].low > 0.5  # pooled, so never near the unpooled mean
    assert ci["prompt_level_loose_acc"].low == ci["prompt_level_loose_acc"].high == 1.0


# -- end to end ------------------------------------------------------------------------------
def test_eval_end_to_end_with_a_tiny_model_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "eval"
    kw: dict[str, Any] = {"limit": 3, "batch_size": 2, "max_new_tokens": 6, "progress": False}
    s = evaluate(str(tiny_model_dir), out, **kw)
    for name in ("config.json", "responses.jsonl", "scores.jsonl", "summary.json", "run.log"):
        assert (out / name).is_file()
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    keys = [p.key for p in load_prompts(3)]
    assert sorted(int(r["id"]) for r in rows) == sorted(keys)
    by_key = {p.key: p.prompt for p in load_prompts(3)}
    assert all(r["instruction"] == by_key[int(r["id"])] for r in rows)
    assert all(set(r["meta"]["response"]) >= {"model", "finish_reason"} for r in rows)
    assert s["prompts"] == 3 and s["generation"]["generated_now"] == 3
    for name in ("prompt_level_strict_acc", "inst_level_strict_acc"):
        assert 0.0 <= s[name] <= s[name.replace("strict", "loose")] <= 1.0
    assert s["seeds"] == {"checker_random": 0, "langdetect": 0}
    assert json.loads((out / "summary.json").read_text()) == s
    assert [r.key for r in load_results(out)] == keys
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "eval" and config["config"]["model_weights"]

    assert s["model"] == tiny_model_dir.name  # the id the backend reports

    # A rerun generates nothing; a lost line (a run killed mid-batch) is the only one redone.
    rerun = evaluate(str(tiny_model_dir), out, **kw)
    assert rerun["generation"]["generated_now"] == 0 and rerun["model"] == s["model"]
    lines = (out / "responses.jsonl").read_text().splitlines(keepends=True)
    (out / "responses.jsonl").write_text("".join(lines[:-1]) + lines[-1][:10])  # torn tail
    again = evaluate(str(tiny_model_dir), out, **kw)
    assert again["generation"]["generated_now"] == 1
    assert again["instructions"] == sum(len(p.instruction_id_list) for p in load_prompts(3))
    # A larger limit only answers the new prompts.
    more = evaluate(str(tiny_model_dir), out, **{**kw, "limit": 4})
    assert more["generation"]["generated_now"] == 1 and more["prompts"] == 4


def test_a_crashed_run_resumes_without_asking_twice(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    crashing = ScriptedBackend(lambda r: last_user(r).lower(), fail_after=2)
    # one batch at a time, so the two answers before the crash are committed
    kw: dict[str, Any] = {
        "limit": 4,
        "batch_size": 1,
        "concurrent_batches": 1,
        "progress": False,
        "cache": None,
    }
    with pytest.raises(RuntimeError):
        evaluate(crashing, out, **kw)
    assert len((out / "responses.jsonl").read_text().splitlines()) == 2
    asked: list[str] = []

    def answer(req: Any) -> str:
        asked.append(last_user(req))
        return last_user(req).lower()

    s = evaluate(ScriptedBackend(answer), out, **kw)
    assert len(asked) == 2 and s["generation"]["resumed"] == 2 and s["prompts"] == 4
    # The scores depend only on the responses: a one-shot run gets the same figures.
    fresh = evaluate(ScriptedBackend(lambda r: last_user(r).lower()), tmp_path / "fresh", **kw)
    assert fresh["per_instruction"] == s["per_instruction"]


def test_answers_are_kept_exactly_as_written(tmp_path: Path) -> None:
    """Whitespace can decide a strict verdict, so the stored answer is the model's text."""
    text = "\n  all lowercase words here  \n"
    backend = ScriptedBackend(lambda r: text)
    s = evaluate(backend, tmp_path / "e", limit=2, progress=False, cache=None)
    rows = [json.loads(x) for x in (tmp_path / "e" / "responses.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == [text, text]
    assert s["prompts"] == 2


def test_generation_errors_are_not_recorded_and_fail_the_run(tmp_path: Path) -> None:
    def answer(req: Any) -> Generation:
        return Generation(text="", finish_reason="error", error="boom")

    with pytest.raises(RunIncompleteError, match="3 input row"):
        evaluate(ScriptedBackend(answer), tmp_path / "e", limit=3, progress=False, cache=None)
    assert not (tmp_path / "e" / "responses.jsonl").exists() or not (
        (tmp_path / "e" / "responses.jsonl").read_text()
    )
    assert not (tmp_path / "e" / "scores.jsonl").exists()


def test_other_settings_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    backend = ScriptedBackend(lambda r: "ok")
    kw: dict[str, Any] = {"limit": 1, "progress": False, "cache": None}
    evaluate(backend, out, max_new_tokens=8, **kw)
    with pytest.raises(ConfigMismatchError, match="max_new_tokens"):
        evaluate(backend, out, max_new_tokens=9, **kw)
    s = evaluate(backend, out, max_new_tokens=9, overwrite=True, **kw)
    assert s["generation"]["generated_now"] == 1
    s = evaluate(backend, out, max_new_tokens=9, overwrite=True, **kw)
    assert s["generation"]["generated_now"] == 1  # --overwrite starts over even when unchanged
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(EvolkitError, match="did not write"):
        evaluate(backend, foreign, **kw)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(EvolkitError, match="bench"):
        evaluate(backend, tmp_path / "x", bench="mmlu")
    with pytest.raises(EvolkitError, match="limit"):
        evaluate(backend, tmp_path / "y", limit=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_prints_the_four_figures(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from evolkit.cli import app

    args = ["eval", str(tiny_model_dir), "-o", str(tmp_path / "e"), "--limit", "2"]
    res = CliRunner().invoke(app, [*args, "--max-new-tokens", "4", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    for label in ("prompt-level strict", "instruction-level strict", "prompt-level loose"):
        assert label in res.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert f"{summary['inst_level_loose_acc']:.4f}" in res.output
    # --config reruns the recorded model and settings in the same folder: nothing to answer.
    again = CliRunner().invoke(app, ["eval", "--config", str(tmp_path / "e")])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert rerun["generation"]["generated_now"] == 0 and rerun["prompts"] == 2


def test_shipped_prompts_are_the_541_of_ifeval() -> None:
    prompts = load_prompts()
    assert len(prompts) == 541 and len({p.key for p in prompts}) == 541
    assert sum(len(p.instruction_id_list) for p in prompts) == 834
    assert len({i for p in prompts for i in p.instruction_id_list}) == 25
    assert [p.key for p in load_prompts(2)] == [prompts[0].key, prompts[1].key]
