"""The call cache: a SQLite table keyed by a hash of model, prompt and sampling parameters.

A rerun (after a kill, or with an unchanged config) answers every call it has seen from disk,
so resuming costs only the calls that never finished.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from evolkit.models.base import Backend, ChatRequest, Generation


class CallCache:
    """Generations stored by request key. Safe to share between threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, value FROM calls WHERE key IN ({marks})"
                for key, value in self._db.execute(sql, chunk):
                    found[key] = Generation(**json.loads(value), cached=True)
        return found

    def put_many(self, items: Sequence[tuple[str, Generation]]) -> None:
        rows = [(k, json.dumps(g.to_dict(), ensure_ascii=False)) for k, g in items]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
        keys = [r.key(self.inner.cache_id) for r in requests]
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
                ]
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
