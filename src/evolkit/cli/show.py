"""`evolkit show`: read what a run made, row by row, next to the row it came from.

Each row is drawn as a panel: its parent and the row itself side by side (the seed and its
rewrite; for AutoIF the user query and the composed instruction), then the answer, the
verdicts (why it was kept or rejected) and its scores. The text is the data exactly: never read
as markup, so ``[b]`` in an instruction prints as ``[b]``. Off a terminal (``| less``, a file)
the panels are drawn 100 columns wide, or $COLUMNS.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from evolkit.cli.common import app
from evolkit.errors import EvolkitError

#: Characters of one text shown before it is cut (``--full`` shows everything).
CUT = 800


@app.command()
def show(
    run: Annotated[Path, typer.Argument(help="A run folder (or a JSONL file of its rows).")],
    rejected: Annotated[
        bool, typer.Option("--rejected", help="Show the rejected rows, with why.")
    ] = False,
    round_: Annotated[
        int | None, typer.Option("--round", help="Only rows of this round.", show_default=False)
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option("--rule", help="Only rows with a verdict of this rule.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show; 0: all.")] = 20,
    full: Annotated[
        bool, typer.Option("--full", help=f"Do not cut texts longer than {CUT} characters.")
    ] = False,
) -> None:
    """Print a run's rows next to their parents: parent, rewrite, answer, verdicts, scores."""
    from rich.console import Console

    if limit < 0:
        raise EvolkitError("--limit must be 0 (all) or more")
    source, folder = _rows_file(run, rejected)
    rows = _read(source)
    picked = [r for r in rows if _matches(r, round_, rule)]
    shown = picked if limit == 0 else picked[:limit]
    console = Console(
        file=sys.stdout,
        width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 100),
        markup=False,
        highlight=False,
        emoji=False,
    )
    parents = _Parents(folder, rows)
    for n, row in enumerate(shown, 1):
        console.print(_panel(n, row, parents, full))
    what = "rejected" if rejected else "kept"
    filters = [f"round {round_}" if round_ is not None else "", f"rule {rule}" if rule else ""]
    where = " and ".join(f for f in filters if f)
    if not picked:
        seen = sorted({v["rule"] for r in rows for v in r.get("verdicts", [])})
        hint = f" (rules in this file: {', '.join(seen)})" if rule and seen else ""
        line = f"no {what} rows" + (f" with {where}" if where else "") + f" in {source}{hint}"
    else:
        line = f"showed {len(shown)} of {len(picked)} {what} rows"
        line += (f" with {where}" if where else "") + f" from {source}"
        if len(shown) < len(picked):
            line += " (--limit 0 shows all)"
    console.print(line, soft_wrap=True)


# -- reading ------------------------------------------------------------------------------------


def _rows_file(run: Path, rejected: bool) -> tuple[Path, Path | None]:
    """(the file of rows to show, the run folder holding it, if any)."""
    from evolkit.runs import CONFIG, EVOLVED, KEPT_FILES, REJECTED

    if run.is_file():
        return (run.parent / REJECTED if rejected else run), run.parent
    if not run.is_dir():
        raise EvolkitError(f"{run}: no such run folder or file")
    if rejected:
        path = run / REJECTED
        if not path.exists():
            raise EvolkitError(f"{run}: no rejected.jsonl (nothing was rejected, or not a run)")
        return path, run
    command = _json(run / CONFIG).get("command")
    names = [KEPT_FILES[command]] if command in KEPT_FILES else []
    names += [n for n in dict.fromkeys([EVOLVED, *KEPT_FILES.values()]) if n not in names]
    for name in names:
        if (run / name).exists():
            return run / name, run
    raise EvolkitError(
        f"{run}: no file of kept rows ({', '.join(dict.fromkeys(names))}); is it a run folder?"
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read(path: Path) -> list[dict[str, Any]]:
    from evolkit.io.writers import read_jsonl_tolerant

    rows, _ = read_jsonl_tolerant(path)
    return [r for r in rows if isinstance(r, dict)]


def _matches(row: dict[str, Any], round_: int | None, rule: str | None) -> bool:
    if round_ is not None and row.get("round") != round_:
        return False
    return rule is None or any(v.get("rule") == rule for v in row.get("verdicts", []))


class _Parents:
    """Finds a row's parent: in the row itself (Evol-Instruct keeps it in meta.parent), in the
    run's other files, or among the run's input rows (read only when needed)."""

    def __init__(self, folder: Path | None, rows: list[dict[str, Any]]) -> None:
        self.folder = folder
        self._by_id: dict[str, dict[str, Any]] | None = None
        self._rows = rows
        self._input_read = False

    def find(self, row: dict[str, Any]) -> dict[str, Any] | None:
        pid = row.get("parent_id")
        if not pid:
            return None
        index = self._index()
        if pid not in index and not self._input_read:
            self._read_input(index)
        return index.get(pid)

    def _index(self) -> dict[str, dict[str, Any]]:
        if self._by_id is None:
            from evolkit.runs import EVOLVED, REJECTED, STEPS

            found: dict[str, dict[str, Any]] = {}
            files = [EVOLVED, STEPS, REJECTED] if self.folder else []
            for rows in [self._rows, *(_read(self.folder / n) for n in files if self.folder)]:
                for r in rows:
                    found.setdefault(str(r.get("id")), r)
            self._by_id = found
        return self._by_id

    def _read_input(self, index: dict[str, dict[str, Any]]) -> None:
        """The seeds: the run's recorded input file, when it is a local file that still exists."""
        self._input_read = True
        if self.folder is None:
            return
        from evolkit.runs import CONFIG

        inputs = (_json(self.folder / CONFIG).get("settings") or {}).get("inputs") or {}
        path = inputs.get("input") if isinstance(inputs, dict) else None
        if not isinstance(path, str) or not Path(path).exists():
            return
        from evolkit.io.readers import read_records

        try:
            for rec in read_records(path, on_bad="skip"):
                index.setdefault(rec.id, rec.model_dump(mode="json"))
        except EvolkitError:
            return  # an unreadable input only means no parent is shown


# -- drawing ------------------------------------------------------------------------------------


def _cut(text: str, full: bool) -> str:
    if full or len(text) <= CUT:
        return text
    return f"{text[:CUT]}… ({len(text) - CUT} more characters; --full shows all)"


def _query(row: dict[str, Any]) -> str:
    inp = row.get("input") or ""
    return f"{row.get('instruction', '')}\n{inp}" if inp else str(row.get("instruction", ""))


def _sides(row: dict[str, Any], parents: _Parents) -> tuple[tuple[str, str] | None, str]:
    """((parent label, parent text) or None, label of the row's own instruction)."""
    meta = row.get("meta") or {}
    if "query" in meta and "constraint" in meta:  # AutoIF: the user's query, then the composition
        return ("query", str(meta["query"])), "instruction (query + constraint)"
    parent = meta.get("parent") if isinstance(meta.get("parent"), dict) else None
    if parent is None:
        found = parents.find(row)
        parent = found if found is not None else None
    rnd = row.get("round")
    label = f"rewrite (round {rnd})" if rnd else "instruction"
    if parent is None:
        return None, label
    return ("parent", _query(parent)), label


def _panel(n: int, row: dict[str, Any], parents: _Parents, full: bool) -> Any:
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parent, label = _sides(row, parents)
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False)
    if parent is not None:
        table.add_column(Text(parent[0], style="bold"), ratio=1)
    table.add_column(Text(label, style="bold"), ratio=1)
    cells = [Text(_cut(parent[1], full))] if parent is not None else []
    table.add_row(*cells, Text(_cut(_query(row), full)))
    parts: list[Any] = [table]
    output = str(row.get("output") or "")
    parts.append(Text.assemble(("answer: ", "bold"), _cut(output, full) if output else "(none)"))
    for line in _verdict_lines(row):
        parts.append(line)
    scores = row.get("scores") or {}
    if scores:
        shown = " · ".join(f"{k} {_num(v)}" for k, v in scores.items())
        parts.append(Text.assemble(("scores: ", "bold"), shown))
    return Panel(Group(*parts), title=_title(n, row), title_align="left", box=box.ROUNDED)


def _verdict_lines(row: dict[str, Any]) -> Iterator[Any]:
    from rich.text import Text

    meta = row.get("meta") or {}
    ver = meta.get("verification")
    if isinstance(ver, dict):
        counts = ver.get("counts") or {}
        detail = ", ".join(f"{k} {v}" for k, v in counts.items())
        yield Text.assemble(
            ("verifiers: ", "bold"),
            f"{ver.get('passed', 0)} of {ver.get('functions', 0)} passed"
            + (f" ({detail})" if detail else ""),
        )
    for v in row.get("verdicts", []):
        kept = bool(v.get("kept"))
        mark, style = ("passed ", "green") if kept else ("rejected by ", "red")
        where = f" [{v['stage']}]" if v.get("stage") else ""
        detail = f": {v['detail']}" if v.get("detail") else ""
        yield Text.assemble((mark, style), (str(v.get("rule")), "bold"), where + detail)


def _title(n: int, row: dict[str, Any]) -> Any:
    from rich.text import Text

    bits = [f"#{n}"]
    if row.get("round"):
        bits.append(f"round {row['round']}")
    if row.get("operation"):
        bits.append(str(row["operation"]))
    index = (row.get("meta") or {}).get("response_index")
    if index is not None:  # one of several sampled responses to the same instruction
        bits.append(f"response {int(index) + 1}")
    bits.append(f"id {row.get('id')}")
    return Text(" · ".join(bits))


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
