"""A run folder: configuration fingerprint, append-only outputs, a checkpoint journal, resume.

Each finished batch appends its kept rows to `evolved.jsonl` (or the run's main file), its
eliminated rows to `rejected.jsonl`, then one journal line naming the batch's inputs and outputs.
A batch is committed only once its journal line is on disk: on restart, rows of an uncommitted
batch (a kill -9 between writes) are removed and that batch is redone, so nothing is duplicated
and nothing committed is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import ConfigMismatchError
from evolkit.io.writers import JsonlAppender, read_jsonl_tolerant
from evolkit.records import Record

CONFIG = "config.json"
JOURNAL = "checkpoint.jsonl"


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    """Owns every file of one run; the engine commits batches through it."""

    def __init__(
        self,
        out: str | Path,
        config: dict[str, Any],
        *,
        overwrite: bool = False,
        kept_name: str = "evolved.jsonl",
    ) -> None:
        self.dir = Path(out)
        self.config = config
        self.kept_path = self.dir / kept_name
        self.rejected_path = self.dir / "rejected.jsonl"
        self.bad_path = self.dir / "bad_records.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.journal_path = self.dir / JOURNAL
        cfg_path = self.dir / CONFIG
        fp = fingerprint(config)
        if overwrite and self.dir.exists():
            # --overwrite always starts over, even when the configuration is unchanged.
            shutil.rmtree(self.dir)
        elif cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old.get("fingerprint") != fp:
                changed = sorted(
                    k
                    for k in set(old.get("config", {})) | set(config)
                    if old.get("config", {}).get(k) != config.get(k)
                )
                raise ConfigMismatchError(
                    f"{self.dir} holds a run with another configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); use another -o folder, or "
                    "--overwrite to replace it"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resumed = self.journal_path.exists()
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "config": config}, indent=2))
        os.replace(tmp, cfg_path)
        self._load()

    # -- journal -----------------------------------------------------------------------------
    def _load(self) -> None:
        entries, _ = read_jsonl_tolerant(self.journal_path)
        self._done: dict[str, set[str]] = {}
        self._kept_ids: dict[str, list[str]] = {}
        committed: set[str] = set()
        for e in entries:
            self._done.setdefault(e["step"], set()).update(e["inputs"])
            self._kept_ids.setdefault(e["step"], []).extend(e["kept"])
            committed.update(e["kept"])
            committed.update(e["rejected"])
        self._rows: dict[str, dict[str, Any]] = {}
        for path in (self.kept_path, self.rejected_path):
            rows, dropped = read_jsonl_tolerant(path)
            clean: list[dict[str, Any]] = []
            seen: set[str] = set()
            for row in rows:
                if row.get("id") in committed and row["id"] not in seen:
                    seen.add(row["id"])
                    clean.append(row)
            if dropped or len(clean) != len(rows):
                _rewrite(path, clean)
            if path == self.kept_path:
                self._rows = {r["id"]: r for r in clean}
        # The journal itself may end in a torn line: rewrite it without.
        if self.journal_path.exists():
            _rewrite(self.journal_path, entries)

    def done_inputs(self, step: str) -> set[str]:
        return set(self._done.get(step, set()))

    def kept_records(self, step: str) -> list[Record]:
        return [Record.model_validate(self._rows[i]) for i in self._kept_ids.get(step, [])]

    def commit(
        self, step: str, inputs: Sequence[str], kept: Sequence[Record], rejected: Sequence[Record]
    ) -> None:
        if kept:
            with JsonlAppender(self.kept_path) as w:
                w.write(kept)
        if rejected:
            with JsonlAppender(self.rejected_path) as w:
                w.write(rejected)
        entry = {
            "step": step,
            "inputs": list(inputs),
            "kept": [r.id for r in kept],
            "rejected": [r.id for r in rejected],
        }
        _append_line(self.journal_path, json.dumps(entry))
        self._done.setdefault(step, set()).update(inputs)
        self._kept_ids.setdefault(step, []).extend(entry["kept"])
        for r in kept:
            self._rows[r.id] = r.model_dump(mode="json")

    # -- other outputs -----------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        os.replace(tmp, self.summary_path)


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rewrite(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
