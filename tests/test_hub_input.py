"""hf://ORG/NAME inputs, read through `datasets` streaming. Never the network: `load_dataset`
resolves ORG/NAME to a local folder first, so the tests build one in the working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evolkit
from evolkit.errors import EvolkitError
from evolkit.io.readers import HubRef, hub_ref, read_records
from tests.test_evolve import backends

pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dataset folder org/name: a good train shard, then a shard that cannot be parsed (so
    reading it all fails, and a limited read proves it stopped early), and a test split."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "org" / "name"
    folder.mkdir(parents=True)
    rows = [
        {"instruction": f"Describe animal number {i}.", "output": f"It is {i}."} for i in range(6)
    ]
    (folder / "train-00000-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "train-00001-of-00002.jsonl").write_text("{this is not json\n")
    (folder / "test-00000-of-00001.jsonl").write_text(
        json.dumps({"instruction": "Name a test split row."}) + "\n"
    )
    return tmp_path


def test_names_parse_and_print_back() -> None:
    assert hub_ref("hf://org/name") == HubRef("org/name", None, "train")
    assert hub_ref(Path("hf://org/name@test")) == HubRef("org/name", None, "test")
    assert hub_ref("hf://datasets/org/name/main@validation") == HubRef(
        "org/name", "main", "validation"
    )
    assert str(hub_ref("hf://org/name")) == "hf://org/name@train"
    assert hub_ref("data/seeds.jsonl") is None
    with pytest.raises(EvolkitError, match="expected hf://ORG/NAME"):
        hub_ref("hf://justone")


def test_limit_streams_only_what_it_needs(hub: Path) -> None:
    rows = list(read_records("hf://org/name", limit=4))
    assert [r.instruction for r in rows] == [f"Describe animal number {i}." for i in range(4)]
    # Reading past the first shard reaches the broken one: one line naming the input.
    with pytest.raises(EvolkitError, match=r"^hf://org/name@train: cannot read it \("):
        list(read_records("hf://org/name"))
    (test_row,) = read_records("hf://org/name@test")
    assert test_row.instruction == "Name a test split row."


def test_evolve_from_the_hub_records_the_name(hub: Path) -> None:
    res = evolkit.evolve(
        "hf://org/name", "run", backends=backends(), rounds=1, limit=3, cache=None, progress=False
    )
    assert res.summary["seeds"] == 3
    config = json.loads(Path("run/config.json").read_text())
    assert config["settings"]["inputs"]["input"] == "hf://org/name@train"
    assert config["config"]["input"] == "hf://org/name@train"  # in the fingerprint


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "-m", "evolkit", "evolve", "hf://nobody-here/nothing", "-o", "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 1
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert "hf://nobody-here/nothing@train" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
