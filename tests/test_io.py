"""Readers and writers: every input shape and format, bad rows, crash-safe appends, round trips."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evolkit.errors import BadRecordError, EvolkitError
from evolkit.io import (
    BadRow,
    JsonlAppender,
    read_jsonl_tolerant,
    read_records,
    write_hf_dataset,
    write_jsonl,
    write_parquet,
)
from evolkit.records import Record, Verdict, make_id

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_pq(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_hf(path: Path, rows: list[dict[str, Any]]) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def evolved_records() -> list[Record]:
    seed = Record(
        id="s1",
        instruction="Sort the list.",
        input="[3, 1, 2]",
        output="[1, 2, 3]",
        scores={"ifd": 0.83, "loss_q": 2.3, "ic_ifd": 0.3608695652173913},
        meta={"source_format": "alpaca", "extra": {"tag": ["a", "b"], "n": 1}},
    )
    child = Record(
        id="e1",
        instruction="Sort the list in descending order without built-ins.",
        input="[3, 1, 2]",
        output="",
        parent_id="s1",
        round=2,
        operation="add_constraint",
        evolver="smollm2-135m",
        method_version="m3",
        verdicts=[
            Verdict(rule="sorry_short", detail="contains 'sorry', 12 words", stage="eliminate"),
            Verdict(rule="length_cap", kept=True),
        ],
        meta={"nested": {"deep": [1, {"x": None}]}, "unicode": "déjà vu ✓"},
    )
    return [seed, child]


# --------------------------------------------------------------------------- row shapes


def test_alpaca_jsonl_maps_fields_keeps_extras_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Add.", "input": "2 3", "output": "5", "source": "x", "score": 0.5},
            "",
            "   ",
            {"id": 7, "instruction": "Name a colour.", "output": "Blue"},
            {"instruction": "Say hi.", "input": "<noinput>", "output": None},
        ],
    )
    recs = list(read_records(path))
    assert [r.instruction for r in recs] == ["Add.", "Name a colour.", "Say hi."]
    first = recs[0]
    assert (first.input, first.output) == ("2 3", "5")
    assert first.id == make_id("seed", "Add.", "2 3")
    assert first.meta == {"source_format": "alpaca", "extra": {"source": "x", "score": 0.5}}
    assert recs[1].id == "7"  # given ids are kept, as text
    assert recs[2].input == "" and recs[2].output == ""  # Alpaca's "<noinput>" marker, null output
    assert all(r.round == 0 and r.parent_id is None for r in recs)


def test_derived_ids_are_stable_and_unique_for_repeated_rows(tmp_path: Path) -> None:
    row = {"instruction": "Same.", "input": "", "output": "x"}
    path = write_lines(tmp_path / "d.jsonl", [row, row, {**row, "output": "y"}])
    ids = [r.id for r in read_records(path)]
    assert len(set(ids)) == 3
    assert ids[0] == make_id("seed", "Same.", "")
    assert ids == [r.id for r in read_records(path)]  # same file, same ids


def test_sharegpt_conversation_keeps_system_and_later_turns(tmp_path: Path) -> None:
    row = {
        "id": "conv-1",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "And 3+3?"},
            {"from": "gpt", "value": "6"},
        ],
        "lang": "en",
    }
    (rec,) = read_records(write_lines(tmp_path / "s.jsonl", [row]))
    assert (rec.id, rec.instruction, rec.input, rec.output) == ("conv-1", "What is 2+2?", "", "4")
    assert rec.meta["system"] == "Be brief."
    assert rec.meta["conversation"] == [
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    assert rec.meta["extra"] == {"lang": "en"}
    assert rec.meta["source_format"] == "sharegpt"
    assert "turns_anchor" in rec.meta


def test_openai_messages_with_text_parts_and_row_level_system(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "developer", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello", "name": "bot"},
            ]
        },
        {"system": "Sys.", "messages": [{"role": "user", "content": "Only a question"}]},
    ]
    a, b = read_records(write_lines(tmp_path / "m.jsonl", rows))
    assert (a.instruction, a.output, a.meta["system"]) == ("Hi", "Hello", "You are terse.")
    assert a.meta["extra"] == {"output_turn": {"name": "bot"}}  # turn fields are not dropped
    assert (b.instruction, b.output, b.meta["system"]) == ("Only a question", "", "Sys.")
    assert "conversation" not in b.meta


@pytest.mark.parametrize(
    ("row", "expected", "extra"),
    [
        ({"question": "2+2?", "answer": "#### 4"}, ("2+2?", "", "#### 4"), None),
        ({"prompt": "P", "response": "R", "chosen": "c"}, ("P", "", "R"), {"chosen": "c"}),
        ({"prompt": "P", "completion": "C"}, ("P", "", "C"), None),
        ({"instruction": "I", "context": "ctx", "response": "R"}, ("I", "ctx", "R"), None),
        ({"question": "How many?", "answer": 72}, ("How many?", "", "72"), None),
        ({"turns": ["First?", "Second?"], "category": "c"}, ("First?", "", ""), {"category": "c"}),
    ],
)
def test_alias_shapes(
    tmp_path: Path, row: dict[str, Any], expected: tuple[str, str, str], extra: Any
) -> None:
    (rec,) = read_records(write_lines(tmp_path / "x.jsonl", [row]))
    assert (rec.instruction, rec.input, rec.output) == expected
    assert rec.meta.get("extra") == extra


def test_self_instruct_instances_and_alpaca_history(tmp_path: Path) -> None:
    rows = [
        {
            "instruction": "Classify.",
            "instances": [{"input": "a", "output": "A"}, {"input": "b", "output": "B"}],
            "name": "cls",
        },
        {
            "instruction": "Now in French.",
            "output": "Bonjour",
            "system": "Translator.",
            "history": [["Say hello.", "Hello"]],
        },
    ]
    a, b = read_records(write_lines(tmp_path / "x.jsonl", rows))
    assert (a.input, a.output) == ("a", "A")
    assert a.meta["extra"] == {"other_instances": [{"input": "b", "output": "B"}], "name": "cls"}
    assert b.meta["system"] == "Translator."
    assert b.meta["history"] == [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello"},
    ]


# --------------------------------------------------------------------------- file formats


def test_evolkit_rows_round_trip_exactly_through_jsonl(tmp_path: Path) -> None:
    recs = evolved_records()
    assert write_jsonl(recs, tmp_path / "out.jsonl") == 2
    assert list(read_records(tmp_path / "out.jsonl")) == recs
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


def test_evolkit_row_with_unknown_keys_keeps_them_in_extra(tmp_path: Path) -> None:
    row = json.loads(evolved_records()[1].to_json())
    row["annotator"] = "bob"
    (rec,) = read_records(write_lines(tmp_path / "e.jsonl", [row]))
    assert rec.meta["extra"] == {"annotator": "bob"}
    assert rec.verdicts == evolved_records()[1].verdicts


def test_json_list_data_wrapper_and_jsonl_named_json(tmp_path: Path) -> None:
    rows = [{"instruction": "A", "output": "1"}, {"instruction": "B", "output": "2"}]
    (tmp_path / "list.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows, "version": 1}))
    write_lines(tmp_path / "lines.json", rows)
    for name in ("list.json", "wrapped.json", "lines.json"):
        assert [r.output for r in read_records(tmp_path / name)] == ["1", "2"], name
    (tmp_path / "obj.json").write_text('{"rows": []}')
    with pytest.raises(EvolkitError, match="expected a JSON list"):
        list(read_records(tmp_path / "obj.json"))


def test_csv_multiline_cells_and_evolkit_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        ["instruction", "input", "output", "topic"],
        [["Write a poem.", "", "Line one\nLine two", "art"], ["Add.", "1 2", "3", ""]],
    )
    a, b = read_records(path)
    assert a.output == "Line one\nLine two"
    assert a.meta["extra"] == {"topic": "art"}
    assert (b.input, b.output) == ("1 2", "3")

    rec = evolved_records()[1]
    row = json.loads(rec.to_json())
    cells = [
        json.dumps(row[k])
        if isinstance(row[k], (dict, list))
        else ("" if row[k] is None else row[k])
        for k in row
    ]
    (back,) = read_records(write_csv(tmp_path / "e.csv", list(row), [cells]))
    assert back == rec  # numbers, JSON columns and empty cells are decoded


def test_gzip_and_tsv(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"instruction": "Zip.", "output": "ok"}) + "\n")
    assert [r.output for r in read_records(tmp_path / "a.jsonl.gz")] == ["ok"]
    (tmp_path / "a.tsv").write_text("instruction\toutput\nTab.\tyes\n")
    assert [r.output for r in read_records(tmp_path / "a.tsv")] == ["yes"]


def test_parquet_round_trip_of_scores_verdicts_meta(tmp_path: Path) -> None:
    recs = evolved_records()
    assert write_parquet(recs, tmp_path / "out.parquet") == 2
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert schema.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert pa.types.is_list(schema.field("verdicts").type)
    assert schema.field("meta").type == pa.string()
    assert schema.field("round").type == pa.int64()
    table = pq.read_table(tmp_path / "out.parquet")
    assert json.loads(table.column("meta")[1].as_py()) == recs[1].meta
    assert list(read_records(tmp_path / "out.parquet")) == recs


def test_parquet_foreign_columns_and_many_batches(tmp_path: Path) -> None:
    rows = [{"instruction": f"Q{i}", "output": f"A{i}", "split": "train"} for i in range(2500)]
    recs = list(read_records(write_pq(tmp_path / "big.parquet", rows)))
    assert len(recs) == 2500
    assert (recs[-1].instruction, recs[-1].output) == ("Q2499", "A2499")
    assert recs[0].meta["extra"] == {"split": "train"}


def test_hf_dataset_folder_single_and_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {
            "messages": [
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Ciao"},
            ]
        },
    ]
    recs = list(read_records(save_hf(tmp_path / "ds", rows)))
    assert [(r.instruction, r.output) for r in recs] == [("Hi", "Yo"), ("Bye", "Ciao")]

    alpaca = datasets.Dataset.from_list([{"instruction": "T", "output": "train"}])
    other = datasets.Dataset.from_list([{"instruction": "V", "output": "test"}])
    datasets.DatasetDict({"test": other, "train": alpaca}).save_to_disk(str(tmp_path / "dd"))
    assert [r.output for r in read_records(tmp_path / "dd")] == ["train"]
    datasets.DatasetDict({"validation": other}).save_to_disk(str(tmp_path / "one"))
    assert [r.output for r in read_records(tmp_path / "one")] == ["test"]
    datasets.DatasetDict({"a": other, "b": other}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(EvolkitError, match="none is 'train'"):
        read_records(tmp_path / "two").__next__()


def test_write_hf_dataset_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    recs = evolved_records()
    assert write_hf_dataset(recs, tmp_path / "hf") == 2
    assert list(read_records(tmp_path / "hf")) == recs
    assert write_hf_dataset(recs[:1], tmp_path / "hf") == 1  # replaces the folder
    assert list(read_records(tmp_path / "hf")) == recs[:1]


def test_unknown_extension_missing_path_and_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(EvolkitError) as e:
        read_records(tmp_path / "data.xml")  # fails at the call, before iteration
    assert "unknown input format '.xml'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EvolkitError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(EvolkitError, match="saved Hugging Face dataset"):
        read_records(tmp_path / "folder")


def test_no_instruction_column_fails_once_for_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", ["text", "label"], [["a", "b"]])
    with pytest.raises(EvolkitError, match=r"no instruction column .*found text, label"):
        list(read_records(path, on_bad="skip"))
    with pytest.raises(EvolkitError, match="no instruction column"):
        list(read_records(write_pq(tmp_path / "x.parquet", [{"text": "a"}])))


def test_reading_is_lazy_and_limit_stops_early(tmp_path: Path) -> None:
    rows: list[Any] = [{"instruction": f"Q{i}"} for i in range(3)] + ["{broken"]
    path = write_lines(tmp_path / "x.jsonl", rows)
    assert [r.instruction for r in islice(read_records(path), 3)] == ["Q0", "Q1", "Q2"]
    assert len(list(read_records(path, limit=2))) == 2
    assert list(read_records(path, limit=0)) == []
    with pytest.raises(BadRecordError):
        list(read_records(path))


# --------------------------------------------------------------------------- bad rows

BAD_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"output": "x"}, "instruction", "missing: the row has none of"),
    ({"instruction": 42}, "instruction", "expected text, got int"),
    ({"instruction": ["a"]}, "instruction", "expected text, got a list"),
    ({"instruction": "ok", "output": {"a": 1}}, "output", "expected text, got an object"),
    ({"instruction": "   "}, "instruction", "empty"),
    ({"conversations": [{"from": "gpt", "value": "hi"}]}, "conversations", "no user turn"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "expected text"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_CASES)
def test_bad_jsonl_row_names_path_line_field(
    tmp_path: Path, row: dict[str, Any], field: str, reason: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [{"instruction": "good"}, "", row])
    with pytest.raises(BadRecordError) as e:
        list(read_records(path))
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 3, field)
    assert str(e.value).startswith(f"{path}:3: field '{field}': {reason}")


def test_malformed_json_line_and_skip_mode_sink(tmp_path: Path) -> None:
    lines = [
        json.dumps({"instruction": "one"}),
        '{"instruction": "two", ',
        json.dumps({"instruction": 3}),
        json.dumps({"instruction": "four"}),
    ]
    path = write_lines(tmp_path / "m.jsonl", lines)
    with pytest.raises(BadRecordError) as e:
        list(read_records(path))
    assert str(e.value).startswith(f"{path}:2: field '(json)': malformed JSON")

    bad: list[BadRow] = []
    good = list(read_records(path, on_bad="skip", bad_sink=bad.append))
    assert [r.instruction for r in good] == ["one", "four"]
    assert [(b.line, b.field) for b in bad] == [(2, "(json)"), (3, "instruction")]
    assert [b.raw for b in bad] == [lines[1], lines[2]]  # the original text, nothing lost
    assert bad[1].message == f"{path}:3: field 'instruction': expected text, got int"
    assert list(read_records(path, on_bad="skip")) == good  # no sink: skipped, logged


def test_bad_item_in_json_array(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b"}, {"instruction": 1.5}]))
    with pytest.raises(BadRecordError) as e:
        list(read_records(path))
    assert str(e.value) == f"{path}:3: field 'instruction': item 3: expected text, got float"
    bad: list[BadRow] = []
    assert len(list(read_records(path, on_bad="skip", bad_sink=bad.append))) == 2
    assert json.loads(bad[0].raw) == {"instruction": 1.5}
    (tmp_path / "broken.json").write_text('[\n  {"instruction": "a"},\n  {"instruction": }\n]')
    with pytest.raises(BadRecordError, match=r"broken.json:3: field '\(json\)'"):
        list(read_records(tmp_path / "broken.json", on_bad="skip"))


def test_bad_csv_rows_use_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        'instruction,output\n"multi\nline",ok\n,empty instruction\nthree,cells,here\nfine,yes\n'
    )
    with pytest.raises(BadRecordError) as e:
        list(read_records(path))
    assert str(e.value) == f"{path}:4: field 'instruction': empty"
    bad: list[BadRow] = []
    good = list(read_records(path, on_bad="skip", bad_sink=bad.append))
    assert [r.instruction for r in good] == ["multi\nline", "fine"]
    assert [(b.line, b.field, b.raw) for b in bad] == [
        (4, "instruction", ",empty instruction"),
        (5, "(row)", "three,cells,here"),
    ]


def test_bad_parquet_and_hf_rows_say_row_n(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "output": "x"}, {"instruction": "", "output": "y"}]
    path = write_pq(tmp_path / "b.parquet", rows)
    with pytest.raises(BadRecordError) as e:
        list(read_records(path))
    assert str(e.value) == f"{path}:2: field 'instruction': row 2: empty"
    hf = save_hf(tmp_path / "hf", rows)
    bad: list[BadRow] = []
    assert len(list(read_records(hf, on_bad="skip", bad_sink=bad.append))) == 1
    assert (bad[0].line, bad[0].reason) == (2, "row 2: empty")
    assert json.loads(bad[0].raw) == rows[1]


def test_bad_evolkit_field_is_named(tmp_path: Path) -> None:
    row = json.loads(evolved_records()[1].to_json())
    row["round"] = "second"
    with pytest.raises(BadRecordError) as e:
        list(read_records(write_lines(tmp_path / "e.jsonl", [row])))
    assert e.value.field == "round" and e.value.line == 1


# --------------------------------------------------------------------------- crash-safe appends


def test_appender_one_write_and_fsync_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_write, real_fsync = os.write, os.fsync

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            calls.append(name)
            return fn(*args)

        return wrapped

    recs = evolved_records()
    with JsonlAppender(tmp_path / "run" / "out.jsonl") as app:
        monkeypatch.setattr(os, "write", spy("write", real_write))
        monkeypatch.setattr(os, "fsync", spy("fsync", real_fsync))
        assert app.write(recs) == 2
        assert app.write([recs[0]]) == 1
        assert app.write([]) == 0
        monkeypatch.undo()
    assert calls == ["write", "fsync", "write", "fsync"]
    rows, dropped = read_jsonl_tolerant(tmp_path / "run" / "out.jsonl")
    assert dropped == 0
    assert [Record(**r) for r in rows] == [*recs, recs[0]]


def test_torn_last_line_is_dropped_and_repaired_on_append(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    recs = evolved_records()
    with JsonlAppender(path) as app:
        app.write(recs)
    with path.open("ab") as f:
        f.write(recs[0].to_json().encode()[:25])  # a write cut short by kill -9
    rows, dropped = read_jsonl_tolerant(path)
    assert (len(rows), dropped) == (2, 1)
    with pytest.raises(BadRecordError):
        list(read_records(path))  # the strict reader does not hide it

    with JsonlAppender(path) as app:  # reopening cuts the fragment before appending
        app.write([recs[1]])
    rows, dropped = read_jsonl_tolerant(path)
    assert dropped == 0
    assert [r["id"] for r in rows] == ["s1", "e1", "e1"]

    with path.open("ab") as f:  # complete JSON that only lacks its newline is kept
        f.write(json.dumps({"id": "tail"}).encode())
    with JsonlAppender(path) as app:
        app.write([recs[0]])
    assert [r["id"] for r in read_jsonl_tolerant(path)[0]][-2:] == ["tail", "s1"]


def test_tolerant_reader_missing_file_and_middle_corruption(tmp_path: Path) -> None:
    assert read_jsonl_tolerant(tmp_path / "none.jsonl") == ([], 0)
    path = write_lines(tmp_path / "x.jsonl", ['{"id": 1}', '{"id": ', '{"id": 3}'])
    with pytest.raises(BadRecordError, match=r"x.jsonl:2: field '\(json\)'"):
        read_jsonl_tolerant(path)


_WRITER = """
import sys
from evolkit.io import JsonlAppender
from evolkit.records import seed_record
with JsonlAppender(sys.argv[1]) as app:
    i = 0
    while True:
        app.write([seed_record(f"task {i}-{j} " + "x" * 2000) for j in range(50)])
        i += 1
        if i == 3:
            print("ready", flush=True)
"""


def test_appended_output_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows, dropped = read_jsonl_tolerant(path)
    assert len(rows) >= 150 and dropped in (0, 1)
    assert all(Record(**r).instruction.startswith("task ") for r in rows)
    with JsonlAppender(path) as app:  # a resumed run appends cleanly after the crash
        app.write([Record(id="resumed", instruction="after the crash")])
    rows2, dropped2 = read_jsonl_tolerant(path)
    assert dropped2 == 0 and rows2[-1]["id"] == "resumed" and len(rows2) == len(rows) + 1


def test_write_jsonl_is_atomic_when_the_input_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(evolved_records(), path)
    before = path.read_bytes()

    def failing() -> Any:
        yield evolved_records()[0]
        raise RuntimeError("stage crashed")

    with pytest.raises(RuntimeError):
        write_jsonl(failing(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# --------------------------------------------------------------------------- the shared data


def test_real_self_instruct_seed_tasks() -> None:
    path = SHARED_DATA / "self_instruct_seed" / "seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    recs = list(read_records(path))
    assert len(recs) == 175
    assert len({r.id for r in recs}) == 175
    first = recs[0]
    assert first.id == "seed_task_0"
    assert first.instruction.startswith("Is there anything I can eat for a breakfast")
    assert first.output.startswith("Yes, you can have 1 oatmeal banana protein shake")
    assert first.meta["extra"] == {"name": "breakfast_suggestion", "is_classification": False}
    assert recs[1].input == "Night : Day :: Right : Left"


def test_real_alpaca_libre() -> None:
    path = SHARED_DATA / "alpaca_libre" / "alpaca_libre_tasks_v1.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    recs = list(read_records(path))
    assert len(recs) == 2375
    assert len({r.id for r in recs}) == 2375
    assert sum(r.meta["extra"]["status"] == "ok" for r in recs) == 1202
    first = recs[0]
    assert first.instruction == "Generate a haiku poem about nature."
    assert first.meta["extra"] == {"status": "too similar", "similarity": 0.909}
