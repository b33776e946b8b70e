"""`evolkit show`: rows next to their parents, readable at 100 columns and through a pipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import evolkit
from evolkit.cli import app
from tests.test_evolve import SEEDS, backends

MARKUP = "Print [bold]this[/bold] and [red]that[/] exactly."


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("show") / "run"
    rows = [{"instruction": s} for s in [*SEEDS, MARKUP]]
    evolkit.evolve(rows, out, backends=backends(), rounds=2, cache=None, progress=False)
    return out


def show(*args: str, width: int = 100) -> str:
    res = CliRunner().invoke(app, ["show", *args], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res.output


def panels(text: str) -> list[str]:
    return [p for p in re.split(r"(?m)^╭", text) if p.strip() and "╰" in p]


def flat(text: str) -> str:
    """The text of the panels without borders and wrapping, to search for whole sentences."""
    inner = [line.strip("│ ") for line in text.splitlines()]
    return " ".join(" ".join(inner).split())


def test_kept_rows_beside_their_parents(run: Path) -> None:
    out = show(str(run), "--limit", "0")
    assert "\x1b[" not in out  # no colour codes through a pipe (| less)
    assert max(len(line) for line in out.splitlines()) <= 100
    shown = panels(out)
    kept = evolkit.RunResult.load(run).rows()
    assert len(shown) == len(kept)
    assert "parent" in shown[0] and "rewrite (round" in shown[0]
    text = flat(out)
    # Wide enough not to wrap: each parent and its rewrite stand on one line, side by side.
    lines = show(str(run), "--limit", "0", width=400).splitlines()
    for row in kept:
        assert f"id {row.id}" in text
        parent, rewrite = row.meta["parent"]["instruction"], row.instruction
        assert any(
            parent in ln and ln.index(parent) < ln.index(rewrite) for ln in lines if rewrite in ln
        )
    assert "answer: Here is a careful answer" in text
    assert "passed no_information_gain" in text
    assert f"showed {len(kept)} of {len(kept)} kept rows" in text


def test_text_is_printed_as_written_never_as_markup(run: Path) -> None:
    out = show(str(run), "--rejected", "--limit", "0", width=400)
    assert MARKUP in out  # the seed, brackets and all
    assert MARKUP.rstrip(".") + ", and explain each choice" in out  # and its rewrite


def test_rejected_round_rule_and_limit_filters(run: Path) -> None:
    rejected = evolkit.RunResult.load(run).rejected()
    out = flat(show(str(run), "--rejected", "--limit", "0"))
    assert f"showed {len(rejected)} of {len(rejected)} rejected rows" in out
    assert "rejected by not_an_instruction" in out

    round2 = [r for r in rejected if r.round == 2]
    out = show(str(run), "--rejected", "--round", "2", "--limit", "0")
    assert len(panels(out)) == len(round2)
    assert all("round 2" in p.splitlines()[0] for p in panels(out))

    by_rule = [r for r in rejected if any(v.rule == "sorry" for v in r.verdicts)]
    out = show(str(run), "--rejected", "--rule", "sorry")
    assert len(panels(out)) == len(by_rule) > 0
    assert "rejected by sorry" in flat(out)

    out = show(str(run), "--rejected", "--limit", "1")
    assert len(panels(out)) == 1 and "(--limit 0 shows all)" in out

    out = flat(show(str(run), "--rule", "no_such_rule"))
    assert "no kept rows with rule no_such_rule" in out and "rules in this file:" in out


def test_a_missing_run_is_one_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["show", str(tmp_path / "nope")])
    assert res.exit_code == 1
    assert "no such run folder" in str(res.exception)
