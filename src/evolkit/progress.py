"""Progress of a step, readable both on a terminal and in a log file.

On a terminal a rich bar is redrawn in place. Anywhere else (nohup, CI, `2>log`) a redrawn bar
shows nothing until the step ends, so each batch instead writes one plain line:

    round-1: 32/120 rows (27%), 0.41 rows/s, ETA 3m35s, retries 2 (429: 2)

The lines go through the "evolkit" logger, so a run.log attached with
`evolkit.console.attach_log_file` gets them in both cases.

Rates and the ETA count only rows this invocation did: rows an earlier run committed are not
"fast" rows, and counting them would promise a finish that never comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from evolkit.console import BAR_SHOWN, console, stderr_is_terminal, stderr_shows

__all__ = ["StepProgress", "format_duration", "format_retries", "stage"]

log = logging.getLogger("evolkit.progress")


def format_duration(seconds: float) -> str:
    """`45s`, `3m35s`, `2h05m`: short enough for a progress line, exact enough for an ETA."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_retries(retries: Mapping[str, int] | None) -> str:
    """`retries 3 (429: 2, timeout: 1)`, or `retries 0`; the most frequent cause first."""
    counts = {k: v for k, v in (retries or {}).items() if v}
    total = sum(counts.values())
    if not total:
        return "retries 0"
    causes = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"retries {total} (" + ", ".join(f"{k}: {v}" for k, v in causes) + ")"


def _format_rate(rate: float, unit: str) -> str:
    return f"{rate:.2f} {unit}/s" if rate < 100 else f"{rate:.0f} {unit}/s"


class _EtaColumn(ProgressColumn):
    """Counts down between batches from the rate measured at the last one.

    rich's own remaining-time column estimates speed over a 30 s window, which shows nothing
    when a batch takes longer than that (a big model on a CPU).
    """

    def render(self, task: Task) -> Text:
        eta: float | None = task.fields.get("eta")
        if eta is None:
            return Text("ETA ?")
        since = time.monotonic() - task.fields.get("eta_at", time.monotonic())
        return Text("ETA " + format_duration(max(0.0, eta - since)))


class StepProgress:
    """Progress of one step (`round-1`, `respond`, ...) over `total` rows.

    `done` rows were committed by an earlier invocation (a resumed run): they fill the bar but
    are left out of rates. Use as a context manager; call `advance` after each committed batch.

    `stream_is_tty` forces the terminal bar (True) or plain lines (False); by default it
    follows stderr. With -q neither a bar nor lines reach stderr (a run.log still gets lines).
    `clock` is for tests.
    """

    def __init__(
        self,
        step: str,
        total: int,
        done: int = 0,
        *,
        stream_is_tty: bool | None = None,
        unit: str = "rows",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step = step
        self.total = max(0, total)
        self.done = max(0, min(done, self.total)) if self.total else max(0, done)
        self.unit = unit
        self.retries: dict[str, int] = {}
        self._resumed = self.done
        self._clock = clock
        self._t0 = clock()
        tty = stderr_is_terminal() if stream_is_tty is None else stream_is_tty
        self._bar_visible = tty and stderr_shows(logging.INFO)
        self._bar: Progress | None = None
        self._task_id: TaskID | None = None
        self._finished = False
        self._last_line_complete = False

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> StepProgress:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._stop_bar()  # an interrupted step ends without a "done" line
            self._finished = True

    # -- API -------------------------------------------------------------------------------

    def start(self) -> None:
        """Draw the bar, or write the step's first line (what is left, what was resumed)."""
        self._t0 = self._clock()
        if self._bar_visible:
            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", markup=False),
                TimeElapsedColumn(),
                _EtaColumn(),
                TextColumn("{task.fields[retries]}", markup=False),
                console=console,
                transient=False,
            )
            self._bar.start()
            self._task_id = self._bar.add_task(
                self.step, total=self.total, completed=self.done, rate="", retries="", eta=None
            )
        left = self.total - self.done
        if left == 0:
            msg = f"{self.step}: all {self.total} {self.unit} already done"
            self._last_line_complete = True
        elif self._resumed:
            msg = (
                f"{self.step}: {left} of {self.total} {self.unit} to do "
                f"({self._resumed} done by an earlier run)"
            )
        else:
            msg = f"{self.step}: {self.total} {self.unit} to do"
        self._log(msg)

    def advance(self, n: int, retries: Mapping[str, int] | None = None) -> None:
        """`n` more rows committed. `retries`: retries so far in this invocation by cause
        (cumulative, as the backends count them); it replaces the previous mapping."""
        self.done += n
        if retries is not None:
            self.retries = dict(retries)
        now = self._clock()
        elapsed = max(now - self._t0, 1e-9)
        here = self.done - self._resumed
        rate = here / elapsed if here > 0 else 0.0
        left = max(0, self.total - self.done)
        eta = left / rate if rate > 0 else None
        if self._bar is not None and self._task_id is not None:
            self._bar.update(
                self._task_id,
                completed=self.done,
                rate=_format_rate(rate, self.unit),
                retries=format_retries(self.retries) if sum(self.retries.values()) else "",
                eta=eta,
                eta_at=time.monotonic(),
            )
        pct = f"{self.done / self.total:.0%}" if self.total else "-"
        parts = [
            f"{self.step}: {self.done}/{self.total} {self.unit} ({pct})",
            _format_rate(rate, self.unit),
        ]
        if left:
            parts.append("ETA " + (format_duration(eta) if eta is not None else "?"))
        else:
            parts.append("done in " + format_duration(elapsed))
        parts.append(format_retries(self.retries))
        self._last_line_complete = left == 0
        self._log(", ".join(parts))

    def finish(self) -> None:
        """End the step: leave the full bar on screen, or write a closing line if the last
        one did not already say the step was done."""
        if self._finished:
            return
        self._finished = True
        self._stop_bar()
        if not self._last_line_complete:
            elapsed = self._clock() - self._t0
            self._log(
                f"{self.step}: stopped at {self.done}/{self.total} {self.unit} after "
                f"{format_duration(elapsed)}, {format_retries(self.retries)}"
            )

    # -- internals -------------------------------------------------------------------------

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _log(self, msg: str) -> None:
        log.info("%s", msg, extra={BAR_SHOWN: self._bar_visible})


class _Stage:
    def __init__(self, msg: str) -> None:
        self.msg = msg
        self._t0 = time.monotonic()
        log.info("%s ...", msg)

    def __enter__(self) -> _Stage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            log.debug("%s: done in %s", self.msg, format_duration(time.monotonic() - self._t0))


def stage(msg: str) -> _Stage:
    """Say that a one-off stage begins (`stage("loading the model")` logs "loading the model
    ..."). No spinner, so it reads the same in a log file. As a context manager it also logs
    how long the stage took, at debug level (-v)."""
    return _Stage(msg)
