"""`evolkit check-verifiers`: cross-validation of handwritten verifier sets, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolkit.cli import app

FEWER_THAN_5 = [
    "def evaluate(response):\n    return len(response.split()) < 5",
    "def evaluate(response):\n    words = response.strip().split()\n    return len(words) <= 4",
    "import re\ndef evaluate(response):\n    return len(re.findall(r'\\S+', response)) < 5",
    "def evaluate(response):\n    return True",  # agrees only with the positive cases
]
FEWER_CASES = [{"input": t, "output": True} for t in ("Yes.", "I like tea.", "Red and blue", "Go")]
FEWER_CASES += [{"input": "Fine thanks", "output": True}]
FEWER_CASES += [
    {"input": t, "output": False}
    for t in (
        "This sentence has six words in it",
        "One two three four five six",
        "A much longer answer than allowed here",
        "I do not think that is right",
        "Five words are not fewer than five",
    )
]
QUESTION = [
    "def evaluate(response):\n    return response.strip().endswith('?')",
    "def evaluate(response):\n    raise ValueError('boom')",
    "def evaluate(response):\n    return response.rstrip()[-1] == '?'",
]
QUESTION_CASES = [
    {"input": t, "output": True} for t in ("Why?", "Is it?", "Really?", "Now?", "Who?")
]
QUESTION_CASES += [
    {"input": t, "output": False} for t in ("No.", "Yes!", "Fine", "It is.", "Done.")
]
LOWER = [
    "def evaluate(response):\n    return response == response.lower()",
    "def evaluate(response):\n    while True:\n        pass",
    "def evaluate(response):\n    return not any(c.isupper() for c in response)",
]
LOWER_CASES = [
    {"input": "all lower", "output": True},
    {"input": "Not Lower", "output": False},
    {"input": "x", "output": True},
    {"input": "ABC", "output": False},
]
SETS = [
    {"constraint": "Answer in fewer than 5 words", "functions": FEWER_THAN_5, "cases": FEWER_CASES},
    {"constraint": "End with a question mark", "functions": QUESTION, "cases": QUESTION_CASES},
    {"constraint": "Use only lowercase letters", "functions": LOWER, "cases": LOWER_CASES},
]


def write_rows(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def invoke(*args: str):
    return CliRunner().invoke(app, ["check-verifiers", *args], catch_exceptions=False)


def test_kept_and_rejected_are_exact(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "sets.jsonl", SETS)
    out = tmp_path / "out"
    result = invoke(str(src), "-o", str(out), "--timeout", "0.5")
    assert result.exit_code == 0, result.output

    kept = read(out / "constraints.jsonl")
    assert [k["constraint"] for k in kept] == ["Answer in fewer than 5 words"]
    assert kept[0]["functions"] == FEWER_THAN_5[:3]
    assert kept[0]["accuracy"] == [1.0, 1.0, 1.0]
    assert len(kept[0]["cases"]) == 10

    rejected = read(out / "rejected.jsonl")
    constraints = {
        r["instruction"]: [v["rule"] for v in r["verdicts"]]
        for r in rejected
        if r["meta"]["kind"] == "constraint"
    }
    assert constraints == {
        "End with a question mark": ["min_functions"],
        "Use only lowercase letters": ["min_functions", "min_cases"],
    }
    functions = {
        (r["instruction"], r["meta"]["function"]): r
        for r in rejected
        if r["meta"]["kind"] == "function"
    }
    assert set(functions) == {
        ("Answer in fewer than 5 words", FEWER_THAN_5[3]),
        ("End with a question mark", QUESTION[1]),
        ("Use only lowercase letters", LOWER[1]),
    }
    always_true = functions[("Answer in fewer than 5 words", FEWER_THAN_5[3])]
    assert always_true["meta"]["score"]["accuracy"] == 0.5
    assert always_true["meta"]["score"]["verdicts"] == {"pass": 10}
    boom = functions[("End with a question mark", QUESTION[1])]
    assert boom["meta"]["score"]["verdicts"] == {"error": 10}
    assert "ValueError: boom" in boom["verdicts"][0]["detail"]
    loop = functions[("Use only lowercase letters", LOWER[1])]
    assert loop["meta"]["score"]["verdicts"] == {"timeout": 4}
    # the dropped constraint keeps every function it came with, and each one's verdict counts
    question = next(r for r in rejected if r["instruction"] == "End with a question mark")
    assert question["meta"]["functions"] == QUESTION
    assert [s["verdicts"] for s in question["meta"]["function_scores"]] == [
        {"pass": 5, "fail": 5},
        {"error": 10},
        {"pass": 5, "fail": 5},
    ]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_constraints"] == 1
    assert summary["rejected_constraints"] == 2
    assert summary["rejected_functions"] == 3
    assert summary["sandbox"]["isolation"]


def test_thresholds_are_options(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "sets.jsonl", SETS)
    out = tmp_path / "out"
    result = invoke(
        str(src), "-o", str(out), "--min-functions", "2", "--min-cases", "4", "--timeout", "0.5"
    )
    assert result.exit_code == 0, result.output
    kept = {k["constraint"]: k for k in read(out / "constraints.jsonl")}
    assert set(kept) == set(s["constraint"] for s in SETS)
    assert kept["End with a question mark"]["functions"] == [QUESTION[0], QUESTION[2]]


def test_our_output_can_be_checked_again(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "sets.jsonl", SETS[:1])
    assert invoke(str(src), "-o", str(tmp_path / "a")).exit_code == 0
    again = invoke(str(tmp_path / "a" / "constraints.jsonl"), "-o", str(tmp_path / "b"))
    assert again.exit_code == 0, again.output
    assert read(tmp_path / "b" / "constraints.jsonl")[0]["functions"] == FEWER_THAN_5[:3]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ({"functions": FEWER_THAN_5, "cases": FEWER_CASES}, "field 'constraint'"),
        (
            {"constraint": "x", "functions": "def evaluate(r): return 1", "cases": []},
            "field 'functions'",
        ),
        (
            {
                "constraint": "x",
                "functions": FEWER_THAN_5,
                "cases": [{"input": "a", "output": "yes"}],
            },
            "field 'cases[0].output'",
        ),
        ("{not json", "field '(json)'"),
    ],
)
def test_malformed_row_is_one_line_with_file_line_field(
    tmp_path: Path, row: dict | str, where: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from evolkit.cli import main

    src = write_rows(tmp_path / "sets.jsonl", [SETS[0], row])
    monkeypatch.setattr(
        "sys.argv", ["evolkit", "check-verifiers", str(src), "-o", str(tmp_path / "o")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"{src}:2: {where}" in lines[0]
    assert not (tmp_path / "o" / "constraints.jsonl").exists()


def test_the_command_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "sets.jsonl", [SETS[0], {"constraint": "", "functions": []}])
    proc = subprocess.run(
        [sys.executable, "-m", "evolkit", "check-verifiers", str(src), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == f"error: {src}:2: field 'constraint': missing or not a non-empty string"
    )


def test_skip_mode_writes_bad_rows_and_goes_on(tmp_path: Path) -> None:
    bad = {"constraint": "x", "functions": [], "cases": []}
    src = write_rows(tmp_path / "sets.jsonl", [bad, SETS[0], "{oops"])
    out = tmp_path / "out"
    result = invoke(str(src), "-o", str(out), "--on-bad-record", "skip")
    assert result.exit_code == 0, result.output
    assert [k["constraint"] for k in read(out / "constraints.jsonl")] == [SETS[0]["constraint"]]
    bad_rows = read(out / "bad_records.jsonl")
    assert [(b["line"], b["field"]) for b in bad_rows] == [(1, "functions"), (3, "(json)")]
    assert json.loads((out / "summary.json").read_text())["bad_records"] == 2


def test_one_sided_cases_cannot_verify_anything(tmp_path: Path) -> None:
    """Ten cases that all expect True are passed by `return True`: such a set proves nothing."""
    vacuous = {
        "constraint": "Answer with words that begin with the letter 'B'",
        "functions": [
            "def evaluate(response):\n    return 'B' not in response.lower()",  # always True
            "def evaluate(response):\n    return True",
            "def evaluate(response):\n    return len(response) >= 0",
        ],
        "cases": [{"input": f"No, {i}.", "output": True} for i in range(10)],
    }
    src = write_rows(tmp_path / "sets.jsonl", [vacuous])
    result = invoke(str(src), "-o", str(tmp_path / "strict"))
    assert result.exit_code == 0, result.output
    assert read(tmp_path / "strict" / "constraints.jsonl") == []
    (row,) = read(tmp_path / "strict" / "rejected.jsonl")
    assert [v["rule"] for v in row["verdicts"]] == ["one_sided_cases"]
    assert "always returns True" in row["verdicts"][0]["detail"]
    # the original AutoIF had no such rule: it can be switched off
    loose = invoke(str(src), "-o", str(tmp_path / "loose"), "--allow-one-sided-cases")
    assert loose.exit_code == 0, loose.output
    assert len(read(tmp_path / "loose" / "constraints.jsonl")) == 1
