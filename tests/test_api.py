"""The Python API on data in memory: lists of dicts, a datasets.Dataset, a pandas DataFrame.

Scripted backends stand in for the models; the run folder they write is the same as the CLI's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import evolkit
from evolkit.errors import EvolkitError
from evolkit.records import Record, make_id
from evolkit.scenarios.evol_instruct import EvolConfig
from tests.test_evolve import SEEDS, backends
from tests.test_stage_contract import FakeScorer

ROWS = [{"instruction": s, "input": ""} for s in SEEDS]


def settings(**over: object) -> dict[str, object]:
    return {"rounds": 1, "cache": None, "progress": False, **over}


def test_import_evolkit_stays_light() -> None:
    code = (
        "import sys, evolkit; f = evolkit.evolve; r = evolkit.RunResult; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'pandas') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evolve_a_list_of_dicts_and_read_the_result(tmp_path: Path) -> None:
    res = evolkit.evolve(ROWS, tmp_path / "run", backends=backends(), **settings())
    assert res.command == "evolve" and res.folder == tmp_path / "run"
    kept, rejected = res.rows(), res.rejected()
    assert all(isinstance(r, Record) for r in kept + rejected)
    assert len(kept) == res.summary["kept"] > 0
    assert len(rejected) == res.summary["rejected"] > 0
    # Lineage: each kept row names the seed it came from (ids derived from the seed text).
    assert {r.parent_id for r in kept} <= {make_id("seed", s, "") for s in SEEDS}
    # The same rows the file holds, in its order.
    on_disk = [
        json.loads(x)["id"] for x in (tmp_path / "run/evolved.jsonl").read_text().splitlines()
    ]
    assert [r.id for r in kept] == on_disk
    # The config records the rows by digest: no path to rerun from, but a resume is recognised.
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["settings"]["inputs"]["input"]["rows"] == "in memory"
    again = evolkit.evolve(ROWS, tmp_path / "run", backends=backends(), **settings())
    assert again.summary["resumed"] is True and [r.id for r in again.rows()] == on_disk


def test_dataset_and_dataframe_give_the_same_rows_as_a_list(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    first = evolkit.evolve(ROWS, tmp_path / "a", backends=backends(), **settings())
    from_ds = evolkit.evolve(
        datasets.Dataset.from_list(ROWS), tmp_path / "b", backends=backends(), **settings()
    )
    from_df = evolkit.evolve(pd.DataFrame(ROWS), tmp_path / "c", backends=backends(), **settings())
    want = [(r.id, r.instruction, r.output) for r in first.rows()]
    assert [(r.id, r.instruction, r.output) for r in from_ds.rows()] == want
    assert [(r.id, r.instruction, r.output) for r in from_df.rows()] == want

    ds = first.to_dataset()
    assert ds.num_rows == len(want) and ds["id"] == [w[0] for w in want]
    assert ds.column_names[:4] == ["id", "instruction", "input", "output"]
    # A training format gives the rows `evolkit export --format` writes.
    pc = first.to_dataset("prompt-completion")
    assert pc[0] == {
        "prompt": [{"role": "user", "content": want[0][1]}],
        "completion": [{"role": "assistant", "content": want[0][2]}],
    }
    df = first.to_pandas()
    assert list(df["id"]) == [w[0] for w in want]
    assert isinstance(df["meta"].iloc[0], dict)


def test_settings_are_the_cli_names_with_the_same_defaults(tmp_path: Path) -> None:
    res = evolkit.evolve(
        ROWS[:2], tmp_path / "run", backends=backends(), **settings(operations=["deepen"])
    )
    recorded = json.loads((tmp_path / "run/config.json").read_text())["settings"]
    defaults = EvolConfig(rounds=1, cache=None, progress=False, operations=["deepen"]).to_dict()
    assert {k: v for k, v in recorded.items() if k != "inputs"} == defaults
    assert {r.operation for r in res.rows() + res.rejected()} == {"deepen"}
    with pytest.raises(EvolkitError, match=r"unknown setting.*roundz"):
        evolkit.evolve(ROWS, tmp_path / "x", backends=backends(), roundz=1)


def test_bad_rows_in_memory_are_skipped_when_asked(tmp_path: Path) -> None:
    rows = [*ROWS[:3], {"instruction": 42}, {"nothing": "here"}]
    with pytest.raises(EvolkitError, match="row 4"):
        evolkit.evolve(rows, tmp_path / "a", backends=backends(), **settings())
    res = evolkit.evolve(
        rows, tmp_path / "b", backends=backends(), **settings(on_bad_record="skip")
    )
    assert res.summary["seeds"] == 3 and res.summary["bad_records"] == 2


def test_score_chains_on_an_evolve_result(tmp_path: Path) -> None:
    first = evolkit.evolve(ROWS, tmp_path / "run", backends=backends(), **settings())
    scored = evolkit.score(first, tmp_path / "scored", backends={"scorer": FakeScorer()})
    assert scored.command == "score" and scored.kept_path.name == "scored.jsonl"
    assert [r.id for r in scored.rows()] == [r.id for r in first.rows()]
    assert all("ic_ifd" in r.scores for r in scored.rows())
    # A run folder works as an input too, and the score settings are the CLI's names.
    again = evolkit.score(
        tmp_path / "run", tmp_path / "scored2", backends={"scorer": FakeScorer()}, max_length=64
    )
    assert again.config["max_length"] == 64
    assert [r.scores for r in again.rows()] == [r.scores for r in scored.rows()]


def test_result_loads_from_disk_later(tmp_path: Path) -> None:
    res = evolkit.evolve(ROWS, tmp_path / "run", backends=backends(), **settings())
    later = evolkit.RunResult.load(tmp_path / "run")
    assert later.summary == json.loads((tmp_path / "run/summary.json").read_text())
    assert [r.id for r in later.rows()] == [r.id for r in res.rows()]
    assert "evolve" in repr(later) and "kept" in repr(later)
    with pytest.raises(EvolkitError, match="no such run folder"):
        evolkit.RunResult.load(tmp_path / "missing")


def test_analyze_takes_an_earlier_result(tmp_path: Path) -> None:
    from tests.analyze_fixtures import FakeEmbedder, measure_backends

    res = evolkit.evolve(ROWS, tmp_path / "run", backends=backends(), **settings())
    got = evolkit.analyze(
        res,
        tmp_path / "a",
        backends=measure_backends(),
        embedder=FakeEmbedder(),
        cache=None,
        progress=False,
    )
    assert got.command == "analyze" and got.kept_path.name == "measures.jsonl"
    measured = got.rows()
    # the run's kept rows and its seeds, each with its measures
    assert {r.id for r in res.rows()} <= {r.id for r in measured}
    assert all("difficulty_score" in r.scores or r.round == 0 for r in measured)
    assert got.summary["run"] == str(tmp_path / "run")


def test_auto_evol_takes_rows_in_memory(tmp_path: Path) -> None:
    from tests.test_auto_evol import PLAN, start_method
    from tests.test_auto_evol import backends as auto_backends

    got = evolkit.auto_evol(
        ROWS,
        tmp_path / "auto",
        backends=auto_backends(PLAN),
        method=start_method(tmp_path),
        steps=1,
        mini_batch=2,
        evolutions_per_item=1,
        candidates=2,
        dev_size=2,
        batch_size=2,
        cache=None,
        progress=False,
    )
    assert got.command == "auto-evol" and (tmp_path / "auto" / "methods.json").is_file()
    kept = got.rows()
    assert kept and all(r.method_version for r in kept)
    assert len(kept) + len(got.rejected()) == len(ROWS)
