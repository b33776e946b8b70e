"""The call cache: a SQLite table keyed by a hash of model, prompt and sampling parameters.

A rerun (after a kill, or with an unchanged config) answers every call it has seen from disk,
so resuming costs only the calls that never finished. The model part of the key is the
backend's `cache_id` (a local folder's fingerprint, not its name), and each entry also stores
that id and when it was written, so `evolkit cache info` can count entries per model and
`evolkit cache clear --model` can drop one model's.

Schema versions (SQLite `user_version`): 0 is the first release's single `calls(key, value)`
table. Its entries are dropped when the file is first opened by this version: their keys used
a local model's folder name, so they may hold another model's answers, and they do not say
which model wrote them. 1 is the `entries` table below.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from evolkit.errors import EvolkitError
from evolkit.models.base import Backend, ChatRequest, Generation

SCHEMA_VERSION = 1
_LEGACY_TABLE = "calls"
_TABLE = "entries"
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")

T = TypeVar("T")


class CacheError(EvolkitError):
    """The call cache file cannot be used: corrupt, locked, unwritable, or from a newer evolkit."""


def default_cache_path() -> Path:
    """Where runs cache calls unless `--cache` says otherwise."""
    from evolkit.models.embedded import cache_root

    return cache_root() / "calls.sqlite"


def cache_files(path: str | Path) -> list[Path]:
    """The cache file and the side files SQLite keeps next to it, those that exist."""
    p = Path(path)
    return [f for f in [p, *(p.with_name(p.name + s) for s in _SIDE_SUFFIXES)] if f.exists()]


def _clear_hint(path: Path) -> str:
    try:
        is_default = path.resolve() == default_cache_path().resolve()
    except OSError:
        is_default = False
    clear = "evolkit cache clear" if is_default else f"evolkit cache clear --cache {path}"
    return f"run with --no-cache, or remove it with `{clear}`"


def cache_error(path: Path, exc: BaseException) -> CacheError:
    """One line that names the file, says what is wrong and how to go on."""
    text = str(exc) or type(exc).__name__
    if "locked" in text or "busy" in text:
        what = f"is locked by another process ({text}): wait for that run to end, or"
        return CacheError(f"call cache {path} {what} {_clear_hint(path)}")
    if isinstance(exc, sqlite3.OperationalError) and "disk" in text and "full" in text:
        return CacheError(f"call cache {path}: the disk is full ({text}); {_clear_hint(path)}")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return CacheError(f"call cache {path} is corrupt ({text}); {_clear_hint(path)}")
    return CacheError(f"call cache {path} cannot be used ({text}); {_clear_hint(path)}")


@dataclass
class CacheInfo:
    """What `evolkit cache info` reports about one cache file."""

    path: Path
    exists: bool
    size: int = 0  # bytes, the file and its -wal/-shm side files together
    entries: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    legacy_entries: int = 0  # first-release entries, dropped on the next open by a run
    problem: str = ""  # why the file is unusable ("" when it is fine)
    foreign: bool = False  # an SQLite database some other program wrote: never touched
    locked: bool = False  # another process holds it: in use, not broken


class CallCache:
    """Generations stored by request key. Safe to share between threads of one process.

    Every SQLite failure (on open, read or write) becomes one CacheError line naming the file.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(self.path, exc) from exc
        self._db = self._guard(self._open)

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (sqlite3.Error, OSError) as exc:
            raise cache_error(self.path, exc) from exc

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=self.timeout)
        try:
            # Schema first: a file some other program wrote is refused before anything in it
            # (even its journal mode) changes.
            _migrate(db, self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        def read() -> dict[str, Generation]:
            found: dict[str, Generation] = {}
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, value FROM {_TABLE} WHERE key IN ({marks})"
                for key, value in self._db.execute(sql, chunk):
                    try:
                        found[key] = Generation(**json.loads(value), cached=True)
                    except (ValueError, TypeError):
                        # A row this version cannot read is a miss: the call is made again
                        # and the row replaced.
                        continue
            return found

        with self._lock:
            return self._guard(read)

    def put_many(self, items: Sequence[tuple[str, Generation]], model: str) -> None:
        """Store generations under their keys; `model` is the backend's cache_id."""
        now = time.time()
        rows = [(k, json.dumps(g.to_dict(), ensure_ascii=False), model, now) for k, g in items]

        def write() -> None:
            with self._db:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO {_TABLE} (key, value, model, created) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )

        with self._lock:
            self._guard(write)

    def per_model(self) -> dict[str, int]:
        sql = f"SELECT model, COUNT(*) FROM {_TABLE} GROUP BY model ORDER BY model"
        with self._lock:
            return self._guard(lambda: {m: int(n) for m, n in self._db.execute(sql)})

    def clear(self, model_prefix: str | None = None) -> int:
        """Remove every entry, or those whose model cache_id starts with `model_prefix`;
        return how many were removed."""

        def delete() -> int:
            with self._db:
                if model_prefix is None:
                    cur = self._db.execute(f"DELETE FROM {_TABLE}")
                else:
                    cur = self._db.execute(
                        f"DELETE FROM {_TABLE} WHERE substr(model, 1, ?) = ?",
                        (len(model_prefix), model_prefix),
                    )
            removed = int(cur.rowcount)
            # Give the space back; another process reading the file only makes this wait or
            # fail, which leaves a correct (just larger) file.
            try:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                pass
            return removed

        with self._lock:
            return self._guard(delete)

    def __len__(self) -> int:
        with self._lock:
            return self._guard(
                lambda: int(self._db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])
            )

    def close(self) -> None:
        with self._lock:
            self._guard(self._db.close)


def _foreign_tables(db: sqlite3.Connection) -> list[str]:
    """Tables that neither evolkit nor SQLite itself made: their presence means the file
    belongs to some other program."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return sorted(n for n in names - {_TABLE, _LEGACY_TABLE} if not n.startswith("sqlite_"))


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION (see the module docstring), inside one transaction so
    two processes opening a first-release file at once do not trip over each other."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    foreign = _foreign_tables(db)
    if foreign:
        raise CacheError(
            f"{path} is an SQLite database that evolkit did not write (tables: "
            f"{', '.join(foreign)}); give --cache another file, or --no-cache"
        )
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"call cache {path} was written by a newer evolkit (schema {version}, this one "
            f"reads {SCHEMA_VERSION}); upgrade evolkit, or {_clear_hint(path)}"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            db.execute(f"DROP TABLE IF EXISTS {_LEGACY_TABLE}")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
                " model TEXT NOT NULL, created REAL NOT NULL)"
            )
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_model ON {_TABLE} (model)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def inspect_cache(path: str | Path) -> CacheInfo:
    """Describe a cache file without changing it (no migration, nothing created)."""
    p = Path(path)
    if not p.exists():
        return CacheInfo(p, exists=False)
    info = CacheInfo(p, exists=True, size=sum(f.stat().st_size for f in cache_files(p)))
    if not p.is_file():
        info.problem = "not a file"
        return info
    try:
        uri = f"file:{urllib.parse.quote(str(p.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        info.problem = cache_error(p, exc).args[0]
        return info
    try:
        check = [r[0] for r in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            info.problem = f"corrupt ({'; '.join(check[:3])})"
            return info
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if _foreign_tables(db):
            info.problem = "an SQLite database that evolkit did not write"
            info.foreign = True
        elif version > SCHEMA_VERSION:
            info.problem = f"written by a newer evolkit (schema {version})"
        elif version == SCHEMA_VERSION:
            rows = db.execute(f"SELECT model, COUNT(*) FROM {_TABLE} GROUP BY model ORDER BY model")
            info.per_model = {m: int(n) for m, n in rows}
            info.entries = sum(info.per_model.values())
        else:
            row = db.execute(f"SELECT COUNT(*) FROM {_LEGACY_TABLE}").fetchone()
            info.legacy_entries = int(row[0])
    except sqlite3.Error as exc:
        info.problem = cache_error(p, exc).args[0]
        info.locked = "locked" in str(exc) or "busy" in str(exc)
    finally:
        db.close()
    return info


def remove_cache_file(path: str | Path) -> list[Path]:
    """Delete an unusable cache file and its SQLite side files; return what was deleted.

    Only the file itself and its `-wal`, `-shm` and `-journal` siblings are touched, never
    anything else in the folder, and never an SQLite database with tables evolkit did not
    create.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise CacheError(f"{p} is not a file; not removing it")
    info = inspect_cache(p)
    if info.foreign:
        raise CacheError(f"{p} is an SQLite database that evolkit did not write; not removing it")
    removed = cache_files(p)
    for f in removed:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CacheError(f"cannot remove {f}: {exc}") from exc
    return removed


class CachedBackend(Backend):
    """Wraps any backend: answers known requests from the cache, sends only the misses."""

    def __init__(self, inner: Backend, cache: CallCache) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.model_id = inner.model_id

    @property
    def cache_id(self) -> str:
        return self.inner.cache_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        cache_id = self.inner.cache_id
        keys = [r.key(cache_id) for r in requests]
        hits = self.cache.get_many(sorted(set(keys)))
        todo = sorted({k: i for i, k in enumerate(keys) if k not in hits}.items())
        if todo:
            fresh = self.inner.generate([requests[i] for _, i in todo])
            # Errors are not cached: a transient server failure must be retried next run.
            self.cache.put_many(
                [
                    (k, g)
                    for (k, _), g in zip(todo, fresh, strict=True)
                    if g.finish_reason != "error"
                ],
                model=cache_id,
            )
            hits.update({k: g for (k, _), g in zip(todo, fresh, strict=True)})
        out = [hits[k] for k in keys]
        for g in out:
            if g.cached:
                self.usage.add(g)
        return out

    @property
    def seconds(self) -> float:
        return self.inner.usage.seconds

    def close(self) -> None:
        self.inner.close()
