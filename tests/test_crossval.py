"""AutoIF cross-validation on handwritten verifier sets, executed in the real sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evolkit.sandbox import Sandbox, SandboxLimits
from evolkit.stages.crossval import Case, CrossValConfig, VerifierSet, cross_validate

# "Answer in fewer than 5 words": four correct verifiers written differently, one duplicate,
# one with an off-by-one (<= 5), one that crashes, one that returns a non-bool.
CORRECT = [
    "def evaluate(response):\n    return len(response.split()) < 5\n",
    "import re\ndef evaluate(response):\n    return len(re.findall(r'\\S+', response)) < 5\n",
    "def evaluate(response):\n    n = 0\n    for _ in response.split():\n        n += 1\n"
    "    return n <= 4\n",
    "def evaluate(response):\n    words = [w for w in response.strip().split(' ') if w]\n"
    "    return not len(words) >= 5\n",
]
DUPLICATE = "  " + CORRECT[0].strip() + "\n\n"
OFF_BY_ONE = "def evaluate(response):\n    return len(response.split()) <= 5\n"
CRASHES = "def evaluate(response):\n    return response.split()[4] == ''\n"
NON_BOOL = "def evaluate(response):\n    return len(response.split())\n"

CASES = [
    Case("Yes.", True),
    Case("Paris is the capital.", True),
    Case("Four words right here", True),
    Case("", True),
    Case("one two three", True),
    Case("This sentence clearly has more than five words.", False),
    Case("Exactly five words are here", False),  # the off-by-one function gets this wrong
    Case("a b c d e f g", False),
    Case("Six words in this one too", False),
    Case("Many many many many many many many words", False),
    Case("Short", True),
]
MISLABELLED = Case("Two words", False)  # no correct function can reproduce this label


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(limits=SandboxLimits(wall_seconds=0.5, cpu_seconds=1), workers=2) as sb:
        yield sb


def words_set(functions: list[str], cases: list[Case] | None = None) -> VerifierSet:
    return VerifierSet("Answer in fewer than 5 words.", functions, cases or [*CASES, MISLABELLED])


def test_keeps_good_functions_and_cases(sandbox: Sandbox) -> None:
    item = words_set([*CORRECT, DUPLICATE, OFF_BY_ONE, CRASHES, NON_BOOL])
    (result,) = cross_validate([item], sandbox, CrossValConfig())
    assert result.kept
    assert result.reasons[0]["rule"] == "kept" and result.reasons[0]["step"] == "crossval"
    # the mislabelled case is reproduced by nobody and dropped; every other case is kept
    assert MISLABELLED not in result.cases
    assert result.dropped_cases == [MISLABELLED]
    assert result.cases == CASES
    # the duplicate is merged into its original
    assert len(result.scores) == 7
    assert result.scores[0].duplicates == 1
    # correct functions: accuracy 1.0 on the kept cases; the off-by-one misses one case of 11
    assert [s.source for s in result.functions] == [*CORRECT, OFF_BY_ONE]
    assert all(s.accuracy == 1.0 for s in result.functions[:4])
    off = result.functions[4]
    assert (off.correct, off.evaluated) == (10, 11)
    assert off.accuracy == pytest.approx(10 / 11)
    # the crashing and the non-bool functions are dropped, with their verdict counts kept
    crash, non_bool = result.scores[5], result.scores[6]
    assert not crash.kept and not non_bool.kept
    assert crash.verdicts["error"] > 0 and "IndexError" in crash.errors[0]
    assert non_bool.verdicts["error"] == len(item.cases)
    assert "expected a bool" in non_bool.errors[0]
    assert sum(result.scores[0].verdicts.values()) == len(item.cases)


def test_min_accuracy_is_a_setting(sandbox: Sandbox) -> None:
    item = words_set([*CORRECT, OFF_BY_ONE])
    strict = cross_validate([item], sandbox, CrossValConfig(min_accuracy=1.0))[0]
    assert OFF_BY_ONE not in strict.kept_sources and len(strict.functions) == 4
    loose = cross_validate([item], sandbox, CrossValConfig(min_accuracy=0.9))[0]
    assert OFF_BY_ONE in loose.kept_sources


def test_min_functions_rule(sandbox: Sandbox) -> None:
    # three copies of one function are one function: fewer than 3 distinct good ones
    item = words_set([CORRECT[0], DUPLICATE, CORRECT[0], CORRECT[1], CRASHES])
    (result,) = cross_validate([item], sandbox, CrossValConfig())
    assert not result.kept
    assert [r["rule"] for r in result.reasons] == ["min_functions"]
    assert "2 of 3 distinct functions" in result.reasons[0]["detail"]
    relaxed = cross_validate([item], sandbox, CrossValConfig(min_functions=2))[0]
    assert relaxed.kept


def test_min_cases_rule(sandbox: Sandbox) -> None:
    item = words_set(CORRECT, cases=[*CASES[:6], MISLABELLED])
    (result,) = cross_validate([item], sandbox, CrossValConfig())
    assert not result.kept
    assert [r["rule"] for r in result.reasons] == ["min_cases"]
    assert "6 of 7 test cases" in result.reasons[0]["detail"]
    assert cross_validate([item], sandbox, CrossValConfig(min_cases=6))[0].kept


def test_both_rules_can_fail_together_and_empty_sets(sandbox: Sandbox) -> None:
    results = cross_validate(
        [
            words_set([CRASHES, NON_BOOL], cases=CASES[:3]),
            VerifierSet("Use no commas.", [], []),
        ],
        sandbox,
        CrossValConfig(),
    )
    assert [r.kept for r in results] == [False, False]
    assert [r["rule"] for r in results[0].reasons] == ["min_functions", "min_cases"]
    assert results[1].scores == [] and results[1].cases == []


def test_hostile_and_hanging_candidates_never_count(sandbox: Sandbox) -> None:
    hostile = "import os\ndef evaluate(response):\n    os.system('true')\n    return True\n"
    hangs = "def evaluate(response):\n    while True:\n        pass\n"
    cases = [CASES[0], CASES[1], CASES[5], CASES[6]]
    item = words_set([*CORRECT[:3], hostile, hangs], cases=cases)
    (result,) = cross_validate([item], sandbox, CrossValConfig(min_cases=4))
    assert result.kept and result.kept_sources == CORRECT[:3]
    assert result.scores[3].verdicts["forbidden"] == 4
    assert result.scores[4].verdicts["timeout"] == 4


def test_many_items_batched_in_order(sandbox: Sandbox) -> None:
    """Several constraints through small batches: results line up with their items."""
    commas = VerifierSet(
        "Do not use any commas.",
        [
            "def evaluate(response):\n    return ',' not in response\n",
            "def evaluate(response):\n    return response.count(',') == 0\n",
            "def evaluate(response):\n    return all(ch != ',' for ch in response)\n",
        ],
        [Case("no commas here", True), Case("one, two", False), Case("a,b,c", False)],
    )
    items = [words_set(CORRECT), commas, words_set([CRASHES])]
    config = CrossValConfig(min_cases=3, batch_size=7)
    results = cross_validate(items, sandbox, config)
    assert [r.constraint for r in results] == [i.constraint for i in items]
    assert [r.kept for r in results] == [True, True, False]
    assert len(results[1].functions) == 3 and len(results[1].cases) == 3


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        CrossValConfig(min_accuracy=1.5)
    with pytest.raises(ValueError):
        CrossValConfig(batch_size=0)
