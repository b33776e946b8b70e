"""Training exports: the JSON shapes trainers read, dataset_info.json merging, skipped rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evolkit.errors import EvolkitError
from evolkit.io import export_dataset, export_records, read_records
from evolkit.records import Record, seed_record

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}


def sample() -> list[Record]:
    return [
        seed_record("Summarise the text.", "Cats sleep a lot.", "Cats are sleepy."),
        seed_record("Name a prime.", "", "7"),
        seed_record("Unanswered.", "", ""),
        seed_record("Rejected.", "", "Sorry.").reject("sorry_short", "12 words"),
    ]


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_one(tmp_path: Path, row: dict[str, Any]) -> Record:
    path = tmp_path / "src.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (rec,) = read_records(path)
    return rec


def with_multi_turn(tmp_path: Path) -> list[Record]:
    """The sample rows plus a two-turn ShareGPT conversation with a system line."""
    multi = read_one(
        tmp_path,
        {
            "conversations": [
                {"from": "system", "value": "Sys"},
                {"from": "human", "value": "Q1"},
                {"from": "gpt", "value": "A1"},
                {"from": "human", "value": "Q2"},
                {"from": "gpt", "value": "A2"},
            ]
        },
    )
    return [*sample(), multi]


def test_alpaca_export_shape_and_dataset_info(tmp_path: Path) -> None:
    out = tmp_path / "data" / "evolved.json"
    result = export_dataset(sample(), out, "alpaca")
    assert result.paths == [out, out.parent / "dataset_info.json"]
    assert (result.written, result.skipped_empty_output, result.skipped_rejected) == (2, 1, 1)
    assert load(out) == [
        {
            "instruction": "Summarise the text.",
            "input": "Cats sleep a lot.",
            "output": "Cats are sleepy.",
        },
        {"instruction": "Name a prime.", "input": "", "output": "7"},
    ]
    assert load(out.parent / "dataset_info.json") == {
        "evolved": {
            "file_name": "evolved.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    }


def test_dataset_info_is_merged_not_overwritten(tmp_path: Path) -> None:
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    export_records(sample(), tmp_path / "a.json", "alpaca", dataset_name="mine")
    export_records(sample(), tmp_path / "s.json", "sharegpt", dataset_name="mine_sharegpt")
    export_records(sample()[:2], tmp_path / "a2.json", "alpaca", dataset_name="mine")
    merged = load(info)
    assert list(merged) == ["identity", "mine", "mine_sharegpt"]
    assert merged["identity"] == {"file_name": "identity.json"}
    assert merged["mine"]["file_name"] == "a2.json"  # same name: the entry is replaced
    info.write_text("{not json")
    with pytest.raises(EvolkitError, match="not valid JSON"):
        export_records(sample(), tmp_path / "a.json", "alpaca")
    assert info.read_text() == "{not json"  # a broken file is reported, never clobbered


def test_sharegpt_export_joins_input_and_registers_tags(tmp_path: Path) -> None:
    out = tmp_path / "sg.json"
    assert export_records(sample(), out, "sharegpt", "sg") == [out, tmp_path / "dataset_info.json"]
    rows = load(out)
    assert rows[0] == {
        "conversations": [
            {"from": "human", "value": "Summarise the text.\nCats sleep a lot."},
            {"from": "gpt", "value": "Cats are sleepy."},
        ]
    }
    assert len(rows) == 2
    assert load(tmp_path / "dataset_info.json")["sg"] == {
        "file_name": "sg.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": SHAREGPT_TAGS,
    }


def test_messages_export_for_trl(tmp_path: Path) -> None:
    recs = sample()
    recs[1] = recs[1].model_copy(update={"meta": {"system": "Answer with one number."}})
    out = tmp_path / "train.jsonl"
    assert export_records(recs, out, "messages") == [out, tmp_path / "dataset_info.json"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [
        {
            "messages": [
                {"role": "user", "content": "Summarise the text.\nCats sleep a lot."},
                {"role": "assistant", "content": "Cats are sleepy."},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Answer with one number."},
                {"role": "user", "content": "Name a prime."},
                {"role": "assistant", "content": "7"},
            ]
        },
    ]
    # LLaMA-Factory reads the same file as its "OpenAI format" (data/README.md's field names).
    assert load(tmp_path / "dataset_info.json") == {
        "train": {
            "file_name": "train.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }


def test_system_column_appears_on_every_row_when_any_has_one(tmp_path: Path) -> None:
    recs = sample()[:2]
    recs[0] = recs[0].model_copy(update={"meta": {"system": "Be kind."}})
    export_records(recs, tmp_path / "a.json", "alpaca")
    export_records(recs, tmp_path / "s.json", "sharegpt")
    assert [r["system"] for r in load(tmp_path / "a.json")] == ["Be kind.", ""]
    assert [r["system"] for r in load(tmp_path / "s.json")] == ["Be kind.", ""]
    info = load(tmp_path / "dataset_info.json")
    assert info["a"]["columns"]["system"] == "system"
    assert info["s"]["columns"] == {"messages": "conversations", "system": "system"}


def test_multi_turn_source_is_restored_in_every_format(tmp_path: Path) -> None:
    rec = read_one(
        tmp_path,
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
                {"from": "human", "value": "3+3?"},
                {"from": "gpt", "value": "6"},
                {"from": "human", "value": "unanswered follow-up"},
            ]
        },
    )
    export_records([rec], tmp_path / "s.json", "sharegpt")
    assert load(tmp_path / "s.json") == [
        {
            "conversations": [
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
                {"from": "human", "value": "3+3?"},
                {"from": "gpt", "value": "6"},
            ],
            "system": "Be brief.",
        }
    ]
    export_records([rec], tmp_path / "m.jsonl", "messages")
    roles = [m["role"] for m in json.loads((tmp_path / "m.jsonl").read_text())["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    export_records([rec], tmp_path / "a.json", "alpaca")
    assert load(tmp_path / "a.json") == [
        {
            "instruction": "3+3?",
            "input": "",
            "output": "6",
            "system": "Be brief.",
            "history": [["2+2?", "4"]],
        }
    ]
    assert load(tmp_path / "dataset_info.json")["a"]["columns"]["history"] == "history"


def test_turns_are_not_restored_once_the_exchange_changed(tmp_path: Path) -> None:
    rec = read_one(
        tmp_path,
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2"},
            ]
        },
    )
    evolved = rec.model_copy(update={"instruction": "Q1, harder", "output": "A1'", "round": 1})
    export_records([evolved], tmp_path / "m.jsonl", "messages")
    assert json.loads((tmp_path / "m.jsonl").read_text())["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1, harder"},
        {"role": "assistant", "content": "A1'"},
    ]


def test_alpaca_history_round_trips(tmp_path: Path) -> None:
    row = {
        "instruction": "And in French?",
        "input": "",
        "output": "Bonjour",
        "history": [["Say hello.", "Hello"]],
    }
    rec = read_one(tmp_path, row)
    export_records([rec, seed_record("Single.", "", "turn")], tmp_path / "a.json", "alpaca")
    assert load(tmp_path / "a.json") == [row, {**seed_row("Single.", "turn"), "history": []}]


def seed_row(instruction: str, output: str) -> dict[str, Any]:
    return {"instruction": instruction, "input": "", "output": output}


def test_unknown_format_and_empty_export(tmp_path: Path) -> None:
    with pytest.raises(EvolkitError, match="unknown export format 'csv'"):
        export_records(sample(), tmp_path / "x.csv", "csv")  # type: ignore[arg-type]
    result = export_dataset([seed_record("No answer.")], tmp_path / "e.json", "alpaca")
    assert (result.written, result.skipped_empty_output) == (0, 1)
    assert load(tmp_path / "e.json") == []


def test_real_seed_tasks_export(tmp_path: Path) -> None:
    path = SHARED_DATA / "self_instruct_seed" / "seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    result = export_dataset(read_records(path), tmp_path / "seed.json", "alpaca", "seed")
    rows = load(tmp_path / "seed.json")
    assert result.written == len(rows) == 175 - result.skipped_empty_output
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in rows)


def test_exports_load_with_datasets_json_loader(tmp_path: Path) -> None:
    """Trainers load these files with ``datasets.load_dataset("json")``: every row must fit."""
    datasets = pytest.importorskip("datasets")
    recs = with_multi_turn(tmp_path)
    for fmt, name in (("alpaca", "a.json"), ("sharegpt", "s.json"), ("messages", "m.jsonl")):
        export_records(recs, tmp_path / name, fmt)  # type: ignore[arg-type]
        ds = datasets.load_dataset(
            "json",
            data_files=str(tmp_path / name),
            split="train",
            cache_dir=str(tmp_path / "hf-cache"),
        )
        assert ds.num_rows == 3, fmt
    assert ds[2]["messages"][0] == {"role": "system", "content": "Sys"}


def test_cli_export_full_records_round_trip(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evolkit.cli import app
    from evolkit.io.readers import read_records
    from evolkit.records import Record, Verdict

    src = tmp_path / "rows.jsonl"
    rec = Record(
        id="r1",
        instruction="Name a bird.",
        output="Robin.",
        parent_id="s1",
        round=1,
        operation="deepen",
        scores={"ifd": 0.7},
        verdicts=[Verdict(rule="x", kept=True)],
        meta={"k": [1, 2]},
    )
    src.write_text(rec.to_json() + "\n")
    for fmt, name in (("parquet", "out.parquet"), ("jsonl", "out.jsonl"), ("hf", "out_hf")):
        res = CliRunner().invoke(
            app, ["export", str(src), "-o", str(tmp_path / name), "--format", fmt]
        )
        assert res.exit_code == 0, res.output
        assert list(read_records(tmp_path / name)) == [rec]


# LLaMA-Factory's documented dataset_info.json vocabulary and row rules, as written in
# https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md (the entry keys, "columns",
# "tags", and the sharegpt rule: an optional system message first, then user and assistant
# turns in alternation, an even number of them).
LF_ENTRY_KEYS = {
    "hf_hub_url", "ms_hub_url", "script_url", "file_name", "formatting", "ranking", "subset",
    "split", "folder", "num_samples", "columns", "tags",
}  # fmt: skip
LF_COLUMNS = {
    "prompt", "query", "response", "history", "messages", "system", "tools", "images",
    "videos", "audios", "chosen", "rejected", "kto_tag",
}  # fmt: skip
LF_TAGS = {
    "role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag",
    "system_tag",
}  # fmt: skip
LF_TAG_DEFAULTS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "system_tag": "system",
}  # fmt: skip


def check_llamafactory(folder: Path) -> int:
    """Every entry of dataset_info.json against the documented names; returns rows checked."""
    info = load(folder / "dataset_info.json")
    checked = 0
    for entry in info.values():
        assert set(entry) <= LF_ENTRY_KEYS
        columns, tags = entry.get("columns", {}), entry.get("tags", {})
        assert set(columns) <= LF_COLUMNS and set(tags) <= LF_TAGS
        path = folder / entry["file_name"]
        text = path.read_text()
        rows = (
            [json.loads(x) for x in text.splitlines()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
        for row in rows:
            checked += 1
            assert set(columns.values()) <= set(row)  # every mapped column exists
            if entry.get("formatting", "alpaca") == "alpaca":
                assert isinstance(row[columns.get("prompt", "instruction")], str)
                assert isinstance(row[columns.get("response", "output")], str)
                continue
            t = {**LF_TAG_DEFAULTS, **tags}
            turns = row[columns.get("messages", "conversations")]
            if turns and turns[0][t["role_tag"]] == t["system_tag"]:
                turns = turns[1:]
            roles = [m[t["role_tag"]] for m in turns]
            assert len(roles) % 2 == 0 and roles
            assert roles[::2] == [t["user_tag"]] * (len(roles) // 2)
            assert roles[1::2] == [t["assistant_tag"]] * (len(roles) // 2)
            assert all(isinstance(m[t["content_tag"]], str) for m in turns)
    return checked


def test_llamafactory_entries_use_its_documented_names(tmp_path: Path) -> None:
    recs = with_multi_turn(tmp_path)
    out = tmp_path / "lf"
    for fmt, name in (("alpaca", "a.json"), ("sharegpt", "s.json"), ("messages", "m.jsonl")):
        export_records(recs, out / name, fmt)  # type: ignore[arg-type]
    assert set(load(out / "dataset_info.json")) == {"a", "s", "m"}
    assert check_llamafactory(out) == 9  # 3 trainable rows in each of the 3 files
    # The checker is not vacuous: a row LLaMA-Factory would skip fails it.
    (out / "m.jsonl").write_text(
        json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n"
    )
    with pytest.raises(AssertionError):
        check_llamafactory(out)


def test_prompt_completion_export(tmp_path: Path) -> None:
    recs = sample()
    recs[1] = recs[1].model_copy(update={"meta": {"system": "Answer with one number."}})
    out = tmp_path / "pc.jsonl"
    result = export_dataset(recs, out, "prompt-completion")
    assert result.paths == [out] and result.written == 2
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {
            "prompt": [{"role": "user", "content": "Summarise the text.\nCats sleep a lot."}],
            "completion": [{"role": "assistant", "content": "Cats are sleepy."}],
        },
        {
            "prompt": [
                {"role": "system", "content": "Answer with one number."},
                {"role": "user", "content": "Name a prime."},
            ],
            "completion": [{"role": "assistant", "content": "7"}],
        },
    ]
