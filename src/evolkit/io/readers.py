"""Read instruction data in the shapes people actually have into evolkit records.

Every stage works on `Record`s, so this module is the one place that knows about Alpaca,
ShareGPT, OpenAI messages, GSM8K-style pairs and evolkit's own rows, and about JSONL, JSON, CSV,
Parquet, saved Hugging Face datasets and datasets on the Hub (``hf://ORG/NAME``). Two promises
hold for every format:

- nothing is silently lost: columns we do not map go to ``meta["extra"]``, the system prompt and
  the turns around the first exchange go to ``meta`` so exports can restore them;
- a bad row is reported with the file, a 1-based position and the field, either as a
  `BadRecordError` (``on_bad="error"``) or as a `BadRow` handed to a sink (``on_bad="skip"``)
  that carries the original text, so a rejects file can be written and fixed by hand.

Large inputs stream: JSONL is read line by line, Parquet batch by batch, and a Hub dataset
through `datasets`' streaming mode, so ``--limit 100`` fetches about 100 rows, not the whole set.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

from pydantic import ValidationError

from evolkit.errors import BadRecordError, EvolkitError
from evolkit.records import Record, make_id, seed_record

log = logging.getLogger(__name__)

OnBad = Literal["error", "skip"]

#: Keys of ``Record.meta`` this module fills; exports read the same keys back.
META_SYSTEM = "system"  # the system prompt (str)
META_HISTORY = "history"  # turns before the instruction: [{"role", "content"}, ...]
META_CONVERSATION = "conversation"  # turns after the output: [{"role", "content"}, ...]
META_TURNS_ANCHOR = "turns_anchor"  # which (instruction, input, output) those turns belong to
META_EXTRA = "extra"  # source columns with no record field
META_SOURCE_FORMAT = "source_format"  # the row shape the record was read from

#: Columns that can carry the instruction, in the order a row's shape is detected.
INSTRUCTION_COLUMNS = ("instruction", "conversations", "messages", "question", "prompt", "turns")
_LINEAGE = ("parent_id", "round", "operation", "evolver", "method_version")
_RECORD_FIELDS = frozenset(Record.model_fields)
_INPUT_ALIASES = ("input", "context")
_OUTPUT_ALIASES = ("output", "response", "answer", "completion")

# Role names seen in the wild, mapped to the OpenAI names we store; unknown roles (tool,
# function_call, observation, ...) are kept as they are.
_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
}

_BATCH_ROWS = 1024


@dataclass(frozen=True)
class BadRow:
    """A row that could not become a record, with everything needed to find and fix it.

    ``raw`` is the original line (JSONL), the original file text of the row (CSV) or the row
    serialised as JSON (JSON, Parquet, HF), so writing BadRows out loses nothing.
    """

    path: str
    line: int
    field: str
    reason: str
    raw: str

    @property
    def message(self) -> str:
        """The same one-line message `BadRecordError` would carry."""
        return str(BadRecordError(self.path, self.line, self.field, self.reason))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowError(ValueError):
    """A row-level problem: which field and why. The reader adds the path and position."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field '{field}': {reason}")
        self.field = field
        self.reason = reason


def turns_anchor(instruction: str, input: str, output: str) -> str:
    """Fingerprint of the exchange that stored turns surround.

    Turns kept in meta belong to the original first exchange. Once a stage rewrites the
    instruction or the response, those turns no longer fit, and exports must not restore them;
    comparing this fingerprint tells them whether the record still holds the original exchange.
    """
    return make_id("turns", instruction, input, output)


# --------------------------------------------------------------------------- row shapes


def record_from_row(row: Any, *, text_cells: bool = False) -> Record:
    """Turn one parsed row (any supported shape) into a Record, or raise `RowError`.

    ``text_cells`` says the values come from a text-only format (CSV), where numbers, JSON
    columns and missing values all arrive as strings.
    """
    if not isinstance(row, Mapping):
        raise RowError("(row)", f"expected an object, got {_type_name(row)}")
    if "id" in row and "instruction" in row and any(k in row for k in _LINEAGE):
        return _from_evolkit(row, text_cells)
    if "instruction" in row:
        return _from_alpaca(row)
    if "conversations" in row:
        return _from_turns(row, "conversations", "from", "value", "sharegpt")
    if "messages" in row:
        return _from_turns(row, "messages", "role", "content", "messages")
    if "question" in row:
        return _from_pair(row, "question", "question_answer")
    if "prompt" in row:
        return _from_pair(row, "prompt", "prompt_response")
    if "turns" in row:
        return _from_user_turns(row)
    raise RowError(
        "instruction",
        "missing: the row has none of " + ", ".join(INSTRUCTION_COLUMNS),
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _text(value: Any, field: str, *, required: bool = False) -> str:
    """A text field. Numbers are accepted for optional fields (GSM8K-like numeric answers)."""
    if isinstance(value, str):
        if required and not value.strip():
            raise RowError(field, "empty")
        return value
    if value is None:
        if required:
            raise RowError(field, "missing (null)")
        return ""
    if not required and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "" if isinstance(value, float) and math.isnan(value) else str(value)
    raise RowError(field, f"expected text, got {_type_name(value)}")


def _row_id(row: Mapping[str, Any]) -> str | None:
    value = row.get("id")
    if value is None or value == "":
        return None
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise RowError("id", f"expected a scalar id, got {_type_name(value)}")


def _first_key(row: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k in row), None)


def _build(
    row: Mapping[str, Any],
    consumed: set[str],
    instruction: str,
    input: str,
    output: str,
    meta: dict[str, Any],
) -> Record:
    extra = {k: v for k, v in row.items() if k not in consumed and k != "id"}
    if extra:
        meta[META_EXTRA] = {**meta.get(META_EXTRA, {}), **extra}
    if meta.get(META_HISTORY) or meta.get(META_CONVERSATION):
        meta[META_TURNS_ANCHOR] = turns_anchor(instruction, input, output)
    return seed_record(instruction, input, output, id=_row_id(row), meta=meta)


def _from_alpaca(row: Mapping[str, Any]) -> Record:
    consumed = {"instruction", "system", "history"}
    meta: dict[str, Any] = {META_SOURCE_FORMAT: "alpaca"}
    instruction = _text(row["instruction"], "instruction", required=True)
    in_key = _first_key(row, _INPUT_ALIASES)
    out_key = _first_key(row, _OUTPUT_ALIASES)
    source: Mapping[str, Any] = row
    prefix = ""
    if out_key is None and "instances" in row:
        # Self-Instruct seed tasks: instruction + instances[{input, output}]; the first
        # instance is the example, further instances stay in meta.
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise RowError("instances", "expected a non-empty list of {input, output}")
        if not isinstance(instances[0], Mapping):
            raise RowError("instances[0]", f"expected an object, got {_type_name(instances[0])}")
        consumed.add("instances")
        if len(instances) > 1:
            meta[META_EXTRA] = {"other_instances": instances[1:]}
        source, prefix = instances[0], "instances[0]."
        in_key = _first_key(source, _INPUT_ALIASES)
        out_key = _first_key(source, _OUTPUT_ALIASES)
    else:
        consumed.update(k for k in (in_key, out_key) if k)
    input = _text(source.get(in_key), prefix + str(in_key)) if in_key else ""
    if input.strip().lower() == "<noinput>":  # Alpaca's generator marks "no input" this way
        input = ""
    output = _text(source.get(out_key), prefix + str(out_key)) if out_key else ""
    system = _text(row.get("system"), "system")
    if system:
        meta[META_SYSTEM] = system
    history = _history_pairs(row.get("history"))
    if history:
        meta[META_HISTORY] = history
    return _build(row, consumed, instruction, input, output, meta)


def _history_pairs(value: Any) -> list[dict[str, Any]]:
    """LLaMA-Factory's alpaca ``history``: [[user, assistant], ...] before the instruction."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowError(
            "history", f"expected a list of [user, assistant] pairs, got {_type_name(value)}"
        )
    turns: list[dict[str, Any]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
        turns.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        turns.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    return turns


def _content(value: Any, field: str) -> str:
    """Turn content: text, null (assistant tool calls) or a list of OpenAI text parts."""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                raise RowError(f"{field}[{i}]", "only text content parts are supported")
            texts.append(_text(part.get("text"), f"{field}[{i}].text"))
        return "\n".join(texts)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise RowError(field, f"expected text, got {_type_name(value)}")
    return _text(value, field)


def _from_turns(
    row: Mapping[str, Any], key: str, role_key: str, content_key: str, fmt: str
) -> Record:
    """ShareGPT or OpenAI messages: first user turn -> instruction, the reply -> output."""
    turns = row[key]
    if not isinstance(turns, list):
        raise RowError(key, f"expected a list of turns, got {_type_name(turns)}")
    norm: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(where, f"expected an object, got {_type_name(turn)}")
        role = turn.get(role_key)
        if not isinstance(role, str) or not role:
            raise RowError(f"{where}.{role_key}", "missing role")
        item: dict[str, Any] = {
            "role": _ROLE_ALIASES.get(role.lower(), role),
            "content": _content(turn.get(content_key), f"{where}.{content_key}"),
        }
        for k, v in turn.items():  # other turn fields (name, tool_calls, ...) travel along
            if k not in (role_key, content_key):
                item[f"source_{k}" if k in ("role", "content") else k] = v
        norm.append(item)

    user_at = next((i for i, t in enumerate(norm) if t["role"] == "user"), None)
    if user_at is None:
        raise RowError(key, "no user turn")
    instruction = norm[user_at]["content"]
    if not instruction.strip():
        raise RowError(f"{key}[{user_at}].{content_key}", "empty")
    before = norm[:user_at]
    reply_at = user_at + 1
    has_reply = reply_at < len(norm) and norm[reply_at]["role"] == "assistant"
    output = norm[reply_at]["content"] if has_reply else ""
    after = norm[reply_at + 1 :] if has_reply else norm[reply_at:]

    meta: dict[str, Any] = {META_SOURCE_FORMAT: fmt}
    consumed = {key}
    systems = [t["content"] for t in before if t["role"] == "system"]
    row_system = row.get("system")
    if systems:
        meta[META_SYSTEM] = "\n\n".join(systems)
    elif row_system is not None:
        consumed.add("system")
        system = _text(row_system, "system")
        if system:
            meta[META_SYSTEM] = system
    history = [t for t in before if t["role"] != "system"]
    if history:
        meta[META_HISTORY] = history
    if after:
        meta[META_CONVERSATION] = after
    # Auxiliary keys of the two turns we flatten (name, weight, ...) are kept, not dropped.
    side = {"instruction_turn": norm[user_at], "output_turn": norm[reply_at] if has_reply else {}}
    side = {
        k: {f: v for f, v in t.items() if f not in ("role", "content")} for k, t in side.items()
    }
    side = {k: v for k, v in side.items() if v}
    if side:
        meta[META_EXTRA] = side
    return _build(row, consumed, instruction, "", output, meta)


def _from_pair(row: Mapping[str, Any], q_key: str, fmt: str) -> Record:
    """question/answer (GSM8K) and prompt/response|completion rows."""
    instruction = _text(row[q_key], q_key, required=True)
    consumed = {q_key}
    in_key = _first_key(row, _INPUT_ALIASES)
    out_key = _first_key(row, _OUTPUT_ALIASES)
    consumed.update(k for k in (in_key, out_key) if k)
    input = _text(row.get(in_key), in_key) if in_key else ""
    output = _text(row.get(out_key), out_key) if out_key else ""
    meta: dict[str, Any] = {META_SOURCE_FORMAT: fmt}
    if row.get("system") is not None:
        consumed.add("system")
        system = _text(row["system"], "system")
        if system:
            meta[META_SYSTEM] = system
    return _build(row, consumed, instruction, input, output, meta)


def _from_user_turns(row: Mapping[str, Any]) -> Record:
    """MT-Bench style ``turns: [first query, follow-up, ...]`` (user turns only)."""
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
        raise RowError("turns", "expected a non-empty list of user messages")
    instruction = _text(turns[0], "turns[0]", required=True)
    meta: dict[str, Any] = {META_SOURCE_FORMAT: "turns"}
    later = [
        {"role": "user", "content": _text(t, f"turns[{i}]")} for i, t in enumerate(turns[1:], 1)
    ]
    if later:
        meta[META_CONVERSATION] = later
    return _build(row, {"turns"}, instruction, "", "", meta)


def _json_cell(value: Any, field: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(field, f"malformed JSON: {e.msg}") from None
    return value


def _scores(value: Any) -> Any:
    """Scores as a dict, or as the list shapes Arrow maps and HF datasets produce."""
    value = _json_cell(value, "scores")
    if value is None:
        return {}
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for i, item in enumerate(value):
            if isinstance(item, Mapping) and "name" in item and "value" in item:
                out[str(item["name"])] = item["value"]
            elif isinstance(item, Mapping) and "key" in item and "value" in item:
                out[str(item["key"])] = item["value"]
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out[str(item[0])] = item[1]
            else:
                raise RowError(f"scores[{i}]", "expected a {name, value} entry")
        return out
    return value


def _from_evolkit(row: Mapping[str, Any], text_cells: bool) -> Record:
    """A row evolkit wrote: every field maps back exactly; unknown keys go to meta["extra"]."""
    data: dict[str, Any] = {k: v for k, v in row.items() if k in _RECORD_FIELDS}
    extra = {k: v for k, v in row.items() if k not in _RECORD_FIELDS}
    rid = _row_id(row)
    if rid is None:
        raise RowError("id", "empty")
    data["id"] = rid
    data["instruction"] = _text(row["instruction"], "instruction", required=True)
    for name in ("input", "output"):
        data[name] = _text(row.get(name), name)
    for name in ("parent_id", "operation", "evolver", "method_version"):
        if text_cells and data.get(name) == "":
            data[name] = None
    if data.get("round") is None or (text_cells and data.get("round") == ""):
        data.pop("round", None)
    data["scores"] = _scores(data.get("scores"))
    verdicts = _json_cell(data.get("verdicts"), "verdicts")
    data["verdicts"] = [] if verdicts is None else verdicts
    meta = _json_cell(data.get("meta"), "meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RowError("meta", f"expected an object, got {_type_name(meta)}")
    if extra:
        old = meta.get(META_EXTRA)
        meta = {**meta, META_EXTRA: {**(old if isinstance(old, dict) else {}), **extra}}
    data["meta"] = meta
    try:
        return Record(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(row)"
        raise RowError(field, err["msg"]) from None


# --------------------------------------------------------------------------- file formats

# One parsed row: (position, position label, row or the RowError that stopped parsing it,
# original text or None to serialise the row when it is reported).
_Item = tuple[int, str, Any, str | None]


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _jsonl_items(path: Path) -> Iterator[_Item]:
    """JSONL, one line at a time; blank lines are skipped, bad lines reported by line number."""
    with _open_binary(path) as f:
        for lineno, bline in enumerate(f, 1):
            if lineno == 1 and bline.startswith(b"\xef\xbb\xbf"):
                bline = bline[3:]
            if not bline.strip():
                continue
            raw = bline.decode("utf-8", "replace").rstrip("\r\n")
            try:
                row = json.loads(bline)
            except UnicodeDecodeError:
                yield lineno, "", RowError("(line)", "not valid UTF-8"), raw
            except json.JSONDecodeError as e:
                yield (
                    lineno,
                    "",
                    RowError("(json)", f"malformed JSON: {e.msg} (column {e.colno})"),
                    raw,
                )
            else:
                yield lineno, "", row, raw


def _json_items(path: Path) -> Iterator[_Item]:
    """A JSON document: a list of rows or {"data": [...]}; JSON Lines saved as .json also work."""
    with _open_binary(path) as f:
        first = f.readline().removeprefix(b"\xef\xbb\xbf")
        rest_has_rows = bool(f.read(4096).strip())
    first_is_row = False
    if rest_has_rows and first.lstrip().startswith(b"{"):
        with contextlib.suppress(ValueError):
            first_is_row = isinstance(json.loads(first), dict)
    if first_is_row:
        yield from _jsonl_items(path)
        return
    with _open_binary(path) as f:
        blob = f.read()
    try:
        data = json.loads(blob.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise EvolkitError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        # The whole document is unreadable, so there are no good rows to go on with.
        raise BadRecordError(
            str(path), e.lineno, "(json)", f"malformed JSON: {e.msg} (column {e.colno})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise EvolkitError(
            f'{path}: expected a JSON list of objects or {{"data": [...]}}, got {_type_name(data)}'
        )
    for i, item in enumerate(data, 1):
        yield i, "item", item, None


def _raise_csv_limit() -> None:
    # Long responses (code, essays) exceed csv's default 128 KiB field limit.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _csv_items(path: Path, delimiter: str) -> Iterator[_Item]:
    """CSV/TSV; positions are file lines (header = line 1), raw is the row's original text."""
    _raise_csv_limit()
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for text in f:
                consumed.append(text)
                yield text

        reader = csv.reader(lines(), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            raise EvolkitError(f"{path}: not valid UTF-8 (byte {e.start})") from None
        _check_columns(path, header)
        next_line = 1 + len(consumed)
        consumed.clear()
        while True:
            start = next_line
            try:
                cells = next(reader)
                problem: RowError | None = None
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise EvolkitError(f"{path}:{start}: not valid UTF-8 (byte {e.start})") from None
            except csv.Error as e:
                cells, problem = [], RowError("(csv)", str(e))
            raw = "".join(consumed).rstrip("\r\n")
            next_line += len(consumed)
            consumed.clear()
            if problem is not None:
                yield start, "", problem, raw
            elif not cells:  # a blank line
                continue
            elif len(cells) != len(header):
                reason = f"has {len(cells)} cells, the header has {len(header)}"
                yield start, "", RowError("(row)", reason), raw
            else:
                yield start, "", dict(zip(header, cells, strict=True)), raw


def _check_columns(path: Path | str, columns: Iterable[str]) -> None:
    """With no column that can hold the instruction, fail once instead of once per row."""
    names = list(columns)
    if not any(c in INSTRUCTION_COLUMNS for c in names):
        raise EvolkitError(
            f"{path}: no instruction column (looked for {', '.join(INSTRUCTION_COLUMNS)}; "
            f"found {', '.join(names) or 'none'})"
        )


def _parquet_items(path: Path) -> Iterator[_Item]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise EvolkitError(f"{path}: not a readable Parquet file ({e})") from None
    _check_columns(path, pf.schema_arrow.names)
    n = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist(maps_as_pydicts="lossy"):
            n += 1
            yield n, "row", row, None


def _hf_items(path: Path) -> Iterator[_Item]:
    try:
        import datasets
    except ImportError:
        raise EvolkitError(
            f"{path}: reading a saved Hugging Face dataset needs the 'datasets' package "
            "(pip install 'evolkit[hf]')"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ...
        raise EvolkitError(f"{path}: cannot load the saved Hugging Face dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            ds = ds["train"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise EvolkitError(
                f"{path}: the dataset has splits {', '.join(splits)} and none is 'train'; "
                f"pass the split folder, e.g. {path / splits[0]}"
            )
    _check_columns(path, ds.column_names)
    n = 0
    for table in ds.with_format("arrow").iter(batch_size=_BATCH_ROWS):
        for row in table.to_pylist(maps_as_pydicts="lossy"):
            n += 1
            yield n, "row", row, None


_FORMATS = (
    ".jsonl, .ndjson, .json, .csv, .tsv (optionally .gz), .parquet, a saved HF dataset folder "
    "or hf://ORG/NAME"
)

# --------------------------------------------------------------------------- the Hub

#: How an input names a dataset on the Hugging Face Hub: hf://ORG/NAME[/CONFIG][@SPLIT].
HUB_PREFIX = "hf://"


@dataclass(frozen=True)
class HubRef:
    """A dataset on the Hub (or a local folder `load_dataset` resolves the same way)."""

    repo: str
    config: str | None = None
    split: str = "train"

    def __str__(self) -> str:
        name = self.repo + (f"/{self.config}" if self.config else "")
        return f"{HUB_PREFIX}{name}@{self.split}"


def hub_ref(source: Any) -> HubRef | None:
    """The Hub dataset `source` names, or None when it is not an hf:// name.

    A `Path` collapses the double slash (``Path("hf://a/b")`` is ``hf:/a/b``) and the command
    line hands inputs over as paths, so both spellings are accepted.
    """
    if not isinstance(source, str | Path):
        return None
    text = str(source)
    if not text.startswith("hf:/"):
        return None
    name = text[len("hf:") :].lstrip("/")
    split = "train"
    if "@" in name:
        name, split = name.rsplit("@", 1)
    parts = [p for p in name.split("/") if p]
    if parts and parts[0] == "datasets":  # the Hub's own URL spelling: hf://datasets/org/name
        parts = parts[1:]
    if len(parts) not in (2, 3) or not split:
        raise EvolkitError(
            f"{text}: expected hf://ORG/NAME, hf://ORG/NAME@SPLIT or hf://ORG/NAME/CONFIG@SPLIT"
        )
    return HubRef("/".join(parts[:2]), parts[2] if len(parts) == 3 else None, split)


def _hub_failure(ref: HubRef, exc: BaseException) -> EvolkitError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "OfflineModeIsEnabled" in str(exc) or isinstance(exc, ConnectionError):
        why = (
            "HF_HUB_OFFLINE is set"
            if _hub_offline()
            else "the Hugging Face Hub cannot be reached from here"
        )
        return EvolkitError(
            f"{ref}: cannot read it from the Hub ({why}); where there is a network, save it "
            "with datasets' save_to_disk and pass that folder instead"
        )
    return EvolkitError(f"{ref}: cannot read it ({type(exc).__name__}: {text})")


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` logs its own error line before raising; ours is the one the user sees."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_items(ref: HubRef) -> Iterator[_Item]:
    """Rows streamed from the Hub: only as many are fetched as are read (``--limit``)."""
    try:
        import datasets
    except ImportError:
        raise EvolkitError(
            f"{ref}: reading from the Hugging Face Hub needs the 'datasets' package "
            "(pip install 'evolkit[hf]')"
        ) from None
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(ref.repo, ref.config, split=ref.split, streaming=True)
    except Exception as exc:  # datasets raises ConnectionError, ValueError, its own errors
        raise _hub_failure(ref, exc) from None
    rows = iter(ds)
    n = 0
    while True:
        try:
            with _quiet_datasets():
                row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a shard that cannot be fetched or parsed mid-stream
            raise _hub_failure(ref, exc) from None
        n += 1
        if n == 1:
            _check_columns(str(ref), row)
        yield n, "row", row, None


def _items_for(path: Path) -> tuple[Iterator[_Item], bool]:
    """Pick the parser from the extension; fail here, before any row is read, when unknown."""
    if not path.exists():
        raise EvolkitError(f"{path}: no such file or directory")
    if path.is_dir():
        if not any((path / n).exists() for n in ("state.json", "dataset_dict.json")):
            raise EvolkitError(
                f"{path}: a folder must be a saved Hugging Face dataset "
                "(state.json or dataset_dict.json not found)"
            )
        return _hf_items(path), False
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_items(path), False
    if suffix == ".json":
        return _json_items(path), False
    if suffix in (".csv", ".tsv"):
        return _csv_items(path, "\t" if suffix == ".tsv" else ","), True
    if suffix in (".parquet", ".pq") and not path.name.lower().endswith(".gz"):
        return _parquet_items(path), False
    raise EvolkitError(
        f"{path}: unknown input format '{suffix or path.name}' (expected {_FORMATS})"
    )


def read_records(
    path: str | Path,
    *,
    on_bad: OnBad = "error",
    bad_sink: Callable[[BadRow], None] | None = None,
    limit: int | None = None,
) -> Iterator[Record]:
    """Stream the records of a data file, a saved HF dataset folder, or a Hub dataset named
    ``hf://ORG/NAME[/CONFIG][@SPLIT]`` (streamed: ``limit`` rows are all that is fetched).

    ``on_bad="error"`` raises `BadRecordError` at the first bad row; ``on_bad="skip"`` hands each
    bad row to ``bad_sink`` (if given) and goes on. ``limit`` caps the number of records yielded.
    The path and format are checked now, so a wrong path fails at the call, not at first use.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    ref = hub_ref(path)
    if ref is not None:
        return _records(str(ref), _hub_items(ref), False, on_bad, bad_sink, limit)
    p = Path(path)
    items, text_cells = _items_for(p)
    return _records(str(p), items, text_cells, on_bad, bad_sink, limit)


def _unique_derived_id(record: Record, seen: set[str]) -> Record:
    """Keep derived ids unique within one input.

    A content-derived id collides when a file repeats an instruction (with the same input);
    the n-th repeat gets ``make_id("seed", instruction, input, n)``, which is still stable for
    the same file. Duplicates stay in the data: removing them is a stage's decision.
    """
    rid, n = record.id, 0
    while rid in seen:
        n += 1
        rid = make_id("seed", record.instruction, record.input, n)
    seen.add(rid)
    return record if rid == record.id else record.model_copy(update={"id": rid})


def _records(
    path: str,
    items: Iterator[_Item],
    text_cells: bool,
    on_bad: OnBad,
    bad_sink: Callable[[BadRow], None] | None,
    limit: int | None,
) -> Iterator[Record]:
    if limit is not None and limit <= 0:
        return
    good = bad = 0
    derived: set[str] = set()
    for pos, label, row, raw in items:
        try:
            if isinstance(row, RowError):
                raise row
            record = record_from_row(row, text_cells=text_cells)
            if _row_id(row) is None:
                record = _unique_derived_id(record, derived)
        except RowError as e:
            reason = f"{label} {pos}: {e.reason}" if label else e.reason
            if on_bad == "error":
                raise BadRecordError(path, pos, e.field, reason) from None
            bad += 1
            if bad_sink is not None:
                text = raw if raw is not None else json.dumps(row, ensure_ascii=False, default=str)
                bad_sink(BadRow(path, pos, e.field, reason, text))
            continue
        yield record
        good += 1
        if limit is not None and good >= limit:
            break
    if bad and bad_sink is None:
        log.warning("%s: skipped %d bad row(s)", path, bad)


def _memory_items(rows: Any) -> Iterator[_Item]:
    """Rows held in memory: a list of dicts, a `datasets.Dataset` or a pandas DataFrame."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "iloc"):
        rows = rows.to_dict(orient="records")  # pandas
    elif hasattr(rows, "column_names") and hasattr(rows, "with_format"):
        rows = iter(rows)  # datasets.Dataset yields dicts
    elif isinstance(rows, Mapping | str | bytes):
        raise EvolkitError(
            "input rows: expected a list of dicts, a datasets.Dataset or a pandas DataFrame "
            f"(or a file path), not a {type(rows).__name__}"
        )
    for n, row in enumerate(rows, 1):
        if isinstance(row, Record):
            row = row.model_dump(mode="json")
        yield n, "row", row, None


def records_from_rows(
    rows: Any,
    *,
    on_bad: OnBad = "error",
    bad_sink: Callable[[BadRow], None] | None = None,
    limit: int | None = None,
) -> list[Record]:
    """Records from rows in memory, with the same shapes and checks as `read_records`."""
    return list(_records("<rows>", _memory_items(rows), False, on_bad, bad_sink, limit))
