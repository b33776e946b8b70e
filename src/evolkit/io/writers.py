"""Write records: append-only run outputs that survive a crash, and whole-file outputs.

Run outputs are appended batch by batch with `JsonlAppender`: one ``write`` per batch, then
``fsync``, so after a ``kill -9`` the file holds every finished batch and at most one torn last
line, which `read_jsonl_tolerant` drops (and counts) when a run resumes. Whole-file writers
(`write_jsonl`, `write_parquet`, `write_hf_dataset`) write to a temporary sibling and rename it
into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from pydantic_core import to_jsonable_python

from evolkit.errors import BadRecordError, EvolkitError
from evolkit.records import Record

log = logging.getLogger(__name__)

_BATCH_ROWS = 1024
#: Stored in the Parquet schema metadata so a reader can tell our files from foreign ones.
PARQUET_SCHEMA_VERSION = "1"


def _json_line(item: Record | Mapping[str, Any]) -> str:
    if isinstance(item, Record):
        return item.to_json() + "\n"
    return json.dumps(to_jsonable_python(item), ensure_ascii=False) + "\n"


class JsonlAppender:
    """Append records to a JSONL file so that a killed run loses at most its current batch.

    Each `write` call serialises the whole batch first and hands it to the OS in one ``write``
    (O_APPEND), then ``fsync``s. On open, a torn last line left by an earlier crash is cut off
    (or terminated, if it is complete JSON that only lacks its newline) so new lines never glue
    onto a fragment.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> JsonlAppender:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _repair_tail(self.path, fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, records: Iterable[Record | Mapping[str, Any]]) -> int:
        """Append a batch durably; returns how many lines were written."""
        lines = [_json_line(r) for r in records]
        if not lines:
            return 0
        data = memoryview("".join(lines).encode("utf-8"))
        with self._lock:
            if self._fd is None:
                raise EvolkitError(
                    f"{self.path}: appender is not open (use it as a context manager)"
                )
            while data:  # a regular file takes it in one call; loop only for short writes
                n = os.write(self._fd, data)
                data = data[n:]
            os.fsync(self._fd)
            self.written += len(lines)
        return len(lines)


def _repair_tail(path: Path, fd: int) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with path.open("rb") as f:
        pos = size
        tail = b""
        while pos > 0:  # find the start of the last (unterminated) line
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            tail = chunk + tail
            cut = tail.rfind(b"\n")
            if cut != -1:
                line_start = pos + cut + 1
                break
        else:
            line_start = 0
    fragment = tail[line_start - pos :] if tail else b""
    if not fragment:
        return
    try:
        if not isinstance(json.loads(fragment), dict):
            raise ValueError("not a JSON object")
    except ValueError:
        log.warning(
            "%s: dropping a torn last line (%d bytes) left by an interrupted write",
            path,
            len(fragment),
        )
        os.ftruncate(fd, line_start)
    else:
        os.write(fd, b"\n")
    os.fsync(fd)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object file evolkit wrote (config.json, summary.json): {} when absent or not an
    object; one error line when it cannot be read."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EvolkitError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def read_jsonl_tolerant(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read a JSONL file we wrote, dropping a torn last line instead of failing.

    Returns ``(rows, dropped)`` where ``dropped`` is 0 or 1. A missing file is an empty run
    output: ``([], 0)``. A malformed line anywhere but at the very end is not crash damage, so
    it raises `BadRecordError`.
    """
    p = Path(path)
    if not p.exists():
        return [], 0
    rows: list[dict[str, Any]] = []
    dropped = 0
    with p.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                if not line.endswith(b"\n"):  # only the last line can lack its newline
                    log.warning("%s:%d: dropped a torn last line", p, lineno)
                    dropped += 1
                    continue
                raise BadRecordError(str(p), lineno, "(json)", f"malformed line ({e})") from None
            rows.append(obj)
    return rows, dropped


@contextlib.contextmanager
def atomic_path(path: Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over ``path`` only when the body succeeds.

    The one way evolkit writes a whole file: a reader (or a crash) never sees half of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if is_dir:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def atomic_text(path: str | Path) -> Iterator[TextIO]:
    """A text file to write whole: it replaces `path` (durably) only when the body succeeds."""
    with atomic_path(Path(path)) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(records: Iterable[Record | Mapping[str, Any]], path: str | Path) -> int:
    """Write records (or plain JSON objects) as JSONL, atomically; returns how many."""
    n = 0
    with atomic_text(path) as f:
        for r in records:
            f.write(_json_line(r))
            n += 1
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_text(path) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable_python(obj), indent=2, ensure_ascii=False))


def append_line(path: str | Path, line: str) -> None:
    """Append one line durably (the run journal: a batch counts once this returns)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _batches(records: Iterable[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) >= _BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _verdict_type() -> Any:
    import pyarrow as pa

    return pa.struct(
        [
            ("rule", pa.string()),
            ("detail", pa.string()),
            ("stage", pa.string()),
            ("kept", pa.bool_()),
        ]
    )


def arrow_schema(*, scores_as_map: bool = True) -> Any:
    """The stable columnar schema of a record.

    ``scores`` is ``map<string, double>`` in Parquet; Hugging Face datasets have no map type, so
    there it is ``list<struct<name, value>>``. ``meta`` is free-form, so it is a JSON string.
    """
    import pyarrow as pa

    scores = (
        pa.map_(pa.string(), pa.float64())
        if scores_as_map
        else pa.list_(pa.struct([("name", pa.string()), ("value", pa.float64())]))
    )
    return pa.schema(
        [
            ("id", pa.string()),
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("parent_id", pa.string()),
            ("round", pa.int64()),
            ("operation", pa.string()),
            ("evolver", pa.string()),
            ("method_version", pa.string()),
            ("scores", scores),
            ("verdicts", pa.list_(_verdict_type())),
            ("meta", pa.string()),
        ],
        metadata={"evolkit.schema": PARQUET_SCHEMA_VERSION},
    )


def _arrow_row(r: Record, scores_as_map: bool) -> dict[str, Any]:
    return {
        "id": r.id,
        "instruction": r.instruction,
        "input": r.input,
        "output": r.output,
        "parent_id": r.parent_id,
        "round": r.round,
        "operation": r.operation,
        "evolver": r.evolver,
        "method_version": r.method_version,
        "scores": dict(r.scores)
        if scores_as_map
        else [{"name": k, "value": v} for k, v in r.scores.items()],
        "verdicts": [v.model_dump() for v in r.verdicts],
        "meta": json.dumps(to_jsonable_python(r.meta), ensure_ascii=False),
    }


def _arrow_batch(records: list[Record], schema: Any, scores_as_map: bool) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_pylist(
        [_arrow_row(r, scores_as_map) for r in records], schema=schema
    )


def write_parquet(records: Iterable[Record], path: str | Path) -> int:
    """Write records as Parquet (schema: `arrow_schema`), streaming in batches, atomically."""
    import pyarrow.parquet as pq

    schema = arrow_schema(scores_as_map=True)
    n = 0
    with atomic_path(Path(path)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in _batches(records):
            writer.write_batch(_arrow_batch(batch, schema, True))
            n += len(batch)
    return n


def write_hf_dataset(records: Iterable[Record], path: str | Path) -> int:
    """Save records as a Hugging Face dataset folder (``datasets.load_from_disk`` reads it).

    The records are collected into one Arrow table in memory, as ``save_to_disk`` needs a
    dataset; the folder is replaced atomically.
    """
    try:
        import datasets
    except ImportError:
        raise EvolkitError(
            "writing a Hugging Face dataset needs the 'datasets' package "
            "(pip install 'evolkit[hf]')"
        ) from None
    import pyarrow as pa

    schema = arrow_schema(scores_as_map=False)
    batches = [_arrow_batch(b, schema, False) for b in _batches(records)]
    table = pa.Table.from_batches(batches, schema=schema)
    with atomic_path(Path(path), is_dir=True) as tmp:
        datasets.Dataset(table).save_to_disk(str(tmp))
    return table.num_rows
