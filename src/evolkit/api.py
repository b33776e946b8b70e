"""The Python API: every scenario on a file, rows in memory, a `datasets.Dataset` or a DataFrame.

Each function takes the same settings as its command's options, under the same names and with
the same defaults (both come from the scenario's config class), writes the same run folder, and
returns a :class:`RunResult` to read the rows back::

    import evolkit

    res = evolkit.evolve(rows, "runs/x", rounds=1, backend="openai", base_url=URL, evolver="m")
    res.summary["kept_rate"]
    res.to_dataset("prompt-completion")   # ready for TRL's SFTTrainer

The scenarios are imported when first called, so ``import evolkit`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.io.writers import read_json_object
from evolkit.records import Record

__all__ = ["RunResult", "analyze", "auto_evol", "autoif", "evolve", "score"]


class RunResult:
    """A finished run: its summary and its rows, read from the run folder on demand.

    The folder stays the truth (a notebook restarted tomorrow can rebuild this object with
    ``RunResult.load(folder)``); nothing here holds rows in memory.
    """

    def __init__(self, folder: str | Path, summary: Mapping[str, Any] | None = None) -> None:
        from evolkit.runs import CONFIG, SUMMARY

        self.folder = Path(folder)
        config = read_json_object(self.folder / CONFIG)
        self.command: str = str(config.get("command") or "")
        self.config: dict[str, Any] = dict(config.get("settings") or {})
        self.summary: dict[str, Any] = (
            dict(summary) if summary is not None else read_json_object(self.folder / SUMMARY)
        )

    @classmethod
    def load(cls, folder: str | Path) -> RunResult:
        """The result of a run already on disk."""
        if not Path(folder).is_dir():
            raise EvolkitError(f"{folder}: no such run folder")
        return cls(folder)

    # -- rows --------------------------------------------------------------------------------
    @property
    def kept_path(self) -> Path:
        """The file of kept rows (evolved.jsonl, scored.jsonl, ... by command)."""
        from evolkit.runs import EVOLVED, KEPT_FILES

        return self.folder / KEPT_FILES.get(self.command, EVOLVED)

    def rows(self) -> list[Record]:
        """The kept rows, as records (lineage in `parent_id`/`round`, reasons in `verdicts`)."""
        return _records(self.kept_path)

    def rejected(self) -> list[Record]:
        """The rows a rule eliminated, each with the verdict that says why."""
        from evolkit.runs import REJECTED

        return _records(self.folder / REJECTED)

    def __len__(self) -> int:
        return len(self.rows())

    def to_dataset(self, format: str = "records") -> Any:
        """The kept rows as a `datasets.Dataset`.

        ``"records"`` (default): evolkit's columns, as ``evolkit export --format hf`` writes them
        (``scores`` as name/value pairs, ``meta`` as a JSON string). A training format
        (``"messages"``, ``"prompt-completion"``, ``"kto"``, ``"dpo"``, ``"alpaca"``,
        ``"sharegpt"``) gives exactly the rows ``evolkit export --format`` would write.
        """
        datasets = _need("datasets", "to_dataset()")
        if format == "records":
            import pyarrow as pa

            from evolkit.io.writers import _arrow_batch, arrow_schema

            schema = arrow_schema(scores_as_map=False)
            rows = self.rows()
            table = pa.Table.from_batches(
                [_arrow_batch(rows, schema, False)] if rows else [], schema=schema
            )
            return datasets.Dataset(table)
        from evolkit.io.exports import training_rows

        data, _ = training_rows(self.rows(), format, rejected=self.rejected())
        return datasets.Dataset.from_list(data)

    def to_pandas(self) -> Any:
        """The kept rows as a pandas DataFrame, one column per record field (dicts kept)."""
        pd = _need("pandas", "to_pandas()")
        return pd.DataFrame([r.model_dump(mode="json") for r in self.rows()])

    def __repr__(self) -> str:
        s = self.summary
        counts = ", ".join(f"{k} {s[k]}" for k in ("kept", "rejected", "scored") if k in s)
        tail = f": {counts}" if counts else ""
        return f"RunResult({self.command or 'run'} in {self.folder}{tail})"


# -- the scenarios -----------------------------------------------------------------------------


def evolve(
    input: Any,
    out: str | Path,
    config: Any = None,
    *,
    backends: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunResult:
    """Evol-Instruct (`evolkit evolve`): `input` is a file, a Hub name (hf://ORG/NAME), a list of
    dicts, a `datasets.Dataset`, a pandas DataFrame, or an earlier `RunResult`.

    `backends` maps a role ("evolver", "responder", "judge") to a ready Backend object that
    replaces that role's model.
    """
    from evolkit.scenarios.evol_instruct import evolve as run

    summary = run(_source(input), out, config, backends=backends, **settings)
    return RunResult(out, summary)


def score(
    input: Any,
    out: str | Path,
    config: Any = None,
    *,
    backends: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunResult:
    """IFD / IC-IFD scoring (`evolkit score`) of rows with responses. ``scorer="folder"`` is
    the scoring model (a setting, as on the command line); ``backends={"scorer": obj}`` hands
    over a ready scorer object instead."""
    from evolkit.scenarios.score import ScoreConfig
    from evolkit.scenarios.score import score as run

    obj = (backends or {}).get("scorer")
    cfg = ScoreConfig.make(config, **settings)
    summary = run(_source(input), out, cfg, scorer=obj)
    return RunResult(out, summary)


def autoif(
    constraints: str | Path | Sequence[str],
    queries: Any,
    out: str | Path,
    config: Any = None,
    *,
    backends: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunResult:
    """AutoIF (`evolkit autoif`): `constraints` is a file of one constraint per line or a list
    of constraint strings; `queries` is a file, a list of files, a Hub name, a list of dicts, a
    `datasets.Dataset` or a DataFrame (the first user turn of each row is the query)."""
    from evolkit.scenarios.autoif import autoif as run

    if isinstance(queries, RunResult):
        queries = queries.kept_path
    summary = run(constraints, _queries(queries), out, config, backends=backends, **settings)
    return RunResult(out, summary)


def analyze(
    input: Any,
    out: str | Path,
    config: Any = None,
    *,
    backends: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunResult:
    """The measures of a run (`evolkit analyze`): `input` is a run folder, an earlier result
    (its folder: analyze reads the rejects and config too) or a rows file."""
    from evolkit.scenarios.analyze import analyze as run

    source = input.folder if isinstance(input, RunResult) else input
    summary = run(source, out, config, backends=backends, **settings)
    return RunResult(out, summary)


def auto_evol(
    input: Any,
    out: str | Path,
    config: Any = None,
    *,
    backends: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunResult:
    """Auto Evol-Instruct (`evolkit auto-evol`): the evolving method optimises itself."""
    from evolkit.scenarios.auto_evol import auto_evol as run

    summary = run(_source(input), out, config, backends=backends, **settings)
    return RunResult(out, summary)


# -- inputs ------------------------------------------------------------------------------------


def _source(input: Any) -> Any:
    """What a scenario reads: a run folder or an earlier result means its kept rows."""
    if isinstance(input, RunResult):
        return input.kept_path
    if isinstance(input, str | Path) and not str(input).startswith("hf:"):
        path = Path(input)
        from evolkit.runs import CONFIG

        if path.is_dir() and (path / CONFIG).is_file():
            return RunResult(path).kept_path
    return input


def _queries(queries: Any) -> Any:
    if isinstance(queries, str | Path):
        return [_source(queries)]
    if isinstance(queries, list | tuple) and all(isinstance(q, str | Path) for q in queries):
        return [_source(q) for q in queries]
    return queries


def _records(path: Path) -> list[Record]:
    from evolkit.io.writers import read_jsonl_tolerant

    rows, _ = read_jsonl_tolerant(path)
    return [Record.model_validate(r) for r in rows]


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        how = "pip install 'evolkit[hf]'" if module == "datasets" else f"pip install {module}"
        raise EvolkitError(f"{what} needs the '{module}' package ({how})") from None
