"""A run folder: the one place that names a run's files, guards it, and commits batches to it.

Each finished batch appends its kept rows to the run's main file (`evolved.jsonl`,
`scored.jsonl`, ...), its eliminated rows to `rejected.jsonl`, then one journal line naming the
batch's inputs and outputs. A batch is committed only once its journal line is on disk: on
restart, rows of an uncommitted batch (a kill -9 between writes) are removed and that batch is
redone, so nothing is duplicated and nothing committed is lost. A committed row that has gone
missing from its file (edited or truncated by hand) un-commits its batch, which is then redone.

One process writes a run folder at a time: an advisory lock (`flock`) on `.evolkit.lock` is
held for the whole run. The kernel drops it when the process dies, even by kill -9, so a stale
lock never blocks a rerun, and the file keeps the PID and host of the holder for the message a
second process prints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import ConfigMismatchError, EvolkitError
from evolkit.io.writers import (
    JsonlAppender,
    append_line,
    atomic_write_json,
    read_jsonl_tolerant,
    write_jsonl,
)
from evolkit.records import Record

log = logging.getLogger(__name__)

# -- the names of a run's files: every module asks the run folder for them --------------------
CONFIG = "config.json"
JOURNAL = "checkpoint.jsonl"
LOCK = ".evolkit.lock"
SUMMARY = "summary.json"
REJECTED = "rejected.jsonl"
BAD_RECORDS = "bad_records.jsonl"
LOG = "run.log"
EVOLVED = "evolved.jsonl"  # Evol-Instruct's and AutoIF's kept rows
STEPS = "steps.jsonl"  # AutoIF's and Auto Evol-Instruct's working store: every step's rows
CONSTRAINTS = "constraints.jsonl"  # AutoIF's verified constraints
SCORED = "scored.jsonl"
SELECTED = "selected.jsonl"
REMOVED = "removed.jsonl"
MEASURES = "measures.jsonl"  # `analyze`: rows with their measures
REPORT = "report.html"
METHODS = "methods.json"  # Auto Evol-Instruct: every method and its dev failure rate
METHODS_DIR = "methods"
TRAJECTORY_METHODS = "trajectory_methods.json"
EVAL_SCORES = "scores.jsonl"  # `eval`: each prompt's strict and loose verdicts
TRAIN_CONFIG = "train_config.json"  # `train`: inside MODEL_DIR, so it travels with the model
# `train-eval`: one sub-folder per trained model (its rows, its train run, its eval run), the
# untrained base model's eval run, and the IC-IFD / IFD scoring runs of unscored inputs.
ARMS_DIR = "arms"
BASE_EVAL_DIR = "base"
SCORING_DIR = "scoring"
ARM_ROWS = "rows.jsonl"  # inside ARMS_DIR/<arm>/
ARM_TRAIN_DIR = "train"  # inside ARMS_DIR/<arm>/: a `train` run folder
ARM_EVAL_DIR = "eval"  # inside ARMS_DIR/<arm>/: an `eval` run folder
RESPONSES = "responses.jsonl"  # `eval`: one model answer per benchmark prompt
MODEL_DIR = "model"  # `train`: the trained model
CHECKPOINTS_DIR = "checkpoints"
# Written beside an export (which may sit in a run folder): LLaMA-Factory's registry, the card.
DATASET_INFO = "dataset_info.json"
HUB_CARD = "README.md"

#: Each command's file of kept rows: what `show`, `export` and the Python API's results read.
KEPT_FILES = {
    "evolve": EVOLVED,
    "autoif": EVOLVED,
    "auto-evol": EVOLVED,
    "score": SCORED,
    "select": SELECTED,
    "analyze": MEASURES,
}

#: Everything evolkit may write into a run folder; `--overwrite` removes these and nothing else.
OWNED_FILES = frozenset(
    {
        CONFIG,
        JOURNAL,
        LOCK,
        SUMMARY,
        REJECTED,
        BAD_RECORDS,
        LOG,
        EVOLVED,
        STEPS,
        CONSTRAINTS,
        SCORED,
        SELECTED,
        REMOVED,
        MEASURES,
        EVAL_SCORES,
        REPORT,
        METHODS,
        TRAJECTORY_METHODS,
        RESPONSES,
        DATASET_INFO,
        HUB_CARD,
    }
)
OWNED_DIRS = frozenset(
    {METHODS_DIR, MODEL_DIR, CHECKPOINTS_DIR, ARMS_DIR, BASE_EVAL_DIR, SCORING_DIR}
)


def fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _owned(name: str) -> bool:
    # Temporary siblings of our atomic writes (".x.tmp-PID") are ours too.
    return name in OWNED_FILES or name in OWNED_DIRS or (name.startswith(".") and ".tmp" in name)


def foreign_files(folder: Path) -> list[str]:
    """Names in `folder` that evolkit did not write (sorted)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not _owned(p.name))


def check_output_folder(out: Path, flag: str = "-o") -> None:
    """A folder we may write into: not a file, and creatable."""
    if out.exists() and not out.is_dir():
        raise EvolkitError(f"{flag} {out}: is a file, not a folder; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvolkitError(f"cannot create the run folder {out}: {exc.strerror}") from None


class RunLock:
    """An exclusive, crash-safe lock on a run folder (see the module doc)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EvolkitError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise EvolkitError(f"cannot lock {self.path}: {exc.strerror}") from None
            holder = _read_holder(self.path)
            raise EvolkitError(
                f"{self.path.parent} is in use by another evolkit process "
                f"(PID {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}); wait for it to finish or stop it, or use "
                "another -o folder"
            ) from None
        stale = _read_holder(self.path)
        if stale.get("pid"):
            log.info(
                "taking over the lock of %s left by PID %s on %s (that process has ended)",
                self.path.parent,
                stale.get("pid"),
                stale.get("host"),
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: unlinking a lock file races with a process that has it open.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class RunFolder:
    """Owns every file of one run; the engine commits batches through it.

    `config` is what the run's fingerprint covers (settings that change results, and the
    inputs); `settings` is everything needed to rerun it (config.json keeps both).
    """

    def __init__(
        self,
        out: str | Path,
        config: dict[str, Any],
        *,
        overwrite: bool = False,
        kept_name: str = EVOLVED,
        command: str = "",
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if kept_name not in OWNED_FILES:
            raise ValueError(f"{kept_name} is not a run file name (see evolkit.runs)")
        self.dir = Path(out)
        self.config = config
        self.command = command
        self.kept_path = self.dir / kept_name
        self.rejected_path = self.dir / REJECTED
        self.bad_path = self.dir / BAD_RECORDS
        self.summary_path = self.dir / SUMMARY
        self.journal_path = self.dir / JOURNAL
        self.log_path = self.dir / LOG
        check_output_folder(self.dir)
        # Nothing, not even the lock file, goes into a folder holding someone else's files.
        self._refuse_foreign(overwrite)
        self._lock = RunLock(self.dir)
        self._lock.acquire()
        try:
            self._open(config, overwrite, settings or {})
        except BaseException:
            self._lock.release()
            raise

    def path(self, name: str) -> Path:
        """The path of one of this run's files, by its name in this module."""
        if name not in OWNED_FILES and name not in OWNED_DIRS:
            raise ValueError(f"{name} is not a run file name (see evolkit.runs)")
        return self.dir / name

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening -----------------------------------------------------------------------------
    def _refuse_foreign(self, overwrite: bool) -> None:
        foreign = foreign_files(self.dir)
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            what = "replace" if overwrite else "use"
            raise EvolkitError(
                f"{self.dir} holds files evolkit did not write ({listed}); refusing to {what} "
                "it: choose a new or empty -o folder"
            )

    def _open(self, config: dict[str, Any], overwrite: bool, settings: Mapping[str, Any]) -> None:
        cfg_path = self.dir / CONFIG
        fp = fingerprint(config)
        self._refuse_foreign(overwrite)  # again, now that we hold the lock
        if overwrite:
            # --overwrite always starts over, even when the configuration is unchanged; only
            # our own files go (the lock file stays: we hold it).
            for p in self.dir.iterdir():
                if p.name == LOCK:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        elif cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as exc:
                raise EvolkitError(
                    f"{cfg_path}: unreadable ({exc}); use --overwrite to start this run over"
                ) from None
            if old.get("fingerprint") != fp:
                before = old.get("config", {})
                changed = sorted(
                    k for k in set(before) | set(config) if before.get(k) != config.get(k)
                )
                raise ConfigMismatchError(
                    f"{self.dir} holds a run with another configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); use another -o folder, or "
                    "--overwrite to replace it"
                )
        self.resumed = self.journal_path.exists()
        from evolkit import __version__

        atomic_write_json(
            cfg_path,
            {
                "fingerprint": fp,
                "command": self.command,
                "config": config,
                "settings": dict(settings),
                "evolkit": __version__,
            },
        )
        self._load()

    # -- journal -----------------------------------------------------------------------------
    def _read_journal(self) -> list[dict[str, Any]]:
        entries, _ = read_jsonl_tolerant(self.journal_path)
        for n, e in enumerate(entries, 1):
            missing = [k for k in ("step", "inputs", "kept", "rejected") if k not in e]
            if missing:
                raise EvolkitError(
                    f"{self.journal_path}:{n}: field '{missing[0]}': missing from a journal "
                    "line, so this run cannot be resumed safely; start it over with --overwrite "
                    "(the call cache makes redone calls cheap)"
                )
        return entries

    def _load(self) -> None:
        entries = self._read_journal()
        files = {"kept": self.kept_path, "rejected": self.rejected_path}
        present: dict[str, dict[str, dict[str, Any]]] = {}
        counts: dict[str, tuple[int, int]] = {}
        for kind, path in files.items():
            rows, dropped = read_jsonl_tolerant(path)
            by_id: dict[str, dict[str, Any]] = {}
            for row in rows:
                by_id.setdefault(str(row.get("id")), row)
            present[kind] = by_id
            counts[kind] = (len(rows), dropped)
        # A journal entry stands only if every row it committed is still in its file.
        valid: list[dict[str, Any]] = []
        lost: dict[str, int] = {"kept": 0, "rejected": 0}
        for e in entries:
            gone = {k: [i for i in e[k] if i not in present[k]] for k in files}
            if any(gone.values()):
                for k, ids in gone.items():
                    lost[k] += len(ids)
                continue
            valid.append(e)
        for kind, n in lost.items():
            if n:
                log.warning(
                    "%s lacks %d row(s) that %s says were committed (edited or truncated?): "
                    "their batches are redone now",
                    files[kind],
                    n,
                    self.journal_path.name,
                )
        self._done: dict[str, set[str]] = {}
        self._kept_ids: dict[str, list[str]] = {}
        committed: dict[str, set[str]] = {"kept": set(), "rejected": set()}
        for e in valid:
            self._done.setdefault(e["step"], set()).update(e["inputs"])
            self._kept_ids.setdefault(e["step"], []).extend(e["kept"])
            committed["kept"].update(e["kept"])
            committed["rejected"].update(e["rejected"])
        self._rows: dict[str, dict[str, Any]] = {}
        for kind, path in files.items():
            clean = [row for i, row in present[kind].items() if i in committed[kind]]
            total, dropped = counts[kind]
            if dropped or len(clean) != total:
                _rewrite(path, clean)
            if kind == "kept":
                self._rows = {str(r["id"]): r for r in clean}
        if self.journal_path.exists():
            # Also drops a torn last line of the journal itself.
            _rewrite(self.journal_path, valid)
        # A run with nothing kept (or nothing rejected) still has both files: readers and
        # exports then see an empty result, not a missing one.
        with writing(self.dir):
            for path in files.values():
                path.touch()

    def done_inputs(self, step: str) -> set[str]:
        return set(self._done.get(step, set()))

    def kept_records(self, step: str) -> list[Record]:
        return [Record.model_validate(self._rows[i]) for i in self._kept_ids.get(step, [])]

    def steps(self) -> list[str]:
        return list(self._done)

    def commit(
        self, step: str, inputs: Sequence[str], kept: Sequence[Record], rejected: Sequence[Record]
    ) -> None:
        with writing(self.dir):
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
            append_line(self.journal_path, json.dumps(entry))
        self._done.setdefault(step, set()).update(inputs)
        self._kept_ids.setdefault(step, []).extend(entry["kept"])
        for r in kept:
            self._rows[r.id] = r.model_dump(mode="json")

    # -- other outputs -----------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> None:
        with writing(self.dir):
            atomic_write_json(self.summary_path, summary)

    def write_bad_rows(self, bad: Sequence[Any]) -> None:
        """Input rows that could not be read (`--on-bad-record skip`), with their reason."""
        if not bad:
            return
        rows = [{**b.to_dict(), "message": b.message} for b in bad]
        with writing(self.dir):
            write_jsonl(rows, self.bad_path)


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a full or read-only disk into one line naming the file, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM):
            where = exc.filename or folder
            raise EvolkitError(
                f"cannot write {where}: {exc.strerror}; the run stopped with every finished "
                "batch saved: free space (or fix permissions) and run the same command again"
            ) from None
        raise


def _rewrite(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with writing(path.parent):
        write_jsonl(rows, path)
