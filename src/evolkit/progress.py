"""Progress of a step: a bar on a terminal (temporary minimal version)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

from evolkit.console import console


class StepProgress:
    def __init__(self, step: str, total: int, done: int = 0, *, enabled: bool = True) -> None:
        self.step = step
        self.total = total
        self.done = done
        self.enabled = enabled
        self._start = time.perf_counter()
        self._new = 0

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def advance(self, n: int, retries: Mapping[str, int] | None = None) -> None:
        self.done += n
        self._new += n
        if self.enabled:
            rate = self._new / max(1e-9, time.perf_counter() - self._start)
            console.print(
                f"{self.step}: {self.done}/{self.total} rows, {rate:.2f} rows/s",
                markup=False,
                highlight=False,
            )
