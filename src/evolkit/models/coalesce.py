"""One generate call for requests that arrive together from several threads.

The local engine can run a few batches at once (`--concurrent-batches`), each on its own
thread and at its own stage: one batch's rewrites, another's responses, a third's judge calls.
Each thread calls `generate` as usual; this wrapper gathers what arrives within a short window
and hands it to the real backend as ONE call, so a continuous-batching decoder always has enough
rows to keep its slots full, and the few re-samples or survivors of one batch ride along with
the others. Stages never know: they see an ordinary backend.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from evolkit.models.base import Backend, ChatRequest, Generation

_Job = tuple[list[ChatRequest], "concurrent.futures.Future[list[Generation]]"]


class CoalescingBackend(Backend):
    """Wraps a backend that must be called from one thread at a time (a local model)."""

    def __init__(self, inner: Backend, window_s: float = 0.05) -> None:
        super().__init__()
        self.inner = inner
        self.model_id = inner.model_id
        self.window_s = window_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="evolkit-coalesce", daemon=True)
        self._thread.start()

    @property
    def cache_id(self) -> str:
        return self.inner.cache_id

    @property
    def usage(self) -> Any:  # type: ignore[override]
        return self.inner.usage

    @usage.setter
    def usage(self, value: Any) -> None:
        pass  # Backend.__init__ sets one; the inner backend's counts are the real ones

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        if not requests:
            return []
        future: concurrent.futures.Future[list[Generation]] = concurrent.futures.Future()
        self._queue.put((list(requests), future))
        return future.result()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.window_s
            stop = False
            while True:
                left = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        flat = [r for reqs, _ in jobs for r in reqs]
        try:
            gens = self.inner.generate(flat)
        except BaseException as exc:  # every waiting caller sees the failure
            for _, future in jobs:
                future.set_exception(exc)
            return
        start = 0
        for reqs, future in jobs:
            future.set_result(gens[start : start + len(reqs)])
            start += len(reqs)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


class Serialized:
    """Any role object (a sandbox, a scorer) used by one thread at a time."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return locked
